"""Real corpora from the user's local copy: lhotse.recipes manifests -> normalised cut manifests.

    from asrkit.data.corpora import prepare_corpus
    cuts = prepare_corpus("aishell", "/data/aishell", "data/manifests")      # {split: CutSet}

Command line: ``asrkit prepare aishell --corpus-dir /data/aishell --out-dir data/manifests``.

Each corpus is a :class:`Corpus` in :data:`CORPORA`: its language, its splits and a ``load``
function that checks the copy's layout (clear errors before lhotse meets a half-extracted tree)
and runs its ``lhotse.recipes`` preparation. What every corpus then shares is :func:`to_cuts`:
transcripts go through :func:`asrkit.text.normalize.normalize`, utterances left with no text are
logged and dropped, and ``<out_dir>/<name>_{recordings,supervisions,cuts}_<split>.jsonl.gz`` are
written, sorted by id, with one cut per recording whose id is the utterance id. Nothing downloads:
corpora are licensed and large, so the user fetches them once and points ``--corpus-dir`` at them.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from lhotse import CutSet, RecordingSet, SupervisionSet

from asrkit.text.normalize import normalize

log = logging.getLogger(__name__)

Manifests = Dict[str, Tuple[RecordingSet, SupervisionSet]]  # split -> (recordings, supervisions)


class CorpusError(ValueError):
    """The corpus copy is not laid out as its lhotse recipe expects; the message says how to fix it."""


@dataclass(frozen=True)
class Corpus:
    name: str  # manifest prefix, e.g. "aishell"
    lang: str  # normalisation language (asrkit.text.normalize)
    splits: Tuple[str, ...]
    # (corpus_dir, num_jobs, options) -> per-split lhotse manifests; raises CorpusError on a bad tree
    load: Callable[..., Manifests]
    # transcript normalisation on top of normalize(text, lang), e.g. dropping spaces for characters
    post_normalize: Optional[Callable[[str], str]] = None
    url: str = ""


def manifest_path(out_dir: Path | str, name: str, kind: str, split: str) -> Path:
    """``<out_dir>/<name>_<kind>_<split>.jsonl.gz``, kind one of recordings, supervisions, cuts."""
    return Path(out_dir) / f"{name}_{kind}_{split}.jsonl.gz"


def _examples(ids: Sequence[str], n: int = 3) -> str:
    return ", ".join(list(ids)[:n]) + (", ..." if len(ids) > n else "")


def to_cuts(recordings: RecordingSet, supervisions: SupervisionSet, corpus: Corpus, split: str,
            out_dir: Path | str) -> CutSet:
    """Normalise, drop empty transcripts (logged), write the split's three manifests; return the cuts.

    Only single-supervision recordings (read speech) are handled here; the cut id is the recording id.
    """
    kept, empty = [], []
    for sup in supervisions:
        text = normalize(sup.text or "", corpus.lang)
        if corpus.post_normalize is not None:
            text = corpus.post_normalize(text)
        if text:
            kept.append(replace(sup, text=text))
        else:
            empty.append(sup.id)
    if empty:
        log.warning("%s %s: skipped %d utterance(s) whose transcript is empty after normalisation: %s",
                    corpus.name, split, len(empty), _examples(sorted(empty)))
    kept.sort(key=lambda s: s.id)
    used = {s.recording_id for s in kept}
    recs = RecordingSet.from_recordings(sorted((r for r in recordings if r.id in used), key=lambda r: r.id))
    sups = SupervisionSet.from_segments(kept)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recs.to_file(manifest_path(out_dir, corpus.name, "recordings", split))
    sups.to_file(manifest_path(out_dir, corpus.name, "supervisions", split))
    # lhotse names a cut <recording>-<n>; with one supervision per recording the utterance id is clearer.
    cuts = CutSet.from_manifests(recordings=recs, supervisions=sups)
    cuts = CutSet.from_cuts(c.with_id(c.recording_id) for c in cuts)
    cuts.to_file(manifest_path(out_dir, corpus.name, "cuts", split))
    hours = sum(r.duration for r in recs) / 3600
    speakers = len({s.speaker for s in kept})
    log.info("%s %s: %d cuts, %.2f h, %d speakers (%d dropped for empty text)",
             corpus.name, split, len(cuts), hours, speakers, len(empty))
    return cuts


def prepare_corpus(name: str, corpus_dir: Path | str, out_dir: Path | str, num_jobs: int = 1,
                   overwrite: bool = False, **options) -> Dict[str, CutSet]:
    """Prepare corpus ``name`` from ``corpus_dir`` into ``out_dir``; return ``{split: CutSet}``.

    Skips the work when every split's cut manifest exists, unless ``overwrite``. ``options`` are
    corpus-specific (aishell: ``extract=True`` unpacks the per-speaker tarballs in place).
    """
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; supported: {', '.join(sorted(CORPORA))}")
    corpus = CORPORA[name]
    paths = {split: manifest_path(out_dir, name, "cuts", split) for split in corpus.splits}
    if not overwrite and all(p.is_file() for p in paths.values()):
        log.info("%s cut manifests exist in %s; skipping (--overwrite to redo)", name, out_dir)
        return {split: CutSet.from_file(p) for split, p in paths.items()}
    manifests = corpus.load(Path(corpus_dir), num_jobs=num_jobs, **options)
    return {split: to_cuts(recs, sups, corpus, split, out_dir) for split, (recs, sups) in manifests.items()}


# ------------------------------------------------------------------------------------------ AISHELL-1

AISHELL_SPLITS = ("train", "dev", "test")
AISHELL_TRANSCRIPT = Path("transcript") / "aishell_transcript_v0.8.txt"
_WAV_HEADER_BYTES = 44  # a wav file this short holds no audio (an interrupted copy or extraction)


def aishell_root(corpus_dir: Path) -> Path:
    """The folder that holds ``data_aishell`` (what lhotse wants); ``corpus_dir`` may be either."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise CorpusError(f"aishell: corpus dir {corpus_dir} does not exist; point --corpus-dir at your "
                          "AISHELL-1 copy (the folder with data_aishell/, from https://www.openslr.org/33)")
    if corpus_dir.name == "data_aishell" and not (corpus_dir / "data_aishell").is_dir():
        return corpus_dir.parent
    if (corpus_dir / "data_aishell").is_dir():
        return corpus_dir
    if (corpus_dir / "data_aishell.tgz").is_file():
        raise CorpusError(f"aishell: {corpus_dir}/data_aishell.tgz is not extracted; run "
                          f"`tar xzf data_aishell.tgz` in {corpus_dir}, then rerun")
    raise CorpusError(f"aishell: no data_aishell/ in {corpus_dir}; point --corpus-dir at the folder that "
                      "holds data_aishell/ (with wav/ and transcript/ inside)")


