"""Training-time helpers of Zipformer2, in pure PyTorch (icefall's ``scaling.py`` without k2).

Why this exists: Zipformer2 (arXiv 2310.11230) is trained with a set of small tools whose
forward pass is (mostly) the identity but which shape training:

* ``ScheduledFloat``: a float that follows a piecewise-linear schedule of the batch count
  (dropout rates, layer-skip rates, balancer limits). ``set_batch_count(model, n)`` sets it.
* ``Balancer`` / ``Whiten``: identity in forward, they add gradient terms in backward that keep
  per-channel statistics (sign balance, magnitude) and covariance "whiteness" in range.
* ``BiasNorm`` (the LayerNorm replacement), ``SwooshL`` / ``SwooshR`` activations,
  ``ActivationDropoutAndLinear`` (memory-saving activation + dropout + linear),
  ``Dropout2`` / ``Dropout3`` (scheduled dropout, optionally shared along one axis),
  ``ScaleGrad``, ``limit_param_value`` and ``penalize_abs_values_gt``.

Everything random (which modules modify gradients on a given batch, dropout masks) happens in
training mode only; in eval mode every module here is the identity or its plain formula.
Randomness uses Python's ``random`` (as icefall does) for per-call decisions and torch RNG for masks.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Scheduled values
# ---------------------------------------------------------------------------------------------


class PiecewiseLinear:
    """A piecewise-linear function of one float given by sorted ``(x, y)`` points; constant outside."""

    def __init__(self, *points: Tuple[float, float]):
        if not points:
            raise ValueError("PiecewiseLinear needs at least one (x, y) point")
        self.points = [(float(x), float(y)) for x, y in points]
        xs = [x for x, _ in self.points]
        if any(b <= a for a, b in zip(xs, xs[1:])):
            raise ValueError(f"PiecewiseLinear x values must increase strictly, got {xs}")

    def __call__(self, x: float) -> float:
        pts = self.points
        if x <= pts[0][0]:
            return pts[0][1]
        if x >= pts[-1][0]:
            return pts[-1][1]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if x0 <= x <= x1:
                return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        raise AssertionError("unreachable")

    def __repr__(self) -> str:
        return f"PiecewiseLinear{tuple(self.points)}"


class ScheduledFloat(nn.Module):
    """A float that depends on the training batch count; use it as ``float(module.rate)``.

    It is an ``nn.Module`` only so that ``model.modules()`` finds it (for ``set_batch_count``) and
    so that ``model.eval()`` reaches it: outside training, or before a batch count was set, it
    returns ``default``.

    Example: ``ScheduledFloat((0.0, 0.3), (20000.0, 0.1))`` goes from 0.3 to 0.1 over 20k batches.
    """

    def __init__(self, *points: Tuple[float, float], default: float = 0.0):
        super().__init__()
        self.schedule = PiecewiseLinear(*points)
        self.default = default
        self.batch_count: Optional[float] = None  # written by set_batch_count()
        self.name: Optional[str] = None  # written by set_batch_count(), for logs

    def __float__(self) -> float:
        if self.batch_count is None or not self.training:
            return float(self.default)
        value = self.schedule(self.batch_count)
        if random.random() < 0.0002:  # (icefall draws here too; keeps the random stream aligned)
            log.debug(f"ScheduledFloat {self.name}: batch_count={self.batch_count}, value={value}")
        return value

    def extra_repr(self) -> str:
        return f"batch_count={self.batch_count}, schedule={self.schedule.points}, default={self.default}"


FloatLike = Union[float, ScheduledFloat]


def set_batch_count(model: nn.Module, batch_count: float) -> None:
    """Give every scheduled value in ``model`` the current (reference-duration adjusted) batch count.

    Call it once per training step (icefall scales the count by ``max_duration * world_size /
    ref_duration``, ref_duration 600 s). Unwraps DDP (``.module``). Also names the modules that
    log diagnostics.
    """
    model = getattr(model, "module", model)
    for name, module in model.named_modules():
        if hasattr(module, "batch_count"):
            module.batch_count = batch_count
        if hasattr(module, "name"):
            module.name = name


class CutoffEstimator:
    """Online estimate of a cutoff that a proportion ``p`` of the values seen lies above."""

    def __init__(self, p: float):
        self.p = p
        self.count = 0
        self.count_above = 0
        self.cutoff = 0.0

    def __call__(self, x: float) -> bool:
        above = x > self.cutoff
        self.count += 1
        self.count_above += int(above)
        delta = self.count_above / self.count - self.p
        if (delta > 0) == above:
            q = abs(delta)
            self.cutoff = x * q + self.cutoff * (1 - q)
        return above


def _autocast_off(x: Tensor):
    return torch.autocast(device_type=x.device.type, enabled=False)


# ---------------------------------------------------------------------------------------------
# Softmax that stores its half-precision output under autocast
# ---------------------------------------------------------------------------------------------


class _SoftmaxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:
        ans = x.softmax(dim=dim)
        if torch.is_autocast_enabled(x.device.type):
            ans = ans.to(torch.get_autocast_dtype(x.device.type))
        ctx.save_for_backward(ans)
        ctx.dim = dim
        return ans

    @staticmethod
    def backward(ctx, ans_grad: Tensor):
        (ans,) = ctx.saved_tensors
        with _autocast_off(ans):
            ans = ans.float()
            g = ans_grad.float() * ans
            return g - ans * g.sum(dim=ctx.dim, keepdim=True), None


def softmax(x: Tensor, dim: int) -> Tensor:
    """Softmax; under autocast it keeps only the half-precision output for backward."""
    if not x.requires_grad:
        return x.softmax(dim=dim)
    return _SoftmaxFunction.apply(x, dim)


# ---------------------------------------------------------------------------------------------
# BiasNorm
# ---------------------------------------------------------------------------------------------


def _bias_norm_scales(x: Tensor, bias: Tensor, log_scale: Tensor, channel_dim: int) -> Tensor:
    # scales: x's shape with channel_dim of size 1
    return (x - bias).pow(2).mean(dim=channel_dim, keepdim=True).pow(-0.5) * log_scale.exp()


class _BiasNormFunction(torch.autograd.Function):
    """``x * rms(x - bias)^-1 * exp(log_scale)``, storing only x (or the output) for backward."""

    @staticmethod
    def forward(ctx, x, bias, log_scale, channel_dim: int, store_output: bool):
        bias = bias.reshape(bias.shape + (1,) * (x.ndim - 1 - channel_dim))
        scales = _bias_norm_scales(x, bias, log_scale, channel_dim)
        ans = x * scales
        ctx.channel_dim = channel_dim
        ctx.store_output = store_output
        ctx.save_for_backward(ans.detach() if store_output else x, scales.detach(), bias.detach(), log_scale.detach())
        return ans

    @staticmethod
    def backward(ctx, ans_grad):
        saved, scales, bias, log_scale = ctx.saved_tensors
        x = (saved / scales if ctx.store_output else saved).detach().requires_grad_(True)
        bias = bias.detach().requires_grad_(True)
        log_scale = log_scale.detach().requires_grad_(True)
        with torch.enable_grad():
            ans = x * _bias_norm_scales(x, bias, log_scale, ctx.channel_dim)
            ans.backward(gradient=ans_grad)
        return x.grad, bias.grad.flatten(), log_scale.grad, None, None


class BiasNorm(nn.Module):
    """LayerNorm replacement: divide by the RMS of ``x - bias`` (bias used only in the denominator)
    and multiply by a learned scalar ``exp(log_scale)``, kept in [log_scale_min, log_scale_max]."""

    def __init__(
        self,
        num_channels: int,
        channel_dim: int = -1,
        log_scale: float = 1.0,
        log_scale_min: float = -1.5,
        log_scale_max: float = 1.5,
        store_output_for_backprop: bool = False,
    ):
        super().__init__()
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.log_scale = nn.Parameter(torch.tensor(log_scale))
        self.bias = nn.Parameter(torch.empty(num_channels).normal_(mean=0, std=1e-4))
        self.log_scale_min = log_scale_min
        self.log_scale_max = log_scale_max
        self.store_output_for_backprop = store_output_for_backprop

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[self.channel_dim] != self.num_channels:
            raise ValueError(f"BiasNorm: expected {self.num_channels} channels on dim {self.channel_dim}, got {tuple(x.shape)}")
        channel_dim = self.channel_dim % x.ndim
        log_scale = limit_param_value(
            self.log_scale, min=float(self.log_scale_min), max=float(self.log_scale_max), training=self.training
        )
        return _BiasNormFunction.apply(x, self.bias, log_scale, channel_dim, self.store_output_for_backprop)


# ---------------------------------------------------------------------------------------------
# Initialisation helpers
# ---------------------------------------------------------------------------------------------


def _rescale_init(module: nn.Module, initial_scale: float) -> nn.Module:
    with torch.no_grad():
        module.weight.mul_(initial_scale)
        if module.bias is not None:
            nn.init.uniform_(module.bias, -0.1 * initial_scale, 0.1 * initial_scale)
    return module


def ScaledLinear(*args, initial_scale: float = 1.0, **kwargs) -> nn.Linear:
    """An ``nn.Linear`` whose initial weight is multiplied by ``initial_scale`` (bias ~ U(+-0.1 scale))."""
    return _rescale_init(nn.Linear(*args, **kwargs), initial_scale)


def ScaledConv2d(*args, initial_scale: float = 1.0, **kwargs) -> nn.Conv2d:
    """An ``nn.Conv2d`` whose initial weight is multiplied by ``initial_scale``."""
    return _rescale_init(nn.Conv2d(*args, **kwargs), initial_scale)


# ---------------------------------------------------------------------------------------------
# Balancer: keeps per-channel sign balance and RMS in range through the gradient
# ---------------------------------------------------------------------------------------------


class _BalancerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, min_mean, max_mean, min_rms, max_rms, grad_scale, channel_dim):
        ctx.save_for_backward(x)
        ctx.config = (min_mean, max_mean, min_rms, max_rms, grad_scale, channel_dim)
        return x

    @staticmethod
    def backward(ctx, x_grad):
        (x,) = ctx.saved_tensors
        min_mean, max_mean, min_rms, max_rms, grad_scale, channel_dim = ctx.config
        try:
            with torch.enable_grad(), _autocast_off(x):
                x = x.detach().float().requires_grad_(True)
                dims = [d for d in range(x.ndim) if d != channel_dim]
                sq_mean = (x**2).mean(dim=dims, keepdim=True)
                mean = x.mean(dim=dims, keepdim=True)
                stddev = (sq_mean - mean * mean).clamp(min=1.0e-20).sqrt()
                rms = sq_mean.clamp(min=1.0e-20).sqrt()
                m = mean / stddev
                # zero inside the allowed ranges, growing linearly (in m, log rms) outside them
                m_loss = (m - m.clamp(min=min_mean, max=max_mean)).abs()
                r_loss = (rms.clamp(min=min_rms, max=max_rms) / rms).log().abs()
                (m_loss + r_loss).backward(gradient=torch.ones_like(m_loss))
                loss_grad = x.grad
                loss_grad_rms = (loss_grad**2).mean(dim=dims, keepdim=True).sqrt().clamp(min=1.0e-20)
                loss_grad = loss_grad * (grad_scale / loss_grad_rms)
                g = x_grad.float()
                # scale the extra term by |x_grad| elementwise, a noisy estimate of the grad magnitude
                x_grad = (g + g.abs() * loss_grad).to(x_grad.dtype)
        except Exception as e:  # never let a regulariser kill training
            log.warning(f"Balancer backward failed ({e}) for shape {list(x_grad.shape)}; continuing unmodified")
        return x_grad, None, None, None, None, None, None


def _proportion_positive_to_mean(p: float) -> float:
    # For a Gaussian, P(x > 0) = p  <=>  mean / stddev = sqrt(2) * erfinv(2p - 1); crude erfinv.
    z = -1 + 2 * p
    eps = 1.0e-10
    atanh = (math.log(1 + z + eps) - math.log(1 - z + eps)) / 2.0
    return 0.8139535143 * atanh


def _abs_to_rms(a: float) -> float:
    return 1.25331413732 * a  # E|x| -> rms for a Gaussian: sqrt(pi / 2)


class Balancer(nn.Module):
    """Identity in forward; in backward (training, with probability ``prob``) nudges each channel
    toward a proportion of positive values in [min_positive, max_positive] and a mean absolute
    value in [min_abs, max_abs]. All limits may be ``ScheduledFloat``."""

    def __init__(
        self,
        num_channels: int,
        channel_dim: int,
        min_positive: FloatLike = 0.05,
        max_positive: FloatLike = 0.95,
        min_abs: FloatLike = 0.2,
        max_abs: FloatLike = 100.0,
        grad_scale: FloatLike = 0.04,
        prob: Optional[FloatLike] = None,
    ):
        super().__init__()
        self.prob = ScheduledFloat((0.0, 0.5), (8000.0, 0.125), default=0.4) if prob is None else prob
        self.mem_cutoff = CutoffEstimator(0.05)  # skip on the 5% of calls with the highest CUDA memory
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.min_positive = min_positive
        self.max_positive = max_positive
        self.min_abs = min_abs
        self.max_abs = max_abs
        self.grad_scale = grad_scale

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not x.requires_grad:
            return x
        if x.is_cuda and self.mem_cutoff(torch.cuda.memory_allocated()):
            return x
        prob = float(self.prob)
        if random.random() >= prob:
            return x
        if x.shape[self.channel_dim] != self.num_channels:
            raise ValueError(f"Balancer: expected {self.num_channels} channels on dim {self.channel_dim}, got {tuple(x.shape)}")
        return _BalancerFunction.apply(
            x,
            _proportion_positive_to_mean(float(self.min_positive)),
            _proportion_positive_to_mean(float(self.max_positive)),
            _abs_to_rms(float(self.min_abs)),
            _abs_to_rms(float(self.max_abs)),
            float(self.grad_scale),
            self.channel_dim % x.ndim,
        )


# ---------------------------------------------------------------------------------------------
# Whiten: keeps the feature covariance from being dominated by a few directions
# ---------------------------------------------------------------------------------------------


def whitening_metric(x: Tensor, num_groups: int) -> Tensor:
    """1.0 when each group's centred covariance is a multiple of I (same multiple across groups),
    larger otherwise. ``x``: (*, C) with C divisible by num_groups."""
    x = x.reshape(-1, x.shape[-1])
    n, c = x.shape
    cpg = c // num_groups
    x = x.reshape(n, num_groups, cpg).transpose(0, 1)  # (G, n, cpg)
    x = x - x.mean(dim=1, keepdim=True)
    covar = torch.matmul(x.transpose(1, 2), x)  # (G, cpg, cpg)
    mean_diag = torch.diagonal(covar, dim1=-2, dim2=-1).mean()
    mean_diag_of_square = (covar**2).sum() / (num_groups * cpg)  # mean diag of covar @ covar
    return mean_diag_of_square / (mean_diag**2 + 1.0e-20)


class _WhiteningPenaltyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, module: "Whiten") -> Tensor:
        ctx.save_for_backward(x)
        ctx.module = module
        return x

    @staticmethod
    def backward(ctx, x_grad: Tensor):
        (x_orig,) = ctx.saved_tensors
        w = ctx.module
        try:
            with torch.enable_grad(), _autocast_off(x_orig):
                x = x_orig.detach().float().requires_grad_(True)
                metric = whitening_metric(x, w.num_groups)
                if random.random() < 0.005:
                    log.debug(f"Whiten {w.name}: groups={w.num_groups}, channels={x.shape[-1]}, metric={metric.item():.2f} vs limit {float(w.whitening_limit)}")
                if metric < float(w.whitening_limit):
                    w.prob = w.min_prob
                    return x_grad, None
                w.prob = w.max_prob
                metric.backward()
                penalty_grad = x.grad
                scale = float(w.grad_scale) * (x_grad.float().norm() / (penalty_grad.norm() + 1.0e-20))
                return x_grad + (penalty_grad * scale).to(x_grad.dtype), None
        except Exception as e:
            log.warning(f"Whiten backward failed ({e}) for shape {list(x_grad.shape)}; continuing unmodified")
        return x_grad, None


class Whiten(nn.Module):
    """Identity in forward; in backward (training, randomly) adds ``grad_scale``-relative gradient
    that pushes the whitening metric of ``x`` (*, C) below ``whitening_limit``. The probability
    switches between ``prob[0]`` (metric fine) and ``prob[1]`` (metric over the limit)."""

    def __init__(
        self,
        num_groups: int,
        whitening_limit: FloatLike,
        prob: Union[float, Tuple[float, float]],
        grad_scale: FloatLike,
    ):
        super().__init__()
        if num_groups < 1 or float(whitening_limit) < 1 or float(grad_scale) < 0:
            raise ValueError(f"Whiten: bad num_groups={num_groups}, whitening_limit={whitening_limit} or grad_scale={grad_scale}")
        self.num_groups = num_groups
        self.whitening_limit = whitening_limit
        self.grad_scale = grad_scale
        if isinstance(prob, float):
            prob = (prob, prob)
        self.min_prob, self.max_prob = prob
        if not 0 < self.min_prob <= self.max_prob <= 1:
            raise ValueError(f"Whiten: need 0 < min_prob <= max_prob <= 1, got {prob}")
        self.prob = self.max_prob
        self.name: Optional[str] = None

    def resume_state(self) -> Dict[str, float]:
        """Training state outside the state dict (the adaptive probability), for exact resume."""
        return {"prob": float(self.prob)}

    def load_resume_state(self, state: Dict[str, float]) -> None:
        self.prob = float(state["prob"])

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not x.requires_grad or float(self.grad_scale) == 0:
            return x
        if random.random() > self.prob:
            return x
        return _WhiteningPenaltyFunction.apply(x, self)


# ---------------------------------------------------------------------------------------------
# Small gradient tools
# ---------------------------------------------------------------------------------------------


class _WithLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, name: Optional[str]):
        ctx.y_shape = y.shape
        if random.random() < 0.002 and name is not None:
            log.debug(f"WithLoss {name}: loss-sum={y.sum().item():.3e}")
        return x

    @staticmethod
    def backward(ctx, ans_grad: Tensor):
        return ans_grad, torch.ones(ctx.y_shape, dtype=ans_grad.dtype, device=ans_grad.device), None


def penalize_abs_values_gt(x: Tensor, limit: float, penalty: float, name: Optional[str] = None) -> Tensor:
    """Return x; in backward add the gradient of ``penalty * relu(|x| - limit)`` (an implicit aux loss)."""
    over = (x.abs() - limit) > 0
    # same derivative as penalty * relu(|x| - limit), cheaper to keep for autograd
    aux_loss = penalty * ((x.sign() * over).to(torch.int8) * x)
    return _WithLoss.apply(x, aux_loss, name)


class _ScaleGradFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:
        ctx.alpha = alpha
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.alpha, None


class ScaleGrad(nn.Module):
    """Identity in forward; multiplies the gradient by ``alpha`` in training."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        return _ScaleGradFunction.apply(x, self.alpha)


