"""Audio checks and 80-dim fbank extraction into lilcom storage, with lhotse doing the work.

    asrkit compute-fbank --cuts data/manifests/x_cuts_train.jsonl.gz --out-dir data/fbank --num-jobs 2

Every recipe goes through here, so a missing or corrupt audio file is reported once, by name,
before a long training run meets it.
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from lhotse import CutSet, Fbank, FbankConfig, LilcomChunkyWriter
from lhotse.cut import Cut

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
NUM_MEL_BINS = 80


def fbank_extractor(num_mel_bins: int = NUM_MEL_BINS) -> Fbank:
    """lhotse's own torch fbank (Kaldi-compatible), the front end every asrkit model expects."""
    return Fbank(FbankConfig(num_mel_bins=num_mel_bins, device="cpu"))


def audio_sources(cut: Cut) -> List[str]:
    """The file paths (or URLs) behind a cut's recording, for error messages."""
    rec = getattr(cut, "recording", None)
    if rec is None:
        return [str(t.cut.recording.sources[0].source) for t in cut.tracks if hasattr(t.cut, "recording")]
    return [str(s.source) for s in rec.sources]


def first_line(err: Exception) -> str:
    """lhotse appends long call chains to its errors; the first line is the cause."""
    return str(err).strip().split("\n")[0]


def check_audio(cuts: CutSet, sample_rate: int = SAMPLE_RATE) -> List[Tuple[str, str]]:
    """Load every cut's audio once; return ``(cut_id, problem)`` for the bad ones.

    Problems: missing or unreadable file, wrong sample rate, no samples, NaN/inf samples.
    """
    bad = []
    for cut in cuts:
        where = ", ".join(audio_sources(cut))
        if cut.sampling_rate != sample_rate:
            bad.append((cut.id, f"sample rate {cut.sampling_rate} != {sample_rate} ({where}); "
                                f"resample with cuts.resample({sample_rate})"))
            continue
        try:
            audio = cut.load_audio()
        except Exception as e:  # lhotse raises many kinds; all mean the same to the user
            bad.append((cut.id, f"unreadable audio: {where} ({type(e).__name__}: {first_line(e)})"))
            continue
        if audio.size == 0:
            bad.append((cut.id, f"empty audio: {where}"))
        elif not torch.isfinite(torch.from_numpy(audio)).all():
            bad.append((cut.id, f"NaN/inf samples: {where}"))
    return bad


def compute_fbank(
    cuts: CutSet,
    out_dir: Path,
    name: str,
    num_jobs: int = 1,
    speed_perturb: Sequence[float] = (),
    sample_rate: int = SAMPLE_RATE,
) -> CutSet:
    """Extract fbank for ``cuts`` into ``out_dir/<name>_feats`` and write ``out_dir/<name>.jsonl.gz``.

    ``speed_perturb`` (e.g. ``(0.9, 1.1)``) adds perturbed copies before extraction, as icefall does.
    Raises ``ValueError`` listing bad audio before anything is written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cuts = cuts.to_eager()
    if any(c.sampling_rate != sample_rate for c in cuts):
        log.info("resampling %s to %d Hz", name, sample_rate)
        cuts = cuts.resample(sample_rate)
    bad = check_audio(cuts, sample_rate)
    if bad:
        lines = "\n  ".join(f"{cid}: {why}" for cid, why in bad[:20])
        raise ValueError(f"{len(bad)} cut(s) in {name} have bad audio:\n  {lines}\n"
                         "fix or remove them (asrkit validate --cuts ...) and rerun")
    # the originals plus one copy per factor (icefall's cuts + sp0.9 + sp1.1); perturbing the growing
    # set instead would also add copies of copies (0.9 x 1.1)
    cuts = cuts + CutSet.from_cuts(c for factor in speed_perturb for c in cuts.perturb_speed(factor))
    # One torch thread per job, in threads of this process: lhotse's default process pool spawns
    # interpreters that re-import torch and oversubscribe the cores, which is ~50x slower here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(num_jobs) if num_jobs > 1 else nullcontext() as executor:
            cuts = cuts.compute_and_store_features(
                extractor=fbank_extractor(),
                storage_path=out_dir / f"{name}_feats",
                num_jobs=num_jobs,
                storage_type=LilcomChunkyWriter,
                executor=executor,
            )
    finally:
        torch.set_num_threads(threads)
    path = out_dir / f"{name}.jsonl.gz"
    cuts.to_file(path)
    log.info("wrote %d cuts with features to %s", len(cuts), path)
    return cuts


def load_cuts(path: Optional[str]) -> CutSet:
    """Open a cut manifest lazily, with a clear error when it is missing."""
    if not path:
        raise ValueError("no cut manifest given (set data.train_cuts / data.valid_cuts)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"cut manifest not found: {path}; run the features stage of the recipe first")
    return CutSet.from_file(path)
