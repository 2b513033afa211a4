"""Scaling laws of error rate against training compute: collect points, fit, predict, plot.

EFIN (arXiv 2508.04096) compares ASR systems by the error rate they reach for the training FLOPs they
spent, with a saturating power law ``err = a * C^-b + c`` (``c`` is the floor no compute removes)::

    points = collect_points(["exp/small", "exp/medium", "exp/large"], metric="wer")  # flops.json + wer-summary
    fit = fit_scaling_law(points)          # fit.a, fit.b, fit.c, fit.r2, fit.rmse
    fit.compute_for(5.0)                   # FLOPs predicted to reach 5% WER
    plot_fit(points, fit, "scaling.png")

``C`` is in FLOPs throughout; ``a`` is reported for ``C`` in PFLOPs (1e15), where the numbers are
readable. The fit itself runs on compute divided by the points' geometric mean, so the optimiser sees
values near 1 whatever the scale. With fewer than 4 points the floor cannot be fitted (3 parameters
and no residual left): ``law="auto"`` then fits a plain power law (``c = 0``).
"""

from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["Point", "ScalingFit", "collect_points", "compute_of", "fit_scaling_law", "plot_fit", "read_points_csv",
           "read_summary"]

PFLOP = 1e15
LAWS = ("auto", "saturating", "power")
_SUMMARY = re.compile(r"^%(WER|CER)\s+([0-9.]+|nan|inf)\s")
_EPOCH_TAG = re.compile(r"-epoch-(\d+)-avg-\d+")


@dataclass
class Point:
    name: str
    flops: float  # training compute
    error: float  # error rate in percent
    source: str = ""  # where the error rate came from


@dataclass
class ScalingFit:
    """``err = a * (C / 1e15)^-b + c`` fitted to ``n`` points (``c = 0`` for ``law="power"``)."""

    law: str
    a: float
    b: float
    c: float
    r2: float
    rmse: float
    n: int

    def predict(self, flops: Union[float, np.ndarray]) -> Union[float, np.ndarray]:
        return self.a * (np.asarray(flops, dtype=float) / PFLOP) ** (-self.b) + self.c

    def compute_for(self, error: float) -> float:
        """Training FLOPs at which the fitted curve reaches ``error``."""
        if error <= self.c:
            raise ValueError(f"error {error} is at or below the fitted floor c = {self.c:.4g}: no amount of "
                             f"compute reaches it under this fit")
        return PFLOP * (self.a / (error - self.c)) ** (1.0 / self.b)

    def formula(self) -> str:
        floor = f" + {self.c:.3g}" if self.law == "saturating" else ""
        return f"err = {self.a:.3g} * (C/1e15)^-{self.b:.3g}{floor}"

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)


# --------------------------------------------------------------------------------------------- fitting


