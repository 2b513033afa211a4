#!/usr/bin/env python3
"""One results table (markdown) for the EFIN recipe: CER per system and test set, with training compute.

    python local/results_table.py --out exp/results.md --test-sets synth-zh_cuts_dev synth-zh_cuts_test \\
        --title "LLM: tiny" \\
        --system "EFIN stage 1 (encoder, CTC)" exp/efin_stage1 ctc-greedy exp/efin_stage1 \\
        --system "EFIN stage 3" exp/efin_stage3 llm-greedy exp/efin_stage1,exp/efin_stage2,exp/efin_stage3

Each ``--system NAME EXP_DIR METHOD COMPUTE_DIRS`` reads ``EXP_DIR/METHOD/wer-summary-<test set>-final*.txt``
(written by ``asrkit decode`` without --epoch) and sums the training FLOPs of the comma-separated
COMPUTE_DIRS (the stages that produced the system): ``asrkit.scaling.compute_of`` (flops.json, else the newest
checkpoint); "n/a" when one has no record.
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from asrkit.scaling import compute_of, read_summary


def total_flops(dirs: List[Path]) -> Optional[float]:
    """Training FLOPs of the stages in ``dirs`` together; None when one has no record of them."""
    try:
        return sum(compute_of(d) for d in dirs)
    except (FileNotFoundError, ValueError):
        return None


def cer(exp_dir: Path, method: str, test_set: str) -> str:
    """The summary's rate as text ("12.34"), or "n/a" when that decode has not run."""
    found = sorted((exp_dir / method).glob(f"wer-summary-{test_set}-final*.txt"))
    if not found:
        return "n/a"
    _, rate = read_summary(found[0])
    return f"{rate:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--test-sets", nargs="+", required=True, help="manifest names without .jsonl.gz")
    p.add_argument("--title", default="")
    p.add_argument("--system", nargs=4, action="append", required=True,
                   metavar=("NAME", "EXP_DIR", "METHOD", "COMPUTE_DIRS"))
    args = p.parse_args(argv)
    short = [t.rsplit("_", 1)[-1] for t in args.test_sets]  # synth-zh_cuts_dev -> dev
    head = ["system", "method", "train FLOPs"] + [f"CER {s}" for s in short]
    rows = []
    for name, exp_dir, method, compute in args.system:
        flops = total_flops([Path(d) for d in compute.split(",") if d])
        rows.append([name, method, "n/a" if flops is None else f"{flops:.3g}"]
                    + [cer(Path(exp_dir), method, t) for t in args.test_sets])
    lines = [f"# {args.title}", ""] if args.title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "train FLOPs: forward + backward of every stage behind the system (flops.json), summed."]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
