"""The ``asrkit`` command: one verb per step of a recipe.

    asrkit --help
    asrkit synth --lang en --out-dir data/synth
    asrkit transcribe --exp-dir exp/zipformer_ctc audio.wav

Each verb is a module in ``asrkit/bin`` with ``add_args(parser)`` and ``run(args)``; it is imported
only when called, so ``asrkit --help`` stays fast.
"""

import argparse
import importlib
import logging
import sys
from typing import List, Optional

# verb -> (module in asrkit.bin, one-line help)
VERBS = {
    "synth": ("synth", "synthesise an espeak-ng speech corpus as lhotse manifests"),
    "validate": ("validate", "check that every cut's audio and transcript is usable"),
    "prepare": ("prepare", "cut manifests of a real corpus from your local copy (lhotse.recipes)"),
    "segment": ("segment", "cut long unlabelled recordings into 1-20 s speech segments (Silero VAD), CutSet + Shar"),
    "mix": ("mix", "simulate multi-talker mixtures or sessions (lhotse MixedCuts) for SOT training"),
    "compute-fbank": ("compute_fbank", "extract fbank or Whisper log-mel features into lilcom storage"),
    "train-tokenizer": ("train_tokenizer", "train a BPE model or build a character table"),
    "train": ("train", "train a model from a YAML config (resumable)"),
    "decode": ("decode", "decode cut manifests and score them (WER/CER)"),
    "export": ("export", "write exp_dir/model.pt: averaged epochs or the newest checkpoint"),
    "results": ("results", "markdown table of error rates per system beside their training FLOPs"),
    "transcribe": ("transcribe", "print transcripts of audio files with a trained model"),
    "import-icefall": ("import_icefall", "turn an icefall Zipformer checkpoint into an experiment dir"),
    "scaling": ("scaling", "fit error rate against training FLOPs over experiments and plot it"),
    "ssl": ("ssl", "k-means frame targets for HuBERT-style pretraining: asrkit ssl kmeans|label"),
    "llm": ("llm", "import a GGUF causal LM (e.g. SmolLM2) as a local Hugging Face dir; chat with it"),
}


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="asrkit", description=__doc__.split("\n")[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_, help_) in VERBS.items():
        sub.add_parser(verb, help=help_, add_help=False)
    # Parse the verb first so that only its module is imported.
    known, _ = parser.parse_known_args(argv)
    if known.verb is None:
        parser.print_help()
        return 2
    module = importlib.import_module(f"asrkit.bin.{VERBS[known.verb][0]}")
    verb_parser = argparse.ArgumentParser(
        prog=f"asrkit {known.verb}", description=module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_args(verb_parser)
    verb_argv = argv[argv.index(known.verb) + 1:]
    args = verb_parser.parse_intermixed_args(verb_argv)  # options may follow key=value overrides
    logging.basicConfig(level=known.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return module.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
