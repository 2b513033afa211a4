"""Tests for asrkit.training.flops and the trainer's FLOPs accounting.

    .venv/bin/pytest tests/test_flops.py -q

Counts are checked against the analytic multiply-add counts of Linear, grouped Conv1d and attention,
with frozen parts below and above trainable ones; the trainer's total against the same analytic count
over the real batches of test_trainer's tiny regression task, across an exact resume.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asrkit.training.checkpoint import load_checkpoint
from asrkit.training.flops import (
    FlopCounter,
    count_flops,
    dense_train_flops,
    linear_train_flops,
    read_flops_file,
    update_flops_file,
)
from asrkit.training.trainer import Trainer
from test_trainer import TinyModel, assert_same_weights, make_cfg, make_compute_loss, make_cuts, make_dl


def test_linear_forward_backward_matches_the_analytic_count():
    lin = nn.Linear(8, 5, bias=True)
    x = torch.randn(3, 7, 8, requires_grad=True)  # 21 rows
    _, c = count_flops(lambda: lin(x).sum().backward())
    assert c.total == linear_train_flops(21, 8, 5) == 3 * 2 * 21 * 8 * 5
    _, c = count_flops(lambda: lin(x.detach()).sum().backward())  # input needs no gradient
    assert c.total == linear_train_flops(21, 8, 5, input_grad=False)
    assert lin.weight.grad is not None


def test_matmul_and_bmm_are_counted():
    a, b = torch.randn(4, 6, 5, requires_grad=True), torch.randn(4, 5, 3, requires_grad=True)
    _, c = count_flops(lambda: torch.matmul(a, b).sum().backward())
    assert c.total == 3 * 2 * 4 * 6 * 5 * 3  # forward, grad a, grad b: one bmm each


def _two_layers(freeze: str) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(16, 32, bias=False), nn.Linear(32, 4, bias=False))
    frozen = net[0] if freeze == "bottom" else net[1]
    frozen.requires_grad_(False)
    return net


def test_frozen_bottom_layer_costs_only_its_forward():
    net, x = _two_layers("bottom"), torch.randn(10, 16)
    _, c = count_flops(lambda: net(x).sum().backward())
    # layer 1: forward only (no weight gradient, nothing trainable below); layer 2: forward + weight grad
    assert c.total == 2 * 10 * 16 * 32 + 2 * (2 * 10 * 32 * 4)
    assert net[0].weight.grad is None and net[1].weight.grad is not None


def test_frozen_top_layer_still_backpropagates_to_the_trainable_bottom():
    net, x = _two_layers("top"), torch.randn(10, 16)
    _, c = count_flops(lambda: net(x).sum().backward())
    # layer 2: forward + gradient wrt its input (no weight gradient); layer 1: forward + weight grad
    assert c.total == 2 * (2 * 10 * 32 * 4) + 2 * (2 * 10 * 16 * 32)
    assert net[1].weight.grad is None and net[0].weight.grad is not None


def test_dense_estimate_splits_backward_by_what_runs():
    assert dense_train_flops(100, 10) == 6000
    assert dense_train_flops(100, 10, trainable_fraction=0.0) == 4000  # frozen, trainable below
    assert dense_train_flops(100, 10, trainable_fraction=0.0, backprop_through=False) == 2000
    with pytest.raises(ValueError):
        dense_train_flops(100, 10, trainable_fraction=1.5)


@pytest.mark.parametrize("groups,c_out", [(1, 8), (4, 8), (16, 16)])
def test_grouped_and_depthwise_convolution_backward(groups, c_out):
    conv = nn.Conv1d(16, c_out, 5, groups=groups, padding=2)
    x = torch.randn(2, 16, 30, requires_grad=True)
    _, c = count_flops(lambda: conv(x).sum().backward())
    forward = 2 * 2 * 30 * c_out * (16 // groups) * 5
    assert c.by_op["aten.convolution"] == forward
    assert c.by_op["aten.convolution_backward"] == 2 * forward  # grad input + grad weight, one forward each


def test_cpu_attention_kernel_is_counted():
    q, k, v = (torch.randn(2, 4, 16, 8, requires_grad=True) for _ in range(3))
    _, c = count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    forward = 2 * 2 * 4 * 16 * 16 * 8 * 2  # scores and weighted sum
    assert c.total == forward + 5 * forward // 2  # backward: recomputed scores + 4 matmuls


class _MatmulTwice(torch.autograd.Function):
    """A custom Function whose backward runs its own matmuls (like the Zipformer's scaling.py)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g @ w.t(), x.t() @ g


def test_ops_inside_custom_autograd_functions_are_counted():
    x, w = torch.randn(6, 5, requires_grad=True), torch.randn(5, 3, requires_grad=True)
    _, c = count_flops(lambda: _MatmulTwice.apply(x, w).sum().backward(), track_uncounted=True)
    assert c.total == 3 * 2 * 6 * 5 * 3
    assert "aten.sum" in c.uncounted and "aten.view" not in c.uncounted


def test_counting_does_not_change_results():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(4, 8, 3, groups=2), nn.ReLU(), nn.Conv1d(8, 8, 3, groups=8))
    x = torch.randn(2, 4, 20)
    net(x).square().sum().backward()
    plain = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    with FlopCounter() as c:
        net(x).square().sum().backward()
    assert c.total > 0
    assert all(torch.equal(a, p.grad) for a, p in zip(plain, net.parameters()))


