"""Synthetic speech corpora from espeak-ng: real audio and real lhotse manifests in seconds.

Tests, the demo recipe (``egs/synth``) and benchmarks need speech without downloading a corpus.
This module speaks random sentences drawn from a built-in vocabulary (``asrkit/data/vocab/<lang>.txt``)
with many espeak-ng "speakers" (voice, variant, pitch, rate, amplitude), optionally adds seeded
noise at a given SNR, and writes 16 kHz mono wav files plus lhotse manifests::

    out_dir/wav/<split>/<utt_id>.wav
    out_dir/manifests/synth-<lang>_{recordings,supervisions,cuts}_<split>.jsonl.gz
    out_dir/manifests/synth-<lang>_speakers.json     speaker id -> split and espeak settings
    out_dir/manifests/synth-<lang>_params.json       what was asked for (idempotence check)

Languages: ``en`` (English), ``vi`` (Vietnamese) and ``zh`` (Mandarin). espeak's ``cmn`` voice
mispronounces Chinese characters, so zh is spoken as tone-numbered pinyin (pypinyin, ``TONE3``,
neutral tone 5) with the ``cmn-latn-pinyin`` voice while the transcript stays in characters.
Transcripts are normalised with :func:`asrkit.text.normalize.normalize` (en upper case).
Train, dev and test speakers are disjoint; everything is deterministic given ``seed``.

    from asrkit.data.synth import synthesize_corpus
    cuts = synthesize_corpus("data/synth", lang="en", num_utts={"train": 2000, "dev": 100, "test": 200})

Command line: ``asrkit synth --lang en --out-dir data/synth`` (see asrkit/bin/synth.py).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import soundfile as sf
import torch
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.audio import AudioSource
from lhotse.qa import validate_recordings_and_supervisions
from tqdm import tqdm

from asrkit.text.normalize import normalize

logger = logging.getLogger(__name__)

ESPEAK = "espeak-ng"
SAMPLING_RATE = 16000
NOISE_TYPES = ("white", "pink", "brown", "mixed")

# Base espeak voices per language; a speaker picks one (accents add variety for en and vi).
VOICES: dict[str, tuple[str, ...]] = {
    "en": ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029"),
    "vi": ("vi", "vi-vn-x-central", "vi-vn-x-south"),
    "zh": ("cmn-latn-pinyin",),
}

# espeak-ng voice variants (``+name``). Left out: whisper voices, 'fast', 'Demonic', names with
# spaces, and variants that clip even at low amplitude (antonio, ed, iven, Jacky, paul, Marco).
VARIANTS: tuple[str, ...] = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "croak",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "adam", "Alex", "Alicia", "Andrea",
    "Andy", "Annie", "aunty", "belinda", "benjamin", "boris", "caleb", "david", "Denis", "Diogo",
    "edward", "edward2", "Gene", "Gene2", "gustave", "announcer", "Henrique", "Hugo", "iven2",
    "iven3", "iven4", "john", "kaukovalta", "Lee", "linda", "marcelo", "Mario", "max", "Michael",
    "michel", "miguel", "Mike", "Nguyen", "pablo", "pedro", "quincy", "RicishayMax",
    "RicishayMax2", "RicishayMax3", "rob", "robert", "robosoft", "robosoft2", "robosoft3",
    "robosoft4", "robosoft5", "robosoft6", "robosoft7", "robosoft8", "steph", "steph2", "steph3",
    "Tweaky", "UniRobot", "zac", "anika", "anikaRobot", "AnxiousAndy", "grandpa", "grandma",
    "norbert", "sandro", "shelby", "travis", "victor",
)
PITCH_RANGE = (25, 75)  # espeak -p, 0..99, default 50
RATE_RANGE = (140, 200)  # espeak -s, words per minute, default 175
AMPLITUDE_RANGE = (50, 90)  # espeak -a, 0..200, default 100 (100 clips with some variants)


class EspeakNotFoundError(RuntimeError):
    """espeak-ng is not installed (or not on PATH)."""


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: a fixed espeak voice, variant, pitch, rate and amplitude."""

    id: str
    voice: str
    variant: str
    pitch: int
    rate: int
    amplitude: int

    def espeak_args(self, with_variant: bool = True) -> list[str]:
        voice = f"{self.voice}+{self.variant}" if with_variant else self.voice
        return ["-v", voice, "-p", str(self.pitch), "-s", str(self.rate), "-a", str(self.amplitude)]


