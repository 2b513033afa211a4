"""Tests for asrkit.scaling and ``asrkit scaling fit``: recovery of known laws, errors, the CLI end to end.

    .venv/bin/pytest tests/test_scaling.py -q
"""

import json

import numpy as np
import pytest

from asrkit.cli import main
from asrkit.scaling import Point, ScalingFit, collect_points, compute_of, fit_scaling_law, read_points_csv
from asrkit.training.checkpoint import save_checkpoint
from asrkit.training.flops import update_flops_file

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
A, B, C = 40.0, 0.35, 5.0  # err = 40 * (C / 1e15)^-0.35 + 5


def law(flops):
    return A * (np.asarray(flops) / 1e15) ** -B + C


def points(flops, errors):
    return [Point(f"p{i}", float(f), float(e)) for i, (f, e) in enumerate(zip(flops, errors))]


def test_noiseless_points_give_back_the_law():
    flops = np.geomspace(3e15, 3e19, 6)  # a range where the floor matters (err 28 .. 5.1)
    fit = fit_scaling_law(points(flops, law(flops)))
    assert fit.law == "saturating" and fit.n == 6
    assert fit.a == pytest.approx(A, rel=1e-4) and fit.b == pytest.approx(B, rel=1e-4)
    assert fit.c == pytest.approx(C, abs=1e-3)
    assert fit.r2 > 0.999999 and fit.rmse < 1e-4
    assert fit.compute_for(10.0) == pytest.approx(1e15 * (A / 5.0) ** (1 / B), rel=1e-3)
    assert float(fit.predict(fit.compute_for(10.0))) == pytest.approx(10.0)


def test_the_fit_does_not_depend_on_the_compute_scale():
    small = np.geomspace(1e9, 1e13, 5)  # CPU-sized runs: a is still reported for C in PFLOPs
    err = 2.0 * (small / 1e15) ** -0.2 + 1.0
    fit = fit_scaling_law(points(small, err))
    assert fit.a == pytest.approx(2.0, rel=1e-3) and fit.b == pytest.approx(0.2, rel=1e-3)
    assert fit.c == pytest.approx(1.0, abs=1e-2)


def test_noisy_points_give_a_close_law():
    rng = np.random.default_rng(0)
    flops = np.geomspace(1e15, 1e20, 12)
    err = law(flops) + rng.normal(0.0, 0.2, flops.size)
    fit = fit_scaling_law(points(flops, err))
    assert fit.b == pytest.approx(B, rel=0.1) and fit.c == pytest.approx(C, abs=0.5)
    assert fit.a == pytest.approx(A, rel=0.15)
    assert 0.99 < fit.r2 < 1.0 and 0.05 < fit.rmse < 0.4


def test_few_points_fit_a_plain_power_law():
    flops = np.array([1e16, 1e17, 1e18])
    fit = fit_scaling_law(points(flops, 30.0 * (flops / 1e15) ** -0.25))
    assert fit.law == "power" and fit.c == 0.0
    assert fit.a == pytest.approx(30.0, rel=1e-6) and fit.b == pytest.approx(0.25, rel=1e-6)
    with pytest.raises(ValueError, match="at least 4 points.*--law power"):
        fit_scaling_law(points(flops, [9, 7, 6]), law="saturating")
    with pytest.raises(ValueError, match="at least 2 points"):
        fit_scaling_law(points([1e16], [9.0]))


def test_bad_points_are_refused():
    with pytest.raises(ValueError, match="positive number of FLOPs.*p1"):
        fit_scaling_law(points([1e16, 0.0, 1e18], [9, 8, 7]))
    with pytest.raises(ValueError, match="error rates must be positive"):
        fit_scaling_law(points([1e16, 1e17, 1e18], [9, 8, 0]))
    with pytest.raises(ValueError, match="same training compute"):
        fit_scaling_law(points([1e16, 1e16], [9, 8]))
    with pytest.raises(ValueError, match="does not fall"):
        fit_scaling_law(points([1e16, 1e17, 1e18, 1e19], [5, 6, 7, 8]))
    fit = ScalingFit("saturating", 10.0, 0.5, 3.0, 1.0, 0.0, 4)
    with pytest.raises(ValueError, match="floor"):
        fit.compute_for(2.5)


def _fake_exp(root, name, flops_by_epoch, rates, final_flops=None):
    """An experiment dir as asrkit train + decode leave it: flops.json and wer-summary files."""
    d = root / name
    d.mkdir(parents=True)
    for epoch, (step, flops) in enumerate(flops_by_epoch, start=1):
        update_flops_file(d, step, epoch, flops, True, 10)
    if final_flops is not None:
        update_flops_file(d, 999, len(flops_by_epoch) + 1, final_flops, False, 10)
    for rel, rate in rates.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(f"%WER {rate:.2f} [ 1 / 100, 0 ins, 0 del, 1 sub ]\n")
    return d


