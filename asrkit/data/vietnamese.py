"""Vietnamese corpora from the user's local copy: VIVOS (ours), GigaSpeech 2 (vi) and Common Voice (vi).

    asrkit prepare vivos --corpus-dir /data/vivos --out-dir data/manifests
    asrkit prepare gigaspeech2 --corpus-dir /data/gigaspeech2 --out-dir data/manifests --num-jobs 8
    asrkit prepare commonvoice --corpus-dir /data/cv-corpus-17.0-2024-03-15 --out-dir data/manifests

Each ``load_*`` checks the tree first (a clear :class:`CorpusError` rather than a traceback from
deep inside lhotse) and returns ``{split: (RecordingSet, SupervisionSet)}``; the registry in
:mod:`asrkit.data.corpora` then normalises the transcripts (NFC, lower case, no punctuation,
diacritics kept) and writes ``<out>/<name>_cuts_<split>.jsonl.gz``. Layouts read:

- VIVOS (https://ailab.hcmus.edu.vn/vivos; lhotse has no recipe)::

      vivos/{train,test}/prompts.txt        VIVOSSPK01_R001 KHÁCH SẠN
      vivos/{train,test}/genders.txt        VIVOSSPK01 m
      vivos/{train,test}/waves/VIVOSSPK01/VIVOSSPK01_R001.wav

- GigaSpeech 2 (``lhotse.recipes.prepare_gigaspeech2``, language ``vi``)::

      gigaspeech2/data/vi/{train_raw,train_refined,dev,test}.tsv     <segment id>\\t<text>, no header
      gigaspeech2/data/vi/{train,dev,test}/<a>/<b>/<a>-<b>-<c>.wav     (train ships as train/<n>.tar.gz)

- Common Voice (``lhotse.recipes.prepare_commonvoice(..., languages="vi")``; "auto" skips vi)::

      cv-corpus-<release>/vi/{train,dev,test}.tsv     header client_id, path, sentence, ..., gender, ...
      cv-corpus-<release>/vi/clips/common_voice_vi_<n>.mp3
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Tuple

from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.utils import fastcopy
from tqdm import tqdm

from asrkit.data.corpora import CorpusError, Manifests, _examples, _quiet_root_logger

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- VIVOS

VIVOS_SPLITS = ("train", "test")


def vivos_root(corpus_dir: Path) -> Path:
    """The folder holding ``train/`` and ``test/``; ``corpus_dir`` may also be its parent."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise CorpusError(f"vivos: corpus dir {corpus_dir} does not exist; point --corpus-dir at your VIVOS "
                          "copy (the folder with train/ and test/, from https://ailab.hcmus.edu.vn/vivos)")
    if not (corpus_dir / "train").is_dir() and (corpus_dir / "vivos").is_dir():
        corpus_dir = corpus_dir / "vivos"
    if (corpus_dir / "vivos.tar.gz").is_file() and not (corpus_dir / "train").is_dir():
        raise CorpusError(f"vivos: {corpus_dir}/vivos.tar.gz is not extracted; run `tar xzf vivos.tar.gz` "
                          f"in {corpus_dir}, then rerun")
    missing = [s for s in VIVOS_SPLITS if not (corpus_dir / s).is_dir()]
    if missing:
        raise CorpusError(f"vivos: no {', '.join(missing)} folder in {corpus_dir}; point --corpus-dir at the "
                          "folder that holds train/ and test/ (each with prompts.txt, genders.txt, waves/)")
    return corpus_dir


def _read_id_text(path: Path, what: str) -> Dict[str, str]:
    """``id -> rest of line`` of a VIVOS text file (BOM, CRLF and blank lines tolerated)."""
    out = {}
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            fields = line.strip().split(maxsplit=1)
            if not fields:
                continue
            if fields[0] in out:
                raise CorpusError(f"vivos: {path} line {n}: {what} {fields[0]} appears twice; keep one line")
            out[fields[0]] = fields[1] if len(fields) > 1 else ""
    return out


