"""The training loop shared by every model: AMP, gradient clipping, NaN guard, exact resume.

One loop serves CTC, transducer, AED, SSL and LLM training; a model brings only
``compute_loss(model, batch, is_training) -> (loss, stats, num_frames)``::

    trainer = Trainer(cfg.train, model, train_dl, exp_dir, compute_loss, valid_dl=valid_dl)
    trainer.resume(exp_dir)   # optional: continue from the newest checkpoint there (if any)
    trainer.fit()

``loss`` is the scalar to backpropagate; ``stats`` are *sums* over the batch (``{"loss": ..., "ctc": ...}``)
and ``num_frames`` the frame count they are summed over: logs and tensorboard show stats per frame,
so epoch averages are frame-weighted.

Resume is exact: a run killed mid-epoch and resumed sees the same batches and (on CPU) ends with
bit-identical weights. Checkpoints record how many batches of the epoch were *consumed* (the sampler's
own state runs ahead when DataLoader workers prefetch) and the RNG state at the start of the epoch.
On resume the lhotse sampler is fast-forwarded by that count over its metadata only, the DataLoader
iterator is created from the epoch-start RNG (so workers get the same seeds), and then the RNG state
of the checkpoint is restored. Randomness *inside* DataLoader workers (e.g. augmentation) continues
from the worker's seed, so it is exact only if the dataset derives it from the batch itself.

Distributed (``torchrun``): when torch.distributed is initialised with more than one rank, the model
is wrapped in DistributedDataParallel (gradients averaged over ranks); each rank reads its own shard
of the data (the caller builds the sampler with ``rank``/``world_size``); only rank 0 writes
checkpoints, tensorboard and progress bars.

Model averaging: rank 0 keeps icefall's running average of the weights (``model_avg``, float64, updated
every ``average_period`` steps with weight ``average_period / step``, i.e. the mean of all snapshots
so far). It is saved in every checkpoint, so ``asrkit decode --use-averaged-model --epoch E --avg N``
can recover the average over exactly the steps of epochs E-N+1..E (``checkpoint.averaged_state_dict``).

Training compute (``train.count_flops``): the FLOPs of forward and backward as executed
(``asrkit.training.flops.FlopCounter``, frozen parts as they really run) are counted exactly on every
``count_flops_every``-th step, and the steps between are charged the FLOPs per frame of the counted
ones: the counter routes every op through Python (+16% on a CPU step of the synthetic recipe, likely
more on GPU; ~1.6% at the default of 10), while FLOPs per frame vary by only 8% between that recipe's
batches (the charged total over 60 steps came within 4% of the exact one). ``total_flops`` sums all
ranks; it is saved in checkpoints (``"flops"``), logged (``train/flops``) and written to
``exp_dir/flops.json`` at each epoch end for ``asrkit scaling fit``. Batches skipped as bad still
count (their forward ran); the optimizer update and communication do not.
"""

import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from asrkit.config import config_to_dict
from asrkit.training.checkpoint import (
    check_weights_only,
    get_rng_state,
    latest_checkpoint,
    load_checkpoint,
    remove_old_checkpoints,
    save_checkpoint,
    set_rng_state,
)
from asrkit.training.flops import FlopCounter, update_flops_file
from asrkit.training.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "Trainer", "fix_random_seed", "move_to_device"]

ComputeLoss = Callable[[nn.Module, Any, bool], Tuple[torch.Tensor, Dict[str, float], float]]

_AMP_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