def unextracted_tarballs(wav_dir: Path) -> List[Path]:
    """The ``wav/<SPK>.tar.gz`` files (as AISHELL-1 ships) whose speaker folder is in no split yet."""
    out = []
    for tarball in sorted(wav_dir.glob("*.tar.gz")):
        spk = tarball.name[: -len(".tar.gz")]
        if not any((wav_dir / split / spk).is_dir() for split in AISHELL_SPLITS):
            out.append(tarball)
    return out


def extract_speaker_tarball(tarball: Path) -> None:
    """Unpack ``wav/<SPK>.tar.gz`` (members ``<split>/<SPK>/*.wav``) next to it.

    It is unpacked into a hidden folder first and moved into place whole, so an interrupted
    extraction never leaves a half-filled speaker folder that would pass for a finished one.
    """
    from lhotse.utils import safe_extract  # refuses members that would land outside the target

    wav_dir = tarball.parent
    tmp = wav_dir / f".extracting-{tarball.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with tarfile.open(tarball) as tar:
            safe_extract(tar, tmp)
        for split_dir in sorted(p for p in tmp.iterdir() if p.is_dir()):
            for spk_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                dest = wav_dir / split_dir.name / spk_dir.name
                if dest.exists():
                    raise CorpusError(f"aishell: {dest} exists and {tarball} holds it too; remove one")
                dest.parent.mkdir(exist_ok=True)
                spk_dir.rename(dest)
    except (tarfile.TarError, OSError) as e:
        raise CorpusError(f"aishell: cannot extract {tarball} ({type(e).__name__}: {e}); "
                          "the file may be truncated: fetch it again") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_aishell_transcript(path: Path) -> Dict[str, str]:
    """``utt_id -> text`` (words still separated by spaces), with line numbers in errors."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                # lhotse's reader fails with a bare IndexError on such a line
                raise CorpusError(f"aishell: {path} line {n} is blank; remove it and rerun")
            out[fields[0]] = " ".join(fields[1:])
    return out


def check_aishell_tree(root: Path, extract: bool = False, num_jobs: int = 1) -> Dict[str, List[Path]]:
    """Raise :class:`CorpusError` unless ``root/data_aishell`` is ready for lhotse; return split -> wavs.

    With ``extract``, per-speaker tarballs that are not unpacked yet are unpacked in place first
    (``num_jobs`` at a time).
    """
    data = root / "data_aishell"
    transcript, wav_dir = data / AISHELL_TRANSCRIPT, data / "wav"
    if not transcript.is_file():
        raise CorpusError(f"aishell: transcript file {transcript} is missing; it ships in data_aishell.tgz "
                          "(data_aishell/transcript/aishell_transcript_v0.8.txt): extract it again")
    if not wav_dir.is_dir():
        raise CorpusError(f"aishell: audio folder {wav_dir} is missing; it ships in data_aishell.tgz "
                          "(data_aishell/wav/): extract it again")
    pending = unextracted_tarballs(wav_dir)
    if pending and not extract:
        raise CorpusError(
            f"aishell: {len(pending)} speaker tarball(s) in {wav_dir} are not extracted "
            f"({_examples([p.name for p in pending])}); "
            f"AISHELL-1 ships its audio as one .tar.gz per speaker. Extract them with "
            f"`cd {wav_dir} && for f in *.tar.gz; do tar xzf \"$f\"; done`, or rerun with --extract")
    if pending:
        log.info("aishell: extracting %d speaker tarballs in %s", len(pending), wav_dir)
        with ThreadPoolExecutor(max(1, num_jobs)) as ex:
            list(ex.map(extract_speaker_tarball, pending))
    wavs = {split: sorted((wav_dir / split).rglob("*.wav")) for split in AISHELL_SPLITS}
    missing = [split for split, files in wavs.items() if not files]
    if missing:
        raise CorpusError(f"aishell: no wav files under {', '.join(str(wav_dir / s) for s in missing)}; "
                          f"expected {wav_dir}/<split>/<speaker>/<utt>.wav for splits {', '.join(AISHELL_SPLITS)}")
    empty = [p for files in wavs.values() for p in files if p.stat().st_size <= _WAV_HEADER_BYTES]
    if empty:
        raise CorpusError(f"aishell: {len(empty)} wav file(s) hold no audio, e.g. "
                          f"{_examples([str(p) for p in empty])}; extract their speaker's tarball again, "
                          "or delete them to skip those utterances")
    return wavs


@contextmanager
def _quiet_lhotse_missing_transcripts() -> Iterator[None]:
    """lhotse logs two root-logger warnings per wav without a transcript; we log one summary instead."""
    def keep(record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("No transcript: ") or msg.endswith(" has no transcript."))

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def load_aishell(corpus_dir: Path, num_jobs: int = 1, extract: bool = False) -> Manifests:
    """AISHELL-1 (openslr 33) through ``lhotse.recipes.prepare_aishell``, after checking the tree.

    Logs what lhotse skips silently or noisily: transcript lines without audio, and wav files
    without a transcript line, as counts with examples.
    """
    from lhotse.recipes import prepare_aishell

    root = aishell_root(corpus_dir)
    wavs = check_aishell_tree(root, extract=extract, num_jobs=num_jobs)
    texts = read_aishell_transcript(root / "data_aishell" / AISHELL_TRANSCRIPT)
    have_audio = {p.stem for files in wavs.values() for p in files}
    no_audio = sorted(set(texts) - have_audio)
    if no_audio:
        log.warning("aishell: skipped %d transcript line(s) with no wav file in any split: %s",
                    len(no_audio), _examples(no_audio))
    for split, files in wavs.items():
        no_text = sorted(p.stem for p in files if p.stem not in texts)
        if no_text:
            log.warning("aishell %s: skipped %d wav file(s) with no transcript line: %s",
                        split, len(no_text), _examples(no_text))
    with _quiet_lhotse_missing_transcripts():
        manifests = prepare_aishell(root, output_dir=None)
    return {split: (m["recordings"], m["supervisions"]) for split, m in manifests.items()}


def _drop_spaces(text: str) -> str:
    """icefall's character recipes: AISHELL's word segmentation is not part of the target."""
    return text.replace(" ", "")


CORPORA: Mapping[str, Corpus] = {
    "aishell": Corpus("aishell", "zh", AISHELL_SPLITS, load_aishell, _drop_spaces, "https://www.openslr.org/33"),
}