def test_collect_points_matches_the_decoded_epoch(tmp_path):
    d = _fake_exp(tmp_path, "m", [(10, 1e15), (20, 2e15)], {
        "greedy-search/wer-summary-test-epoch-1-avg-1.txt": 12.0,
        "greedy-search/wer-summary-test-final.txt": 9.0,
        "modified-beam-search/wer-summary-test-final-beam4.txt": 8.5}, final_flops=2.5e15)
    (p,) = collect_points([d], results="greedy-search/*epoch-1-*")
    assert (p.name, p.flops, p.error) == ("m", 1e15, 12.0)
    (p,) = collect_points([d], results="greedy-search/*final*")
    assert (p.flops, p.error) == (2.5e15, 9.0)  # not an epoch checkpoint: the newest compute
    with pytest.raises(ValueError, match="3 WER summaries, some of one model.*narrow --results"):
        collect_points([d])  # two of them decode the final model
    with pytest.raises(ValueError, match="no CER summary"):
        collect_points([d], metric="cer", results="greedy-search/*final*")
    with pytest.raises(FileNotFoundError, match="no decoding summary"):
        collect_points([d], results="nothing/*")


def test_epochs_of_one_dir_give_its_learning_curve(tmp_path):
    d = _fake_exp(tmp_path, "joint", [(10, 1e15), (20, 2e15)], {
        "g/wer-summary-test-epoch-2-avg-1.txt": 20.0, "g/wer-summary-test-final.txt": 15.0,
        "g/wer-summary-test-epoch-1-avg-1.txt": 40.0, "g/wer-summary-dev-final.txt": 14.0}, final_flops=2.5e15)
    points = collect_points([d], results="g/wer-summary-test-*")
    assert [(p.name, p.flops, p.error) for p in points] == [
        ("joint:epoch-1", 1e15, 40.0), ("joint:epoch-2", 2e15, 20.0), ("joint:final", 2.5e15, 15.0)]
    with pytest.raises(ValueError, match="some of one model"):
        collect_points([d], results="g/*final*")  # dev and test of the final model


def test_compute_falls_back_to_the_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "epoch-3.pt", {"step": 30, "flops": 7e14, "epoch_finished": True})
    assert compute_of(tmp_path, 3) == 7e14
    assert compute_of(tmp_path) == 7e14  # the newest checkpoint
    save_checkpoint(tmp_path / "epoch-4.pt", {"step": 40, "epoch_finished": True})
    with pytest.raises(ValueError, match="no 'flops' entry"):
        compute_of(tmp_path, 4)
    with pytest.raises(FileNotFoundError, match="no training FLOPs for epoch 5"):
        compute_of(tmp_path, 5)


def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_cli_fits_experiment_dirs_and_plots(tmp_path, capsys):
    flops = np.geomspace(1e16, 1e19, 5)
    dirs = []
    for i, f in enumerate(flops):
        rates = {"greedy-search/wer-summary-test-epoch-2-avg-1.txt": float(law(f)),
                 "greedy-search/wer-summary-dev-epoch-2-avg-1.txt": 99.0}
        dirs.append(str(_fake_exp(tmp_path, f"exp{i}", [(1, f / 2), (2, f)], rates)))
    out, js = tmp_path / "plots" / "scaling.png", tmp_path / "fit.json"
    assert main(["scaling", "fit", "--exp-dirs", *dirs, "--results", "greedy-search/wer-summary-test-*",
                 "--out", str(out), "--target-error", "10", "--json", str(js)]) == 0
    printed = capsys.readouterr().out
    assert "saturating law over 5 points" in printed and "R^2 = 1.0000" in printed
    assert "WER 10 predicted at" in printed
    _check_png(out)
    fit = json.loads(js.read_text())["fit"]
    assert fit["b"] == pytest.approx(B, rel=1e-3) and fit["c"] == pytest.approx(C, abs=0.05)


def test_cli_csv_mode(tmp_path, capsys):
    csv = tmp_path / "paper.csv"
    csv.write_text("name,flops,error\nbase,1e18,12.5\nlarge,4e18,10.1\nxl,1.6e19,8.9\n")
    assert [p.name for p in read_points_csv(csv)] == ["base", "large", "xl"]
    assert main(["scaling", "fit", "--csv", str(csv), "--metric", "cer", "--out", str(tmp_path / "p.png"),
                 "--target-error", "5"]) == 0
    printed = capsys.readouterr().out
    assert "power law over 3 points" in printed and "a = " in printed and "CER 5 predicted at" in printed
    _check_png(tmp_path / "p.png")
    (tmp_path / "bad.csv").write_text("model,compute,cer\nx,1,2\n")
    with pytest.raises(ValueError, match="name,flops,error"):
        read_points_csv(tmp_path / "bad.csv")
