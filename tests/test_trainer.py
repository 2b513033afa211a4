"""Tests for asrkit.training.trainer and asrkit.training.optim: learning, exact resume, NaN guard, logs.

    .venv/bin/pytest tests/test_trainer.py -q

Data is a tiny real lhotse CutSet whose cuts carry in-memory random features; a real
DynamicBucketingSampler and DataLoader (with and without a worker process) feed a small regression
model with dropout, so the RNG state matters for resume.
"""

import math
import random
from typing import List, Optional

import numpy as np
import pytest
import torch
from lhotse import CutSet, MonoCut
from lhotse.dataset import DynamicBucketingSampler
from torch import nn
from torch.utils.data import DataLoader

from asrkit.training.checkpoint import find_checkpoints, load_checkpoint
from asrkit.training.optim import WarmupDecayLR, build_optimizer, build_scheduler
from asrkit.training.trainer import TrainConfig, Trainer

FEAT_DIM = 4
W_TRUE = torch.tensor([[1.0, -2.0], [0.5, 0.0], [-1.0, 1.0], [2.0, 0.5]])  # (C, 2)


def make_cuts(n: int, seed: int) -> CutSet:
    rng = np.random.default_rng(seed)
    cuts = []
    for i in range(n):
        dur = round(0.2 + 0.05 * (i % 7), 2)
        feats = rng.standard_normal((int(round(dur * 100)), FEAT_DIM)).astype(np.float32)  # (T, C)
        cut = MonoCut(id=f"cut-{seed}-{i:03d}", start=0.0, duration=dur, channel=0)
        cuts.append(cut.attach_tensor("feats", feats, frame_shift=0.01, temporal_dim=0))
    return CutSet.from_cuts(cuts)


class FeatsDataset(torch.utils.data.Dataset):
    """CutSet batch -> padded features, lengths, regression targets and cut ids."""

    def __init__(self, augment: bool = False):
        self.augment = augment

    def __getitem__(self, cuts: CutSet) -> dict:
        feats = [torch.from_numpy(c.load_feats()) for c in cuts]
        lens = torch.tensor([f.shape[0] for f in feats])
        x = nn.utils.rnn.pad_sequence(feats, batch_first=True)  # (N, T, C)
        if self.augment:  # python RNG in the main process: resume must restore it
            x = x * random.uniform(0.9, 1.1)
        return {"feats": x, "lens": lens, "targets": x @ W_TRUE, "ids": [c.id for c in cuts]}


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(FEAT_DIM, 16)
        self.drop = nn.Dropout(0.1)
        self.l2 = nn.Linear(16, 2)

    def forward(self, x):  # (N, T, C) -> (N, T, 2)
        return self.l2(self.drop(torch.relu(self.l1(x))))


def make_compute_loss(seen: Optional[List] = None, bad_ids=(), nan_grad: bool = False):
    def compute_loss(model, batch, is_training):
        if is_training and seen is not None:
            seen.append(tuple(batch["ids"]))
        pred = model(batch["feats"])  # (N, T, 2)
        mask = torch.arange(pred.shape[1])[None, :] < batch["lens"][:, None]  # (N, T)
        se = ((pred - batch["targets"]) ** 2).sum(-1)[mask].sum()
        frames = float(batch["lens"].sum())
        if is_training:
            se = se * (1.0 + 0.01 * float(np.random.randn()))  # numpy RNG: resume must restore it
        if any(i in bad_ids for i in batch["ids"]):
            se = se * float("nan")
        if nan_grad:
            se = se + torch.sqrt(model.l1.weight[0, 0] * 0.0)  # finite loss, NaN gradient
        return se / frames, {"loss": float(se.detach()), "se": float(se.detach())}, frames

    return compute_loss


@pytest.fixture(scope="module")
def cuts() -> CutSet:
    return make_cuts(24, seed=0)


def make_dl(cuts: CutSet, num_workers: int = 0, shuffle: bool = True, augment: bool = False) -> DataLoader:
    sampler = DynamicBucketingSampler(cuts, max_duration=1.2, shuffle=shuffle, num_buckets=2, seed=3)
    return DataLoader(FeatsDataset(augment), sampler=sampler, batch_size=None, num_workers=num_workers)


