"""Extract features (80-dim fbank by default) for cut manifests into lilcom storage.

    asrkit compute-fbank --cuts data/manifests/synth-en_cuts_train.jsonl.gz --out-dir data/fbank \\
        --num-jobs 2 [--speed-perturb 0.9 1.1]
    asrkit compute-fbank --cuts ... --out-dir data/whisper-fbank --feature-type whisper-fbank --num-mel-bins 128

Writes ``<out-dir>/<manifest name>.jsonl.gz`` (same name as the input) and its features beside it;
a manifest whose output exists is skipped.
"""

import logging
from pathlib import Path

from asrkit.data.features import FEATURE_TYPES, NUM_MEL_BINS, compute_fbank, load_cuts

log = logging.getLogger(__name__)


def add_args(p):
    p.add_argument("--cuts", nargs="+", required=True, help="input cut manifests (jsonl.gz)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--num-jobs", type=int, default=1)
    p.add_argument("--speed-perturb", type=float, nargs="*", default=[], help="e.g. 0.9 1.1")
    p.add_argument("--feature-type", choices=FEATURE_TYPES, default="fbank",
                   help="fbank (Kaldi-compatible) or whisper-fbank (Whisper's log-mel, for Whisper encoders)")
    p.add_argument("--num-mel-bins", type=int, default=NUM_MEL_BINS,
                   help="80; whisper-fbank: 80, or 128 for Whisper large-v3 / turbo")
    p.add_argument("--overwrite", action="store_true")


def run(args):
    for path in args.cuts:
        name = Path(path).name.removesuffix(".gz").removesuffix(".jsonl")
        out = Path(args.out_dir) / f"{name}.jsonl.gz"
        if out.is_file() and not args.overwrite:
            log.info("%s exists, skipping", out)
            continue
        compute_fbank(load_cuts(path), args.out_dir, name, args.num_jobs, args.speed_perturb,
                      feature_type=args.feature_type, num_mel_bins=args.num_mel_bins)