def test_flops_file_keeps_finished_epochs(tmp_path):
    update_flops_file(tmp_path, 10, 1, 1e12, True, 10)
    update_flops_file(tmp_path, 15, 2, 1.5e12, False, 10)
    info = read_flops_file(tmp_path / "flops.json")
    assert info["flops"] == 1.5e12 and info["epoch"] == 2 and not info["epoch_finished"]
    assert info["epochs"] == {"1": {"step": 10, "flops": 1e12}}
    update_flops_file(tmp_path, 20, 2, 2e12, True, 10)
    update_flops_file(tmp_path, 30, 3, 3e12, True, 10)
    update_flops_file(tmp_path, 20, 2, 2e12, True, 10)  # restarted from epoch-2.pt: epoch 3 is gone
    assert list(read_flops_file(tmp_path / "flops.json")["epochs"]) == ["1", "2"]
    (tmp_path / "bad.json").write_text(json.dumps({"step": 1}))
    with pytest.raises(ValueError, match="no numeric 'flops'"):
        read_flops_file(tmp_path / "bad.json")


# ------------------------------------------------------------------------------------------ trainer


@pytest.fixture(scope="module")
def cuts():
    return make_cuts(24, seed=0)


def _recording_loss(rows: list):
    inner = make_compute_loss()

    def compute_loss(model, batch, is_training):
        if is_training:
            rows.append(batch["feats"].shape[0] * batch["feats"].shape[1])  # padded frames: what the model runs
        return inner(model, batch, is_training)

    return compute_loss


def _trainer(cfg, exp_dir, cuts, rows=None, model_seed=0):
    torch.manual_seed(model_seed)
    return Trainer(cfg, TinyModel(), make_dl(cuts), exp_dir, _recording_loss([] if rows is None else rows))


# TinyModel: Linear(4, 16) on features that need no gradient (forward + weight grad), then Linear(16, 2)
# (forward + weight grad + input grad); everything else in the step is elementwise.
FLOPS_PER_ROW = 2 * (2 * 4 * 16) + 3 * (2 * 16 * 2)


def test_trainer_counts_every_step_exactly_and_writes_flops_json(tmp_path, cuts):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = []
    exp = tmp_path / "exp"
    trainer = _trainer(make_cfg(num_epochs=2, count_flops_every=1, tensorboard=True), exp, cuts, rows)
    trainer.fit()
    assert trainer.total_flops == FLOPS_PER_ROW * sum(rows) > 0
    info = read_flops_file(exp / "flops.json")
    assert info["flops"] == trainer.total_flops and info["step"] == trainer.step and info["epoch"] == 2
    assert info["epochs"]["2"]["flops"] == trainer.total_flops
    assert 0 < info["epochs"]["1"]["flops"] < trainer.total_flops
    assert load_checkpoint(exp / "epoch-1.pt")["flops"] == info["epochs"]["1"]["flops"]
    acc = EventAccumulator(str(exp / "tensorboard"))
    acc.Reload()
    values = [e.value for e in acc.Scalars("train/flops")]
    assert len(values) >= 2 and values == sorted(values) and values[-1] <= trainer.total_flops


def test_sampled_counting_is_close_and_resume_is_exact(tmp_path, cuts):
    rows = []
    straight = _trainer(make_cfg(count_flops_every=4), tmp_path / "straight", cuts, rows)
    straight.fit()
    exact = FLOPS_PER_ROW * sum(rows)
    assert straight.total_flops != exact  # most steps were estimated...
    assert straight.total_flops == pytest.approx(exact, rel=0.1)  # ...from the FLOPs per frame of the others

    first = _trainer(make_cfg(count_flops_every=4, max_steps=7), tmp_path / "resumed", cuts)
    first.fit()
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint-7.pt")["flops"] == first.total_flops > 0
    second = _trainer(make_cfg(count_flops_every=4), tmp_path / "resumed", cuts)
    assert second.resume(tmp_path / "resumed")
    assert second.total_flops == first.total_flops
    second.fit()
    assert second.step == straight.step
    assert second.total_flops == pytest.approx(straight.total_flops, rel=1e-12)


def test_counting_leaves_training_bit_identical(tmp_path, cuts):
    on = _trainer(make_cfg(num_epochs=1, count_flops_every=1), tmp_path / "on", cuts)
    on.fit()  # (the Trainer seeds the global RNGs when built: build each just before its fit)
    off = _trainer(make_cfg(num_epochs=1, count_flops=False), tmp_path / "off", cuts)
    off.fit()
    assert_same_weights(on.model, off.model)
    assert off.total_flops == 0 and not (tmp_path / "off" / "flops.json").exists()
    with pytest.raises(ValueError, match="count_flops_every"):
        make_cfg(count_flops_every=0)


def test_flops_budget_stops_training_at_the_first_step_past_it(tmp_path, cuts):
    rows = []
    full = _trainer(make_cfg(num_epochs=1, count_flops_every=1), tmp_path / "full", cuts, rows)
    full.fit()
    per_step = [FLOPS_PER_ROW * r for r in rows]
    budget = sum(per_step[:3]) - 1.0  # spent during step 3
    rows.clear()
    capped = _trainer(make_cfg(num_epochs=1, count_flops_every=1, max_flops=budget), tmp_path / "capped", cuts, rows)
    capped.fit()
    assert capped.step == 3 and capped.total_flops == sum(per_step[:3]) >= budget
    assert read_flops_file(tmp_path / "capped" / "flops.json")["step"] == 3
    with pytest.raises(ValueError, match="count_flops"):
        make_cfg(max_flops=1.0, count_flops=False)
