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

import csv
import logging
import shutil
from collections import Counter
import tarfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from lhotse import CutSet, RecordingSet, SupervisionSet
from lhotse.utils import fastcopy

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
    # (corpus_dir, out_dir, num_jobs, overwrite, options) -> {split: CutSet}: for corpora whose cuts are not
    # one per recording (meetings, mixtures) or whose splits are chosen by the user; it writes and skips alone
    prepare: Optional[Callable[..., Dict[str, CutSet]]] = None


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
    if corpus.prepare is not None:
        return corpus.prepare(Path(corpus_dir), Path(out_dir), num_jobs=num_jobs, overwrite=overwrite, **options)
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
    with _quiet_root_logger("No transcript: ", suffixes=(" has no transcript.",)):
        manifests = prepare_aishell(root, output_dir=None)
    return {split: (m["recordings"], m["supervisions"]) for split, m in manifests.items()}


def _drop_spaces(text: str) -> str:
    """icefall's character recipes: AISHELL's word segmentation is not part of the target."""
    return text.replace(" ", "")


# ---------------------------------------------------------------------------------------- LibriSpeech

LIBRISPEECH_PARTS = ("train-clean-100", "train-clean-360", "train-other-500",
                     "dev-clean", "dev-other", "test-clean", "test-other")


def librispeech_root(corpus_dir: Path) -> Path:
    """The ``LibriSpeech`` folder (holding ``train-clean-100/`` etc.); ``corpus_dir`` may be it or its parent."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise CorpusError(f"librispeech: corpus dir {corpus_dir} does not exist; point --corpus-dir at your "
                          "LibriSpeech copy (the folder with train-clean-100/, dev-clean/, ... from "
                          "https://www.openslr.org/12)")
    for root in (corpus_dir, corpus_dir / "LibriSpeech"):
        if any((root / part).is_dir() for part in LIBRISPEECH_PARTS):
            return root
    tarballs = sorted(p.name for p in corpus_dir.glob("*.tar.gz") if p.name[: -len(".tar.gz")] in LIBRISPEECH_PARTS)
    if tarballs:
        raise CorpusError(f"librispeech: {_examples(tarballs)} in {corpus_dir} not extracted; run "
                          f"`tar xzf <part>.tar.gz` in {corpus_dir} (it creates LibriSpeech/<part>/), then rerun")
    raise CorpusError(f"librispeech: no LibriSpeech part ({', '.join(LIBRISPEECH_PARTS)}) in {corpus_dir} "
                      "or its LibriSpeech/ folder")


def librispeech_parts(root: Path, parts: Optional[Sequence[str]] = None) -> List[str]:
    """``parts`` checked against the copy, or every part the copy has."""
    have = [p for p in LIBRISPEECH_PARTS if (root / p).is_dir()]
    if not parts:
        return have
    unknown = [p for p in parts if p not in LIBRISPEECH_PARTS]
    if unknown:
        raise CorpusError(f"librispeech: unknown part(s) {', '.join(unknown)}; choose from {', '.join(LIBRISPEECH_PARTS)}")
    missing = [p for p in parts if p not in have]
    if missing:
        raise CorpusError(f"librispeech: part(s) {', '.join(missing)} not in {root} (it has: {', '.join(have)}); "
                          f"extract <part>.tar.gz from https://www.openslr.org/12 there")
    return list(dict.fromkeys(parts))


def check_librispeech_part(part_dir: Path) -> None:
    """Raise unless ``part_dir`` has transcripts; log (as counts) lines without audio and audio without a line,
    which lhotse skips with one warning per file or silently."""
    transcripts = sorted(part_dir.rglob("*.trans.txt"))
    if not transcripts:
        raise CorpusError(f"librispeech: no <spk>-<chapter>.trans.txt under {part_dir}; expected "
                          f"{part_dir}/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac with a transcript per chapter")
    lines = set()
    for path in transcripts:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                fields = line.split(maxsplit=1)
                if len(fields) < 2:
                    raise CorpusError(f"librispeech: {path} line {n} has no transcript after the utterance id; "
                                      "fix or remove the line")
                lines.add(fields[0])
    flacs = {p.stem for p in part_dir.rglob("*.flac")}
    if not flacs:
        raise CorpusError(f"librispeech: no .flac files under {part_dir}; the part is not fully extracted")
    no_audio, no_text = sorted(lines - flacs), sorted(flacs - lines)
    if no_audio:
        log.warning("librispeech %s: skipped %d transcript line(s) with no flac file: %s",
                    part_dir.name, len(no_audio), _examples(no_audio))
    if no_text:
        log.warning("librispeech %s: skipped %d flac file(s) with no transcript line: %s",
                    part_dir.name, len(no_text), _examples(no_text))


@contextmanager
def _quiet_root_logger(*prefixes: str, suffixes: Tuple[str, ...] = ()) -> Iterator[None]:
    """Drop lhotse's per-file root-logger warnings starting with ``prefixes`` or ending with ``suffixes``
    (we log one summary with examples instead)."""
    def keep(record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith(prefixes) or msg.endswith(suffixes))

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def load_librispeech(corpus_dir: Path, num_jobs: int = 1, parts: Optional[Sequence[str]] = None) -> Manifests:
    """LibriSpeech (openslr 12) through ``lhotse.recipes.prepare_librispeech``: ``parts`` (default: all
    the copy has), after checking each part's tree."""
    from lhotse.recipes import prepare_librispeech

    root = librispeech_root(corpus_dir)
    parts = librispeech_parts(root, parts)
    for part in parts:
        check_librispeech_part(root / part)
    with _quiet_root_logger("No such file: "):
        manifests = prepare_librispeech(root, dataset_parts=parts, output_dir=None, num_jobs=num_jobs)
    return {part: (manifests[part]["recordings"], manifests[part]["supervisions"]) for part in parts}


