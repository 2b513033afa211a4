"""ScaledAdam optimizer and Eden learning-rate schedule, the pair Zipformer is trained with.

Zipformer (Yao et al. 2023, arXiv 2310.11230, sections 3.5-3.6) is tuned for these two; with
AdamW it leaves the CTC blank plateau slowly and its gradient norm spikes at higher learning rates.

ScaledAdam, for each parameter tensor ``p`` with more than one element:

- takes an Adam step (second moment ``beta2``, bias-corrected) and multiplies it by the tensor's
  RMS (clamped to ``[param_min_rms, param_max_rms]``), so the *relative* change of ``p`` is the
  same whatever its scale: rescaling a weight matrix by ``c`` rescales its updates by ``c``;
- learns that scale explicitly: every ``size_update_period`` steps it moves ``p`` along itself
  (``p += s * p``) by an Adam step on the gradient w.r.t. ``log(scale)``, ``sum(p * grad)``,
  with learning rate ``lr * scalar_lr_scale``; the step ``s`` is clamped to ``[-0.1, 0.1]``, a
  tensor below ``param_min_rms`` is not shrunk further and none grows past ``param_max_rms``;
- smooths the sum of both steps with momentum ``beta1`` (no bias correction, as icefall: the
  slower first steps help stability).

Scalar parameters (one element) get a plain Adam step with learning rate ``lr * scalar_lr_scale``
and are clamped to ``[-scalar_max, scalar_max]``.

Gradient clipping (per parameter group, ``clipping_scale`` e.g. 2.0, None = off): the norm of the
gradient *as the update sees it* (each tensor's gradient times its RMS; scalars times
``scalar_lr_scale``) is recorded every step; the threshold is ``clipping_scale`` times the median
of the last ``clipping_update_period`` norms, re-estimated every ``clipping_update_period`` steps
and early at steps 10, 20 and 40 (with a doubled threshold then, as norms move fast). A step whose
norm is above the threshold has its gradients scaled down to it; a step with a non-finite norm is
skipped with a warning. Give ``model.named_parameters()`` instead of ``model.parameters()`` and the
warning for a heavily clipped step names the tensors that dominate the norm.

A parameter without a gradient on a step (e.g. a layer skipped by Zipformer's layer dropout) is
updated as if its gradient were zero, as icefall does: its momentum carries on, and every
parameter of a group shares one step counter.

Differences from icefall's ``zipformer/optim.py`` (written afresh from the paper): no stacking
of same-shape tensors (``torch._foreach`` ops instead); the second moment is always bias-corrected
(icefall stops once the correction is under 1%); the clipping history includes step 0; a tensor
under ``param_min_rms`` may still grow through its scale step; a non-finite norm skips the step
(icefall zeroes the gradients and lets the momentum run); per-group statistics live in
``group_stats`` (saved in the state dict), not in the first parameter's state.

Eden: ``lr = base_lr * ((batch**2 + lr_batches**2) / lr_batches**2) ** -0.25
* ((epoch**2 + lr_epochs**2) / lr_epochs**2) ** -0.25 * warmup``, with ``warmup`` rising linearly
from ``warmup_start`` to 1 over ``warmup_batches``. ``step()`` once per optimizer step,
``step_epoch(epoch)`` (0-based) at the start of each epoch.

Both ``state_dict()`` hold only tensors, numbers, lists and dicts, so checkpoints load with
``torch.load(weights_only=True)``. Chosen in a config with ``train.optimizer=scaled_adam
train.scheduler=eden train.lr=0.045 train.grad_clip=0`` (see :mod:`asrkit.training.optim`).
"""

import copy
import logging
import math
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["ScaledAdam", "Eden"]

_EARLY_ESTIMATE_STEPS = (10, 20, 40)  # extra clipping-threshold estimates before the first full window


def _rms(p: Tensor) -> Tensor:
    """Root-mean-square of a tensor, as a 0-d tensor."""
    return p.detach().pow(2).mean().sqrt()