@dataclass
class SynthConfig:
    """What :func:`synthesize_corpus` generates; saved as ``synth-<lang>_params.json``."""

    lang: str = "en"
    num_utts: dict[str, int] = field(default_factory=lambda: {"train": 2000, "dev": 100, "test": 200})
    num_speakers: dict[str, int] = field(default_factory=lambda: {"train": 40, "dev": 5, "test": 10})
    seed: int = 0
    snr_db: float | tuple[float, float] | None = None  # None: clean; (lo, hi): uniform per utterance
    noise_type: str = "white"  # white | pink | brown | mixed (one of the three per utterance)
    # espeak-ng writes exact digital silence between words, which no microphone records: log-mel
    # features then jump to the log floor and a model's first steps see huge gradient spikes.
    # A faint white noise floor (RMS in dB relative to full scale; None: off) makes it a recording.
    noise_floor_db: float | None = -60.0
    min_words: int = 3
    max_words: int = 15
    vocab_size: int | None = None  # use only the first N words of the built-in list (a small task)

    def __post_init__(self) -> None:
        if self.lang not in VOICES:
            raise ValueError(f"synth: unknown language {self.lang!r}; supported: {', '.join(VOICES)}")
        if set(self.num_utts) != set(self.num_speakers):
            raise ValueError(f"synth: num_utts splits {sorted(self.num_utts)} differ from "
                             f"num_speakers splits {sorted(self.num_speakers)}")
        for split, n in self.num_speakers.items():
            if n < 1 or self.num_utts[split] < 0:
                raise ValueError(f"synth: split {split!r} needs >= 1 speaker and >= 0 utterances "
                                 f"(got {n} speakers, {self.num_utts[split]} utterances)")
        if self.noise_type not in NOISE_TYPES:
            raise ValueError(f"synth: noise_type must be one of {NOISE_TYPES}, got {self.noise_type!r}")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"synth: need 1 <= min_words <= max_words, got {self.min_words}, {self.max_words}")
        if isinstance(self.snr_db, (list, tuple)):
            self.snr_db = (float(self.snr_db[0]), float(self.snr_db[1]))
        if self.vocab_size is not None and self.vocab_size < 2:
            raise ValueError(f"synth: vocab_size must be >= 2 words, got {self.vocab_size}")


@dataclass(frozen=True)
class Utterance:
    id: str
    split: str
    speaker: Speaker
    text: str  # transcript (normalised; characters for zh)
    spoken: str  # what espeak reads (pinyin for zh)
    noise_seed: int


# ----------------------------------------------------------------------------- vocabulary, text


@lru_cache(maxsize=None)
def load_vocab(lang: str) -> tuple[str, ...]:
    """Entries of ``asrkit/data/vocab/<lang>.txt`` (comments and blank lines skipped)."""
    path = resources.files("asrkit.data") / "vocab" / f"{lang}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no vocabulary for language {lang!r}: {path} is missing "
                                f"(package data of asrkit; reinstall with pip install -e .)")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


def to_pinyin(word: str) -> str:
    """Tone-numbered pinyin for espeak's cmn-latn-pinyin voice: '你好' -> 'ni3 hao3', neutral tone 5."""
    from pypinyin import Style, lazy_pinyin

    return " ".join(lazy_pinyin(word, style=Style.TONE3, neutral_tone_with_five=True))


