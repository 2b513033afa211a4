"""Optimizers and learning-rate schedules, chosen by name from the training config.

``build_optimizer(cfg, model)`` and ``build_scheduler(cfg, optimizer)`` read the fields they need
from any config object (normally :class:`asrkit.training.trainer.TrainConfig`):

- ``optimizer``: "adamw" (AdamW; no weight decay on biases and norm gains, i.e. on 0/1-d params);
  ``lr``, ``weight_decay``, ``betas``, ``eps``. "scaled_adam" (:class:`~asrkit.training.scaled_adam.ScaledAdam`,
  for Zipformer; ``lr`` ~0.045, ``betas``, ``eps``, ``clipping_scale``; no weight decay; it clips
  gradients itself, so set ``grad_clip=0``).
- ``scheduler``: linear warm-up over ``warmup_steps`` then "inverse_sqrt", "cosine", "linear" or
  "constant" decay; "cosine" and "linear" decay to ``min_lr_ratio * lr`` at ``decay_steps``
  (default ``max_steps``). "eden" (:class:`~asrkit.training.scaled_adam.Eden`): decays with both
  steps (``lr_batches``) and epochs (``lr_epochs``) after a warm-up from 0.5 x lr over ``warmup_steps``.
  "tri_stage" (:class:`TriStageLR`, fairseq's wav2vec 2.0 / HuBERT fine-tuning schedule): the phases
  ``phase_ratio`` (default 0.1, 0.4, 0.5) of ``max_steps``: linear warm-up from ``init_lr_scale * lr``,
  hold at ``lr``, exponential decay to ``final_lr_scale * lr`` (held there after ``max_steps``);
  ``warmup_steps`` and ``decay_steps`` are not used by it.

The scheduler is stepped once per optimizer step. A scheduler that also has ``step_epoch(epoch)``
(e.g. Eden, added with ScaledAdam) gets it called by the trainer at the start of each epoch.
New optimizers and schedules register themselves in ``OPTIMIZERS`` / ``SCHEDULERS``.
"""

import logging
import math
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from asrkit.training.scaled_adam import Eden, ScaledAdam

log = logging.getLogger(__name__)

__all__ = ["OPTIMIZERS", "SCHEDULERS", "Eden", "ScaledAdam", "TriStageLR", "WarmupDecayLR", "build_optimizer", "build_scheduler"]


def _param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _adamw(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        _param_groups(model, float(getattr(cfg, "weight_decay", 0.0))),
        lr=float(cfg.lr),
        betas=tuple(getattr(cfg, "betas", (0.9, 0.98))),
        eps=float(getattr(cfg, "eps", 1e-8)),
    )


def _scaled_adam(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    clipping_scale = getattr(cfg, "clipping_scale", 2.0)
    if float(getattr(cfg, "grad_clip", 0.0)) > 0:
        log.warning("train.grad_clip=%s clips gradients before ScaledAdam, which clips them itself "
                    "(train.clipping_scale); set train.grad_clip=0", cfg.grad_clip)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return ScaledAdam(named, lr=float(cfg.lr), betas=tuple(getattr(cfg, "betas", (0.9, 0.98))),
                      eps=float(getattr(cfg, "eps", 1e-8)),
                      clipping_scale=float(clipping_scale) if clipping_scale else None)


OPTIMIZERS: Dict[str, Callable[[Any, nn.Module], torch.optim.Optimizer]] = {"adamw": _adamw,
                                                                            "scaled_adam": _scaled_adam}


def build_optimizer(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    name = str(getattr(cfg, "optimizer", "adamw")).lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {sorted(OPTIMIZERS)} (set train.optimizer)")
    return OPTIMIZERS[name](cfg, model)


class WarmupDecayLR(LRScheduler):
    """Linear warm-up from ``lr / warmup_steps`` to ``lr``, then a decay.

    decay: "inverse_sqrt" (``lr * sqrt(warmup / step)``), "cosine" / "linear" (to ``min_lr_ratio * lr``
    at ``total_steps``), or "constant". ``last_epoch`` counts optimizer steps.
    """

    DECAYS = ("inverse_sqrt", "cosine", "linear", "constant")

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int = 0, decay: str = "inverse_sqrt",
                 total_steps: Optional[int] = None, min_lr_ratio: float = 0.0, last_epoch: int = -1):
        if decay not in self.DECAYS:
            raise ValueError(f"unknown lr decay {decay!r}; choose one of {self.DECAYS}")
        if decay in ("cosine", "linear") and not total_steps:
            raise ValueError(f"lr decay {decay!r} needs the total number of steps: set train.max_steps "
                             "or train.decay_steps")
        self.warmup_steps = max(0, int(warmup_steps))
        self.decay = decay
        self.total_steps = int(total_steps) if total_steps else None
        self.min_lr_ratio = float(min_lr_ratio)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """LR multiplier before optimizer step ``step + 1`` (``step`` = steps already taken)."""
        s = step + 1
        w = self.warmup_steps
        if w and s <= w:
            return s / w
        if self.decay == "constant":
            return 1.0
        if self.decay == "inverse_sqrt":
            return math.sqrt(max(w, 1) / s)
        progress = min(1.0, (s - w) / max(1, self.total_steps - w))
        if self.decay == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            shape = 1.0 - progress
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * shape

    def get_lr(self) -> List[float]:
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]


