"""Tests for the tri-stage learning-rate schedule (``train.scheduler: tri_stage``, fairseq's tri_stage).

    .venv/bin/pytest tests/test_tri_stage.py -q

The curve is checked step by step against fairseq's formula through the real optimizer and
``build_scheduler``; the phase boundaries, the config keys, resume through a state dict and bad settings.
"""

import math

import pytest
import torch
from torch import nn

from asrkit.config import load_config
from asrkit.training.optim import TriStageLR, build_optimizer, build_scheduler
from asrkit.training.trainer import TrainConfig

LR = 2e-3


def _lrs(cfg: TrainConfig, steps: int) -> list:
    """LR used by each of ``steps`` optimizer steps, read from the optimizer as the trainer steps it."""
    model = nn.Linear(4, 2)
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        model(torch.ones(1, 4)).sum().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    return out


def _fairseq(step: int, total: int, ratios=(0.1, 0.4, 0.5), init=0.01, final=0.01, peak=LR) -> float:
    """fairseq's TriStageLRSchedule.step_update(step), written out independently."""
    w, h, d = (int(total * r) for r in ratios)
    if step < w:
        return init * peak + (peak - init * peak) / w * step
    if step < w + h:
        return peak
    if step < w + h + d:
        return peak * math.exp(math.log(final) / d * (step - w - h))
    return final * peak


def test_tri_stage_curve_matches_fairseq():
    cfg = TrainConfig(scheduler="tri_stage", lr=LR, max_steps=200, weight_decay=0.0)
    got = _lrs(cfg, 230)  # 30 steps past max_steps: held at the final lr
    want = [_fairseq(s, 200) for s in range(230)]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-15)
    # phases: 20 warm-up steps from 1% of lr, 80 at lr, 100 decaying to 1% of lr
    assert got[0] == pytest.approx(0.01 * LR)
    assert got[10] == pytest.approx((0.01 + 0.99 * 0.5) * LR)
    assert all(g < LR for g in got[:20]) and all(a < b for a, b in zip(got[:20], got[1:21]))
    assert got[20:100] == [pytest.approx(LR)] * 80
    assert all(a > b for a, b in zip(got[100:200], got[101:201]))
    assert got[150] == pytest.approx(LR * 0.01 ** 0.5)  # halfway through the decay: sqrt(final)
    assert got[200:] == [pytest.approx(0.01 * LR)] * 30


def test_tri_stage_config_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("scheduler: tri_stage\nlr: 0.001\nmax_steps: 100\n")
    cfg = load_config(TrainConfig, path, ["phase_ratio=0.2,0.3,0.5", "init_lr_scale=0.1", "final_lr_scale=0.05"])
    assert cfg.phase_ratio == (0.2, 0.3, 0.5)
    sched = build_scheduler(cfg, build_optimizer(cfg, nn.Linear(2, 2)))
    assert isinstance(sched, TriStageLR)
    assert (sched.warmup_steps, sched.hold_steps, sched.decay_steps) == (20, 30, 50)
    assert [sched.factor(s) for s in (0, 20, 49, 99, 100)] == pytest.approx(
        [0.1, 1.0, 1.0, math.exp(math.log(0.05) * 49 / 50), 0.05])


def test_tri_stage_resumes_from_state_dict():
    cfg = TrainConfig(scheduler="tri_stage", lr=LR, max_steps=50)
    model = nn.Linear(2, 2)
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt)
    for _ in range(17):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = build_optimizer(cfg, model)
    sched2 = build_scheduler(cfg, opt2)
    sched2.load_state_dict(state)
    for _ in range(20):
        opt.step()
        sched.step()
        opt2.step()
        sched2.step()
        assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)


@pytest.mark.parametrize("kw, match", [
    (dict(max_steps=None), "max_steps"),
    (dict(max_steps=10, phase_ratio=(0.5, 0.5, 0.5)), "summing to 1"),
    (dict(max_steps=10, final_lr_scale=0.0), "final_lr_scale"),
])
def test_tri_stage_rejects_bad_settings(kw, match):
    cfg = TrainConfig(scheduler="tri_stage", **kw)
    with pytest.raises(ValueError, match=match):
        build_scheduler(cfg, build_optimizer(cfg, nn.Linear(2, 2)))
