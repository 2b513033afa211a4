"""Tests for asrkit.training.scaled_adam (ScaledAdam, Eden) and their registration in optim.py.

    .venv/bin/pytest tests/test_scaled_adam.py -q

Small regression models on seeded random data: the schedule against its formula, learning, the
scale-invariance of the update, exact resume through a weights_only checkpoint, and clipping.
"""

import logging
import math
from typing import Iterator, Tuple

import pytest
import torch
from torch import nn

from asrkit.config import load_config
from asrkit.training.checkpoint import check_weights_only
from asrkit.training.optim import build_optimizer, build_scheduler
from asrkit.training.scaled_adam import Eden, ScaledAdam
from asrkit.training.trainer import TrainConfig

IN, OUT = 16, 8


class ScaledLinear(nn.Module):
    """``y = g * x @ (W / c).T + b``: the stored weight is ``c`` times the one the function uses."""

    def __init__(self, c: float = 1.0, dtype=torch.float32):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.c = c
        self.weight = nn.Parameter(c * 0.3 * torch.randn(OUT, IN, generator=gen, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(OUT, dtype=dtype))
        self.gain = nn.Parameter(torch.ones((), dtype=dtype))  # a scalar parameter
        self.unused = nn.Parameter(0.1 * torch.ones(4, 4, dtype=dtype))  # never gets a gradient

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, IN) -> (N, OUT)
        return self.gain * (x @ (self.weight / self.c).T) + self.bias


def batches(seed: int = 1, dtype=torch.float32) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """An endless, seeded stream of (x (N, IN), y (N, OUT)) from a fixed noisy teacher."""
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(OUT, IN, generator=gen, dtype=dtype)
    while True:
        x = torch.randn(32, IN, generator=gen, dtype=dtype)
        yield x, torch.tanh(x @ teacher.T) + 0.1 * torch.randn(32, OUT, generator=gen, dtype=dtype)


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, data, n: int, sched=None, grad_scale: float = 1.0):
    losses = []
    for _ in range(n):
        x, y = next(data)
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        (loss * grad_scale).backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
    return losses


def eden_formula(base, batch, epoch, lr_batches, lr_epochs, warmup_batches, warmup_start=0.5):
    f = ((batch**2 + lr_batches**2) / lr_batches**2) ** -0.25 * ((epoch**2 + lr_epochs**2) / lr_epochs**2) ** -0.25
    warm = 1.0 if batch >= warmup_batches else warmup_start + (1 - warmup_start) * batch / warmup_batches
    return base * f * warm


# ---------------------------------------------------------------------------------------------- Eden

def test_eden_matches_formula_and_round_trips(tmp_path):
    model = ScaledLinear()
    opt = ScaledAdam(model.parameters(), lr=0.05)
    sched = Eden(opt, lr_batches=100, lr_epochs=2, warmup_batches=40)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)  # warm-up starts at half the lr
    checks = {}
    for batch, epoch in [(0, 0), (10, 0), (40, 0), (160, 1), (450, 3), (1000, 7)]:
        sched.step_epoch(epoch)
        while sched.batch < batch:
            sched.step()
        checks[(batch, epoch)] = opt.param_groups[0]["lr"]
    for (b, e), lr in checks.items():
        assert lr == pytest.approx(eden_formula(0.05, b, e, 100, 2, 40), rel=1e-12), (b, e)
    assert checks[(1000, 7)] < 0.05 * 0.2  # it does decay

    torch.save(sched.state_dict(), tmp_path / "sched.pt")
    opt2 = ScaledAdam(ScaledLinear().parameters(), lr=0.05)
    sched2 = Eden(opt2, lr_batches=100, lr_epochs=2, warmup_batches=40)
    sched2.load_state_dict(torch.load(tmp_path / "sched.pt", weights_only=True))
    assert sched2.get_last_lr() == sched.get_last_lr()
    sched.step(), sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_eden_rejects_bad_settings():
    opt = ScaledAdam(ScaledLinear().parameters())
    with pytest.raises(ValueError, match="lr_batches"):
        Eden(opt, lr_batches=0, lr_epochs=3)


# ---------------------------------------------------------------------------------------------- ScaledAdam

def test_scaled_adam_learns():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(IN, 32), nn.Tanh(), nn.Linear(32, OUT))
    opt = ScaledAdam(model.named_parameters(), lr=0.03)
    losses = train_steps(model, opt, batches(), 300)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.2 * first, (first, last)


@pytest.mark.parametrize("c", [4.0, 0.25])
def test_update_is_invariant_to_weight_scale(c):
    """Storing c * W (and using W = stored / c) gives the same function at every step."""
    data_1, data_c = batches(dtype=torch.float64), batches(dtype=torch.float64)
    ref, scaled = ScaledLinear(1.0, torch.float64), ScaledLinear(c, torch.float64)
    opt_1, opt_c = ScaledAdam(ref.parameters(), lr=0.03), ScaledAdam(scaled.parameters(), lr=0.03)
    w0 = ref.weight.detach().clone()
    train_steps(ref, opt_1, data_1, 45)  # past scale updates (every 4) and clipping estimates (10, 20, 40)
    train_steps(scaled, opt_c, data_c, 45)
    assert not torch.allclose(ref.weight, w0, atol=1e-2)  # it did move
    torch.testing.assert_close(scaled.weight / c, ref.weight, rtol=1e-4, atol=1e-7)  # eps breaks exactness slightly
    torch.testing.assert_close(scaled.bias, ref.bias, rtol=1e-4, atol=1e-7)  # eps breaks exactness slightly
    torch.testing.assert_close(scaled.gain, ref.gain, rtol=1e-4, atol=1e-7)  # eps breaks exactness slightly

    # Adam is not scale-invariant: the same experiment diverges
    ref, scaled = ScaledLinear(1.0, torch.float64), ScaledLinear(c, torch.float64)
    adam_1, adam_c = torch.optim.Adam(ref.parameters(), lr=0.01), torch.optim.Adam(scaled.parameters(), lr=0.01)
    train_steps(ref, adam_1, batches(dtype=torch.float64), 45)
    train_steps(scaled, adam_c, batches(dtype=torch.float64), 45)
    assert (scaled.weight / c - ref.weight).abs().max() > 1e-2