def load_vivos_split(split_dir: Path, num_jobs: int = 1) -> Tuple[RecordingSet, SupervisionSet]:
    """One VIVOS split: recordings of the wavs that have a prompt, supervisions with speaker and gender."""
    name = split_dir.name
    prompts, genders, waves = split_dir / "prompts.txt", split_dir / "genders.txt", split_dir / "waves"
    for path in (prompts, waves):
        if not path.exists():
            raise CorpusError(f"vivos {name}: {path} is missing; every split of VIVOS has prompts.txt, "
                              "genders.txt and waves/<SPK>/<SPK>_R<nnn>.wav: extract vivos.tar.gz again")
    texts = _read_id_text(prompts, "utterance")
    gender = {spk: g.strip().lower()[:1] for spk, g in _read_id_text(genders, "speaker").items()} \
        if genders.is_file() else {}
    if not genders.is_file():
        log.warning("vivos %s: %s is missing; supervisions get no gender", name, genders)
    wavs = sorted(waves.glob("*/*.wav"))
    if not wavs:
        raise CorpusError(f"vivos {name}: no wav files in {waves}; expected {waves}/<SPK>/<SPK>_R<nnn>.wav")
    wrong = [p for p in wavs if not p.stem.startswith(p.parent.name)]
    if wrong:
        raise CorpusError(f"vivos {name}: {len(wrong)} wav file(s) sit in another speaker's folder, e.g. "
                          f"{_examples([str(p) for p in wrong])}; VIVOS keeps <SPK>_R<nnn>.wav in waves/<SPK>/")
    by_id = {p.stem: p for p in wavs}
    no_text = sorted(set(by_id) - set(texts))
    no_audio = sorted(set(texts) - set(by_id))
    if no_text:
        log.warning("vivos %s: skipped %d wav file(s) with no line in prompts.txt: %s",
                    name, len(no_text), _examples(no_text))
    if no_audio:
        log.warning("vivos %s: skipped %d prompt line(s) with no wav file: %s", name, len(no_audio),
                    _examples(no_audio))
    ids = sorted(set(by_id) & set(texts))

    def read(utt: str) -> Recording:
        try:
            return Recording.from_file(by_id[utt], recording_id=utt)
        except Exception as e:  # soundfile/lhotse raise several types for a corrupt file
            raise CorpusError(f"vivos {name}: cannot read {by_id[utt]} ({type(e).__name__}: {e}); "
                              "extract vivos.tar.gz again, or delete the file to skip it") from e

    with ThreadPoolExecutor(max(1, num_jobs)) as ex:
        recs = list(tqdm(ex.map(read, ids), total=len(ids), desc=f"vivos {name}", disable=len(ids) < 500))
    sups = []
    for rec in recs:
        spk = by_id[rec.id].parent.name
        sups.append(SupervisionSegment(id=rec.id, recording_id=rec.id, start=0.0, duration=rec.duration,
                                       channel=0, text=texts[rec.id], speaker=spk, language="vi",
                                       gender=gender.get(spk)))
    return RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups)


def load_vivos(corpus_dir: Path, num_jobs: int = 1) -> Manifests:
    """VIVOS train and test (46 + 19 speakers, 16 kHz read speech); our own reader, lhotse has none."""
    root = vivos_root(corpus_dir)
    return {split: load_vivos_split(root / split, num_jobs) for split in VIVOS_SPLITS}


# ---------------------------------------------------------------------------------------- GigaSpeech 2

GIGASPEECH2_SPLITS = ("train_raw", "train_refined", "dev", "test")


def _gigaspeech2_audio(part_dir: Path, segment_id: str) -> Path:
    """Where lhotse looks for a segment: ``<part>/<a>/<b>/<a>-<b>-<c>.wav`` for id ``a-b-c``."""
    return part_dir.joinpath(*segment_id.split("-")[:-1]) / f"{segment_id}.wav"


