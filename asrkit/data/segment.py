"""Unlabelled long recordings -> 1-20 s speech segments by voice activity detection -> CutSet and lhotse Shar.

    from asrkit.data.segment import SegmentConfig, segment_audio_dir
    cuts = segment_audio_dir("/data/vi_podcasts", "data/unlabelled", SegmentConfig(min_dur=1, max_dur=20),
                             shar=True, shard_size=1000)

Command line: ``asrkit segment --audio-dir /data/vi_podcasts --out-dir data/unlabelled --shar``.

Every soundfile-readable file under the folder is one recording (its first channel; the manifest
resamples to 16 kHz). Silero VAD (the ``silero-vad`` package ships its TorchScript model: offline,
no torchaudio) reads it block by block at 16 kHz; its speech regions are merged across pauses of
at most ``max_gap`` s into pieces of at most ``max_dur`` s (silero cuts a longer region at a
pause where it finds one; what is still too long is cut evenly), and pieces under ``min_dur`` s
are dropped. Out::

    out/vad.jsonl          one line per recording: id, path, duration, speech regions (the resume log)
    out/cuts.jsonl.gz      the segment cuts (no supervisions): <rec>_<start cs>_<end cs>
    out/shar/              with shar: cuts.000000.jsonl.gz + recording.000000.tar (flac), ...
    out/segment_params.json

It resumes: recordings already in ``vad.jsonl`` are not read again, and a Shar shard whose cut ids
are the expected ones is kept. Rerunning on a folder that gained files segments only the new ones
(shards after the first changed one are rewritten).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np
import soundfile as sf
import torch
from lhotse import CutSet, MonoCut, Recording
from lhotse.serialization import load_jsonl
from tqdm import tqdm

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW = 512  # silero's frame at 16 kHz (32 ms)
BLOCK_SECONDS = 60  # audio read, resampled and scored per block: memory stays flat for hour-long files
Region = Tuple[float, float]


@dataclass(frozen=True)
class SegmentConfig:
    min_dur: float = 1.0  # pieces shorter than this are dropped (s)
    max_dur: float = 20.0  # no piece is longer (s)
    max_gap: float = 1.0  # speech regions this close are joined into one piece (s)
    threshold: float = 0.5  # silero speech probability
    min_speech: float = 0.25  # silero drops speech regions shorter than this (s)
    min_silence: float = 0.1  # a pause must last this long to end a region (s)
    pad: float = 0.03  # each region is widened by this much on both sides (s)

    def __post_init__(self) -> None:
        if not 0 < self.min_dur <= self.max_dur:
            raise ValueError(f"segment: need 0 < min_dur <= max_dur, got {self.min_dur}, {self.max_dur}")
        if self.max_gap < 0 or not 0 < self.threshold < 1:
            raise ValueError(f"segment: need max_gap >= 0 and 0 < threshold < 1, got {self.max_gap}, {self.threshold}")


# ------------------------------------------------------------------------------------------- recordings

def audio_suffixes() -> set:
    """File name endings soundfile (libsndfile) reads here: .wav, .flac, .ogg/.opus, .mp3 (libsndfile >= 1.1), ..."""
    out = {f".{fmt.lower()}" for fmt in sf.available_formats()}
    out |= {".aif", ".oga", ".opus", ".wave"} if ".ogg" in out else {".aif", ".wave"}
    return out


def find_recordings(audio_dir: Path | str) -> List[Tuple[str, Path]]:
    """``(recording id, path)`` of every audio file under ``audio_dir``, sorted; ids are relative paths
    without the suffix, ``/`` and spaces turned into ``_`` (``show1/ep 2.mp3`` -> ``show1_ep_2``)."""
    audio_dir = Path(audio_dir)
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"segment: audio dir {audio_dir} does not exist")
    suffixes = audio_suffixes()
    found: Dict[str, Path] = {}
    for path in sorted(p for p in audio_dir.rglob("*") if p.suffix.lower() in suffixes and p.is_file()):
        rec_id = re.sub(r"[\s/\\]+", "_", path.relative_to(audio_dir).with_suffix("").as_posix())
        if rec_id in found:
            raise ValueError(f"segment: {found[rec_id]} and {path} would both be recording {rec_id!r}; "
                             "rename one of them")
        found[rec_id] = path
    if not found:
        raise FileNotFoundError(f"segment: no audio file ({', '.join(sorted(suffixes))}) under {audio_dir}")
    return sorted(found.items())


def read_blocks_16k(path: Path, block_seconds: float = BLOCK_SECONDS) -> Iterable[np.ndarray]:
    """First channel of ``path`` at 16 kHz, block by block (each block resampled on its own: the seams
    are a few samples of filter edge, which VAD does not notice)."""
    from asrkit.data.synth import resample

    info = sf.info(str(path))
    block = max(WINDOW, int(block_seconds * info.samplerate))
    for chunk in sf.blocks(str(path), blocksize=block, dtype="float32", always_2d=True):
        yield resample(np.ascontiguousarray(chunk[:, 0]), info.samplerate, SAMPLE_RATE)


# ------------------------------------------------------------------------------------------------- VAD

_MODEL = None


def load_vad():
    """Silero VAD's TorchScript model from the installed ``silero-vad`` package (no download)."""
    global _MODEL
    if _MODEL is None:
        threads = torch.get_num_threads()
        try:
            from silero_vad import load_silero_vad
        except ImportError as e:
            raise ImportError("asrkit segment needs the silero-vad package: pip install silero-vad") from e
        finally:
            torch.set_num_threads(threads)  # importing silero_vad sets torch to one thread for the process
        _MODEL = load_silero_vad(onnx=False)
    return _MODEL