class _LimitParamValue(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, min: float, max: float) -> Tensor:
        if max < min:
            raise ValueError(f"limit_param_value: max {max} < min {min}")
        ctx.save_for_backward(x)
        ctx.min, ctx.max = min, max
        return x

    @staticmethod
    def backward(ctx, x_grad: Tensor):
        (x,) = ctx.saved_tensors
        # below min: force gradients negative (the update raises x); above max: force them positive
        x_grad = x_grad * torch.where((x_grad > 0) & (x < ctx.min), -1.0, 1.0)
        x_grad = x_grad * torch.where((x_grad < 0) & (x > ctx.max), -1.0, 1.0)
        return x_grad, None, None


def limit_param_value(x: Tensor, min: float, max: float, prob: float = 0.6, training: bool = True) -> Tensor:
    """Identity; with probability ``prob`` in training, flips gradient signs that would push the
    parameter ``x`` further outside [min, max]."""
    if training and random.random() < prob:
        return _LimitParamValue.apply(x, min, max)
    return x


# ---------------------------------------------------------------------------------------------
# Dropout with scheduled rates
# ---------------------------------------------------------------------------------------------


class Dropout2(nn.Module):
    """``nn.functional.dropout`` whose rate may be a ``ScheduledFloat``."""

    def __init__(self, p: FloatLike):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.dropout(x, p=float(self.p), training=self.training)


