"""One markdown results table of a recipe: per system, the columns asked for, per test set where they vary.

    asrkit results --out exp/results.md --test-sets synth-zh_cuts_dev synth-zh_cuts_test --title "LLM: tiny" \\
        --system "EFIN stage 1 (encoder, CTC)" exp/efin_stage1 ctc-greedy \\
        --system "EFIN stage 3" exp/efin_stage3 llm-greedy compute=exp/efin_stage1,exp/efin_stage2,exp/efin_stage3

Each ``--system NAME EXP_DIR METHOD [compute=DIR,...] [kmeans=PATH]`` is one row; ``--columns`` picks
what it shows (default ``method flops rate``):

- ``method``: METHOD;
- ``flops``: the training FLOPs of the ``compute`` dirs (default EXP_DIR) summed, the stages that
  produced the system (``asrkit.scaling.compute_of``: flops.json, else the newest checkpoint);
- ``steps``: the optimizer step of ``EXP_DIR/model.pt``;
- ``targets``: the pretraining targets behind the system, from the json beside ``kmeans`` (``-``: none);
- ``rate``: WER or CER per test set, from ``EXP_DIR/METHOD/wer-summary-<test set>-final*.txt``
  (``asrkit decode`` without --epoch);
- ``sot``: cpWER, concatenated WER and speaker-count accuracy per test set, from the SOT summaries
  under ``EXP_DIR/METHOD/sot/``.

"n/a" where a decode has not run or a stage has no record.
"""

import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from asrkit.scaling import compute_of, read_summary
from asrkit.scoring.sot import read_sot_summary

COLUMNS = ("method", "flops", "steps", "targets", "rate", "sot")
_SYSTEM_KEYS = ("compute", "kmeans")
_SOT = (("cp", "cp"), ("concat", "concat. "), ("count", "spk-count acc."))
_NOTES = {
    "flops": "train FLOPs: forward + backward of every stage behind the system (flops.json), summed.",
    "steps": "steps: optimizer steps of the system's final model (model.pt).",
    "rate": "Error rates: decoding of each system's final model (model.pt).",
    "sot": "cpWER: errors of the best assignment of hypothesis turns (split at <sc>) to reference speakers, "
           "over reference words (%); concat. WER: plain WER with every <sc> deleted (turn order counts); "
           "spk-count acc.: utterances whose hypothesis has as many turns as the reference has speakers (%).",
}


def add_args(p):
    p.add_argument("--out", required=True, help="markdown file to write (also printed)")
    p.add_argument("--test-sets", nargs="+", required=True, help="manifest names without .jsonl.gz")
    p.add_argument("--title", default="")
    p.add_argument("--columns", nargs="+", choices=COLUMNS, default=["method", "flops", "rate"])
    p.add_argument("--system", nargs="+", action="append", required=True,
                   metavar="NAME EXP_DIR METHOD [compute=DIR,DIR] [kmeans=PATH]",
                   help="one row (repeat the option for each system)")


def parse_system(words: Sequence[str]) -> Dict[str, str]:
    """``NAME EXP_DIR METHOD [key=value ...]`` -> a dict; unknown keys and missing fields are errors."""
    if len(words) < 3:
        raise ValueError(f"--system needs NAME EXP_DIR METHOD [compute=...] [kmeans=...], got {list(words)}")
    system = {"name": words[0], "exp_dir": words[1], "method": words[2]}
    for word in words[3:]:
        key, eq, value = word.partition("=")
        if not eq or key not in _SYSTEM_KEYS:
            raise ValueError(f"--system {words[0]!r}: {word!r} is not one of "
                             f"{', '.join(k + '=...' for k in _SYSTEM_KEYS)}")
        system[key] = value
    system.setdefault("compute", system["exp_dir"])
    system.setdefault("kmeans", "-")
    return system


def total_flops(dirs: List[Path]) -> Optional[float]:
    """Training FLOPs of the stages in ``dirs`` together; None when one has no record of them."""
    try:
        return sum(compute_of(d) for d in dirs)
    except (FileNotFoundError, ValueError):
        return None


