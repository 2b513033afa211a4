#!/usr/bin/env python3
"""The results table (markdown) of the SSL miniature: WER per system and test set, at equal fine-tuning budget.

    python local/results_table.py --out exp/results.md --test-sets synth-vi_cuts_dev synth-vi_cuts_test \\
        --method greedy-search --title "VietASR in miniature" \\
        --system "supervised only" exp/supervised "-" \\
        --system "fbank HuBERT" exp/hubert_fbank/finetune exp/hubert_fbank/kmeans.npz

Each ``--system NAME EXP_DIR KMEANS`` reads ``EXP_DIR/<method>/wer-summary-<test set>-final*.txt``
(``asrkit decode`` without --epoch) and the step count of ``EXP_DIR/model.pt``; KMEANS (or "-") is the
k-means file behind its pretraining targets, whose json says what the frames came from.
"""

import argparse
import json
import sys
from pathlib import Path

from asrkit.scaling import read_summary
from asrkit.training.checkpoint import load_checkpoint


def rate(exp_dir: Path, method: str, test_set: str) -> str:
    found = sorted((exp_dir / method).glob(f"wer-summary-{test_set}-final*.txt"))
    return f"{read_summary(found[0])[1]:.2f}" if found else "n/a"


def targets(kmeans: str) -> str:
    """"500 x fbank" or "500 x exp/supervised" (the experiment dir's last two parts) from the k-means json;
    "-" without pretraining."""
    if kmeans == "-":
        return "-"
    meta_path = Path(kmeans).with_suffix(".json")
    if not meta_path.is_file():
        return "n/a"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    source = meta["source"] if meta["source"] == "fbank" else "/".join(Path(meta["source"]).parts[-2:])
    return f"{meta['num_clusters']} x {source}"


def steps(exp_dir: Path) -> str:
    model = exp_dir / "model.pt"
    return str(load_checkpoint(model).get("step", "n/a")) if model.is_file() else "n/a"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--test-sets", nargs="+", required=True, help="manifest names without .jsonl.gz")
    p.add_argument("--method", default="greedy-search")
    p.add_argument("--title", default="")
    p.add_argument("--system", nargs=3, action="append", required=True, metavar=("NAME", "EXP_DIR", "KMEANS"))
    args = p.parse_args(argv)
    short = [t.rsplit("_", 1)[-1] for t in args.test_sets]
    head = ["system", "pretraining targets (clusters x frames)", "fine-tuning steps"] + [f"WER {s}" for s in short]
    lines = [f"# {args.title}", ""] if args.title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for name, exp_dir, kmeans in args.system:
        row = [name, targets(kmeans), steps(Path(exp_dir))] + [rate(Path(exp_dir), args.method, t)
                                                              for t in args.test_sets]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"WER: {args.method} decoding of each system's final model (model.pt)."]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
