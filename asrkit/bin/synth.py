"""``asrkit synth``: write a synthetic espeak-ng corpus (wav + lhotse manifests) for tests and demos.

    asrkit synth --lang en --out-dir data/synth --num-train 2000 --num-dev 100 --num-test 200 \\
        --train-speakers 40 --dev-speakers 5 --test-speakers 10 --seed 0 --num-jobs 2
    asrkit synth --lang zh --out-dir data/synth --snr-db 10 --noise-type pink
    python -m asrkit.bin.synth --lang vi --out-dir data/synth      # without the asrkit entry point

Writes ``out_dir/wav/<split>/*.wav`` and ``out_dir/manifests/synth-<lang>_{recordings,supervisions,
cuts}_<split>.jsonl.gz``; does nothing if they exist with the same parameters (``--overwrite``
to redo). See :mod:`asrkit.data.synth`.
"""

from __future__ import annotations

import argparse
import logging

from asrkit.data.synth import NOISE_TYPES, VOICES, synthesize_corpus


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lang", choices=sorted(VOICES), default="en", help="language (default en)")
    parser.add_argument("--out-dir", required=True, help="output directory (wav/ and manifests/)")
    parser.add_argument("--num-train", type=int, default=2000, help="training utterances")
    parser.add_argument("--num-dev", type=int, default=100, help="dev utterances")
    parser.add_argument("--num-test", type=int, default=200, help="test utterances")
    parser.add_argument("--train-speakers", type=int, default=40, help="training speakers")
    parser.add_argument("--dev-speakers", type=int, default=5, help="dev speakers (unseen in training)")
    parser.add_argument("--test-speakers", type=int, default=10, help="test speakers (unseen in training)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: same seed, same corpus")
    parser.add_argument("--snr-db", type=float, nargs="+", default=None, metavar="DB",
                        help="add noise at this SNR; two numbers LO HI draw it per utterance")
    parser.add_argument("--noise-type", choices=NOISE_TYPES, default="white", help="noise colour")
    parser.add_argument("--noise-floor-db", type=float, default=-60.0,
                        help="white noise floor in dBFS added to every utterance (espeak's silence is exact zeros); "
                             "a value above 0 turns it off")
    parser.add_argument("--min-words", type=int, default=3, help="shortest sentence in words")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="use only the first N words of the built-in list (default: all)")
    parser.add_argument("--max-words", type=int, default=15, help="longest sentence in words")
    parser.add_argument("--num-jobs", type=int, default=2, help="parallel espeak-ng processes")
    parser.add_argument("--overwrite", action="store_true", help="redo even if manifests exist")


def run(args: argparse.Namespace) -> None:
    snr = args.snr_db
    if snr is not None:
        if len(snr) not in (1, 2):
            raise SystemExit(f"--snr-db takes one value or two (LO HI), got {snr}")
        snr = snr[0] if len(snr) == 1 else (snr[0], snr[1])
    cuts = synthesize_corpus(
        args.out_dir,
        lang=args.lang,
        num_utts={"train": args.num_train, "dev": args.num_dev, "test": args.num_test},
        num_speakers={"train": args.train_speakers, "dev": args.dev_speakers, "test": args.test_speakers},
        seed=args.seed,
        snr_db=snr,
        noise_type=args.noise_type,
        noise_floor_db=args.noise_floor_db if args.noise_floor_db <= 0 else None,
        min_words=args.min_words,
        vocab_size=args.vocab_size,
        max_words=args.max_words,
        num_jobs=args.num_jobs,
        overwrite=args.overwrite,
    )
    for split, cs in cuts.items():
        logging.info("%s: %d cuts, %.1f min", split, len(cs), sum(c.duration for c in cs) / 60)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="asrkit synth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