def make_cfg(**kw) -> TrainConfig:
    base = dict(num_epochs=3, lr=1e-2, warmup_steps=3, log_interval=2, device="cpu", amp=False,
                progress_bar=False, tensorboard=False, seed=1, keep_last_k=0)
    base.update(kw)
    return TrainConfig(**base)


def new_trainer(cfg, exp_dir, cuts, seen=None, num_workers=0, on_step=None, **kw):
    torch.manual_seed(0)
    return Trainer(cfg, TinyModel(), make_dl(cuts, num_workers, augment=num_workers == 0), exp_dir,
                   make_compute_loss(seen, **kw), on_step=on_step)


def assert_same_weights(a: nn.Module, b: nn.Module):
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), f"{name} differs after resume"


def batches_per_epoch(cuts, epoch: int = 1) -> int:
    sampler = make_dl(cuts).sampler
    sampler.set_epoch(epoch - 1)  # the shuffle (hence the bucketing) differs per epoch
    return sum(1 for _ in sampler)


def total_batches(cuts, num_epochs: int) -> int:
    return sum(batches_per_epoch(cuts, e) for e in range(1, num_epochs + 1))


def test_training_lowers_loss(tmp_path, cuts):
    valid_dl = make_dl(make_cuts(8, seed=1), shuffle=False)
    torch.manual_seed(0)
    trainer = Trainer(make_cfg(num_epochs=4, lr=3e-2), TinyModel(), make_dl(cuts), tmp_path / "exp",
                      make_compute_loss(), valid_dl=valid_dl)
    before = trainer.validate()
    trainer.fit()
    after = trainer.validate()
    assert after < 0.3 * before, (before, after)
    assert trainer.epoch == 5 and trainer.step == total_batches(cuts, 4)
    assert [p.name for p in find_checkpoints(tmp_path / "exp", "epoch")] == [f"epoch-{i}.pt" for i in range(1, 5)]
    assert (tmp_path / "exp" / "best-valid-loss.pt").is_file()


@pytest.mark.parametrize("amp_cpu", [False, True])
def test_amp_cpu_trains_under_bf16_autocast(tmp_path, cuts, amp_cpu):
    """train.amp_cpu: the forward runs under CPU bf16 autocast (fp32 weights), and it still learns."""
    dtypes = []
    torch.manual_seed(0)
    model = TinyModel()
    model.l2.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    valid_dl = make_dl(make_cuts(8, seed=1), shuffle=False)
    trainer = Trainer(make_cfg(num_epochs=4, lr=3e-2, amp_cpu=amp_cpu, amp_dtype="fp16"), model, make_dl(cuts),
                      tmp_path / "exp", make_compute_loss(), valid_dl=valid_dl)
    before = trainer.validate()
    trainer.fit()
    assert set(dtypes) == {torch.bfloat16 if amp_cpu else torch.float32}  # fp16 asked: CPU autocast is bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert trainer.validate() < 0.3 * before


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_mid_epoch_gives_identical_weights(tmp_path, cuts, num_workers):
    n = batches_per_epoch(cuts)
    assert n >= 5
    straight_seen: List = []
    straight = new_trainer(make_cfg(), tmp_path / "straight", cuts, straight_seen, num_workers)
    straight.fit()

    # First run stops mid-epoch 2 (max_steps), a fresh process-like Trainer resumes from its dir.
    k = n + 3
    first_seen: List = []
    first = new_trainer(make_cfg(max_steps=k), tmp_path / "resumed", cuts, first_seen, num_workers)
    first.fit()
    assert first.step == k and first.epoch == 2 and first.batch_in_epoch == 3
    assert (tmp_path / "resumed" / f"checkpoint-{k}.pt").is_file()

    second_seen: List = []
    second = new_trainer(make_cfg(), tmp_path / "resumed", cuts, second_seen, num_workers)
    assert second.resume(tmp_path / "resumed")
    second.fit()
    assert first_seen + second_seen == straight_seen
    assert second.step == straight.step == total_batches(cuts, 3)
    assert_same_weights(second.model, straight.model)


class Killed(Exception):
    pass


