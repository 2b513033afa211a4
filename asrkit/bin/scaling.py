"""Fit error rate against training compute over experiments, err = a * C^-b + c, and plot it.

    asrkit scaling fit --exp-dirs exp/small exp/medium exp/large exp/xl --metric wer \\
        --results 'greedy-search/wer-summary-synth-en_cuts_test-*' --out scaling.png --target-error 5
    asrkit scaling fit --csv published.csv --out efin.png     # columns: name,flops,error

Each decoded model gives a point: its training FLOPs (``flops.json``, written by ``asrkit train``,
or the decoded checkpoint) and the error rate of its ``wer-summary-*`` file among those ``--results``
selects (a glob relative to each dir; a name with ``epoch-E-avg-N`` takes the compute up to epoch E,
so the epochs of one dir, decoded with ``asrkit decode --epoch E``, give its learning curve). Prints
the points and a, b (C in PFLOPs), c, R^2 and RMSE; with fewer than 4 points ``--law auto`` fits
``c = 0``. See ``asrkit.scaling``.
"""

import json
import logging

from asrkit.scaling import LAWS, collect_points, fit_scaling_law, plot_fit, read_points_csv

log = logging.getLogger(__name__)


def add_args(p):
    p.add_argument("action", choices=["fit"], help="fit: fit a scaling law and plot it")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--exp-dirs", nargs="+", help="experiment dirs: a point per decoded model")
    src.add_argument("--csv", help="a CSV with columns name,flops,error instead of experiment dirs")
    p.add_argument("--metric", choices=["wer", "cer"], default="wer")
    p.add_argument("--results", default="*/wer-summary-*.txt",
                   help="glob (relative to each exp dir) that selects one summary per decoded model")
    p.add_argument("--law", choices=LAWS, default="auto",
                   help="saturating: a*C^-b + c (>= 4 points); power: c = 0; auto: saturating if possible")
    p.add_argument("--target-error", type=float, default=None, help="also print the compute predicted for it")
    p.add_argument("--out", default=None, help="PNG plot of the points and the fitted curve")
    p.add_argument("--json", default=None, help="write the points and the fit here")


def run(args):
    points = read_points_csv(args.csv) if args.csv else collect_points(args.exp_dirs, args.metric, args.results)
    fit = fit_scaling_law(points, args.law)
    metric = args.metric.upper()
    lines = [f"{'name':<24} {'FLOPs':>12} {metric:>8} {'fitted':>8}"]
    lines += [f"{p.name:<24} {p.flops:>12.4g} {p.error:>8.3f} {float(fit.predict(p.flops)):>8.3f}" for p in points]
    lines.append(f"{fit.law} law over {fit.n} points: {fit.formula()}  (C in FLOPs)")
    lines.append(f"a = {fit.a:.6g}  b = {fit.b:.6g}  c = {fit.c:.6g}  R^2 = {fit.r2:.4f}  RMSE = {fit.rmse:.4g}")
    target = None
    if args.target_error is not None:
        try:
            target = fit.compute_for(args.target_error)
            lines.append(f"{metric} {args.target_error:g} predicted at {target:.4g} FLOPs")
        except ValueError as e:
            lines.append(f"{metric} {args.target_error:g}: {e}")
    if args.out:
        plot_fit(points, fit, args.out, args.metric, args.target_error)
        lines.append(f"plot: {args.out}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"points": [vars(p) for p in points], "fit": fit.as_dict(),
                       "target_error": args.target_error, "target_flops": target}, f, indent=1)
    print("\n".join(lines))