def gigaspeech2_lang_dir(corpus_dir: Path, lang: str = "vi") -> Tuple[Path, Path]:
    """(root that lhotse wants, ``root/data/<lang>``); ``corpus_dir`` may be the root or ``data/<lang>``."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise CorpusError(f"gigaspeech2: corpus dir {corpus_dir} does not exist; point --corpus-dir at your "
                          "GigaSpeech 2 copy (the folder with data/vi/, from "
                          "https://huggingface.co/datasets/speechcolab/gigaspeech2)")
    if corpus_dir.name == lang and corpus_dir.parent.name == "data":
        corpus_dir = corpus_dir.parent.parent
    lang_dir = corpus_dir / "data" / lang
    if not lang_dir.is_dir():
        raise CorpusError(f"gigaspeech2: no data/{lang}/ in {corpus_dir}; point --corpus-dir at the folder "
                          f"that holds data/{lang}/ (with dev.tsv, test.tsv, train_raw.tsv, train_refined.tsv)")
    return corpus_dir, lang_dir


def check_gigaspeech2_tree(lang_dir: Path) -> Dict[str, Tuple[int, List[str]]]:
    """Raise :class:`CorpusError` unless lhotse can read ``lang_dir``; return split -> (lines, ids without audio)."""
    missing = [f"{s}.tsv" for s in GIGASPEECH2_SPLITS if not (lang_dir / f"{s}.tsv").is_file()]
    if missing:
        raise CorpusError(f"gigaspeech2: {', '.join(missing)} missing in {lang_dir}; lhotse reads all four "
                          f"transcript files ({', '.join(s + '.tsv' for s in GIGASPEECH2_SPLITS)}): download them")
    out = {}
    for split in GIGASPEECH2_SPLITS:
        part_dir = lang_dir / split.split("_")[0]
        tarballs = sorted(part_dir.glob("*.tar.gz")) if part_dir.is_dir() else []
        tarballs += [p for p in [lang_dir / f"{part_dir.name}.tar.gz"] if p.is_file()]
        no_audio = []
        path = lang_dir / f"{split}.tsv"
        with open(path, encoding="utf-8") as f:
            lines = 0
            for n, line in enumerate(f, 1):
                if not line.strip():
                    raise CorpusError(f"gigaspeech2: {path} line {n} is blank; lhotse cannot read it: remove it")
                fields = line.rstrip("\n").split("\t")
                if len(fields) != 2:
                    raise CorpusError(f"gigaspeech2: {path} line {n} has {len(fields)} tab-separated fields, "
                                      "expected 2 (<segment id>\\t<text>); is this a GigaSpeech 2 transcript file?")
                lines += 1
                if not _gigaspeech2_audio(part_dir, fields[0]).is_file():
                    no_audio.append(fields[0])
        if lines and len(no_audio) == lines and tarballs:
            raise CorpusError(
                f"gigaspeech2 {split}: none of its {lines} segments has a wav file and its audio archives "
                f"are not extracted ({_examples([p.name for p in tarballs])}). Extract them where they are: "
                f"`cd {tarballs[0].parent} && for f in *.tar.gz; do tar xzf \"$f\"; done`, then rerun")
        out[split] = (lines, no_audio)
    return out


def load_gigaspeech2(corpus_dir: Path, num_jobs: int = 1, lang: str = "vi") -> Manifests:
    """GigaSpeech 2 (one language) through ``lhotse.recipes.prepare_gigaspeech2``.

    lhotse writes its manifests into ``output_dir`` and treats any it finds there as finished, so it
    gets a fresh scratch folder; what it would log per missing wav is logged once per split here.
    A split none of whose audio is present (e.g. train archives not downloaded) is skipped, not
    scanned line by line: lhotse is handed empty manifests for it and it comes out with no cuts.
    """
    from lhotse.recipes import prepare_gigaspeech2

    root, lang_dir = gigaspeech2_lang_dir(corpus_dir, lang)
    checked = check_gigaspeech2_tree(lang_dir)
    with tempfile.TemporaryDirectory(prefix="gigaspeech2-lhotse-") as tmp:
        for split, (lines, no_audio) in checked.items():
            if lines and len(no_audio) == lines:
                log.warning("gigaspeech2 %s: none of its %d segments has audio under %s; the split is left "
                            "empty (extract its archives, then rerun with --overwrite)",
                            split, lines, lang_dir / split.split("_")[0])
                for kind, cls in (("recordings", RecordingSet), ("supervisions", SupervisionSet)):
                    cls.from_items([]).to_file(Path(tmp) / f"gigaspeech2-{lang}_{kind}_{split}.jsonl.gz")
            elif no_audio:
                log.warning("gigaspeech2 %s: skipped %d of %d segment(s) with no wav file (an archive not "
                            "extracted?): %s", split, len(no_audio), lines, _examples(no_audio))
        with _quiet_root_logger("No such file: "):
            manifests = prepare_gigaspeech2(root, output_dir=tmp, languages=lang, num_jobs=max(1, num_jobs))
        # lhotse's manifests are lazy views of files in the scratch folder: read them before it goes
        return {split: (RecordingSet.from_recordings(list(m["recordings"])),
                        SupervisionSet.from_segments(list(m["supervisions"])))
                for split, m in manifests[lang].items()}


# ---------------------------------------------------------------------------------------- Common Voice

COMMONVOICE_SPLITS = ("train", "dev", "test")
CV_REQUIRED_COLUMNS = ("client_id", "path", "sentence")
# Read by lhotse for every row; older releases lack some (e.g. 'variant' before CV 13, 'accent' singular).
CV_OPTIONAL_COLUMNS = ("age", "gender", "accents", "variant")


def commonvoice_lang_dir(corpus_dir: Path, lang: str = "vi") -> Path:
    """``<release>/<lang>``; ``corpus_dir`` may be the release folder (holding ``vi/``) or ``vi/`` itself."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise CorpusError(f"commonvoice: corpus dir {corpus_dir} does not exist; point --corpus-dir at your "
                          f"Common Voice release (the cv-corpus-<version> folder holding {lang}/)")
    if (corpus_dir / lang).is_dir():
        return corpus_dir / lang
    if corpus_dir.name == lang and (corpus_dir / "clips").is_dir():
        return corpus_dir
    tarballs = sorted(corpus_dir.glob(f"*{lang}*.tar.gz"))
    if tarballs:
        raise CorpusError(f"commonvoice: {tarballs[0]} is not extracted; run `tar xzf {tarballs[0].name}` in "
                          f"{corpus_dir}, then point --corpus-dir at the cv-corpus-<version> folder it makes")
    raise CorpusError(f"commonvoice: no {lang}/ in {corpus_dir}; point --corpus-dir at the cv-corpus-<version> "
                      f"folder that holds {lang}/ (with clips/ and train.tsv, dev.tsv, test.tsv)")