def prepare_librispeech_cuts(corpus_dir: Path, out_dir: Path, num_jobs: int = 1, overwrite: bool = False,
                             parts: Optional[Sequence[str]] = None) -> Dict[str, CutSet]:
    """``librispeech_cuts_<part>.jsonl.gz`` for ``parts`` (default: every part of the copy); a part whose cut
    manifest exists is read back unless ``overwrite``. Cut ids are utterance ids (``103-1240-0000``),
    speakers LibriSpeech's (``103``), text upper case (``normalize(.., "en")``)."""
    corpus = CORPORA["librispeech"]
    root = librispeech_root(corpus_dir)
    parts = librispeech_parts(root, parts)
    out = {}
    for part in parts:
        path = manifest_path(out_dir, corpus.name, "cuts", part)
        if path.is_file() and not overwrite:
            log.info("librispeech %s: %s exists; skipping (--overwrite to redo)", part, path)
            out[part] = CutSet.from_file(path)
    todo = [p for p in parts if p not in out]
    if todo:
        for part, (recs, sups) in load_librispeech(root, num_jobs, todo).items():
            out[part] = to_cuts(recs, sups, corpus, part, out_dir)
    return {part: out[part] for part in parts}


# ----------------------------------------------------------------------------------- LibriMix + WHAM!

WHAM_SPLITS = ("tr", "cv", "tt")  # WHAM! noise folders: train, dev, test
LIBRIMIX_KINDS = ("clean", "noisy")  # LibriMix's mix_clean and mix_both (speech + WHAM! noise)
LIBRIMIX_COLUMNS = ("mixture_ID", "noise_path", "noise_gain")  # + source_<k>_path, source_<k>_gain


def wham_root(wham_dir: Path) -> Path:
    """The ``wham_noise`` folder with ``tr/``, ``cv/``, ``tt/`` of wav files; raise if it is not one."""
    wham_dir = Path(wham_dir)
    missing = [s for s in WHAM_SPLITS if not any((wham_dir / s).glob("*.wav"))]
    if missing:
        raise CorpusError(f"wham: no wav files in {', '.join(str(wham_dir / s) for s in missing)}; point --wham-dir "
                          "at the extracted wham_noise/ folder (tr/, cv/, tt/ from wham_noise.zip, "
                          "http://wham.whisper.ai/)")
    return wham_dir