class _MulForDropout3(torch.autograd.Function):
    # x * mask * alpha, saving only the (sparse-in-meaning) output for backward
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x: Tensor, mask: Tensor, alpha: float) -> Tensor:
        ans = x * mask * alpha
        ctx.save_for_backward(ans)
        ctx.alpha = alpha
        return ans

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, ans_grad: Tensor):
        (ans,) = ctx.saved_tensors
        return ctx.alpha * ans_grad * (ans != 0), None, None


class Dropout3(nn.Module):
    """Dropout with a scheduled rate whose mask is shared along ``shared_dim`` (e.g. time)."""

    def __init__(self, p: FloatLike, shared_dim: int):
        super().__init__()
        self.p = p
        self.shared_dim = shared_dim

    def forward(self, x: Tensor) -> Tensor:
        p = float(self.p)
        if not self.training or p == 0:
            return x
        shape = list(x.shape)
        shape[self.shared_dim] = 1
        mask = torch.rand(*shape, device=x.device) > p
        return _MulForDropout3.apply(x, mask, 1.0 / (1 - p))


# ---------------------------------------------------------------------------------------------
# SwooshL / SwooshR
# ---------------------------------------------------------------------------------------------

# swoosh(x) = log(1 + exp(x - offset)) - 0.08 x - constant; derivative in [-0.08, 0.92]
_SWOOSH = {"SwooshL": (4.0, 0.035), "SwooshR": (1.0, 0.313261687)}
_SWOOSH_DERIV_FLOOR, _SWOOSH_DERIV_CEIL = -0.08, 0.925  # bounds used for uint8 storage


