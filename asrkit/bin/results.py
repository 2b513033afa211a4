"""One markdown results table: error rate per system and test set, beside the training compute behind it.

    asrkit results --out exp/results.md --test-sets synth-zh_cuts_dev synth-zh_cuts_test --title "LLM: tiny" \\
        --system "EFIN stage 1 (encoder, CTC)" exp/efin_stage1 ctc-greedy exp/efin_stage1 \\
        --system "EFIN stage 3" exp/efin_stage3 llm-greedy exp/efin_stage1,exp/efin_stage2,exp/efin_stage3

Each ``--system NAME EXP_DIR METHOD COMPUTE_DIRS`` reads ``EXP_DIR/METHOD/wer-summary-<test set>-final*.txt``
(written by ``asrkit decode`` without --epoch) and sums the training FLOPs of the comma-separated
COMPUTE_DIRS, the stages that produced the system (``asrkit.scaling.compute_of``: flops.json, else the
newest checkpoint); "n/a" where a decode has not run or a stage has no record. The rate's name (WER or
CER) comes from the summaries.
"""

import sys
from pathlib import Path
from typing import List, Optional, Tuple

from asrkit.scaling import compute_of, read_summary


def add_args(p):
    p.add_argument("--out", required=True, help="markdown file to write (also printed)")
    p.add_argument("--test-sets", nargs="+", required=True, help="manifest names without .jsonl.gz")
    p.add_argument("--title", default="")
    p.add_argument("--system", nargs=4, action="append", required=True,
                   metavar=("NAME", "EXP_DIR", "METHOD", "COMPUTE_DIRS"))


def total_flops(dirs: List[Path]) -> Optional[float]:
    """Training FLOPs of the stages in ``dirs`` together; None when one has no record of them."""
    try:
        return sum(compute_of(d) for d in dirs)
    except (FileNotFoundError, ValueError):
        return None


def error_rate(exp_dir: Path, method: str, test_set: str) -> Tuple[Optional[str], str]:
    """(rate name, rate as text "12.34"); (None, "n/a") when that decode has not run."""
    found = sorted((exp_dir / method).glob(f"wer-summary-{test_set}-final*.txt"))
    if not found:
        return None, "n/a"
    name, rate = read_summary(found[0])
    return name, f"{rate:.2f}"


def table(systems, test_sets: List[str], title: str = "") -> str:
    short = [t.rsplit("_", 1)[-1] for t in test_sets]  # synth-zh_cuts_dev -> dev
    rows, names = [], set()
    for name, exp_dir, method, compute in systems:
        flops = total_flops([Path(d) for d in compute.split(",") if d])
        rates = [error_rate(Path(exp_dir), method, t) for t in test_sets]
        names |= {n.upper() for n, _ in rates if n}
        rows.append([name, method, "n/a" if flops is None else f"{flops:.3g}"] + [r for _, r in rates])
    metric = "/".join(sorted(names)) or "error rate"
    head = ["system", "method", "train FLOPs"] + [f"{metric} {s}" for s in short]
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "train FLOPs: forward + backward of every stage behind the system (flops.json), summed."]
    return "\n".join(lines) + "\n"


def run(args):
    text = table(args.system, args.test_sets, args.title)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    sys.stdout.write(text)