def test_state_dict_resume_is_exact(tmp_path):
    """Save optimizer + schedule mid-run, load them (weights_only) into fresh objects: same continuation."""
    model = ScaledLinear()
    opt = ScaledAdam(model.named_parameters(), lr=0.04)
    sched = Eden(opt, lr_batches=50, lr_epochs=2, warmup_batches=10)
    data = batches()
    train_steps(model, opt, data, 13, sched)  # mid scale-update period, after the first clipping estimate
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    check_weights_only(state)
    torch.save(state, tmp_path / "ckpt.pt")

    resumed = ScaledLinear()
    opt2 = ScaledAdam(resumed.named_parameters(), lr=0.04)
    sched2 = Eden(opt2, lr_batches=50, lr_epochs=2, warmup_batches=10)
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed.load_state_dict(loaded["model"])
    opt2.load_state_dict(loaded["optimizer"])
    sched2.load_state_dict(loaded["scheduler"])
    assert opt2.group_stats == opt.group_stats and opt2.group_stats[0]["threshold"] is not None

    data2 = batches()
    for _ in range(13):  # bring a second data stream to the same point
        next(data2)
    sched.step_epoch(1), sched2.step_epoch(1)
    train_steps(model, opt, data, 20, sched)
    train_steps(resumed, opt2, data2, 20, sched2)
    for (name, a), b in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


def test_parameter_without_gradient_keeps_its_momentum():
    model = ScaledLinear()
    opt = ScaledAdam(model.parameters(), lr=0.03)
    data = batches()
    train_steps(model, opt, data, 5)
    assert torch.equal(model.unused, 0.1 * torch.ones(4, 4))  # zero gradient so far: no move
    model.unused.grad = torch.ones(4, 4)
    opt.step()
    moved = model.unused.detach().clone()
    assert not torch.equal(moved, 0.1 * torch.ones(4, 4))
    opt.zero_grad(set_to_none=True)
    opt.step()  # no gradient now: the momentum still carries it on
    assert (model.unused < moved).all()


def test_clipping_engages_on_a_huge_gradient(caplog):
    """After 30 normal steps a gradient 1e4 times larger is clipped; the dominating tensor is named."""
    runs = {}
    for scale in (2.0, None):
        model = ScaledLinear()
        opt = ScaledAdam(model.named_parameters(), lr=0.03, clipping_scale=scale)
        data = batches()
        train_steps(model, opt, data, 30)
        before = model.weight.detach().clone()
        v_before = opt.state[model.weight]["exp_avg_sq"].sum()
        with caplog.at_level(logging.WARNING, logger="asrkit.training.scaled_adam"):
            caplog.clear()
            train_steps(model, opt, data, 1, grad_scale=1e4)
        runs[scale] = (opt.state[model.weight]["exp_avg_sq"].sum() / v_before,
                       (model.weight - before).norm() / before.norm(), caplog.text, opt.group_stats[0])
    v_ratio, step, text, stats = runs[2.0]
    assert v_ratio < 10 and stats["num_clipped"] == 1 and stats["threshold"] > 0
    assert "scaling gradients by" in text and "weight (" in text
    v_ratio_off, step_off, text_off, _ = runs[None]
    assert v_ratio_off > 1e4 and text_off == ""
    assert step < step_off


def test_non_finite_gradient_skips_the_step(caplog):
    model = ScaledLinear()
    opt = ScaledAdam(model.named_parameters(), lr=0.03)
    train_steps(model, opt, batches(), 3)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model.bias.grad[0] = math.inf
    with caplog.at_level(logging.WARNING, logger="asrkit.training.scaled_adam"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert "skipping the update" in caplog.text and "bias" in caplog.text
    assert opt.group_stats[0]["step"] == 3


def test_registered_in_optim_and_config():
    cfg = load_config(TrainConfig, None, ["optimizer=scaled_adam", "scheduler=eden", "lr=0.045", "grad_clip=0",
                                          "lr_batches=1000", "lr_epochs=2", "warmup_steps=100",
                                          "clipping_scale=null"])
    model = ScaledLinear()
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt)
    assert isinstance(opt, ScaledAdam) and isinstance(sched, Eden)
    assert opt.param_groups[0]["clipping_scale"] is None
    assert opt.param_names[0] == ["weight", "bias", "gain", "unused"]
    assert (sched.lr_batches, sched.lr_epochs, sched.warmup_batches) == (1000, 2, 100)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.045 * 0.5)