def librimix_metadata(metadata_dir: Path, n_src: int) -> List[Path]:
    """The LibriMix metadata CSVs ``Libri<n>Mix/libri<n>mix_<part>.csv`` (lhotse skips ``*info*``)."""
    sub = Path(metadata_dir) / f"Libri{n_src}Mix"
    csvs = sorted(p for p in sub.glob(f"libri{n_src}mix_*.csv") if "info" not in p.name) if sub.is_dir() else []
    if not csvs:
        raise CorpusError(f"librimix: no libri{n_src}mix_<part>.csv in {sub}; point --metadata-dir at the metadata/ "
                          "folder of a clone of https://github.com/JorisCos/LibriMix (it holds Libri2Mix/ and "
                          "Libri3Mix/; lhotse reads these source lists, not the generated wav16k/ metadata)")
    return csvs


def _read_librimix_rows(csv_path: Path, n_src: int) -> List[Dict[str, str]]:
    import csv

    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = list(LIBRIMIX_COLUMNS) + [f"source_{k}_{c}" for k in range(1, n_src + 1) for c in ("path", "gain")]
        missing = [c for c in need if c not in (reader.fieldnames or [])]
        if missing:
            raise CorpusError(f"librimix: {csv_path} lacks column(s) {', '.join(missing)}; expected LibriMix's "
                              f"{', '.join(need)}")
        return list(reader)


def _source_ids(row: Mapping[str, str], n_src: int) -> List[str]:
    return [Path(row[f"source_{k}_path"]).stem for k in range(1, n_src + 1)]


def _speech_in_source_order(cut, source_ids: Sequence[str]):
    """lhotse's recipe mixes the sources last-first; put the speech tracks back in the CSV's order (source 1
    first), noise last, so that start-time ties (LibriMix mixtures all start at 0) serialize as source 1, 2, ..."""
    def source_rank(track) -> int:
        sups = track.cut.supervisions
        if not sups:
            return len(source_ids)  # the noise track
        rec = sups[0].recording_id  # the source's, with lhotse's volume-perturbation suffix: <utt>_vp<gain>
        return next(k for k, i in enumerate(source_ids) if rec == i or rec.startswith(f"{i}_"))

    return fastcopy(cut, tracks=sorted(cut.tracks, key=source_rank))