def _at_least_float32(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def swoosh(x: Tensor, kind: str) -> Tensor:
    """The plain formula of SwooshL (offset 4) or SwooshR (offset 1); autograd stores what it needs."""
    offset, const = _SWOOSH[kind]
    return torch.logaddexp(torch.zeros((), dtype=x.dtype, device=x.device), x - offset) - 0.08 * x - const


def swoosh_and_deriv(x: Tensor, kind: str) -> Tuple[Tensor, Tensor]:
    """(swoosh(x), d swoosh / dx), without autograd."""
    offset = _SWOOSH[kind][0]
    return swoosh(x, kind), torch.sigmoid(x - offset) - 0.08


class _SwooshRecompute(torch.autograd.Function):
    """Stores x only; the derivative ``sigmoid(x - offset) - 0.08`` is recomputed in backward."""

    @staticmethod
    def forward(ctx, x: Tensor, kind: str) -> Tensor:
        ctx.kind = kind
        ctx.save_for_backward(x)
        return swoosh(_at_least_float32(x), kind).to(x.dtype)

    @staticmethod
    def backward(ctx, y_grad: Tensor):
        (x,) = ctx.saved_tensors
        offset = _SWOOSH[ctx.kind][0]
        return y_grad * (torch.sigmoid(_at_least_float32(x) - offset) - 0.08).to(y_grad.dtype), None


class _SwooshUint8(torch.autograd.Function):
    """Stores the derivative as uint8 with random dithering (expectation-preserving), 1 byte/element.
    This is the fallback icefall ships next to k2's fused kernels."""

    @staticmethod
    def forward(ctx, x: Tensor, kind: str) -> Tensor:
        y, d = swoosh_and_deriv(_at_least_float32(x), kind)
        scale = 255.0 / (_SWOOSH_DERIV_CEIL - _SWOOSH_DERIV_FLOOR)
        ctx.save_for_backward(((d - _SWOOSH_DERIV_FLOOR) * scale + torch.rand_like(d)).to(torch.uint8))
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, y_grad: Tensor):
        (d,) = ctx.saved_tensors
        d = d.to(y_grad.dtype) * ((_SWOOSH_DERIV_CEIL - _SWOOSH_DERIV_FLOOR) / 255.0) + _SWOOSH_DERIV_FLOOR
        return y_grad * d, None


