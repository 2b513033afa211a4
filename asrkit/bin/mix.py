"""Simulate multi-talker mixtures (or conversation-style sessions) from single-speaker cuts, for SOT.

    asrkit mix --cuts data/fbank/synth-en_cuts_train.jsonl.gz --out data/mix/synth-en_cuts_train_2spk.jsonl.gz \\
        --num-speakers 2 --min-offset 1.0 --max-offset 1.5 --gain-db -5 5 --seed 0
    asrkit mix --cuts ... --out ... --num-speakers 2 3 --noise-cuts data/manifests/musan_cuts.jsonl.gz --snr-db 10 20
    asrkit mix --cuts ... --out ... --sessions 500 --num-speakers 2 3 --max-utterances-per-speaker 3
    asrkit mix --cuts ... --out ... --save-audio data/mix/wav     # render flac instead of mixing on the fly

The manifest holds lhotse MixedCuts: audio is mixed when a cut is loaded, supervisions are the
sources' (speaker ids kept, times shifted). Compute features from it as from any manifest; the
SOT transcript of a cut is ``asrkit.data.mix.sot_text(cut)``.
"""

import logging
from pathlib import Path

from asrkit.data.features import load_cuts
from asrkit.data.mix import add_noise, render_audio, simulate_mixtures, simulate_sessions, sot_text

log = logging.getLogger(__name__)


def add_args(p):
    p.add_argument("--cuts", nargs="+", required=True, help="single-speaker source cut manifests")
    p.add_argument("--out", required=True, help="mixed cut manifest to write (.jsonl.gz)")
    p.add_argument("--num-speakers", type=int, nargs="+", default=[2],
                   help="speakers per mixture; several values: each mixture draws one")
    p.add_argument("--num-mixtures", type=int, default=None, help="default: one per source cut")
    p.add_argument("--min-offset", type=float, default=1.0, help="s after the previous speaker's start")
    p.add_argument("--max-offset", type=float, default=1.5)
    p.add_argument("--gain-db", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="level of each later speaker relative to the first (default -5 5 for mixtures, "
                        "the recordings' own levels for sessions)")
    p.add_argument("--no-gain", action="store_true", help="sum the recordings at their own levels")
    p.add_argument("--sessions", type=int, default=None,
                   help="make this many conversation-style sessions (lhotse ConversationalMeetingSimulator)")
    p.add_argument("--max-utterances-per-speaker", type=int, default=3, help="sessions only")
    p.add_argument("--noise-cuts", default=None, help="noise cut manifest (e.g. MUSAN noise) to add")
    p.add_argument("--snr-db", type=float, nargs=2, default=[10.0, 20.0], metavar=("MIN", "MAX"))
    p.add_argument("--noise-prob", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--id-prefix", default=None, help="mixture ids: PREFIX000000, ... (default mix / session)")
    p.add_argument("--save-audio", default=None, metavar="DIR", help="render the mixtures to flac in DIR")


def run(args):
    from lhotse import CutSet

    sources = CutSet.from_cuts(c for path in args.cuts for c in load_cuts(path))
    if args.no_gain and args.gain_db is not None:
        raise SystemExit("asrkit mix: give --gain-db or --no-gain, not both")
    if args.sessions is not None:
        gain = None if args.no_gain else args.gain_db
        mixed = simulate_sessions(sources, args.sessions, num_speakers=args.num_speakers,
                                  max_utterances_per_speaker=args.max_utterances_per_speaker, gain_db=gain,
                                  seed=args.seed, id_prefix=args.id_prefix or "session")
    else:
        gain = None if args.no_gain else (args.gain_db or (-5.0, 5.0))
        mixed = simulate_mixtures(sources, num_speakers=args.num_speakers, num_mixtures=args.num_mixtures,
                                  min_offset=args.min_offset, max_offset=args.max_offset, gain_db=gain,
                                  seed=args.seed, id_prefix=args.id_prefix or "mix")
    if args.noise_cuts:
        mixed = add_noise(mixed, load_cuts(args.noise_cuts), snr_db=args.snr_db, prob=args.noise_prob, seed=args.seed)
    if args.save_audio:
        mixed = render_audio(mixed, args.save_audio)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    mixed.to_file(out)
    hours = sum(c.duration for c in mixed) / 3600
    print(f"{len(mixed)} mixtures ({hours:.2f} h) in {out}; e.g. {mixed[0].id}: {sot_text(mixed[0])}")
