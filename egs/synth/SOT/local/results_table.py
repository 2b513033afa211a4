#!/usr/bin/env python3
"""The SOT results table (markdown): cpWER, concatenated WER and speaker-count accuracy per system and test set.

    python local/results_table.py --out exp/results.md --test-sets synth-en-sot_cuts_dev synth-en-sot_cuts_test \\
        --title "SOT, LLM: tiny" \\
        --system "AED-SOT" exp/aed_sot attention-beam-search \\
        --system "LLM-SOT stage C: + LoRA" exp/llm_sot_c llm-greedy

Each ``--system NAME EXP_DIR METHOD`` reads ``EXP_DIR/METHOD/sot/wer-summary-<test set>-final*.txt``, the
SOT summary ``asrkit decode`` writes (without --epoch) for references with ``<sc>`` or with ``--sot``:
three lines ``%cpWER``, ``%concatWER`` and ``%SpkCountAcc`` (CER instead of WER with ``--unit char``).
A decode that has not run shows "n/a".
"""

import argparse
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

_LINE = re.compile(r"^%(cpWER|cpCER|concatWER|concatCER|SpkCountAcc)\s+([0-9.]+|nan|inf)\s")
METRICS = (("cp", "cpWER"), ("concat", "concat. WER"), ("count", "spk-count acc."))


def read_sot_summary(path: Path) -> Dict[str, float]:
    """``{"cp": rate, "concat": rate, "count": accuracy}`` from an SOT ``wer-summary-*.txt``."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _LINE.match(line)
        if m:
            name = m.group(1)
            out["count" if name == "SpkCountAcc" else "cp" if name.startswith("cp") else "concat"] = float(m.group(2))
    if set(out) != {"cp", "concat", "count"}:
        raise ValueError(f"{path}: not an SOT summary (%cpWER, %concatWER and %SpkCountAcc lines); got {sorted(out)}")
    return out


def sot_figures(exp_dir: Path, method: str, test_set: str) -> Optional[Dict[str, float]]:
    """The SOT figures of one decode, or None when it has not run."""
    found = sorted((exp_dir / method / "sot").glob(f"wer-summary-{test_set}-final*.txt"))
    return read_sot_summary(found[0]) if found else None


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--test-sets", nargs="+", required=True, help="manifest names without .jsonl.gz")
    p.add_argument("--title", default="")
    p.add_argument("--system", nargs=3, action="append", required=True, metavar=("NAME", "EXP_DIR", "METHOD"))
    args = p.parse_args(argv)
    short = [t.rsplit("_", 1)[-1] for t in args.test_sets]  # synth-en-sot_cuts_dev -> dev
    head = ["system", "method"] + [f"{label} {s}" for _, label in METRICS for s in short]
    rows = []
    for name, exp_dir, method in args.system:
        figures = [sot_figures(Path(exp_dir), method, t) for t in args.test_sets]
        rows.append([name, method] + ["n/a" if f is None else f"{f[key]:.2f}" for key, _ in METRICS for f in figures])
    lines = [f"# {args.title}", ""] if args.title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "cpWER: errors of the best assignment of hypothesis turns (split at <sc>) to reference speakers, "
                  "over reference words (%); concat. WER: plain WER with every <sc> deleted (turn order counts); "
                  "spk-count acc.: utterances whose hypothesis has as many turns as the reference has speakers (%)."]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