SWOOSH_IMPLS = ("autograd", "recompute", "uint8")
# "auto" (the default) picks by measurement (bench/zipformer.py, seeded): on CUDA "uint8" (H100,
# 16 x 15 s batch: front-end peak memory 3010 -> 2841 MiB, about 3% of the medium model's peak,
# for +2 ms of a ~420 ms step; the dithered derivative storage of icefall's fallback); elsewhere
# "recompute" (exact gradients, fastest on CPU where memory is not the constraint; it keeps the
# same bytes as plain autograd, whose backward is slower on CPU).
DEFAULT_SWOOSH_IMPL = "auto"


def swoosh_op(x: Tensor, kind: str, impl: str = DEFAULT_SWOOSH_IMPL) -> Tensor:
    """Swoosh activation with the chosen backward strategy: "auto" or one of ``SWOOSH_IMPLS``."""
    if impl == "auto":
        impl = "uint8" if x.is_cuda else "recompute"
    if not x.requires_grad or impl == "autograd":
        return swoosh(x, kind)
    if impl == "recompute":
        return _SwooshRecompute.apply(x, kind)
    if impl == "uint8":
        return _SwooshUint8.apply(x, kind)
    raise ValueError(f"unknown swoosh impl {impl!r}; choose 'auto' or one of {SWOOSH_IMPLS}")