def prepare_librimix_cuts(corpus_dir: Path, out_dir: Path, num_jobs: int = 1, overwrite: bool = False,
                          n_src: int = 2, librispeech_dir: Optional[str] = None, wham_dir: Optional[str] = None,
                          metadata_dir: Optional[str] = None) -> Dict[str, CutSet]:
    """LibriMix (2 or 3 fully overlapped LibriSpeech speakers, optional WHAM! noise) as lhotse MixedCuts.

    ``corpus_dir`` holds ``LibriSpeech/``, ``wham_noise/`` and ``LibriMix/metadata/`` unless the three are
    given apart. The LibriSpeech parts named by the metadata are prepared first (normalised
    ``librispeech_cuts_<part>``), WHAM! through ``lhotse.recipes.prepare_wham``, and the mixtures through
    ``lhotse.recipes.prepare_librimix`` (16 kHz, max mode): no audio is written except WHAM! noise
    extended to a mixture's length. Rows whose sources or noise are not in the copy are logged and
    dropped. Writes ``libri<n>mix_cuts_<part>_{clean,noisy}.jsonl.gz``, sorted by mixture id; each
    mixture keeps its sources' supervisions (speakers and normalised text) for SOT.
    """
    from lhotse.recipes import prepare_librimix, prepare_wham

    if n_src not in (2, 3):
        raise CorpusError(f"librimix: n_src must be 2 or 3 (Libri2Mix, Libri3Mix), got {n_src}")
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    name = f"libri{n_src}mix"
    meta = Path(metadata_dir) if metadata_dir else next(
        (d for d in (corpus_dir / "LibriMix" / "metadata", corpus_dir / "metadata") if d.is_dir()),
        corpus_dir / "LibriMix" / "metadata")
    csvs = librimix_metadata(meta, n_src)
    parts = [p.stem.split("_", 1)[1] for p in csvs]
    splits = [f"{part}_{kind}" for part in parts for kind in LIBRIMIX_KINDS]
    paths = {split: manifest_path(out_dir, name, "cuts", split) for split in splits}
    if not overwrite and all(p.is_file() for p in paths.values()):
        log.info("%s cut manifests exist in %s; skipping (--overwrite to redo)", name, out_dir)
        return {split: CutSet.from_file(p) for split, p in paths.items()}
    bad_split = [p for p in parts if p.split("-")[0] not in ("train", "dev", "test")]
    if bad_split:
        raise CorpusError(f"librimix: cannot tell the WHAM! split of {', '.join(bad_split)} (lhotse takes it from "
                          "the name: train-*, dev-*, test-*); rename the CSV")
    wham = wham_root(Path(wham_dir) if wham_dir else corpus_dir / "wham_noise")
    speech = prepare_librispeech_cuts(Path(librispeech_dir) if librispeech_dir else corpus_dir, out_dir,
                                      num_jobs=num_jobs, parts=parts)

    # lhotse's inputs, in the layout its recipe reads: <work>/librispeech/librispeech_cutset_<part>.jsonl.gz,
    # <work>/wham/wham_recordings_<tr|cv|tt>.jsonl.gz, <work>/metadata/Libri<n>Mix/<csv> (rows we can mix)
    work = out_dir / f"{name}_work"
    shutil.rmtree(work / "metadata", ignore_errors=True)
    (work / "metadata" / f"Libri{n_src}Mix").mkdir(parents=True)
    (work / "librispeech").mkdir(exist_ok=True)
    noise = prepare_wham(wham, output_dir=work / "wham")
    noise_ids = {s: {r.id for r in noise[s]["recordings"]} for s in WHAM_SPLITS}
    noise_ids["tr"] |= {f"{i}sp{f}" for i in noise_ids["tr"] for f in ("08", "12")}  # lhotse's 0.8x/1.2x copies
    wham_split = {"train": "tr", "dev": "cv", "test": "tt"}
    sources: Dict[str, List[str]] = {}
    for csv_path, part in zip(csvs, parts):
        have = {c.id for c in speech[part]}
        rows = _read_librimix_rows(csv_path, n_src)
        kept, dropped = [], []
        for row in rows:
            ids = _source_ids(row, n_src)
            ok = all(i in have for i in ids) and Path(row["noise_path"]).stem in noise_ids[wham_split[part.split("-")[0]]]
            (kept if ok else dropped).append(row)
            sources[row["mixture_ID"]] = ids
        if dropped:
            log.warning("%s %s: skipped %d of %d mixture(s) whose LibriSpeech source or WHAM! noise is not in your "
                        "copy (or whose transcript is empty): %s", name, part, len(dropped), len(rows),
                        _examples([r["mixture_ID"] for r in dropped]))
        if not kept:
            raise CorpusError(f"librimix: none of the {len(rows)} mixtures of {csv_path} can be made from "
                              f"LibriSpeech {part} and WHAM! in your copy; check --librispeech-dir and --wham-dir")
        with open(work / "metadata" / f"Libri{n_src}Mix" / csv_path.name, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(kept)
        # lhotse's recipe drops the last "-" field of each id, as in ids of CutSet.from_manifests
        speech[part].modify_ids(lambda i: f"{i}-0").to_file(work / "librispeech" / f"librispeech_cutset_{part}.jsonl.gz")
    with _quiet_root_logger("The original LibriMix recipe introduces a quantization error"):
        manifests = prepare_librimix(work / "librispeech", work / "wham", work / "metadata", workdir=work / "noise",
                                     output_dir=None, n_src=n_src, num_jobs=num_jobs)
    out = {}
    for part in parts:
        for kind, key in zip(LIBRIMIX_KINDS, (f"{name}_{part}", f"{name}_{part}_noisy")):
            mixes = sorted((_speech_in_source_order(c, sources[c.id]) for c in manifests[key]["cutset"]),
                           key=lambda c: c.id)
            cuts = CutSet.from_cuts(mixes)
            cuts.to_file(paths[f"{part}_{kind}"])
            log.info("%s %s_%s: %d mixtures, %.2f h", name, part, kind, len(cuts), sum(c.duration for c in cuts) / 3600)
            out[f"{part}_{kind}"] = cuts
    return out


def _no_recording_manifests(*args, **kwargs):
    raise TypeError("this corpus has no per-recording manifests to load; use prepare_corpus")


# ------------------------------------------------------------------------------------------------ AMI

AMI_SPLITS = ("train", "dev", "test")
AMI_MICS = {"ihm-mix": "*.Mix-Headset.wav", "sdm": "*.Array1-01.wav"}  # single-channel settings: SOT input
AMI_ANNOTATIONS = "ami_public_manual_1.6.2"


def check_ami_tree(corpus_dir: Path, mic: str, partition: str = "full-corpus-asr") -> None:
    """Raise :class:`CorpusError` unless ``corpus_dir`` has the annotations and, for every split of
    ``partition``, at least one meeting's ``mic`` audio (lhotse fails on an empty split)."""
    from lhotse.recipes.ami import PARTITIONS

    if not Path(corpus_dir).is_dir():
        raise CorpusError(f"ami: corpus dir {corpus_dir} does not exist; point --corpus-dir at the folder holding "
                          f"amicorpus/ and {AMI_ANNOTATIONS}/ (https://groups.inf.ed.ac.uk/ami/download/)")
    if mic not in AMI_MICS:
        raise CorpusError(f"ami: mic {mic!r} is not supported; choose from {', '.join(AMI_MICS)} (SOT takes one channel)")
    notes = corpus_dir / AMI_ANNOTATIONS
    if not notes.is_dir() and not notes.with_suffix(".zip").is_file():
        raise CorpusError(f"ami: no {AMI_ANNOTATIONS}/ (or .zip) in {corpus_dir}; fetch {AMI_ANNOTATIONS}.zip "
                          "from https://groups.inf.ed.ac.uk/ami/download/ and put it there")
    if notes.is_dir():
        needed = [notes / "corpusResources" / "meetings.xml", notes / "segments", notes / "words"]
        missing = [str(p) for p in needed if not p.exists()]
        if missing:
            raise CorpusError(f"ami: {', '.join(missing)} missing; extract {AMI_ANNOTATIONS}.zip again")
    meetings = {p.parts[-3] for p in corpus_dir.rglob(AMI_MICS[mic])}
    for split in AMI_SPLITS:
        if not meetings & set(PARTITIONS[partition][split]):
            raise CorpusError(f"ami: no {mic} audio ({AMI_MICS[mic]}) for any {split} meeting of the {partition} "
                              f"partition under {corpus_dir} (e.g. amicorpus/{PARTITIONS[partition][split][0]}/audio/); "
                              "every split needs at least one meeting")


def load_ami(corpus_dir: Path, num_jobs: int = 1, mic: str = "ihm-mix", partition: str = "full-corpus-asr") -> Manifests:
    """AMI through ``lhotse.recipes.prepare_ami`` (kaldi-style text: upper case, no punctuation) for one mic:
    whole meetings with one supervision per segment (speaker = AMI's global id, e.g. MEE006)."""
    from lhotse.recipes import prepare_ami

    check_ami_tree(Path(corpus_dir), mic, partition)
    manifests = prepare_ami(corpus_dir, mic=mic, partition=partition, normalize_text="kaldi", output_dir=None)
    return {split: (m["recordings"], m["supervisions"]) for split, m in manifests.items()}


def _group_id(cut) -> str:
    """``<meeting>-<start cs>-<end cs>`` (Kaldi style): readable, sortable, stable across runs."""
    return f"{cut.recording_id}-{round(cut.start * 100):07d}-{round(cut.end * 100):07d}"


def prepare_ami_cuts(corpus_dir: Path, out_dir: Path, num_jobs: int = 1, overwrite: bool = False,
                     mics: Sequence[str] = ("ihm-mix",), max_pause: float = 0.0,
                     partition: str = "full-corpus-asr") -> Dict[str, CutSet]:
    """AMI meetings cut into utterance groups (overlapping or touching segments; ``max_pause`` seconds of
    silence also join them), the training and test units of SOT on AMI.

    Per mic and split it writes ``ami-<mic>_{recordings,supervisions}_<split>`` (whole meetings,
    normalised English text, empty segments dropped) and ``ami-<mic>_cuts_<split>``: one cut per group,
    id ``<meeting>-<start cs>-<end cs>``, holding the group's supervisions (their SOT text is
    ``asrkit.data.datamodule.cut_text``). Returns ``{"<mic>_<split>": CutSet}``.
    """
    from asrkit.scoring.sot import utterance_groups

    if isinstance(mics, str):
        mics = [mics]
    out = {}
    for mic in mics:
        corpus = Corpus(f"ami-{mic}", "en", AMI_SPLITS, load_ami)
        paths = {split: manifest_path(out_dir, corpus.name, "cuts", split) for split in AMI_SPLITS}
        if not overwrite and all(p.is_file() for p in paths.values()):
            log.info("%s cut manifests exist in %s; skipping (--overwrite to redo)", corpus.name, out_dir)
            out.update({f"{mic}_{s}": CutSet.from_file(p) for s, p in paths.items()})
            continue
        for split, (recs, sups) in load_ami(corpus_dir, num_jobs, mic, partition).items():
            kept, empty = [], []
            for sup in sups:
                text = normalize(sup.text or "", "en")
                (kept if text else empty).append(replace(sup, text=text, alignment=None))
            if empty:
                log.warning("%s %s: skipped %d segment(s) whose transcript is empty after normalisation: %s",
                            corpus.name, split, len(empty), _examples(sorted(s.id for s in empty)))
            kept.sort(key=lambda s: (s.recording_id, s.start, s.id))
            sups = SupervisionSet.from_segments(kept)
            out_dir.mkdir(parents=True, exist_ok=True)
            recs.to_file(manifest_path(out_dir, corpus.name, "recordings", split))
            sups.to_file(manifest_path(out_dir, corpus.name, "supervisions", split))
            meetings = CutSet.from_manifests(recordings=recs, supervisions=sups)
            groups = utterance_groups(meetings, max_pause=max_pause)
            groups = CutSet.from_cuts(sorted((g.with_id(_group_id(g)) for g in groups), key=lambda g: g.id))
            groups.to_file(paths[split])
            speakers = Counter(len({s.speaker for s in g.supervisions}) for g in groups)
            log.info("%s %s: %d meetings, %d segments, %d utterance groups (%.2f h; by speakers: %s)",
                     corpus.name, split, len(recs), len(kept), len(groups), sum(g.duration for g in groups) / 3600,
                     ", ".join(f"{n}: {speakers[n]}" for n in sorted(speakers)))
            out[f"{mic}_{split}"] = groups
    return out


# ------------------------------------------------------------------------------- Vietnamese (vietnamese.py)

def _load_vivos(corpus_dir: Path, num_jobs: int = 1) -> Manifests:
    from asrkit.data.vietnamese import load_vivos  # imported here: vietnamese.py imports this module

    return load_vivos(corpus_dir, num_jobs=num_jobs)


def _load_gigaspeech2_vi(corpus_dir: Path, num_jobs: int = 1) -> Manifests:
    from asrkit.data.vietnamese import load_gigaspeech2

    return load_gigaspeech2(corpus_dir, num_jobs=num_jobs, lang="vi")


def _load_commonvoice_vi(corpus_dir: Path, num_jobs: int = 1) -> Manifests:
    from asrkit.data.vietnamese import load_commonvoice

    return load_commonvoice(corpus_dir, num_jobs=num_jobs, lang="vi")


CORPORA: Mapping[str, Corpus] = {
    "aishell": Corpus("aishell", "zh", AISHELL_SPLITS, load_aishell, _drop_spaces, "https://www.openslr.org/33"),
    "librispeech": Corpus("librispeech", "en", LIBRISPEECH_PARTS, load_librispeech, url="https://www.openslr.org/12",
                          prepare=prepare_librispeech_cuts),
    "librimix": Corpus("librimix", "en", (), _no_recording_manifests, url="https://github.com/JorisCos/LibriMix",
                       prepare=prepare_librimix_cuts),
    "ami": Corpus("ami", "en", AMI_SPLITS, load_ami, url="https://groups.inf.ed.ac.uk/ami/download/",
                  prepare=prepare_ami_cuts),
    "vivos": Corpus("vivos", "vi", ("train", "test"), _load_vivos, url="https://ailab.hcmus.edu.vn/vivos"),
    "gigaspeech2": Corpus("gigaspeech2", "vi", ("train_raw", "train_refined", "dev", "test"), _load_gigaspeech2_vi,
                          url="https://huggingface.co/datasets/speechcolab/gigaspeech2"),
    "commonvoice": Corpus("commonvoice", "vi", ("train", "dev", "test"), _load_commonvoice_vi,
                          url="https://commonvoice.mozilla.org/vi/datasets"),
}