@dataclass
class TrainConfig:
    num_epochs: int = 10
    max_steps: Optional[int] = None  # stop after this many optimizer steps (and save a checkpoint)
    max_flops: Optional[float] = None  # stop once this many training FLOPs are spent (equal-compute baselines)
    optimizer: str = "adamw"  # adamw | scaled_adam (Zipformer; lr ~0.045, grad_clip=0)
    lr: float = 1e-3
    weight_decay: float = 1e-2
    betas: Tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    scheduler: str = "inverse_sqrt"  # inverse_sqrt | cosine | linear | constant, after linear warm-up; eden; tri_stage
    warmup_steps: int = 500
    decay_steps: Optional[int] = None  # cosine/linear: steps to reach min_lr_ratio * lr (default max_steps)
    min_lr_ratio: float = 0.0
    # tri_stage (fairseq's): warm-up / hold / decay as fractions of max_steps; lr from and to these x lr
    phase_ratio: Tuple[float, float, float] = (0.1, 0.4, 0.5)
    init_lr_scale: float = 0.01
    final_lr_scale: float = 0.01
    lr_batches: float = 7500.0  # eden: optimizer steps after which the lr decays markedly
    lr_epochs: float = 3.5  # eden: epochs after which the lr decays markedly
    clipping_scale: Optional[float] = 2.0  # scaled_adam: clip to this x median recent grad norm; null: off
    grad_clip: float = 5.0  # max gradient norm; 0 = no clipping (the norm is still logged)
    amp: bool = True  # mixed precision on CUDA
    amp_cpu: bool = False  # bf16 autocast on CPU too: ~2x faster matmuls with AVX512-BF16 or AMX, slower without
    amp_dtype: str = "bf16"  # bf16 | fp16 (fp16 uses a GradScaler)
    log_interval: int = 20  # steps between log lines / tensorboard points
    valid_interval: int = 0  # steps between validations; 0 = at the end of each epoch
    save_every_n: int = 0  # steps between checkpoint-<step>.pt; 0 = epoch checkpoints only
    keep_last_k: int = 5  # step checkpoints kept; 0 = all
    save_best: bool = True  # keep best-valid-loss.pt
    max_bad_batches: int = 20  # batches with a non-finite loss/gradient tolerated before aborting
    average_period: int = 200  # steps between updates of the running model average; 0 = off
    find_unused_parameters: bool = True  # DDP: the Zipformer skips layers at random while training
    # Model schedules (Zipformer dropout, layer skipping, ...) count batches of ref_duration seconds
    # of audio, as icefall's --ref-duration; a small value runs them faster for short CPU runs.
    ref_duration: float = 600.0
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    tensorboard: bool = True
    progress_bar: bool = True
    count_flops: bool = True  # training FLOPs in checkpoints, logs and exp_dir/flops.json
    count_flops_every: int = 10  # count exactly on every Nth step, others by FLOPs per frame; 1: every step

    def __post_init__(self):
        if self.amp_dtype not in _AMP_DTYPES:
            raise ValueError(f"train.amp_dtype must be one of {sorted(_AMP_DTYPES)}, got {self.amp_dtype!r}")
        if self.num_epochs < 1:
            raise ValueError(f"train.num_epochs must be >= 1, got {self.num_epochs}")
        if self.log_interval < 1:
            raise ValueError(f"train.log_interval must be >= 1, got {self.log_interval}")
        for name in ("valid_interval", "save_every_n", "keep_last_k", "max_bad_batches", "warmup_steps",
                     "average_period"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_flops is not None and not self.count_flops:
            raise ValueError("train.max_flops needs train.count_flops=true")
        if self.count_flops_every < 1:
            raise ValueError(f"train.count_flops_every must be >= 1, got {self.count_flops_every}")


def fix_random_seed(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) dict/list/tuple batch to ``device``; other leaves stay."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name} but CUDA is not available; use train.device=cpu or auto")
    return device


class _Sums:
    """Frame-weighted running sums of loss stats."""

    def __init__(self):
        self.stats: Dict[str, float] = {}
        self.frames = 0.0
        self.loss_x_frames = 0.0  # fallback when stats has no "loss"

    def add(self, stats: Dict[str, float], frames: float, loss: float) -> None:
        for k, v in stats.items():
            v = float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
            self.stats[k] = self.stats.get(k, 0.0) + v
        self.frames += float(frames)
        self.loss_x_frames += float(loss) * float(frames)

    def per_frame(self) -> Dict[str, float]:
        if self.frames <= 0:
            return {}
        out = {k: v / self.frames for k, v in self.stats.items()}
        out.setdefault("loss", self.loss_x_frames / self.frames)
        return out