@pytest.mark.parametrize("num_workers", [0, 1])
def test_killed_run_resumes_from_step_checkpoint(tmp_path, cuts, num_workers):
    """Killed 2 steps after a mid-epoch checkpoint; workers had prefetched batches beyond it."""
    n = batches_per_epoch(cuts)
    straight_seen: List = []
    new_trainer(make_cfg(num_epochs=2), tmp_path / "straight", cuts, straight_seen, num_workers).fit()
    straight_model = TinyModel()
    straight_model.load_state_dict(load_checkpoint(tmp_path / "straight" / "epoch-2.pt")["model"])

    kill_at = n + 4  # checkpoints at steps 3, 6, 9, ...; the newest is mid-epoch 2
    last_ckpt = (kill_at // 3) * 3
    assert n < last_ckpt < kill_at < n + batches_per_epoch(cuts, 2)

    def kill(model, step):
        if step == kill_at:
            raise Killed()

    killed_seen: List = []
    exp = tmp_path / "killed"
    with pytest.raises(Killed):
        new_trainer(make_cfg(num_epochs=2, save_every_n=3), exp, cuts, killed_seen, num_workers,
                    on_step=kill).fit()
    assert load_checkpoint(exp / f"checkpoint-{last_ckpt}.pt")["batch_in_epoch"] == last_ckpt - n

    resumed_seen: List = []
    resumed = new_trainer(make_cfg(num_epochs=2, save_every_n=3), exp, cuts, resumed_seen, num_workers)
    resumed.resume(exp)  # newest checkpoint in the dir
    resumed.fit()
    assert killed_seen[:last_ckpt] + resumed_seen == straight_seen
    assert_same_weights(resumed.model, straight_model)


def test_resume_from_epoch_checkpoint_and_empty_dir(tmp_path, cuts):
    straight = new_trainer(make_cfg(num_epochs=2), tmp_path / "a", cuts)
    straight.fit()
    resumed = new_trainer(make_cfg(num_epochs=2), tmp_path / "b", cuts)
    assert not resumed.resume(tmp_path / "b")  # nothing there yet: start from scratch
    resumed.resume(tmp_path / "a" / "epoch-1.pt")
    assert (resumed.epoch, resumed.batch_in_epoch) == (2, 0)
    resumed.fit()
    assert_same_weights(resumed.model, straight.model)


def test_resume_with_a_plain_torch_sampler(tmp_path):
    """Fallback path: a RandomSampler draws its order from the global RNG and cannot fast-forward."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, FEAT_DIM, generator=g)
    data = torch.utils.data.TensorDataset(x, x @ W_TRUE)

    def run(exp_dir, max_steps=None, resume=False):
        seen = []

        def compute_loss(model, batch, is_training):
            xb, yb = batch
            if is_training:
                seen.append(xb[:, 0].tolist())
            se = ((model(xb) - yb) ** 2).sum()
            return se / len(xb), {"loss": float(se.detach())}, float(len(xb))

        torch.manual_seed(0)
        dl = DataLoader(data, batch_size=4, shuffle=True)
        trainer = Trainer(make_cfg(num_epochs=2, max_steps=max_steps), TinyModel(), dl, exp_dir, compute_loss)
        if resume:
            trainer.resume(exp_dir)
        trainer.fit()
        return trainer, seen

    straight, straight_seen = run(tmp_path / "a")
    _, first_seen = run(tmp_path / "b", max_steps=13)
    resumed, second_seen = run(tmp_path / "b", resume=True)
    assert first_seen + second_seen == straight_seen and len(straight_seen) == 20
    assert_same_weights(resumed.model, straight.model)


def test_nan_loss_batches_are_skipped(tmp_path, cuts):
    bad = "cut-0-005"
    trainer = new_trainer(make_cfg(num_epochs=1, max_bad_batches=3), tmp_path / "exp", cuts, bad_ids=(bad,))
    trainer.fit()
    assert trainer.bad_batches == 1
    assert trainer.step == batches_per_epoch(cuts) - 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_nan_guard_aborts_past_the_limit(tmp_path, cuts):
    all_ids = tuple(c.id for c in cuts)
    trainer = new_trainer(make_cfg(num_epochs=1, max_bad_batches=2), tmp_path / "exp", cuts, bad_ids=all_ids)
    with pytest.raises(RuntimeError, match=r"too many bad batches: 3 .*max_bad_batches=2"):
        trainer.fit()
    assert trainer.step == 0


def test_an_epoch_without_batches_is_an_error_not_an_endless_loop(tmp_path, cuts):
    """A sampler that drops every cut (e.g. drop_last with buckets smaller than a batch) would make a step
    budget (max_steps with a huge num_epochs) loop forever on empty epochs."""
    empty = DataLoader(FeatsDataset(False), sampler=[], batch_size=None)
    trainer = Trainer(make_cfg(num_epochs=10**6, max_steps=5), TinyModel(), empty, tmp_path / "exp",
                      make_compute_loss())
    with pytest.raises(RuntimeError, match="epoch 1 gave no training batch"):
        trainer.fit()


def test_non_finite_gradient_skips_the_update(tmp_path, cuts):
    trainer = new_trainer(make_cfg(num_epochs=1, max_bad_batches=100), tmp_path / "exp", cuts, nan_grad=True)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    assert trainer.step == 0 and trainer.bad_batches == batches_per_epoch(cuts)
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_tensorboard_checkpoints_and_hooks(tmp_path, cuts):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps_seen = []
    exp = tmp_path / "exp"
    torch.manual_seed(0)
    trainer = Trainer(make_cfg(num_epochs=2, tensorboard=True, save_every_n=2, keep_last_k=2, valid_interval=4),
                      TinyModel(), make_dl(cuts), exp, make_compute_loss(),
                      valid_dl=make_dl(make_cuts(6, seed=2), shuffle=False),
                      on_step=lambda model, step: steps_seen.append((step, model.training)))
    trainer.fit()
    total = total_batches(cuts, 2)
    assert steps_seen == [(s, True) for s in range(total)]  # before each forward, in train mode
    events = list((exp / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(exp / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/se", "train/lr", "train/grad_norm", "valid/loss"} <= tags
    assert len(acc.Scalars("valid/loss")) == total // 4
    step_ckpts = find_checkpoints(exp, "step")
    assert len(step_ckpts) == 2 and step_ckpts[-1].name == f"checkpoint-{total - total % 2}.pt"
    state = load_checkpoint(step_ckpts[-1])  # weights_only=True
    assert state["config"]["save_every_n"] == 2 and state["sampler"]["shuffle"] is True
    assert state["best_valid_loss"] == trainer.best_valid_loss


def test_warmup_then_decay_schedules():
    model = nn.Linear(2, 2)
    cfg = make_cfg(lr=1.0, warmup_steps=4, scheduler="inverse_sqrt")
    opt = build_optimizer(cfg, model)
    assert [g["weight_decay"] for g in opt.param_groups] == [cfg.weight_decay, 0.0]  # no decay on the bias
    sched = build_scheduler(cfg, opt)
    lrs = []
    for _ in range(16):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[15] == pytest.approx(math.sqrt(4 / 16))

    opt2 = build_optimizer(cfg, model)
    cos = WarmupDecayLR(opt2, warmup_steps=2, decay="cosine", total_steps=10, min_lr_ratio=0.1)
    for _ in range(5):
        opt2.step()
        cos.step()
    mid = opt2.param_groups[0]["lr"]
    state = cos.state_dict()
    opt3 = build_optimizer(cfg, model)
    restored = WarmupDecayLR(opt3, warmup_steps=2, decay="cosine", total_steps=10, min_lr_ratio=0.1)
    restored.load_state_dict(state)
    opt3.step()
    restored.step()
    opt2.step()
    cos.step()
    assert opt3.param_groups[0]["lr"] == pytest.approx(opt2.param_groups[0]["lr"])
    assert opt2.param_groups[0]["lr"] < mid
    for _ in range(10):
        opt2.step()
        cos.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="max_steps or train.decay_steps"):
        build_scheduler(make_cfg(scheduler="cosine"), opt)
    with pytest.raises(ValueError, match="unknown lr scheduler"):
        build_scheduler(make_cfg(scheduler="nope"), opt)