def _summary(exp_dir: Path, method: str, test_set: str, sub: str = "") -> Optional[Path]:
    found = sorted((exp_dir / method / sub).glob(f"wer-summary-{test_set}-final*.txt"))
    return found[0] if found else None


def error_rate(exp_dir: Path, method: str, test_set: str) -> Tuple[Optional[str], str]:
    """(rate name, rate as text "12.34"); (None, "n/a") when that decode has not run."""
    path = _summary(exp_dir, method, test_set)
    if path is None:
        return None, "n/a"
    name, rate = read_summary(path)
    return name, f"{rate:.2f}"


def pretraining_targets(kmeans: str) -> str:
    """"500 x fbank" or "500 x exp/supervised" (the source dir's last two parts) from the k-means json
    written beside ``kmeans``; "-" without pretraining."""
    if kmeans == "-":
        return "-"
    meta_path = Path(kmeans).with_suffix(".json")
    if not meta_path.is_file():
        return "n/a"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    source = meta["source"] if meta["source"] == "fbank" else "/".join(Path(meta["source"]).parts[-2:])
    return f"{meta['num_clusters']} x {source}"


def final_step(exp_dir: Path) -> str:
    from asrkit.training.checkpoint import load_checkpoint

    model = exp_dir / "model.pt"
    return str(load_checkpoint(model).get("step", "n/a")) if model.is_file() else "n/a"


def _cells(column: str, system: Dict[str, str], test_sets: List[str], names: set) -> List[str]:
    exp_dir, method = Path(system["exp_dir"]), system["method"]
    if column == "method":
        return [method]
    if column == "flops":
        flops = total_flops([Path(d) for d in system["compute"].split(",") if d])
        return ["n/a" if flops is None else f"{flops:.3g}"]
    if column == "steps":
        return [final_step(exp_dir)]
    if column == "targets":
        return [pretraining_targets(system["kmeans"])]
    if column == "rate":
        rates = [error_rate(exp_dir, method, t) for t in test_sets]
        names |= {n.upper() for n, _ in rates if n}
        return [r for _, r in rates]
    figures = []
    for t in test_sets:
        path = _summary(exp_dir, method, t, "sot")
        figures.append(read_sot_summary(path) if path else None)
        if figures[-1]:
            names.add(figures[-1]["unit"])
    return ["n/a" if f is None else f"{f[key]:.2f}" for key, _ in _SOT for f in figures]


def _headers(column: str, short: List[str], names: set) -> List[str]:
    metric = "/".join(sorted(names))  # WER or CER, as the summaries name it
    if column == "rate":
        return [f"{metric or 'error rate'} {s}" for s in short]
    if column == "sot":
        return [f"{label}{metric or 'WER' if key != 'count' else ''} {s}" for key, label in _SOT for s in short]
    return {"method": ["method"], "flops": ["train FLOPs"], "steps": ["steps"],
            "targets": ["pretraining targets (clusters x frames)"]}[column]


def table(systems: Sequence[Sequence[str]], test_sets: List[str], title: str = "",
          columns: Sequence[str] = ("method", "flops", "rate")) -> str:
    """The markdown table (with a title line and notes) of ``systems``, each ``NAME EXP_DIR METHOD [k=v]``."""
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown columns {unknown}; choose from {COLUMNS}")
    short = [t.rsplit("_", 1)[-1] for t in test_sets]  # synth-zh_cuts_dev -> dev
    parsed = [parse_system(s) for s in systems]
    names = {c: set() for c in columns}
    rows = [[s["name"]] + [cell for c in columns for cell in _cells(c, s, test_sets, names[c])] for s in parsed]
    head = ["system"] + [h for c in columns for h in _headers(c, short, names[c])]
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    notes = [_NOTES[c] for c in columns if c in _NOTES]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def run(args):
    try:
        text = table(args.system, args.test_sets, args.title, args.columns)
    except ValueError as e:
        sys.exit(f"asrkit results: {e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    sys.stdout.write(text)
