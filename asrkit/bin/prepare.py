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
"""

import argparse
import logging

from asrkit.data.corpora import CORPORA, CorpusError, prepare_corpus

log = logging.getLogger(__name__)


# Corpus-specific options: dest -> (corpora it applies to, add_argument kwargs). The verb parser is
# flat (asrkit's CLI parses options intermixed with positionals, which rules out sub-parsers).
CORPUS_OPTIONS = {
    "extract": (("aishell",), dict(
        flags=["--extract"], action="store_true",
        help="aishell: unpack data_aishell/wav/<SPK>.tar.gz files not extracted yet, in place")),
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
