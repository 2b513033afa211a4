"""Audio checks and feature extraction into lilcom storage, with lhotse doing the work.

    asrkit compute-fbank --cuts data/manifests/x_cuts_train.jsonl.gz --out-dir data/fbank --num-jobs 2
    asrkit compute-fbank --cuts ... --feature-type whisper-fbank --num-mel-bins 128   # for Whisper encoders

Two front ends: ``fbank`` (Kaldi-compatible log-mel, 80 bins, what Zipformer recipes use) and
``whisper-fbank`` (Whisper's normalised log10-mel, 80 or 128 bins, 100 frames/s), both in torch.
A third input type, ``waveform`` (raw 16 kHz samples for self-supervised encoders such as WavLM),
has nothing to precompute: the data layer reads the audio on the fly.

Every recipe goes through here, so a missing or corrupt audio file is reported once, by name,
before a long training run meets it.
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from lhotse import CutSet, Fbank, FbankConfig, LilcomChunkyWriter
from lhotse.cut import Cut
from lhotse.features import FeatureExtractor
from lhotse.features import WhisperFbank as _LhotseWhisperFbank
from lhotse.features import WhisperFbankConfig

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
NUM_MEL_BINS = 80
FEATURE_TYPES = ("fbank", "whisper-fbank")
WAVEFORM = "waveform"  # raw samples as (T, 1) "features": the input of waveform encoders (WavLM)
INPUT_TYPES = FEATURE_TYPES + (WAVEFORM,)
WHISPER_MEL_BINS = (80, 128)  # large-v3 and turbo use 128, every other Whisper 80
# lhotse's names of stored features that are numerically one of FEATURE_TYPES
FEATURE_ALIASES = {"kaldi-fbank": "fbank", "kaldifeat-fbank": "fbank", "whisper-v3-fbank": "whisper-fbank"}


def fbank_extractor(num_mel_bins: int = NUM_MEL_BINS) -> Fbank:
    """lhotse's own torch fbank (Kaldi-compatible), the front end of the Zipformer recipes."""
    return Fbank(FbankConfig(num_mel_bins=num_mel_bins, device="cpu"))


def slaney_mel_filters(num_mel_bins: int, n_fft: int = 400, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(num_mel_bins, n_fft // 2 + 1) triangular filters on the Slaney mel scale with Slaney area
    normalisation: the filters Whisper's front end uses (librosa's ``filters.mel`` defaults)."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0  # linear below 1 kHz, logarithmic above
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        log_part = min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep
        return np.where(f >= min_log_hz, log_part, f / f_sp)

    def mel_to_hz(m):
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), num_mel_bins + 2))  # (M + 2,)
    width = np.diff(edges)  # (M + 1,)
    ramps = edges[:, None] - fft_freqs[None, :]  # (M + 2, F)
    rising, falling = -ramps[:-2] / width[:-1, None], ramps[2:] / width[1:, None]  # (M, F) each
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # equal area per filter
    return weights.astype(np.float32)


class WhisperFbank(_LhotseWhisperFbank):
    """lhotse's ``WhisperFbank`` (Whisper's log-mel in torch) with the mel filters built here, so the
    data layer does not need librosa, which lhotse imports only to build them."""

    def __init__(self, config: Optional[WhisperFbankConfig] = None):
        FeatureExtractor.__init__(self, config=config)  # skips the parent's librosa import, sets self.config
        self.sampling_rate, self.hop_length, self.n_fft = SAMPLE_RATE, 160, 400
        self.num_filters = self.config.num_filters
        self.filters = torch.from_numpy(slaney_mel_filters(self.num_filters, self.n_fft)).to(self.config.device)
        self.window = torch.hann_window(self.n_fft).to(self.config.device)


class Waveform:
    """The "front end" of waveform encoders: 16 kHz samples as a (T, 1) matrix, so code that runs any
    extractor's ``extract(samples, sampling_rate)`` (``asrkit transcribe``) feeds WavLM the same way."""

    def extract(self, samples: np.ndarray, sampling_rate: int) -> np.ndarray:
        if sampling_rate != SAMPLE_RATE:
            raise ValueError(f"waveform inputs must be {SAMPLE_RATE} Hz, got {sampling_rate}; resample first")
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim == 2 and samples.shape[0] == 1:
            samples = samples[0]
        if samples.ndim != 1:
            raise ValueError(f"waveform inputs must be mono (T,) or (1, T) samples, got shape {samples.shape}")
        return samples[:, None]  # (T, 1)


def feature_extractor(feature_type: str = "fbank", num_mel_bins: int = NUM_MEL_BINS):
    """The extractor for a ``feature_type`` of :data:`INPUT_TYPES`, computing on CPU
    (``num_mel_bins`` does not apply to ``waveform``)."""
    if feature_type == "fbank":
        if num_mel_bins <= 0:
            raise ValueError(f"num_mel_bins must be > 0, got {num_mel_bins}")
        return fbank_extractor(num_mel_bins)
    if feature_type == "whisper-fbank":
        if num_mel_bins not in WHISPER_MEL_BINS:
            raise ValueError(f"whisper-fbank needs num_mel_bins 80 or 128 (the Whisper checkpoints' inputs), "
                             f"got {num_mel_bins}")
        return WhisperFbank(WhisperFbankConfig(num_filters=num_mel_bins, device="cpu"))
    if feature_type == WAVEFORM:
        return Waveform()
    raise ValueError(f"unknown feature type {feature_type!r}; choose from {', '.join(INPUT_TYPES)}")


def feature_writer(feature_type: str):
    """lilcom storage, with 8x finer steps for Whisper's log-mel: it spans ~4 units where Kaldi's
    natural-log fbank spans ~30, so lhotse's default 2^-5 step would be ~0.6 dB of error."""
    return partial(LilcomChunkyWriter, tick_power=-8) if feature_type == "whisper-fbank" else LilcomChunkyWriter


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
    feature_type: str = "fbank",
    num_mel_bins: int = NUM_MEL_BINS,
) -> CutSet:
    """Extract features for ``cuts`` into ``out_dir/<name>_feats`` and write ``out_dir/<name>.jsonl.gz``.

    ``feature_type`` is ``"fbank"`` or ``"whisper-fbank"`` (see :func:`feature_extractor`).
    ``speed_perturb`` (e.g. ``(0.9, 1.1)``) adds perturbed copies before extraction, as icefall does.
    Raises ``ValueError`` listing bad audio before anything is written.
    """
    if feature_type == WAVEFORM:
        raise ValueError("waveform inputs have no features to compute: give waveform encoders the cut manifest "
                         "itself (data.feature_type=waveform), the audio is read while training")
    extractor = feature_extractor(feature_type, num_mel_bins)  # bad options fail before any audio is read
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
                extractor=extractor,
                storage_path=out_dir / f"{name}_feats",
                num_jobs=num_jobs,
                storage_type=feature_writer(feature_type),
                executor=executor,
            )
    finally:
        torch.set_num_threads(threads)
    path = out_dir / f"{name}.jsonl.gz"
    cuts.to_file(path)
    log.info("wrote %d cuts with %d-dim %s to %s", len(cuts), num_mel_bins, feature_type, path)
    return cuts


def load_cuts(path: Optional[str]) -> CutSet:
    """Open a cut manifest lazily, with a clear error when it is missing."""
    if not path:
        raise ValueError("no cut manifest given (set data.train_cuts / data.valid_cuts)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"cut manifest not found: {path}; run the features stage of the recipe first")
    return CutSet.from_file(path)