def make_sentence(words: Sequence[str], lang: str) -> tuple[str, str]:
    """(transcript, spoken text) for a word sequence."""
    if lang == "zh":
        return normalize("".join(words), lang), " ".join(to_pinyin(w) for w in words)
    spoken = " ".join(words).lower()
    return normalize(spoken, lang), spoken


def _split_seed(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


# ----------------------------------------------------------------------------- speakers, plan


def make_speakers(cfg: SynthConfig, variants: Sequence[str] = VARIANTS) -> dict[str, list[Speaker]]:
    """Disjoint speakers per split, deterministic in ``cfg.seed``.

    Variants are dealt from a shuffled pool, so while the pool lasts every speaker has its own
    variant and test speakers share no variant with training speakers.
    """
    rng = np.random.default_rng([cfg.seed, 1])
    total = sum(cfg.num_speakers.values())
    pool = [variants[i] for i in rng.permutation(len(variants))]
    speakers: list[Speaker] = []
    seen: set[tuple] = set()
    while len(speakers) < total:
        j = len(speakers)
        sp = Speaker(
            id=f"{cfg.lang}-spk{j:03d}",
            voice=str(rng.choice(VOICES[cfg.lang])),
            variant=pool[j % len(pool)],
            pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
            rate=int(rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1)),
            amplitude=int(rng.integers(AMPLITUDE_RANGE[0], AMPLITUDE_RANGE[1] + 1)),
        )
        key = (sp.voice, sp.variant, sp.pitch, sp.rate)
        if key not in seen:  # a repeated tuple would be the same voice under two ids
            seen.add(key)
            speakers.append(sp)
    out, start = {}, 0
    for split, n in cfg.num_speakers.items():
        out[split] = speakers[start:start + n]
        start += n
    return out


def plan_corpus(cfg: SynthConfig, variants: Sequence[str] = VARIANTS) -> dict[str, list[Utterance]]:
    """Every utterance's speaker and text, without running espeak (deterministic in ``cfg.seed``).

    Each split has its own random stream, so changing the size of one split leaves the text of
    the others unchanged (speakers are shared out across splits and do change).
    """
    vocab = load_vocab(cfg.lang)[: cfg.vocab_size]
    speakers = make_speakers(cfg, variants)
    plan = {}
    for split, n in cfg.num_utts.items():
        rng = np.random.default_rng([cfg.seed, 2, _split_seed(split)])
        spks = speakers[split]
        # Balanced speakers: each gets n / len(spks) utterances, in random order.
        order = rng.permutation(np.arange(n) % len(spks))
        utts = []
        for i in range(n):
            length = int(rng.integers(cfg.min_words, cfg.max_words + 1))
            words = [vocab[k] for k in rng.integers(0, len(vocab), size=length)]
            text, spoken = make_sentence(words, cfg.lang)
            spk = spks[int(order[i])]
            utts.append(Utterance(f"{spk.id}_{split}{i:05d}", split, spk, text, spoken,
                                  noise_seed=int(rng.integers(0, 2**31))))
        plan[split] = utts
    return plan


# ----------------------------------------------------------------------------- audio


def check_espeak() -> str:
    """Path of espeak-ng, or :class:`EspeakNotFoundError` saying how to install it."""
    path = shutil.which(ESPEAK)
    if path is None:
        raise EspeakNotFoundError(
            f"{ESPEAK} not found on PATH ({os.environ.get('PATH', '')}); synthetic corpora need it: "
            f"apt-get install espeak-ng (macOS: brew install espeak-ng)")
    return path


