"""Prepare a real corpus from your local copy: lhotse manifests -> normalised cut manifests.

    asrkit prepare aishell --corpus-dir /data/aishell --out-dir data/manifests [--num-jobs 4]
    asrkit prepare aishell --corpus-dir /data/aishell/data_aishell --out-dir data/manifests --extract

Writes ``<out-dir>/<corpus>_{recordings,supervisions,cuts}_<split>.jsonl.gz``; does nothing if
the cut manifests exist (``--overwrite`` to redo). Nothing is downloaded. Options whose help starts
with a corpus name (``--extract``: aishell) are refused for the others.

aishell: ``--corpus-dir`` is the folder holding ``data_aishell/`` (or ``data_aishell`` itself).
AISHELL-1 ships its audio as ``data_aishell/wav/<SPK>.tar.gz``, one per speaker: extract them
first, or pass ``--extract`` to unpack them in place (``--num-jobs`` at a time). Transcripts are
normalised for Mandarin and their word-separating spaces removed (character targets).

    asrkit prepare librispeech --corpus-dir /data/LibriSpeech --out-dir data/manifests --parts train-clean-100 dev-clean
    asrkit prepare librimix --corpus-dir /data --out-dir data/manifests [--n-src 2]
    asrkit prepare ami --corpus-dir /data/ami --out-dir data/manifests --mic ihm-mix sdm [--max-pause 0]

librispeech: ``--corpus-dir`` is ``LibriSpeech/`` or its parent; ``--parts`` (default: every part
there). librimix: ``--corpus-dir`` holds ``LibriSpeech/``, ``wham_noise/`` and ``LibriMix/metadata/``
(a clone of github.com/JorisCos/LibriMix), or name them with ``--librispeech-dir``, ``--wham-dir``,
``--metadata-dir``; it writes ``librispeech_cuts_<part>`` and ``libri<n>mix_cuts_<part>_{clean,noisy}``
(lhotse MixedCuts, no audio written). ami: ``--corpus-dir`` holds ``amicorpus/`` and
``ami_public_manual_1.6.2/``; ``ami-<mic>_cuts_<split>`` are utterance groups.

    asrkit prepare vivos --corpus-dir /data/vivos --out-dir data/manifests
    asrkit prepare gigaspeech2 --corpus-dir /data/gigaspeech2 --out-dir data/manifests
    asrkit prepare commonvoice --corpus-dir /data/cv-corpus-17.0 --out-dir data/manifests

vivos: ``--corpus-dir`` holds ``train/`` and ``test/`` (prompts.txt, genders.txt, waves/<SPK>/*.wav).
gigaspeech2: the folder holding ``data/vi/`` ({train_raw,train_refined,dev,test}.tsv, extracted audio).
commonvoice: the ``cv-corpus-<version>`` folder holding ``vi/`` (clips/, train/dev/test.tsv).
Vietnamese transcripts are normalised: NFC, lower case, punctuation removed, diacritics kept.
"""

import argparse
import logging

from asrkit.data.corpora import AMI_MICS, CORPORA, LIBRISPEECH_PARTS, CorpusError, prepare_corpus

log = logging.getLogger(__name__)


# Corpus-specific options: dest -> (corpora it applies to, add_argument kwargs). The verb parser is
# flat (asrkit's CLI parses options intermixed with positionals, which rules out sub-parsers).
CORPUS_OPTIONS = {
    "extract": (("aishell",), dict(
        flags=["--extract"], action="store_true",
        help="aishell: unpack data_aishell/wav/<SPK>.tar.gz files not extracted yet, in place")),
    "parts": (("librispeech",), dict(
        flags=["--parts"], nargs="+", choices=LIBRISPEECH_PARTS,
        help="librispeech: the parts to prepare (default: every part in --corpus-dir)")),
    "n_src": (("librimix",), dict(
        flags=["--n-src"], type=int, choices=[2, 3], help="librimix: speakers per mixture, Libri2Mix or Libri3Mix")),
    "librispeech_dir": (("librimix",), dict(
        flags=["--librispeech-dir"], help="librimix: LibriSpeech/ (default: CORPUS_DIR/LibriSpeech)")),
    "wham_dir": (("librimix",), dict(
        flags=["--wham-dir"], help="librimix: wham_noise/ with tr/ cv/ tt/ (default: CORPUS_DIR/wham_noise)")),
    "metadata_dir": (("librimix",), dict(
        flags=["--metadata-dir"], help="librimix: LibriMix's metadata/ with Libri2Mix/*.csv "
                                       "(default: CORPUS_DIR/LibriMix/metadata)")),
    "mics": (("ami",), dict(
        flags=["--mic"], nargs="+", choices=sorted(AMI_MICS), help="ami: microphone settings (default ihm-mix)")),
    "max_pause": (("ami",), dict(
        flags=["--max-pause"], type=float,
        help="ami: segments this many seconds apart still join one utterance group (default 0: overlap or touch)")),
}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("corpus", choices=sorted(CORPORA), help="which corpus")
    p.add_argument("--corpus-dir", required=True, help="your local copy of the corpus")
    p.add_argument("--out-dir", required=True, help="where the manifests go, e.g. data/manifests")
    p.add_argument("--num-jobs", type=int, default=1, help="parallel jobs where the corpus has parallel work")
    p.add_argument("--overwrite", action="store_true", help="redo even if the cut manifests exist")
    for dest, (_, kwargs) in CORPUS_OPTIONS.items():
        kwargs = dict(kwargs)
        p.add_argument(*kwargs.pop("flags"), dest=dest, default=None, **kwargs)  # None: the library's default


def run(args: argparse.Namespace) -> int:
    options = {}
    for dest, (corpora, _) in CORPUS_OPTIONS.items():
        value = getattr(args, dest)
        if args.corpus in corpora:
            if value is not None:
                options[dest] = value
        elif value not in (None, False):
            flag = "--" + dest.replace("_", "-")
            raise SystemExit(f"asrkit prepare {args.corpus}: {flag} is for {', '.join(corpora)} only")
    try:
        cuts = prepare_corpus(args.corpus, args.corpus_dir, args.out_dir, num_jobs=args.num_jobs,
                              overwrite=args.overwrite, **options)
    except CorpusError as e:
        log.error("%s", e)
        return 1
    for split, cs in cuts.items():
        print(f"{args.corpus} {split}: {len(cs)} cuts")
    return 0
