#!/usr/bin/env python3
"""Split a cut manifest into a small labelled set and an unlabelled rest whose transcripts are dropped.

    python local/split_labelled.py --cuts data/fbank/synth-vi_cuts_train.jsonl.gz --num-labelled 50 \\
        --labelled data/fbank/synth-vi_cuts_labelled.jsonl.gz --unlabelled data/fbank/synth-vi_cuts_unlabelled.jsonl.gz \\
        --repeat 10 --labelled-repeated data/fbank/synth-vi_cuts_labelled_x10.jsonl.gz

The first ``--num-labelled`` cuts (the synthetic corpus is in random speaker order) keep their
transcripts; every other cut keeps its audio, features and speaker but gets ``text=None``, so nothing
downstream of the unlabelled set (k-means, labels, pretraining) can see a transcript.

``--labelled-repeated`` also writes the labelled cuts ``--repeat`` times over (ids ``<id>_repeat<k>``), the
manifest the recipe trains on: 50 utterances (~100 s) make epochs of a handful of batches, in which the
duration buckets would drop most cuts as incomplete batches and every few steps would end an epoch
(validation, an epoch checkpoint); repeated, an epoch is ``--repeat`` passes with fresh SpecAugment masks.
"""

import argparse
from dataclasses import replace

from lhotse import CutSet


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cuts", required=True)
    p.add_argument("--num-labelled", type=int, required=True)
    p.add_argument("--labelled", required=True, help="manifest to write for the labelled cuts")
    p.add_argument("--unlabelled", required=True, help="manifest to write for the rest, without transcripts")
    p.add_argument("--repeat", type=int, default=1, help="times the labelled cuts appear in --labelled-repeated")
    p.add_argument("--labelled-repeated", default=None, help="manifest to write with the repeated labelled cuts")
    args = p.parse_args(argv)
    cuts = CutSet.from_file(args.cuts)
    n = lab = 0
    with CutSet.open_writer(args.labelled) as lw, CutSet.open_writer(args.unlabelled) as uw:
        for cut in cuts:
            if n < args.num_labelled:
                lw.write(cut)
                lab += 1
            else:
                cut.supervisions = [replace(s, text=None) for s in cut.supervisions]
                uw.write(cut)
            n += 1
    if lab < args.num_labelled or n == lab:
        raise SystemExit(f"{args.cuts}: {n} cuts, cannot keep {args.num_labelled} labelled and have an unlabelled rest")
    print(f"{lab} labelled cuts -> {args.labelled}; {n - lab} unlabelled (transcripts dropped) -> {args.unlabelled}")
    if args.labelled_repeated:
        if args.repeat < 1:
            raise SystemExit(f"--repeat must be >= 1, got {args.repeat}")
        CutSet.from_file(args.labelled).repeat(times=args.repeat).to_file(args.labelled_repeated)
        print(f"{lab} labelled cuts x {args.repeat} -> {args.labelled_repeated}")


if __name__ == "__main__":
    main()