def _read_cv_tsv(path: Path) -> Tuple[List[str], List[List[str]]]:
    """(header, rows) split on tabs only: Common Voice sentences hold unbalanced quotes (lhotse: QUOTE_NONE)."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        rows = [r for r in reader if r]
    if header is None:
        raise CorpusError(f"commonvoice: {path} is empty; expected a header line (client_id, path, sentence, ...)")
    return header, rows


def stage_commonvoice(lang_dir: Path, stage_dir: Path) -> Dict[str, Tuple[int, List[str]]]:
    """Check ``lang_dir`` and lay out ``stage_dir/<lang>`` for lhotse; return split -> (rows, clips missing).

    The stage holds each split's TSV with the columns lhotse indexes but an older release lacks
    added empty (``accent`` read as ``accents``) and a link to the real ``clips/``, so no file of the
    user's copy is touched.
    """
    clips = lang_dir / "clips"
    missing = [f"{s}.tsv" for s in COMMONVOICE_SPLITS if not (lang_dir / f"{s}.tsv").is_file()]
    if missing or not clips.is_dir():
        what = ", ".join(missing + ([] if clips.is_dir() else ["clips/"]))
        raise CorpusError(f"commonvoice: {what} missing in {lang_dir}; a Common Voice language folder holds "
                          "clips/ and train.tsv, dev.tsv, test.tsv: extract the release archive again")
    out_dir = stage_dir / lang_dir.name
    out_dir.mkdir(parents=True)
    os.symlink(clips.resolve(), out_dir / "clips", target_is_directory=True)
    out = {}
    for split in COMMONVOICE_SPLITS:
        path = lang_dir / f"{split}.tsv"
        header, rows = _read_cv_tsv(path)
        absent = [c for c in CV_REQUIRED_COLUMNS if c not in header]
        if absent:
            raise CorpusError(f"commonvoice: {path} has no column {', '.join(absent)} (header: "
                              f"{', '.join(header)}); is this a Common Voice TSV?")
        bad = [n for n, r in enumerate(rows, 2) if len(r) != len(header)]
        if bad:
            raise CorpusError(f"commonvoice: {path} line(s) {_examples([str(n) for n in bad])} have a different "
                              f"number of tab-separated fields than the header ({len(header)})")
        header = ["accents" if (c == "accent" and "accents" not in header) else c for c in header]
        extra = [c for c in CV_OPTIONAL_COLUMNS if c not in header]
        col = header.index("path")
        no_audio = [r[col] for r in rows if not (clips / r[col]).is_file()]
        with open(out_dir / f"{split}.tsv", "w", encoding="utf-8", newline="") as f:
            for fields in [header + extra] + [r + [""] * len(extra) for r in rows]:
                f.write("\t".join(fields) + "\n")
        out[split] = (len(rows), no_audio)
    return out


def load_commonvoice(corpus_dir: Path, num_jobs: int = 1, lang: str = "vi") -> Manifests:
    """Common Voice (one language) through ``lhotse.recipes.prepare_commonvoice``; audio stays mp3."""
    from lhotse.recipes import prepare_commonvoice

    lang_dir = commonvoice_lang_dir(corpus_dir, lang)
    with tempfile.TemporaryDirectory(prefix="commonvoice-lhotse-") as tmp:
        stage, manifest_dir = Path(tmp) / "corpus", Path(tmp) / "manifests"
        for split, (rows, no_audio) in stage_commonvoice(lang_dir, stage).items():
            if no_audio:
                log.warning("commonvoice %s: skipped %d of %d clip(s) listed in %s.tsv but missing in %s: %s",
                            split, len(no_audio), rows, split, lang_dir / "clips", _examples(no_audio))
        manifests = prepare_commonvoice(stage, manifest_dir, languages=lang, splits=COMMONVOICE_SPLITS,
                                        num_jobs=max(1, num_jobs))[lang]
        out = {}
        for split in COMMONVOICE_SPLITS:
            recs = manifests[split]["recordings"]
            # point the recordings at the user's clips/ (flat), not at the scratch link that is about to go
            recs = RecordingSet.from_recordings(_relink(r, lang_dir / "clips") for r in recs)
            out[split] = (recs, manifests[split]["supervisions"])
        return out


def _relink(rec: Recording, clips: Path) -> Recording:
    return fastcopy(rec, sources=[replace(s, source=str(clips / Path(s.source).name)) for s in rec.sources])