def available_variants() -> set[str]:
    """Variant names installed with espeak-ng (``espeak-ng --voices=variant``)."""
    out = subprocess.run([check_espeak(), "--voices=variant"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split("!v/", 1)[1].split()[0] for line in out.splitlines() if "!v/" in line}


def run_espeak(text: str, speaker: Speaker) -> tuple[np.ndarray, int]:
    """Speak ``text``; returns (float32 samples (T,), sampling rate), 22.05 kHz for espeak-ng."""
    cmd = [check_espeak(), "-b", "1", *speaker.espeak_args(), "--stdout", text]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode < 0:
        # espeak-ng crashes (a signal) on some text with some voice variants (vi+robosoft5, ...): say it
        # with the plain voice, same pitch and rate, so the corpus stays complete and deterministic
        logger.warning("espeak-ng crashed (signal %d) with voice %s+%s on %r; using voice %s for it",
                    -proc.returncode, speaker.voice, speaker.variant, text, speaker.voice)
        cmd = [check_espeak(), "-b", "1", *speaker.espeak_args(with_variant=False), "--stdout", text]
        proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"espeak-ng failed (exit {proc.returncode}) for speaker {speaker.id}: "
                           f"{' '.join(cmd)}: {proc.stderr.decode(errors='replace').strip()}; "
                           f"check the voice with 'espeak-ng --voices'")
    samples, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    return samples, sr


@lru_cache(maxsize=8)
def _resampler(orig: int, new: int):
    from lhotse.augmentation.resample import Resample  # torch, no torchaudio

    return Resample(orig, new)


def resample(samples: np.ndarray, orig: int, new: int = SAMPLING_RATE) -> np.ndarray:
    """Band-limited resampling (sinc, Hann window) of a 1-D float signal."""
    if orig == new:
        return samples
    with torch.no_grad():
        out = _resampler(orig, new)(torch.from_numpy(np.ascontiguousarray(samples))[None])
    return out[0].numpy()