class SwooshL(nn.Module):
    """SwooshL(x) = log(1 + exp(x - 4)) - 0.08 x - 0.035."""

    def __init__(self, impl: str = DEFAULT_SWOOSH_IMPL):
        super().__init__()
        self.impl = impl

    def forward(self, x: Tensor) -> Tensor:
        return swoosh_op(x, "SwooshL", self.impl)


class SwooshR(nn.Module):
    """SwooshR(x) = log(1 + exp(x - 1)) - 0.08 x - 0.313261687."""

    def __init__(self, impl: str = DEFAULT_SWOOSH_IMPL):
        super().__init__()
        self.impl = impl

    def forward(self, x: Tensor) -> Tensor:
        return swoosh_op(x, "SwooshR", self.impl)


# ---------------------------------------------------------------------------------------------
# Activation + dropout + linear, storing only the input
# ---------------------------------------------------------------------------------------------


class _ActivationDropoutAndLinearFunction(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, weight, bias, activation: str, dropout_p: float, dropout_shared_dim: Optional[int]):
        mask = None
        if dropout_p != 0.0:
            shape = list(x.shape)
            if dropout_shared_dim is not None:
                shape[dropout_shared_dim] = 1
            mask = (1.0 / (1.0 - dropout_p)) * (torch.rand(*shape, device=x.device, dtype=x.dtype) > dropout_p)
        ctx.save_for_backward(x, weight, bias, mask)
        ctx.activation = activation
        with torch.no_grad():
            y = swoosh(x, activation)
            if mask is not None:
                y = y * mask
            return nn.functional.linear(y, weight, bias)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, ans_grad):
        x, weight, bias, mask = ctx.saved_tensors
        y, y_deriv = swoosh_and_deriv(x, ctx.activation)
        if mask is not None:
            y = y * mask
        out_channels, in_channels = weight.shape
        g = ans_grad.reshape(-1, out_channels)
        weight_grad = torch.matmul(g.t(), y.reshape(-1, in_channels).to(g.dtype))
        bias_grad = None if bias is None else g.sum(dim=0)
        x_grad = torch.matmul(ans_grad, weight.to(ans_grad.dtype)) * y_deriv
        if mask is not None:
            x_grad = x_grad * mask
        return x_grad, weight_grad, bias_grad, None, None, None