def fit_scaling_law(points: Sequence[Point], law: str = "auto") -> ScalingFit:
    """Least-squares fit of the error rates (in their own units) against compute; see the module docstring."""
    if law not in LAWS:
        raise ValueError(f"unknown law {law!r}; use one of {LAWS}")
    n = len(points)
    if law == "auto":
        law = "saturating" if n >= 4 else "power"
    need = 4 if law == "saturating" else 2
    if n < need:
        raise ValueError(f"a {law} law needs at least {need} points (experiments), got {n}"
                         + ("; use --law power (c = 0) for 2-3 points" if law == "saturating" and n >= 2 else ""))
    flops = np.array([p.flops for p in points], dtype=float)
    err = np.array([p.error for p in points], dtype=float)
    bad = [p.name for p in points if not (math.isfinite(p.flops) and p.flops > 0)]
    if bad:
        raise ValueError(f"training compute must be a positive number of FLOPs; not so for {bad}")
    bad = [p.name for p in points if not (math.isfinite(p.error) and p.error > 0)]
    if bad:
        raise ValueError(f"error rates must be positive (a power law never reaches 0); not so for {bad}")
    if np.unique(flops).size < 2:
        raise ValueError("all points have the same training compute; a scaling law needs different amounts")
    c_ref = float(np.exp(np.log(flops).mean()))  # fit on compute / geometric mean: values near 1
    x = flops / c_ref
    a, b, c = _fit_saturating(x, err) if law == "saturating" else (*_fit_power(x, err), 0.0)
    pred = a * x ** (-b) + c
    ss_res = float(((err - pred) ** 2).sum())
    ss_tot = float(((err - err.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    # a for C in PFLOPs: a_ref * (C / c_ref)^-b = a_ref * (c_ref / 1e15)^b * (C / 1e15)^-b
    return ScalingFit(law=law, a=float(a * (c_ref / PFLOP) ** b), b=float(b), c=float(c), r2=r2,
                      rmse=math.sqrt(ss_res / n), n=n)


def _fit_power(x: np.ndarray, err: np.ndarray) -> tuple:
    from scipy.optimize import curve_fit

    slope, intercept = np.polyfit(np.log(x), np.log(err), 1)  # log-space start, then least squares on err
    p0 = [math.exp(intercept), min(max(-slope, 1e-3), 5.0)]
    (a, b), _ = curve_fit(lambda x, a, b: a * x ** (-b), x, err, p0=p0, bounds=([0.0, 0.0], [np.inf, 10.0]),
                          maxfev=20000)
    return a, b


def _fit_saturating(x: np.ndarray, err: np.ndarray) -> tuple:
    """Start from the best log-linear fit of ``err - c`` over a grid of floors below the lowest error."""
    from scipy.optimize import curve_fit

    lo = float(err.min())
    best = None
    for c in lo * np.linspace(0.0, 0.98, 50):
        y = np.log(err - c)
        slope, intercept = np.polyfit(np.log(x), y, 1)
        if slope >= 0:
            continue  # error not falling with compute at this floor
        sse = float(((np.exp(intercept) * x ** slope + c - err) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, math.exp(intercept), -slope, c)
    if best is None:
        raise ValueError("the error rate does not fall with training compute in these points; no power law fits")
    _, a0, b0, c0 = best

    def law(x, a, b, c):
        return a * x ** (-b) + c

    (a, b, c), _ = curve_fit(law, x, err, p0=[a0, min(b0, 9.9), c0], bounds=([0.0, 0.0, 0.0], [np.inf, 10.0, lo]),
                             maxfev=20000)
    return a, b, c


# ---------------------------------------------------------------------------------------- data points


def read_points_csv(path: Union[str, Path]) -> List[Point]:
    """Points from a CSV with a header ``name,flops,error`` (e.g. numbers from a paper)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"name", "flops", "error"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: the header must name the columns name,flops,error; missing {sorted(missing)}")
        points = []
        for i, row in enumerate(reader, start=2):
            try:
                points.append(Point(row["name"], float(row["flops"]), float(row["error"]), f"{path}:{i}"))
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{i}: flops and error must be numbers, got {row}") from None
    return points


def read_summary(path: Union[str, Path]) -> tuple:
    """``(metric, rate)`` from a ``wer-summary-*.txt`` written by ``asrkit decode``."""
    path = Path(path)
    line = path.read_text(encoding="utf-8").strip().splitlines()[0] if path.stat().st_size else ""
    m = _SUMMARY.match(line)
    if not m:
        raise ValueError(f"{path}: not a summary line like '%WER 3.21 [ 32 / 1000, ... ]': {line!r}")
    return m.group(1).lower(), float(m.group(2))


def compute_of(exp_dir: Union[str, Path], epoch: Optional[int] = None) -> float:
    """Training FLOPs behind ``epoch-<epoch>.pt`` (or the newest state): flops.json, else the checkpoint."""
    from asrkit.training.checkpoint import latest_checkpoint, load_checkpoint
    from asrkit.training.flops import FLOPS_FILE, read_flops_file

    exp_dir = Path(exp_dir)
    if (exp_dir / FLOPS_FILE).exists():
        info = read_flops_file(exp_dir / FLOPS_FILE)
        if epoch is None:
            return float(info["flops"])
        if str(epoch) in info.get("epochs", {}):
            return float(info["epochs"][str(epoch)]["flops"])
    ckpt = exp_dir / f"epoch-{epoch}.pt" if epoch is not None else latest_checkpoint(exp_dir)
    if ckpt is None or not ckpt.exists():
        what = f"epoch {epoch}" if epoch is not None else "the final model"
        raise FileNotFoundError(f"{exp_dir}: no training FLOPs for {what}: neither flops.json nor "
                                f"{ckpt or 'a checkpoint'} has them; was it trained by asrkit with train.count_flops?")
    state = load_checkpoint(ckpt)
    if "flops" not in state:
        raise ValueError(f"{ckpt} has no 'flops' entry: it was trained before asrkit counted training FLOPs")
    return float(state["flops"])


def collect_points(exp_dirs: Sequence[Union[str, Path]], metric: str = "wer",
                   results: str = "*/wer-summary-*.txt") -> List[Point]:
    """Points from the decoding summaries matching ``results`` (a glob relative to each dir, e.g.
    ``greedy-search/wer-summary-test-*``): one per decoded model, at the compute of the checkpoint it
    decoded (``epoch-E-avg-N`` in its name: epoch E; otherwise the newest). Several epochs of one dir
    give its learning curve (points ``<dir>:epoch-E`` and ``<dir>:final``); two summaries of one model
    (two methods, two test sets) are an error: narrow ``results``."""
    if metric not in ("wer", "cer"):
        raise ValueError(f"metric must be wer or cer, got {metric!r}")
    points = []
    for d in map(Path, exp_dirs):
        if not d.is_dir():
            raise FileNotFoundError(f"experiment dir {d} does not exist")
        found = sorted(p for p in d.glob(results) if p.is_file())
        if not found:
            raise FileNotFoundError(f"{d}: no decoding summary matches {results!r}; run asrkit decode first, or "
                                    f"pick the files with --results")
        by_model: Dict[Optional[int], List[tuple]] = {}
        for path in found:
            name, rate = read_summary(path)
            if name == metric:
                m = _EPOCH_TAG.search(path.name)
                by_model.setdefault(int(m.group(1)) if m else None, []).append((path, rate))
        if not by_model or any(len(v) > 1 for v in by_model.values()):
            names = "\n  ".join(str(p.relative_to(d)) for p in found)
            n = sum(map(len, by_model.values()))
            what = f"no {metric.upper()} summary" if not n else f"{n} {metric.upper()} summaries, some of one model,"
            raise ValueError(f"{d}: {what} among the files matching {results!r}; narrow --results to one "
                             f"per model (e.g. 'greedy-search/wer-summary-<test set>-*'):\n  {names}")
        for epoch in sorted(by_model, key=lambda e: (e is None, e or 0)):
            (path, rate), = by_model[epoch]
            tag = "" if len(by_model) == 1 else ":final" if epoch is None else f":epoch-{epoch}"
            points.append(Point(d.name + tag, compute_of(d, epoch), rate, str(path)))
    return points


# ---------------------------------------------------------------------------------------------- plot


def plot_fit(points: Sequence[Point], fit: Optional[ScalingFit], out: Union[str, Path], metric: str = "wer",
             target_error: Optional[float] = None) -> Path:
    """Points, fitted curve (log compute axis) and the compute for ``target_error`` as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    flops = np.array([p.flops for p in points], dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    try:
        ax.scatter(flops, [p.error for p in points], color="C0", zorder=3, label="experiments")
        for p in points:
            ax.annotate(p.name, (p.flops, p.error), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if fit is not None:
            lo, hi = flops.min() / 2, flops.max() * 2
            if target_error is not None and target_error > fit.c:
                hi = max(hi, fit.compute_for(target_error) * 1.5)
            grid = np.geomspace(lo, hi, 200)
            ax.plot(grid, fit.predict(grid), color="C1",
                    label=f"{fit.formula()}\n$R^2$ = {fit.r2:.3f}, RMSE = {fit.rmse:.3g}")
            if fit.law == "saturating":
                ax.axhline(fit.c, color="C1", ls=":", lw=1, label=f"floor c = {fit.c:.3g}")
            if target_error is not None and target_error > fit.c:
                c_t = fit.compute_for(target_error)
                ax.scatter([c_t], [target_error], marker="x", color="C3", zorder=4,
                           label=f"{target_error:g} at {c_t:.3g} FLOPs")
        ax.set_xscale("log")
        ax.set_xlabel("training compute (FLOPs)")
        ax.set_ylabel(f"{metric.upper()} (%)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
    return out