def make_noise(num_samples: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise: white (flat), pink (1/f power) or brown (1/f^2 power)."""
    white = rng.standard_normal(num_samples)
    if kind == "white" or num_samples < 4:
        noise = white
    else:
        spec = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(num_samples)
        freqs[0] = freqs[1]
        spec /= freqs ** (0.5 if kind == "pink" else 1.0)
        noise = np.fft.irfft(spec, n=num_samples)
        noise -= noise.mean()
    return (noise / np.sqrt(np.mean(noise**2) + 1e-20)).astype(np.float32)


def add_noise(samples: np.ndarray, snr_db: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``samples + noise`` with 10*log10(P_signal / P_noise) = ``snr_db`` over the whole utterance.

    If the sum would clip, the mixture is scaled down (the SNR is unchanged).
    """
    if kind == "mixed":
        kind = ("white", "pink", "brown")[int(rng.integers(0, 3))]
    power = float(np.mean(samples.astype(np.float64) ** 2))
    noise = make_noise(len(samples), kind, rng) * np.sqrt(power / 10 ** (snr_db / 10))
    mixed = samples + noise
    peak = float(np.abs(mixed).max(initial=0.0))
    if peak > 0.99:
        mixed *= 0.99 / peak
    return mixed.astype(np.float32)


def synthesize_utterance(utt: Utterance, cfg: SynthConfig, path: Path) -> int:
    """Speak, resample to 16 kHz, add noise, write ``path``; returns the number of samples."""
    samples, sr = run_espeak(utt.spoken, utt.speaker)
    samples = resample(samples, sr, SAMPLING_RATE)
    if cfg.snr_db is not None:
        rng = np.random.default_rng([cfg.seed, 3, utt.noise_seed])
        snr = cfg.snr_db
        if isinstance(snr, tuple):
            snr = float(rng.uniform(snr[0], snr[1]))
        samples = add_noise(samples, snr, cfg.noise_type, rng)
    if cfg.noise_floor_db is not None:
        rng = np.random.default_rng([cfg.seed, 4, utt.noise_seed])
        samples = samples + 10 ** (cfg.noise_floor_db / 20) * rng.standard_normal(len(samples))
    samples = np.clip(samples, -1.0, 1.0)
    sf.write(str(path), samples, SAMPLING_RATE, subtype="PCM_16")
    return len(samples)


# ----------------------------------------------------------------------------- manifests


def manifest_paths(out_dir: str | Path, lang: str, split: str) -> dict[str, Path]:
    mdir = Path(out_dir) / "manifests"
    return {kind: mdir / f"synth-{lang}_{kind}_{split}.jsonl.gz"
            for kind in ("recordings", "supervisions", "cuts")}


def _params_path(out_dir: Path, lang: str) -> Path:
    return out_dir / "manifests" / f"synth-{lang}_params.json"


def _params(cfg: SynthConfig) -> dict:
    d = asdict(cfg)
    d["snr_db"] = list(cfg.snr_db) if isinstance(cfg.snr_db, tuple) else cfg.snr_db
    return d


def _load_existing(out_dir: Path, cfg: SynthConfig):
    """The CutSets if a previous run with the same parameters finished, else None."""
    if not all(manifest_paths(out_dir, cfg.lang, s)["cuts"].is_file() for s in cfg.num_utts):
        return None
    ppath = _params_path(out_dir, cfg.lang)
    if ppath.is_file():
        old = json.loads(ppath.read_text(encoding="utf-8"))
        if old != _params(cfg):
            raise ValueError(f"synth: {out_dir} already holds a synth-{cfg.lang} corpus made with "
                             f"other parameters ({ppath}: {old}); pass overwrite=True "
                             f"(--overwrite) to replace it, or choose another out_dir")
    logger.info("synth-%s manifests exist in %s; skipping (overwrite=True to redo)", cfg.lang, out_dir)
    return {s: CutSet.from_file(manifest_paths(out_dir, cfg.lang, s)["cuts"]) for s in cfg.num_utts}


def _synthesize_all(jobs: list[tuple[Utterance, Path]], cfg: SynthConfig, num_jobs: int) -> dict[str, int]:
    """Run the jobs on ``num_jobs`` threads (each drives one espeak-ng process); utt id -> samples."""
    # Each job resamples one short signal: torch's intra-op threads only contend with the
    # espeak-ng processes (10x slower on 2 busy cores), so use one per job while we run.
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=max(1, num_jobs)) as pool:
            futures = [pool.submit(synthesize_utterance, u, cfg, p) for u, p in jobs]
            bar = tqdm(futures, desc=f"synth-{cfg.lang}", unit="utt", disable=not jobs)
            return {u.id: f.result() for (u, _), f in zip(jobs, bar)}
    finally:
        torch.set_num_threads(torch_threads)


def _write_manifests(out_dir: Path, cfg: SynthConfig, split: str, utts: list[Utterance],
                     lengths: dict[str, int], paths: dict[str, Path]) -> CutSet:
    """Write the recordings, supervisions and cuts of one split; returns the cuts."""
    recs, sups = [], []
    for u in utts:
        n = lengths[u.id]
        dur = n / SAMPLING_RATE
        recs.append(Recording(id=u.id, sampling_rate=SAMPLING_RATE, num_samples=n, duration=dur,
                              sources=[AudioSource(type="file", channels=[0], source=str(paths[u.id]))]))
        custom = {"pinyin": u.spoken} if cfg.lang == "zh" else None
        sups.append(SupervisionSegment(id=u.id, recording_id=u.id, start=0.0, duration=dur,
                                       channel=0, text=u.text, language=cfg.lang,
                                       speaker=u.speaker.id, custom=custom))
    recordings, supervisions = RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups)
    if utts:  # lhotse's validator fails on empty sets
        validate_recordings_and_supervisions(recordings, supervisions)
    mp = manifest_paths(out_dir, cfg.lang, split)
    recordings.to_file(mp["recordings"])
    supervisions.to_file(mp["supervisions"])
    # One supervision per recording: the cut id is the utterance id (lhotse would append -<n>).
    cuts = CutSet.from_cuts(c.with_id(c.recording_id)
                            for c in CutSet.from_manifests(recordings=recordings, supervisions=supervisions))
    cuts.to_file(mp["cuts"])
    minutes = sum(lengths[u.id] for u in utts) / SAMPLING_RATE / 60
    logger.info("synth-%s %s: %d utterances, %d speakers, %.1f min", cfg.lang, split,
                len(utts), cfg.num_speakers[split], minutes)
    return cuts