class ScaledAdam(torch.optim.Optimizer):
    """Adam whose updates are proportional to each parameter tensor's RMS, which it also learns.

    Args:
        params: parameters, ``(name, parameter)`` pairs (e.g. ``model.named_parameters()``, for
            diagnostics), or param-group dicts whose ``"params"`` are either.
        lr: learning rate; much larger than Adam's (0.03-0.05), as it is relative to the RMS.
        clipping_scale: clip the update-scaled gradient norm to this many times its recent median;
            None turns clipping off.
        betas: momentum of the update (beta1) and decay of the squared-gradient average (beta2).
        scalar_lr_scale: learning-rate factor for scalar parameters and for the tensors' scales.
        eps: added to the root of the second moment.
        param_min_rms / param_max_rms: bounds of the RMS used to scale updates and of the learnt
            tensor scale.
        scalar_max: bound on the absolute value of scalar parameters.
        size_update_period: steps between updates of the tensors' scales (and of their RMS).
        clipping_update_period: steps between re-estimates of the clipping threshold.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.045,
        clipping_scale: Optional[float] = 2.0,
        betas: Tuple[float, float] = (0.9, 0.98),
        scalar_lr_scale: float = 0.1,
        eps: float = 1e-8,
        param_min_rms: float = 1e-5,
        param_max_rms: float = 3.0,
        scalar_max: float = 10.0,
        size_update_period: int = 4,
        clipping_update_period: int = 100,
    ):
        if lr < 0:
            raise ValueError(f"ScaledAdam: lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 < betas[1] < 1.0):
            raise ValueError(f"ScaledAdam: betas must lie in [0, 1) x (0, 1), got {betas}")
        if clipping_scale is not None and clipping_scale <= 0:
            raise ValueError(f"ScaledAdam: clipping_scale must be > 0 or None (no clipping), got {clipping_scale}")
        if not 0 < param_min_rms < param_max_rms:
            raise ValueError(f"ScaledAdam: need 0 < param_min_rms < param_max_rms, got {param_min_rms}, "
                             f"{param_max_rms}")
        if size_update_period < 1 or clipping_update_period < 1:
            raise ValueError("ScaledAdam: size_update_period and clipping_update_period must be >= 1, got "
                             f"{size_update_period}, {clipping_update_period}")
        defaults = dict(lr=lr, clipping_scale=clipping_scale, betas=tuple(betas), scalar_lr_scale=scalar_lr_scale,
                        eps=eps, param_min_rms=param_min_rms, param_max_rms=param_max_rms, scalar_max=scalar_max,
                        size_update_period=size_update_period, clipping_update_period=clipping_update_period)
        self.param_names: List[List[str]] = []  # per group, aligned with group["params"]
        self.group_stats: List[Dict[str, Any]] = []  # per group: step counter and clipping statistics
        super().__init__(params, defaults)

    # ------------------------------------------------------------------------------ param groups / state

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a group; its ``"params"`` (or icefall's ``"named_params"``) may be ``(name, p)`` pairs."""
        group = dict(param_group)
        items = group.pop("named_params", None) or group["params"]
        items = [items] if isinstance(items, Tensor) else list(items)
        gi = len(self.param_groups)
        names, params = [], []
        for i, item in enumerate(items):
            name, p = item if isinstance(item, tuple) else (f"group{gi}.param{i}", item)
            names.append(name)
            params.append(p)
        group["params"] = params
        super().add_param_group(group)
        self.param_names.append(names)
        self.group_stats.append(self._new_group_stats())

    @staticmethod
    def _new_group_stats() -> Dict[str, Any]:
        # norms: recent clipping norms (floats); threshold: None until first estimated
        return {"step": 0, "norms": [], "threshold": None, "num_clipped": 0}

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["group_stats"] = copy.deepcopy(self.group_stats)
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        stats = state_dict.pop("group_stats", None)
        super().load_state_dict(state_dict)
        if stats is None:
            raise ValueError("ScaledAdam.load_state_dict: the state has no 'group_stats'; it was saved by another "
                             "optimizer (set train.optimizer to the one the checkpoint was trained with)")
        if len(stats) != len(self.param_groups):
            raise ValueError(f"ScaledAdam.load_state_dict: {len(stats)} group stats for "
                             f"{len(self.param_groups)} param groups")
        self.group_stats = copy.deepcopy(list(stats))

    def _init_state(self, p: Tensor, group: Dict[str, Any]) -> Dict[str, Tensor]:
        state = self.state[p]
        if not state:
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if p.numel() > 1:
                state["param_rms"] = _rms(p)  # refreshed every size_update_period steps
                state["scale_grads"] = torch.zeros(group["size_update_period"], dtype=p.dtype, device=p.device)
                state["scale_exp_avg_sq"] = torch.zeros((), dtype=p.dtype, device=p.device)
        return state

    # ------------------------------------------------------------------------------ the step

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for gi, group in enumerate(self.param_groups):
            if group["params"]:
                self._step_group(gi, group)
        return loss

    def _step_group(self, gi: int, group: Dict[str, Any]) -> None:
        stats = self.group_stats[gi]
        t = stats["step"]
        params: List[Tensor] = group["params"]
        grads = []
        for p in params:
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError(f"ScaledAdam does not support sparse gradients ({self.param_names[gi][len(grads)]})")
            grads.append(p.grad if p.grad is not None else torch.zeros_like(p))
            self._init_state(p, group)
        tensors = [i for i, p in enumerate(params) if p.numel() > 1]
        scalars = [i for i, p in enumerate(params) if p.numel() <= 1]
        # RMS of each non-scalar tensor as used by this step's clipping and update, (n,)
        rms = (torch.stack([self.state[params[i]]["param_rms"] for i in tensors]) if tensors else None)

        factor = self._clipping_factor(gi, group, grads, tensors, scalars, rms)
        if factor is None:
            return  # non-finite gradient: skip the step
        if factor < 1.0:
            grads = torch._foreach_mul(grads, factor)

        # Adam direction grad / sqrt(bias-corrected second moment), for every parameter
        beta1, beta2 = group["betas"]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, math.sqrt(1.0 - beta2 ** (t + 1)))
        torch._foreach_add_(denom, group["eps"])
        deltas = torch._foreach_div(grads, denom)

        if scalars:
            torch._foreach_mul_([deltas[i] for i in scalars], -group["lr"] * group["scalar_lr_scale"])
        if tensors:
            self._scale_tensor_deltas(group, t, [params[i] for i in tensors], [grads[i] for i in tensors],
                                      [deltas[i] for i in tensors], rms)

        momenta = [self.state[p]["momentum"] for p in params]
        torch._foreach_mul_(momenta, beta1)
        torch._foreach_add_(momenta, deltas, alpha=1.0 - beta1)
        torch._foreach_add_(params, momenta)
        for i in scalars:
            params[i].clamp_(-group["scalar_max"], group["scalar_max"])
        stats["step"] = t + 1

    def _scale_tensor_deltas(self, group: Dict[str, Any], t: int, params: List[Tensor], grads: List[Tensor],
                             deltas: List[Tensor], rms: Tensor) -> None:
        """Turn Adam directions of non-scalar tensors into RMS-scaled steps, plus the periodic scale step.

        ``rms`` (n,) is the stored RMS of each tensor; it is refreshed here on scale-update steps.
        """
        period = group["size_update_period"]
        min_rms, max_rms = group["param_min_rms"], group["param_max_rms"]
        states = [self.state[p] for p in params]
        # gradient w.r.t. the log of each tensor's scale: sum(p * grad), kept for the period
        for st, p, g in zip(states, params, grads):
            st["scale_grads"][t % period] = torch.dot(p.reshape(-1), g.reshape(-1))
        scale_update = t % period == period - 1
        if scale_update:
            norms = torch.stack(torch._foreach_norm(params))  # (n,)
            rms.copy_(norms / torch.tensor([math.sqrt(p.numel()) for p in params], dtype=norms.dtype,
                                           device=norms.device))
            torch._foreach_copy_([st["param_rms"] for st in states], list(rms.unbind()))

        torch._foreach_mul_(deltas, list((rms.clamp(min=min_rms) * -group["lr"]).unbind()))

        if scale_update and t > 0:
            beta2 = group["betas"][1] ** period  # the second moment of scale grads decays per period
            scale_grads = torch.stack([st["scale_grads"] for st in states])  # (n, period)
            sq = torch.stack([st["scale_exp_avg_sq"] for st in states])  # (n,)
            sq.mul_(beta2).add_(scale_grads.pow(2).mean(dim=1), alpha=1.0 - beta2)
            torch._foreach_copy_([st["scale_exp_avg_sq"] for st in states], list(sq.unbind()))
            bias_correction = 1.0 - beta2 ** ((t + 1) // period)
            scale_step = (-group["lr"] * group["scalar_lr_scale"]) * scale_grads.sum(dim=1) / (
                (sq / bias_correction).sqrt() + group["eps"])  # (n,) relative change of each tensor
            scale_step = torch.where(rms < min_rms, scale_step.clamp(min=0.0), scale_step)  # tiny: don't shrink
            scale_step.clamp_(-0.1, 0.1)
            scale_step = torch.minimum(scale_step, (max_rms - rms) / rms)  # never grow past max_rms
            torch._foreach_add_(deltas, torch._foreach_mul(params, list(scale_step.unbind())))

    # ------------------------------------------------------------------------------ clipping

    def _clipping_factor(self, gi: int, group: Dict[str, Any], grads: List[Tensor], tensors: List[int],
                         scalars: List[int], rms: Optional[Tensor]) -> Optional[float]:
        """Factor (<= 1) to scale this step's gradients by; None if their norm is not finite."""
        scale = group["clipping_scale"]
        if scale is None:
            return 1.0
        stats = self.group_stats[gi]
        t = stats["step"]
        contrib = self._norm_contributions(group, grads, tensors, scalars, rms)  # (num params,)
        norm = float(contrib.sum().sqrt())
        if not math.isfinite(norm):
            log.warning("ScaledAdam step %d: gradient norm is %s; skipping the update%s", t, norm,
                        self._dominant(gi, contrib))
            return None
        period = group["clipping_update_period"]
        stats["norms"] = (stats["norms"] + [norm])[-period:]
        early = t in _EARLY_ESTIMATE_STEPS and t < period
        if early or (t > 0 and t % period == 0):
            self._estimate_threshold(stats, scale, early)
        threshold = stats["threshold"]
        if threshold is None or norm <= threshold:
            return 1.0
        stats["num_clipped"] += 1
        factor = threshold / norm
        if factor < 0.5:
            log.warning("ScaledAdam step %d: scaling gradients by %.3g (norm %.3e, threshold %.3e)%s", t, factor,
                        norm, threshold, self._dominant(gi, contrib))
        return factor

    def _norm_contributions(self, group: Dict[str, Any], grads: List[Tensor], tensors: List[int],
                            scalars: List[int], rms: Optional[Tensor]) -> Tensor:
        """Squared norm each parameter adds to the clipping norm, (num params,)."""
        dtype = torch.promote_types(grads[0].dtype, torch.float32)
        out = torch.zeros(len(grads), dtype=dtype, device=grads[0].device)
        if tensors:
            g = torch.stack(torch._foreach_norm([grads[i] for i in tensors])).to(dtype)  # (n,)
            out[tensors] = (g * rms.to(dtype)).pow(2)
        if scalars:
            g = torch.stack(torch._foreach_norm([grads[i] for i in scalars])).to(dtype)
            out[scalars] = (g * group["scalar_lr_scale"]).pow(2)
        return out

    def _estimate_threshold(self, stats: Dict[str, Any], scale: float, early: bool) -> None:
        norms = sorted(stats["norms"])
        quartiles = [norms[min(len(norms) - 1, (len(norms) // 4) * q)] for q in range(5)]
        threshold = scale * quartiles[2] * (2.0 if early else 1.0)
        clipped = 100.0 * stats["num_clipped"] / len(norms)
        log.info("ScaledAdam step %d: clipping_scale=%g, grad-norm quartiles %s, threshold=%.3e, "
                 "percent-clipped=%.1f", stats["step"], scale, " ".join(f"{q:.3e}" for q in quartiles), threshold,
                 clipped)
        stats["threshold"] = threshold
        stats["num_clipped"] = 0

    def _dominant(self, gi: int, contrib: Tensor, top: int = 3) -> str:
        """'; largest shares: name (share), ...' for the parameters dominating the clipping norm."""
        contrib = torch.nan_to_num(contrib.float(), nan=math.inf)
        total = float(contrib.sum())
        values, idx = contrib.topk(min(top, contrib.numel()))
        names = self.param_names[gi]
        parts = [f"{names[i]} ({v / total:.2f})" if math.isfinite(total) and total > 0 else f"{names[i]} ({v:.3g})"
                 for v, i in zip(values.tolist(), idx.tolist())]
        return "; largest shares: " + ", ".join(parts)


class Eden:
    """Eden learning-rate schedule: decays with both the batch and the epoch count, after a warm-up.

    ``lr = base_lr * ((batch**2 + lr_batches**2) / lr_batches**2) ** -0.25
    * ((epoch**2 + lr_epochs**2) / lr_epochs**2) ** -0.25 * warmup``, where ``warmup`` rises
    linearly from ``warmup_start`` to 1 over ``warmup_batches`` batches. ``base_lr`` is each
    group's lr when the schedule is built (it is not saved, so a resumed run may change it).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, lr_batches: float = 7500.0, lr_epochs: float = 3.5,
                 warmup_batches: float = 500.0, warmup_start: float = 0.5):
        if lr_batches <= 0 or lr_epochs <= 0:
            raise ValueError(f"Eden: lr_batches and lr_epochs must be > 0, got {lr_batches}, {lr_epochs} "
                             "(set train.lr_batches / train.lr_epochs)")
        if not 0.0 <= warmup_start <= 1.0:
            raise ValueError(f"Eden: warmup_start must be in [0, 1], got {warmup_start}")
        self.optimizer = optimizer
        self.lr_batches = float(lr_batches)
        self.lr_epochs = float(lr_epochs)
        self.warmup_batches = float(warmup_batches)
        self.warmup_start = float(warmup_start)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.batch = 0  # optimizer steps taken
        self.epoch = 0  # 0-based epoch
        self._set_lrs()

    def factor(self, batch: float, epoch: float) -> float:
        """The multiplier of ``base_lr`` at ``batch`` (steps taken) and ``epoch`` (0-based)."""
        f = ((batch**2 + self.lr_batches**2) / self.lr_batches**2) ** -0.25
        f *= ((epoch**2 + self.lr_epochs**2) / self.lr_epochs**2) ** -0.25
        if batch < self.warmup_batches:
            f *= self.warmup_start + (1.0 - self.warmup_start) * batch / self.warmup_batches
        return f

    def get_last_lr(self) -> List[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def step(self) -> None:
        """Call after each optimizer step."""
        self.batch += 1
        self._set_lrs()

    def step_epoch(self, epoch: Optional[int] = None) -> None:
        """Set the (0-based) epoch at its start; without an argument, advance it by one."""
        self.epoch = self.epoch + 1 if epoch is None else epoch
        self._set_lrs()

    def _set_lrs(self) -> None:
        f = self.factor(self.batch, self.epoch)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def state_dict(self) -> Dict[str, Any]:
        return {"batch": self.batch, "epoch": self.epoch}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.batch = int(state_dict["batch"])
        self.epoch = state_dict["epoch"]
        self._set_lrs()