class Trainer:
    """Trains ``model`` on ``train_dl`` with checkpoints in ``exp_dir``; see the module docstring."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        train_dl: Any,
        exp_dir: Union[str, Path],
        compute_loss: ComputeLoss,
        valid_dl: Optional[Any] = None,
        on_step: Optional[Callable[[nn.Module, int], None]] = None,
        *,
        experiment_config: Any = None,
        resume: Union[bool, str, Path] = False,
    ):
        self.cfg = cfg
        self.exp_dir = Path(exp_dir)
        self.train_dl = train_dl
        self.valid_dl = valid_dl
        self.compute_loss = compute_loss
        self.on_step = on_step
        self.experiment_config = experiment_config
        self.rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.is_main = self.rank == 0

        fix_random_seed(cfg.seed)
        self.device = _resolve_device(cfg.device)
        model = model.to(self.device)
        self.optimizer = build_optimizer(cfg, model)  # on the bare model: parameter names without "module."
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.model = model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index or 0] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(model, device_ids=ids,
                                                 find_unused_parameters=cfg.find_unused_parameters)
        # running average of the weights (rank 0 only), float64 on the CPU as icefall keeps it
        self.model_avg: Optional[Dict[str, torch.Tensor]] = None
        if self.is_main and cfg.average_period > 0:
            self.model_avg = _cpu_float64_copy(model.state_dict())
        self.amp_dtype = _AMP_DTYPES[cfg.amp_dtype]
        self.use_amp = bool(cfg.amp) and self.device.type == "cuda" or bool(cfg.amp_cpu) and self.device.type == "cpu"
        if self.use_amp and self.device.type == "cpu":
            self.amp_dtype = torch.bfloat16  # CPU autocast: bf16 only (no GradScaler)
        elif self.use_amp and self.amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            log.warning("this GPU has no bf16; using fp16 autocast with a GradScaler instead")
            self.amp_dtype = torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)

        # Progress: ``epoch`` is 1-based; ``batch_in_epoch`` counts batches consumed (skipped ones too).
        self.epoch = 1
        self.batch_in_epoch = 0
        self.epoch_finished = False
        self.step = 0  # optimizer steps taken
        self.bad_batches = 0
        self.best_valid_loss = math.inf
        self.valid_loss: Optional[float] = None
        self._epoch_start_rng: Optional[Dict[str, Any]] = None
        self._resume_rng: Optional[Dict[str, Any]] = None
        self._writer = None
        self._last_saved_step = -1
        self._grad_norm = math.nan
        self._interval, self._epoch_sums = _Sums(), _Sums()
        self.total_flops = 0.0  # training FLOPs so far, summed over ranks (see the module docstring)
        self._flops_pending = 0.0  # this rank's FLOPs not yet added to total_flops
        self._flops_rate = [0.0, 0.0]  # (FLOPs, frames) of the exactly counted steps: the per-frame charge
        if self.is_main:
            self.exp_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.resume(self.exp_dir if resume is True else resume)

    # ------------------------------------------------------------------------------------ main loop

    def fit(self) -> None:
        """Train until ``num_epochs`` epochs or ``max_steps`` steps are done."""
        cfg = self.cfg
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info("training on %s (%s parameters), epochs %d..%d, exp_dir %s", self.device, f"{n_params:,}",
                 self.epoch, cfg.num_epochs, self.exp_dir)
        try:
            while self.epoch <= cfg.num_epochs and not self._max_steps_reached():
                if not self._train_one_epoch():
                    break
                self._end_epoch()
            if self._max_steps_reached():
                log.info("reached train.max_steps=%s / train.max_flops=%s at step %d (%.3e FLOPs)", cfg.max_steps,
                         cfg.max_flops, self.step, self.total_flops)
                self._write_flops_file()
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def _max_steps_reached(self) -> bool:
        """True at the step budget or the FLOPs budget (every rank decides the same: totals are synced)."""
        if self.cfg.max_steps is not None and self.step >= self.cfg.max_steps:
            return True
        if self.cfg.max_flops is None:
            return False
        self._sync_flops()
        return self.total_flops >= self.cfg.max_flops

    def _train_one_epoch(self) -> bool:
        """Run (the rest of) epoch ``self.epoch``; False if stopped early by max_steps."""
        epoch, skip = self.epoch, self.batch_in_epoch
        sampler = getattr(self.train_dl, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch - 1)
        dataset = getattr(self.train_dl, "dataset", None)
        if isinstance(dataset, torch.utils.data.IterableDataset) and hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch - 1)  # an iterable dataset holds its own sampler (lhotse Shar)
        if hasattr(self.scheduler, "step_epoch"):
            self.scheduler.step_epoch(epoch - 1)
        fast = skip > 0 and _fast_forward_sampler(sampler, skip)
        if skip == 0:
            if self._resume_rng is not None:
                set_rng_state(self._resume_rng)
                self._resume_rng = None
            self._epoch_start_rng = get_rng_state()
        else:
            # Recreate the epoch's DataLoader iterator (worker seeds, shuffling) from the RNG state it
            # had in the original run; the checkpoint's own RNG state is restored after skipping.
            set_rng_state(self._epoch_start_rng)
        batches: Iterator = iter(self.train_dl)
        if skip > 0 and not fast:
            log.info("skipping %d batches of epoch %d by loading them (the sampler cannot fast-forward)",
                     skip, epoch)
            for i in range(skip):
                if next(batches, None) is None:
                    raise RuntimeError(f"cannot resume: epoch {epoch} has only {i} batches but the checkpoint "
                                       f"consumed {skip}; did the training data change?")
        if skip > 0:
            set_rng_state(self._resume_rng)
            self._resume_rng = None
            log.info("resuming epoch %d after %d batches (step %d)", epoch, skip, self.step)

        self.model.train()
        self._interval, self._epoch_sums = _Sums(), _Sums()
        self._t_interval = time.time()
        total = _maybe_len(self.train_dl)
        bar = tqdm(batches, desc=f"epoch {epoch}", initial=skip, total=total, unit="batch", dynamic_ncols=True,
                   disable=not (self.is_main and self.cfg.progress_bar), leave=False)
        try:
            for batch in bar:
                self.batch_in_epoch += 1
                if not self._train_step(batch):
                    continue
                if self.step % self.cfg.log_interval == 0:
                    self._log_interval(bar)
                if self.valid_dl is not None and self.cfg.valid_interval and self.step % self.cfg.valid_interval == 0:
                    self.validate()
                if self.cfg.save_every_n and self.step % self.cfg.save_every_n == 0:
                    self._save_step_checkpoint()
                if self._max_steps_reached():
                    if self._last_saved_step != self.step:
                        self._save_step_checkpoint()
                    return False
        finally:
            bar.close()
        if skip == 0 and self.batch_in_epoch == 0:
            # Without this a step budget (max_steps with a huge num_epochs) would loop forever on empty epochs.
            raise RuntimeError(f"epoch {epoch} gave no training batch: the sampler dropped every cut. Check "
                               f"the training cuts (filtered by duration/length?), data.max_duration (a "
                               f"bucket must hold at least one batch: drop_last) and data.num_buckets.")
        return True

    def _train_step(self, batch: Any) -> bool:
        """Forward, backward and update on one batch; False if the batch was skipped."""
        if self.on_step is not None:
            self.on_step(self.model, self.step)
        batch = move_to_device(batch, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        counter = self._step_flop_counter()
        with counter if counter is not None else nullcontext():
            with self._autocast():
                loss, stats, frames = self.compute_loss(self.model, batch, True)
            loss_value = float(loss.detach().float())
            if math.isfinite(loss_value):
                self.scaler.scale(loss).backward()
        if self.cfg.count_flops:
            self._add_step_flops(counter, frames)
        if not math.isfinite(loss_value):
            self._bad_batch(f"loss is {loss_value}")
            return False
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            self._bad_batch(f"gradient norm is {grad_norm}")
            return False
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler.is_enabled() and self.scaler.get_scale() < scale:
            # fp16 overflow: the GradScaler skipped the update and lowered its scale; not a bad batch.
            log.debug("step %d: fp16 gradient overflow, loss scale %g -> %g", self.step, scale,
                      self.scaler.get_scale())
            return False
        self.scheduler.step()
        self.step += 1
        if self.model_avg is not None and self.step % self.cfg.average_period == 0:
            self._update_model_avg()
        self._grad_norm = grad_norm
        self._interval.add(stats, frames, loss_value)
        self._epoch_sums.add(stats, frames, loss_value)
        return True

    def _step_flop_counter(self) -> Optional[FlopCounter]:
        """A counter on every ``count_flops_every``-th step, and until a counted step has had frames."""
        if not self.cfg.count_flops:
            return None
        if self.step % self.cfg.count_flops_every == 0 or self._flops_rate[1] <= 0:
            return FlopCounter()
        return None

    def _add_step_flops(self, counter: Optional[FlopCounter], frames: float) -> None:
        if counter is not None:
            flops = float(counter.total)
            self._flops_rate[0] += flops
            self._flops_rate[1] += float(frames)
        else:  # charged at the counted steps' FLOPs per frame
            flops = float(frames) * self._flops_rate[0] / self._flops_rate[1]
        self._flops_pending += flops

    def _sync_flops(self) -> None:
        """Add every rank's pending FLOPs to ``total_flops``; all ranks must call this together."""
        if not self.cfg.count_flops:
            return
        pending = self._flops_pending
        if self.world_size > 1:
            t = torch.tensor([pending], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            pending = float(t)
        self.total_flops += pending
        self._flops_pending = 0.0

    def _write_flops_file(self) -> None:
        self._sync_flops()
        if self.is_main and self.cfg.count_flops:
            update_flops_file(self.exp_dir, self.step, self.epoch, self.total_flops, self.epoch_finished,
                              self.cfg.count_flops_every)

    @torch.no_grad()
    def _update_model_avg(self) -> None:
        """model_avg <- mean of the weights at steps P, 2P, ..., step (P = average_period)."""
        w = self.cfg.average_period / self.step
        for k, v in self._bare_model().state_dict().items():
            if v.is_floating_point():
                self.model_avg[k].mul_(1.0 - w).add_(v.detach().to("cpu", torch.float64), alpha=w)
            else:
                self.model_avg[k] = v.detach().cpu().clone()

    def _bare_model(self) -> nn.Module:
        return self.model.module if hasattr(self.model, "module") else self.model

    def _bad_batch(self, reason: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_batches += 1
        log.warning("epoch %d batch %d (step %d): %s; skipping this batch (%d bad so far, train.max_bad_batches=%d)",
                    self.epoch, self.batch_in_epoch, self.step, reason, self.bad_batches, self.cfg.max_bad_batches)
        if self.bad_batches > self.cfg.max_bad_batches:
            raise RuntimeError(
                f"too many bad batches: {self.bad_batches} had a non-finite loss or gradient, more than "
                f"train.max_bad_batches={self.cfg.max_bad_batches} (last: {reason} at epoch {self.epoch}, "
                f"batch {self.batch_in_epoch}, step {self.step}). Check the data (asrkit validate), lower "
                f"train.lr, or set train.amp=false; resume from the last checkpoint in {self.exp_dir}"
            )

    def _autocast(self):
        if not self.use_amp:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _end_epoch(self) -> None:
        avg = self._epoch_sums.per_frame()
        log.info("epoch %d done: %s", self.epoch, _fmt(avg) or "no steps")
        self.epoch_finished = True
        if self.valid_dl is not None and self.cfg.valid_interval == 0:
            self.validate()
        self._write_flops_file()
        if self.is_main:
            save_checkpoint(self.exp_dir / f"epoch-{self.epoch}.pt", self.state_dict())
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_finished = False

    # --------------------------------------------------------------------------- logging / validation

    def _log_interval(self, bar) -> None:
        avg = self._interval.per_frame()
        lr = self.optimizer.param_groups[0]["lr"]
        elapsed = max(time.time() - self._t_interval, 1e-9)
        self._sync_flops()
        flops = f", {self.total_flops:.3e} FLOPs" if self.cfg.count_flops else ""
        log.info("epoch %d batch %d step %d: %s, lr %.3g, grad_norm %.3g, %.0f frames/s%s", self.epoch,
                 self.batch_in_epoch, self.step, _fmt(avg), lr, self._grad_norm, self._interval.frames / elapsed,
                 flops)
        bar.set_postfix(loss=f"{avg.get('loss', float('nan')):.4g}", lr=f"{lr:.2g}", refresh=False)
        writer = self._tb()
        if writer is not None:
            for k, v in avg.items():
                writer.add_scalar(f"train/{k}", v, self.step)
            writer.add_scalar("train/lr", lr, self.step)
            writer.add_scalar("train/grad_norm", self._grad_norm, self.step)
            if self.cfg.count_flops:
                writer.add_scalar("train/flops", self.total_flops, self.step)
            if self.scaler.is_enabled():
                writer.add_scalar("train/grad_scale", self.scaler.get_scale(), self.step)
        self._interval = _Sums()
        self._t_interval = time.time()

    def _tb(self):
        if self._writer is None and self.is_main and self.cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.exp_dir / "tensorboard"))
        return self._writer

    @torch.no_grad()
    def validate(self) -> float:
        """Frame-averaged loss on ``valid_dl`` (also logged, stored and compared with the best)."""
        if self.valid_dl is None:
            raise ValueError("Trainer.validate() needs valid_dl")
        self._sync_flops()  # best-valid-loss.pt records the compute so far
        was_training = self.model.training
        self.model.eval()
        sums = _Sums()
        for batch in self.valid_dl:
            batch = move_to_device(batch, self.device)
            with self._autocast():
                loss, stats, frames = self.compute_loss(self.model, batch, False)
            sums.add(stats, frames, float(loss.detach().float()))
        self.model.train(was_training)
        avg = _all_reduce_per_frame(sums, self.device)
        if not avg:
            log.warning("validation set gave no frames; valid loss not computed")
            return math.nan
        self.valid_loss = avg["loss"]
        log.info("validation at epoch %d step %d: %s", self.epoch, self.step, _fmt(avg))
        writer = self._tb()
        if writer is not None:
            for k, v in avg.items():
                writer.add_scalar(f"valid/{k}", v, self.step)
        if self.valid_loss < self.best_valid_loss:
            self.best_valid_loss = self.valid_loss
            if self.is_main and self.cfg.save_best:
                save_checkpoint(self.exp_dir / "best-valid-loss.pt", self.state_dict())
        return self.valid_loss

    # ------------------------------------------------------------------------------------ checkpoints

    def _save_step_checkpoint(self) -> None:
        self._sync_flops()
        if self.is_main:
            save_checkpoint(self.exp_dir / f"checkpoint-{self.step}.pt", self.state_dict())
            remove_old_checkpoints(self.exp_dir, self.cfg.keep_last_k)
        self._last_saved_step = self.step

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue training exactly; loadable with weights_only=True."""
        state = {
            "model": self._bare_model().state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "sampler": _sampler_state(getattr(self.train_dl, "sampler", None)),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_finished": self.epoch_finished,
            "step": self.step,
            "bad_batches": self.bad_batches,
            "best_valid_loss": self.best_valid_loss,
            "valid_loss": self.valid_loss,
            "world_size": self.world_size,
            "flops": self.total_flops + self._flops_pending,  # pending is 0 at the points where ranks sync
            "flops_rate": list(self._flops_rate),
            "rng": get_rng_state(),
            "rng_epoch_start": self._epoch_start_rng,
            "config": config_to_dict(self.cfg),
            "experiment_config": config_to_dict(self.experiment_config),
        }
        # Python-side training state of modules (e.g. the Zipformer's adaptive whitening probability)
        state["module_states"] = {name: m.resume_state() for name, m in self._bare_model().named_modules()
                                  if hasattr(m, "resume_state")}
        if self.model_avg is not None:
            state["model_avg"] = self.model_avg
            state["average_period"] = self.cfg.average_period
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._bare_model().load_state_dict(state["model"])
        modules = dict(self._bare_model().named_modules())
        for name, module_state in state.get("module_states", {}).items():
            if name in modules and hasattr(modules[name], "load_resume_state"):
                modules[name].load_resume_state(module_state)
        if self.model_avg is not None:
            if "model_avg" in state:
                self.model_avg = {k: v.cpu().clone() for k, v in state["model_avg"].items()}
            else:
                log.warning("checkpoint has no running model average; restarting it from the loaded weights")
                self.model_avg = _cpu_float64_copy(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("grad_scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["grad_scaler"])
        if state.get("world_size", 1) != self.world_size:
            log.warning("checkpoint was written with world_size=%s, now %d: the remaining batches of the "
                        "epoch will differ from the original run", state.get("world_size"), self.world_size)
        self.step = int(state["step"])
        self.total_flops, self._flops_pending = float(state.get("flops", 0.0)), 0.0
        if "flops" not in state and self.cfg.count_flops:
            log.warning("checkpoint has no training FLOPs (written before asrkit counted them); counting from 0")
        self._flops_rate = [float(v) for v in state.get("flops_rate", (0.0, 0.0))]
        self.bad_batches = int(state.get("bad_batches", 0))
        self.best_valid_loss = float(state.get("best_valid_loss", math.inf))
        self.valid_loss = state.get("valid_loss")
        self._last_saved_step = self.step
        if state.get("epoch_finished"):
            self.epoch, self.batch_in_epoch = int(state["epoch"]) + 1, 0
        else:
            self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self._epoch_start_rng = state.get("rng_epoch_start")
        self._resume_rng = state["rng"]
        if self.batch_in_epoch > 0 and self._epoch_start_rng is None:
            raise RuntimeError("checkpoint is mid-epoch but has no 'rng_epoch_start'; it was not written by "
                               "asrkit's Trainer; resume from an epoch-N.pt instead")

    def resume(self, path_or_dir: Union[str, Path]) -> bool:
        """Load a checkpoint file, or the newest one in a directory; False if the directory has none."""
        path = Path(path_or_dir)
        if path.is_dir():
            found = latest_checkpoint(path)
            if found is None:
                log.warning("no checkpoint in %s; starting from scratch", path)
                return False
            path = found
        self.load_state_dict(load_checkpoint(path, map_location="cpu"))
        log.info("resumed from %s: epoch %d, %d batches into it, step %d", path, self.epoch,
                 self.batch_in_epoch, self.step)
        return True


# -------------------------------------------------------------------------------------------- helpers


def _fast_forward_sampler(sampler: Any, num_batches: int) -> bool:
    """Advance a lhotse sampler past ``num_batches`` batches of its current epoch, on metadata only.

    lhotse samplers skip their reset in the next ``__iter__`` after ``load_state_dict``; we iterate
    the sampler itself (no audio/feature loading), then round-trip its state so that the DataLoader's
    ``iter(sampler)`` continues from there. Returns False for samplers without that protocol.
    """
    needed = ("state_dict", "load_state_dict", "allow_iter_to_reset_state", "__next__")
    if sampler is None or not all(hasattr(sampler, a) for a in needed):
        return False
    sampler.allow_iter_to_reset_state()
    iter(sampler)
    for i in range(num_batches):
        try:
            next(sampler)
        except StopIteration:
            raise RuntimeError(f"cannot resume: the sampler yields only {i} batches this epoch but the checkpoint "
                               f"consumed {num_batches}; did the training data or sampler settings change?") from None
    try:
        sampler.load_state_dict(sampler.state_dict())
    except (AssertionError, NotImplementedError):  # e.g. a custom constraint: no state_dict support
        sampler._just_restored_state = True  # the flag lhotse's __iter__ honours after load_state_dict
    return True


def _sampler_state(sampler: Any) -> Optional[Dict[str, Any]]:
    if sampler is None or not hasattr(sampler, "state_dict"):
        return None
    try:
        state = sampler.state_dict()
        check_weights_only(state, "sampler state")
        return state
    except Exception as e:  # informational only: resume fast-forwards by the consumed batch count
        log.debug("sampler state not saved: %s", e)
        return None


def _cpu_float64_copy(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Floating-point tensors as float64 CPU copies, others as CPU copies (the running average's start)."""
    return {k: v.detach().to("cpu", torch.float64, copy=True) if v.is_floating_point() else v.detach().cpu().clone()
            for k, v in state.items()}


def _maybe_len(dl: Any) -> Optional[int]:
    try:
        return len(dl)
    except TypeError:
        return None


def _all_reduce_per_frame(sums: _Sums, device: torch.device) -> Dict[str, float]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        keys = sorted(sums.stats)
        t = torch.tensor([sums.stats[k] for k in keys] + [sums.frames, sums.loss_x_frames],
                         dtype=torch.float64, device=device)
        dist.all_reduce(t)
        sums.stats = dict(zip(keys, t[: len(keys)].tolist()))
        sums.frames, sums.loss_x_frames = float(t[-2]), float(t[-1])
    return sums.per_frame()


def _fmt(stats: Dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in stats.items())