def synthesize_corpus(
    out_dir: str | Path,
    lang: str = "en",
    num_utts: Mapping[str, int] | None = None,
    num_speakers: Mapping[str, int] | None = None,
    seed: int = 0,
    snr_db: float | tuple[float, float] | None = None,
    noise_type: str = "white",
    noise_floor_db: float | None = -60.0,
    min_words: int = 3,
    max_words: int = 15,
    vocab_size: int | None = None,
    num_jobs: int = 2,
    overwrite: bool = False,
) -> dict[str, CutSet]:
    """Synthesise a corpus and return ``{split: CutSet}``.

    ``num_utts``/``num_speakers``: per split (default train 2000/40, dev 100/5, test 200/10).
    ``snr_db``: None for clean audio, a number, or a (low, high) range drawn per utterance.
    ``noise_floor_db``: a faint white noise floor (dBFS RMS) added to every utterance; None: off.
    Skips the work if the manifests exist with the same parameters, unless ``overwrite``.
    """
    sizes = {k: dict(v) for k, v in (("num_utts", num_utts), ("num_speakers", num_speakers)) if v is not None}
    cfg = SynthConfig(lang=lang, seed=seed, snr_db=snr_db, noise_type=noise_type, noise_floor_db=noise_floor_db,
                      min_words=min_words, max_words=max_words, vocab_size=vocab_size, **sizes)
    out_dir = Path(out_dir)
    if not overwrite:
        existing = _load_existing(out_dir, cfg)
        if existing is not None:
            return existing

    check_espeak()
    installed = available_variants()
    variants = [v for v in VARIANTS if v in installed]
    if len(variants) < len(VARIANTS):
        logger.warning("espeak-ng lacks variants %s; speakers will differ from other machines",
                       sorted(set(VARIANTS) - installed))
    if not variants:
        raise RuntimeError("espeak-ng has none of the voice variants asrkit uses; "
                           "reinstall it: apt-get install --reinstall espeak-ng-data")
    plan = plan_corpus(cfg, variants)

    (out_dir / "manifests").mkdir(parents=True, exist_ok=True)
    _params_path(out_dir, cfg.lang).unlink(missing_ok=True)
    for old in (out_dir / "manifests").glob(f"synth-{cfg.lang}_*_*.jsonl.gz"):
        old.unlink()  # an interrupted run must not leave manifests of the previous one behind
    jobs = []
    for split, utts in plan.items():
        wav_dir = out_dir / "wav" / split
        wav_dir.mkdir(parents=True, exist_ok=True)
        for old in wav_dir.glob(f"{cfg.lang}-spk*.wav"):
            old.unlink()
        jobs += [(u, wav_dir / f"{u.id}.wav") for u in utts]

    lengths = _synthesize_all(jobs, cfg, num_jobs)
    cuts = {}
    for split, utts in plan.items():
        cuts[split] = _write_manifests(out_dir, cfg, split, utts, lengths,
                                       {u.id: p for u, p in jobs})

    speakers = make_speakers(cfg, variants)
    spk_json = {sp.id: {"split": split, **asdict(sp)} for split, sps in speakers.items() for sp in sps}
    (out_dir / "manifests" / f"synth-{cfg.lang}_speakers.json").write_text(
        json.dumps(spk_json, indent=1, ensure_ascii=False), encoding="utf-8")
    _params_path(out_dir, cfg.lang).write_text(json.dumps(_params(cfg), indent=1), encoding="utf-8")
    return cuts