def _warmup_decay(cfg: Any, optimizer: torch.optim.Optimizer) -> LRScheduler:
    total = getattr(cfg, "decay_steps", None) or getattr(cfg, "max_steps", None)
    return WarmupDecayLR(optimizer, warmup_steps=int(getattr(cfg, "warmup_steps", 0)),
                         decay=str(getattr(cfg, "scheduler", "inverse_sqrt")), total_steps=total,
                         min_lr_ratio=float(getattr(cfg, "min_lr_ratio", 0.0)))


class TriStageLR(LRScheduler):
    """fairseq's ``tri_stage`` schedule: warm-up, hold, exponential decay, in proportions of ``total_steps``.

    Why: wav2vec 2.0 / HuBERT (and VietASR's) fine-tuning of a pretrained encoder uses it; a long hold at the
    peak lets the new heads catch up before the decay. With ``w, h, d`` steps per phase (``phase_ratio *
    total_steps``, rounded down), the multiplier before optimizer step ``s + 1`` (``s`` steps taken) is
    ``init + (1 - init) * s / w`` for ``s < w``, ``1`` for ``s < w + h``, ``exp(ln(final) * (s - w - h) / d)``
    for ``s < w + h + d`` and ``final`` after (``init``/``final`` = ``init_lr_scale``/``final_lr_scale``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int,
                 phase_ratio: Sequence[float] = (0.1, 0.4, 0.5), init_lr_scale: float = 0.01,
                 final_lr_scale: float = 0.01, last_epoch: int = -1):
        if not total_steps or int(total_steps) < 1:
            raise ValueError("train.scheduler=tri_stage needs train.max_steps (its phases are fractions of it)")
        ratios = [float(r) for r in phase_ratio]
        if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
            raise ValueError(f"train.phase_ratio must be three non-negative fractions summing to 1 (warm-up, hold, "
                             f"decay), got {list(phase_ratio)}")
        if not 0 < init_lr_scale <= 1 or not 0 < final_lr_scale <= 1:
            raise ValueError(f"train.init_lr_scale and train.final_lr_scale must lie in (0, 1], got {init_lr_scale}, "
                             f"{final_lr_scale}")
        self.total_steps = int(total_steps)
        self.warmup_steps, self.hold_steps, self.decay_steps = (int(r * self.total_steps) for r in ratios)
        self.init_lr_scale, self.final_lr_scale = float(init_lr_scale), float(final_lr_scale)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """LR multiplier before optimizer step ``step + 1`` (``step`` = steps already taken)."""
        w, h, d = self.warmup_steps, self.hold_steps, self.decay_steps
        if step < w:
            return self.init_lr_scale + (1.0 - self.init_lr_scale) * step / w
        step -= w
        if step < h:
            return 1.0
        step -= h
        if step < d:
            return math.exp(math.log(self.final_lr_scale) * step / d)
        return self.final_lr_scale

    def get_lr(self) -> List[float]:
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]


def _tri_stage(cfg: Any, optimizer: torch.optim.Optimizer) -> TriStageLR:
    return TriStageLR(optimizer, total_steps=getattr(cfg, "max_steps", None),
                      phase_ratio=tuple(getattr(cfg, "phase_ratio", (0.1, 0.4, 0.5))),
                      init_lr_scale=float(getattr(cfg, "init_lr_scale", 0.01)),
                      final_lr_scale=float(getattr(cfg, "final_lr_scale", 0.01)))


def _eden(cfg: Any, optimizer: torch.optim.Optimizer) -> Eden:
    return Eden(optimizer, lr_batches=float(getattr(cfg, "lr_batches", 7500.0)),
                lr_epochs=float(getattr(cfg, "lr_epochs", 3.5)),
                warmup_batches=float(getattr(cfg, "warmup_steps", 500)))


# A scheduler has step(), state_dict() and load_state_dict(); step_epoch(epoch) if it uses epochs.
SCHEDULERS: Dict[str, Callable[[Any, torch.optim.Optimizer], Any]] = {
    **{name: _warmup_decay for name in WarmupDecayLR.DECAYS}, "eden": _eden, "tri_stage": _tri_stage,
}


def build_scheduler(cfg: Any, optimizer: torch.optim.Optimizer) -> Any:
    name = str(getattr(cfg, "scheduler", "inverse_sqrt")).lower()
    if name not in SCHEDULERS:
        raise ValueError(f"unknown lr scheduler {name!r}; known: {sorted(SCHEDULERS)} (set train.scheduler)")
    return SCHEDULERS[name](cfg, optimizer)