@torch.no_grad()
def speech_probs(blocks: Iterable[np.ndarray]) -> Tuple[List[float], int]:
    """Silero's speech probability per 32 ms window of a 16 kHz stream, and the stream's length in samples."""
    model = load_vad()
    model.reset_states()
    probs: List[float] = []
    rest = np.zeros(0, dtype=np.float32)
    total = 0
    for block in blocks:
        total += len(block)
        buf = np.concatenate([rest, block.astype(np.float32)])
        n = len(buf) // WINDOW * WINDOW
        for i in range(0, n, WINDOW):
            probs.append(float(model(torch.from_numpy(buf[i:i + WINDOW]), SAMPLE_RATE)))
        rest = buf[n:]
    if len(rest):
        probs.append(float(model(torch.from_numpy(np.pad(rest, (0, WINDOW - len(rest)))), SAMPLE_RATE)))
    return probs, total


def speech_regions(path: Path, cfg: SegmentConfig) -> Tuple[List[Region], float]:
    """(speech regions in seconds, duration in seconds) of the first channel of ``path``."""
    from silero_vad import get_speech_timestamps_from_probs

    load_vad()
    probs, total = speech_probs(read_blocks_16k(path))
    stamps = get_speech_timestamps_from_probs(
        probs, sampling_rate=SAMPLE_RATE, threshold=cfg.threshold, min_speech_duration_ms=int(cfg.min_speech * 1000),
        max_speech_duration_s=cfg.max_dur, min_silence_duration_ms=int(cfg.min_silence * 1000),
        speech_pad_ms=int(cfg.pad * 1000), audio_length_samples=total)
    return [(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps], total / SAMPLE_RATE


def join_regions(regions: Sequence[Region], cfg: SegmentConfig) -> List[Region]:
    """Split regions longer than ``max_dur`` evenly, then join neighbours across pauses <= ``max_gap``
    while the joined piece stays <= ``max_dur``."""
    split: List[Region] = []
    for s, e in regions:
        n = max(1, math.ceil((e - s) / cfg.max_dur - 1e-9))
        split += [(s + (e - s) * k / n, s + (e - s) * (k + 1) / n) for k in range(n)]
    pieces: List[Region] = []
    for s, e in split:
        if pieces and s - pieces[-1][1] <= cfg.max_gap and e - pieces[-1][0] <= cfg.max_dur:
            pieces[-1] = (pieces[-1][0], e)
        else:
            pieces.append((s, e))
    return pieces


def make_pieces(regions: Sequence[Region], cfg: SegmentConfig) -> List[Region]:
    """:func:`join_regions`, less the pieces shorter than ``min_dur`` (a cough, a click)."""
    return [(s, e) for s, e in join_regions(regions, cfg) if e - s >= cfg.min_dur]


def _vad_job(args: Tuple[str, str, dict]) -> dict:
    rec_id, path, cfg = args
    torch.set_num_threads(1)
    try:
        regions, duration = speech_regions(Path(path), SegmentConfig(**cfg))
    except (RuntimeError, sf.LibsndfileError) as e:
        return {"id": rec_id, "path": path, "error": f"{type(e).__name__}: {e}"}
    return {"id": rec_id, "path": path, "duration": round(duration, 4), "regions": [[round(s, 3), round(e, 3)]
                                                                                      for s, e in regions]}


# --------------------------------------------------------------------------------------------- outputs

def _cut(rec: Recording, start: float, end: float) -> MonoCut:
    return MonoCut(id=f"{rec.id}_{round(start * 100):07d}_{round(end * 100):07d}", start=start,
                   duration=round(end - start, 6), channel=0, recording=rec)


def _recording(rec_id: str, path: Path) -> Recording:
    rec = Recording.from_file(path, recording_id=rec_id)
    return rec if rec.sampling_rate == SAMPLE_RATE else rec.resample(SAMPLE_RATE)


def write_shar(cuts: CutSet, shar_dir: Path, shard_size: int) -> List[Path]:
    """``shar_dir/{cuts,recording}.<n>.*`` (flac audio, 16 kHz), ``shard_size`` cuts per shard.

    A shard whose cut manifest lists exactly the expected ids is kept, so an interrupted run goes on
    where it stopped; a shard is written in a scratch folder and moved into place whole.
    """
    from lhotse.shar import SharWriter

    shar_dir.mkdir(parents=True, exist_ok=True)
    cut_list = list(cuts)
    shards = [cut_list[i:i + shard_size] for i in range(0, len(cut_list), shard_size)]
    for stale in shar_dir.glob("*.*.*"):  # shards beyond the new count (the folder lost files)
        m = re.match(r"^(cuts|recording)\.(\d{6})\.", stale.name)
        if m and int(m.group(2)) >= len(shards):
            stale.unlink()
    written = 0
    for n, shard in enumerate(tqdm(shards, desc="shar shards", unit="shard")):
        cuts_path, audio_path = shar_dir / f"cuts.{n:06d}.jsonl.gz", shar_dir / f"recording.{n:06d}.tar"
        if cuts_path.is_file() and audio_path.is_file():
            if [d["id"] for d in load_jsonl(cuts_path)] == [c.id for c in shard]:
                continue
        tmp = shar_dir / f".writing-{n:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        with SharWriter(tmp, fields={"recording": "flac"}, shard_size=len(shard), shard_offset=n) as writer:
            for cut in shard:
                writer.write(cut)
        os.replace(tmp / audio_path.name, audio_path)
        os.replace(tmp / cuts_path.name, cuts_path)  # last: its presence marks the shard done
        shutil.rmtree(tmp)
        written += 1
    log.info("shar: %d shard(s) in %s (%d written, %d kept)", len(shards), shar_dir, written, len(shards) - written)
    return [shar_dir / f"cuts.{n:06d}.jsonl.gz" for n in range(len(shards))]


def _check_params(out_dir: Path, cfg: SegmentConfig) -> None:
    """A resumed run must segment as the first did: refuse other VAD settings over an existing log."""
    path = out_dir / "segment_params.json"
    if path.is_file() and (out_dir / "vad.jsonl").is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != asdict(cfg):
            diff = {k: (old.get(k), v) for k, v in asdict(cfg).items() if old.get(k) != v}
            raise ValueError(f"segment: {out_dir} was segmented with other settings ({diff}: old, new); "
                             "use a new --out-dir, or delete its vad.jsonl to redo the VAD")
    path.write_text(json.dumps(asdict(cfg), indent=1), encoding="utf-8")


def _read_log(path: Path) -> Dict[str, dict]:
    """Finished recordings of an earlier run; a line cut short by an interruption is ignored."""
    done = {}
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                done[entry["id"]] = entry
    return done


def segment_audio_dir(audio_dir: Path | str, out_dir: Path | str, cfg: SegmentConfig = SegmentConfig(),
                      shar: bool = False, shard_size: int = 1000, num_jobs: int = 1) -> CutSet:
    """VAD-segment every recording under ``audio_dir``; write ``out_dir/cuts.jsonl.gz`` (and Shar); return the cuts."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_params(out_dir, cfg)
    recordings = find_recordings(audio_dir)
    log_path = out_dir / "vad.jsonl"
    done = _read_log(log_path)
    todo = [(rid, str(p), asdict(cfg)) for rid, p in recordings
            if rid not in done or done[rid]["path"] != str(p) or "error" in done[rid]]
    log.info("segment: %d recording(s) under %s, %d already done", len(recordings), audio_dir, len(recordings) - len(todo))
    if todo:
        with open(log_path, "a", encoding="utf-8") as f:
            bar = tqdm(total=len(todo), desc="VAD", unit="rec")
            if num_jobs > 1:
                ex = ProcessPoolExecutor(num_jobs, mp_context=get_context("spawn"))
                results = ex.map(_vad_job, todo)
            else:
                ex, results = None, map(_vad_job, todo)
            try:
                for entry in results:
                    f.write(json.dumps(entry, ensure_ascii=False) + "\n")
                    f.flush()
                    done[entry["id"]] = entry
                    bar.update(1)
                    bar.set_postfix(hours=f"{sum(d.get('duration', 0) for d in done.values()) / 3600:.2f}")
            finally:
                bar.close()
                if ex is not None:
                    ex.shutdown(cancel_futures=True)
    cuts, failed, dropped = [], [], 0
    for rid, path in recordings:
        entry = done[rid]
        if "error" in entry:
            failed.append(f"{path} ({entry['error']})")
            continue
        joined = join_regions([tuple(r) for r in entry["regions"]], cfg)
        pieces = [(s, e) for s, e in joined if e - s >= cfg.min_dur]
        dropped += len(joined) - len(pieces)
        if pieces:
            rec = _recording(rid, path)
            cuts += [_cut(rec, s, min(e, rec.duration)) for s, e in pieces]
    if failed:
        log.warning("segment: %d file(s) could not be read and were skipped: %s", len(failed), "; ".join(failed[:3]))
    cutset = CutSet.from_cuts(cuts)
    tmp = out_dir / "cuts.tmp.jsonl.gz"
    cutset.to_file(tmp)
    os.replace(tmp, out_dir / "cuts.jsonl.gz")
    total = sum(done[rid].get("duration", 0) for rid, _ in recordings)
    log.info("segment: %d segments, %.2f h of %.2f h audio (%d piece(s) under %.1f s dropped)",
             len(cutset), sum(c.duration for c in cutset) / 3600, total / 3600, dropped, cfg.min_dur)
    if shar:
        write_shar(cutset, out_dir / "shar", shard_size)
    return cutset