class ActivationDropoutAndLinear(nn.Module):
    """``Linear(Dropout(Swoosh(x)))`` that keeps only ``x`` (and a small mask) for backward.

    Parameters ``weight``/``bias`` live directly on this module (as in icefall), initialised like
    ``ScaledLinear(in, out, initial_scale=...)``. ``dropout_shared_dim`` shares the mask along that
    axis (0 = time for (T, N, C) input); None = an independent mask per element.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        activation: str = "SwooshL",
        dropout_p: FloatLike = 0.0,
        dropout_shared_dim: Optional[int] = -1,
        initial_scale: float = 1.0,
    ):
        super().__init__()
        if activation not in _SWOOSH:
            raise ValueError(f"ActivationDropoutAndLinear: activation must be one of {list(_SWOOSH)}, got {activation!r}")
        lin = ScaledLinear(in_channels, out_channels, bias=bias, initial_scale=initial_scale)
        self.weight = lin.weight
        self.register_parameter("bias", lin.bias)
        self.activation = activation
        self.dropout_p = dropout_p
        self.dropout_shared_dim = dropout_shared_dim

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return nn.functional.linear(swoosh(x, self.activation), self.weight, self.bias)
        return _ActivationDropoutAndLinearFunction.apply(
            x, self.weight, self.bias, self.activation, float(self.dropout_p), self.dropout_shared_dim
        )


def convert_num_channels(x: Tensor, num_channels: int) -> Tensor:
    """Truncate or zero-pad the last dim of ``x`` to ``num_channels``."""
    if num_channels <= x.shape[-1]:
        return x[..., :num_channels]
    pad = torch.zeros(x.shape[:-1] + (num_channels - x.shape[-1],), dtype=x.dtype, device=x.device)
    return torch.cat((x, pad), dim=-1)
