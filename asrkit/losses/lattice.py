"""The log-semiring recursion over the transducer lattice in pure PyTorch (k2's ``mutual_information_recursion``).

Every RNN-T loss in ``asrkit.losses.rnnt`` reduces to it: ``px[b, s, t]`` is the log-prob of emitting
symbol ``s`` at cell ``(s, t)`` and ``py[b, s, t]`` the log-prob of the blank (go to the next frame)::

    p[b, s0, t0] = 0
    regular  (px: (B, S, T + 1)):  p[s, t] = logaddexp(p[s - 1, t] + px[s - 1, t],         p[s, t - 1] + py[s, t - 1])
    modified (px: (B, S, T)):      p[s, t] = logaddexp(p[s - 1, t - 1] + px[s - 1, t - 1], p[s, t - 1] + py[s, t - 1])

and the total log-prob is ``p[b, s1, t1]`` for the boundary ``[s0, t0, s1, t1]`` (default ``[0, 0, S, T]``).

Why hand-written forward-backward: autograd through thousands of tiny ``logaddexp`` steps keeps every
intermediate and is slow. Here alpha (forward) and beta (backward) are computed without autograd, and the
gradient of the total log-prob with respect to each arc weight is its occupation probability
``exp(alpha + arc + beta - total)``, computed once and saved (k2 does the same).

Why this vectorisation: cells on one anti-diagonal ``d = s + t`` of the regular lattice do not depend on each
other, so the regular recursion is ``S + T`` steps of two ops over ``(B, S + 1)``; the modified lattice is one
step per frame. Both become the same scan over "lanes" ``s`` once the arc weights are laid out per step
(:func:`_lanes`), and beta is the same scan on the lattice flipped in both axes. Everything stays in log space
(no cumsum trick), so ``-inf`` arcs (pruned cells, padding) need no special case and float32 loses nothing
to cancellation: in float32 the totals carry a relative error of ~1e-6 and the occupations an absolute error of
~1e-3 when totals reach thousands of nats (rounding of each add at that magnitude), like k2's and
warp-transducer's float32 kernels.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

NEG_INF = float("-inf")


def _skew(z: Tensor, n: int) -> Tensor:
    """``out[b, d, r] = z[b, r, d - r]`` for ``0 <= d < n`` (``-inf`` where ``d - r`` is outside ``z``).

    z (B, R, C) -> (B, n, R): the cells of anti-diagonal ``d`` side by side. A padded copy read through
    ``as_strided`` (row stride ``L - 1``), so there is no index tensor.
    """
    B, R, C = z.shape
    if R == 0 or n == 0:
        return z.new_empty((B, n, R))
    right = max(0, n - C)
    p = F.pad(z, (R, right), value=NEG_INF).contiguous()  # (B, R, L)
    L = C + R + right
    return p.as_strided((B, n, R), (R * L, 1, L - 1), R)


def _lanes(px: Tensor, py: Tensor, regular: bool) -> Tensor:
    """Arc weights per step: ``(B, N, 2, S + 1)``; ``[:, n, 0, w]`` is the symbol arc into lane ``w`` (from lane
    ``w - 1``; ``-inf`` for lane 0), ``[:, n, 1, w]`` the blank arc that stays in lane ``w``.

    Regular: step ``d -> d + 1`` between anti-diagonals (N = S + T). Modified: step ``t -> t + 1`` (N = T).
    """
    S, T = py.shape[1] - 1, py.shape[2]
    if regular:
        x, y = _skew(px, S + T), _skew(py, S + T)  # (B, S + T, S), (B, S + T, S + 1)
    else:
        x, y = px.transpose(1, 2), py.transpose(1, 2)  # (B, T, S), (B, T, S + 1)
    x = F.pad(x, (1, 0), value=NEG_INF)
    return torch.stack((x, y), dim=2)


def _scan(xy: Tensor, start_step: Tensor, start_lane: Tensor, n_steps: int) -> Tensor:
    """Log-sum over paths of the lane lattice ``xy`` (B, N, 2, W), each path starting with score 0 at
    ``(start_step[b], start_lane[b])``. Returns (B, N + 1, W + 1): lane ``w`` at column ``w + 1``, column 0
    stays ``-inf`` so the symbol arcs read a shifted window of the previous step without a copy.
    Only the first ``n_steps`` steps are run (later ones stay ``-inf``)."""
    B, N, _, W = xy.shape
    a = xy.new_full((B, N + 1, W + 1), NEG_INF)
    a[torch.arange(B, device=xy.device), start_step, start_lane + 1] = 0.0
    # win[b, n, :, w] = (a[b, n, lane w - 1], a[b, n, lane w]): the two predecessors of lane w at step n + 1
    win = a.as_strided((B, N + 1, 2, W), (a.stride(0), a.stride(1), 1, 1))
    starts = start_step.tolist()
    inject = set(starts)
    buf = xy.new_empty((B, 2, W))
    sym, blank = buf.unbind(1)
    # all per-step views made up front: the loop is only the two ops
    wins, arcs, outs = win.unbind(1), xy.unbind(1), a[:, :, 1:].unbind(1)
    for n in range(min(starts, default=0), min(n_steps, N)):
        torch.add(wins[n], arcs[n], out=buf)
        if n + 1 in inject:  # some utterances start here: keep their 0
            outs[n + 1].copy_(torch.logaddexp(outs[n + 1], torch.logaddexp(sym, blank)))
        else:
            torch.logaddexp(sym, blank, out=outs[n + 1])
    return a


def _to_lattice(a: Tensor, S: int, T: int, regular: bool) -> Tensor:
    """The scan result (B, N + 1, S + 2) as ``p[b, s, t]`` (B, S + 1, T + 1), a view."""
    if not regular:
        return a[:, :, 1:].transpose(1, 2)
    # p[b, s, t] = a[b, s + t, s + 1]
    return a.as_strided((a.shape[0], S + 1, T + 1), (a.stride(0), S + 3, S + 2), a.storage_offset() + 1)


def forward_backward(
    px: Tensor, py: Tensor, boundary: Tensor, need_occupation: bool
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Total log-probs (B,) and, if asked, the occupation probabilities of every arc (shapes of px, py).

    No autograd: callers wrap it. ``boundary`` is a validated (B, 4) int64 tensor on px's device.
    """
    B, S, T1 = px.shape
    T = py.shape[2]
    regular = T1 == T + 1
    s0, t0, s1, t1 = boundary.unbind(1)

    def step(s: Tensor, t: Tensor) -> Tensor:
        return s + t if regular else t

    ar = torch.arange(B, device=px.device)
    xy, start_n, start_w, n_steps = _lanes(px, py, regular), step(s0, t0), s0, step(s1, t1)
    if need_occupation:
        # beta is alpha of the lattice flipped in s and t, started from each utterance's end: run both scans
        # as one batch of 2B (half the sequential ops)
        xy = torch.cat((xy, _lanes(px.flip(1, 2), py.flip(1, 2), regular)))
        start_n = torch.cat((start_n, step(S - s1, T - t1)))
        start_w = torch.cat((start_w, S - s1))
        n_steps = torch.cat((n_steps, step(S - s0, T - t0)))
    a = _scan(xy, start_n, start_w, int(n_steps.max()) if B else 0)
    alpha = _to_lattice(a[:B], S, T, regular)
    total = alpha[ar, s1, t1]
    if not need_occupation:
        return total, None, None
    beta = _to_lattice(a[B:], S, T, regular).flip(1, 2)
    # an utterance with no path (total -inf) gets zero occupations instead of NaN
    norm = torch.where(torch.isfinite(total), total, torch.zeros_like(total)).view(B, 1, 1)
    if regular:
        px_occ = (alpha[:, :S] + px + beta[:, 1:] - norm).exp_()
    else:
        px_occ = (alpha[:, :S, :T] + px + beta[:, 1:, 1:] - norm).exp_()
    py_occ = (alpha[:, :, :T] + py + beta[:, :, 1:] - norm).exp_()
    return total, px_occ, py_occ


def check_boundary(boundary: Optional[Tensor], B: int, S: int, T: int, device: torch.device) -> Tensor:
    """``boundary`` as a (B, 4) int64 tensor ``[s_begin, t_begin, s_end, t_end]`` (default ``[0, 0, S, T]``),
    or a ValueError saying which row is out of range."""
    if boundary is None:
        return torch.tensor([0, 0, S, T], dtype=torch.int64, device=device).expand(B, 4).contiguous()
    if boundary.shape != (B, 4) or boundary.dtype.is_floating_point or boundary.dtype == torch.bool:
        raise ValueError(f"boundary must be an integer tensor of shape ({B}, 4) = [s_begin, t_begin, s_end, t_end], "
                         f"got {boundary.dtype} {tuple(boundary.shape)}")
    boundary = boundary.to(device=device, dtype=torch.int64)
    s0, t0, s1, t1 = boundary.unbind(1)
    bad = (s0 < 0) | (s0 > s1) | (s1 > S) | (t0 < 0) | (t0 > t1) | (t1 > T)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"boundary row {i} = {boundary[i].tolist()} needs 0 <= s_begin <= s_end <= S={S} and "
                         f"0 <= t_begin <= t_end <= T={T}")
    return boundary


class _MutualInformation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, px: Tensor, py: Tensor, boundary: Tensor, return_grad: bool, grads: List) -> Tensor:
        need = return_grad or any(ctx.needs_input_grad[:2])
        total, px_occ, py_occ = forward_backward(px.detach(), py.detach(), boundary, need)
        ctx.save_for_backward(px_occ, py_occ)
        grads[:] = [px_occ, py_occ]
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor):
        px_occ, py_occ = ctx.saved_tensors
        g = grad_total.view(-1, 1, 1)
        return px_occ * g, py_occ * g, None, None, None


def check_lattice_shapes(px: Tensor, py: Tensor, px_name: str, py_name: str) -> Tuple[int, int, int]:
    """(B, S, T) of a px (B, S, T + 1) or (B, S, T) / py (B, S + 1, T) pair; ValueError otherwise."""
    if px.dim() != 3 or py.dim() != 3:
        raise ValueError(f"{px_name} and {py_name} must be 3-D, got {tuple(px.shape)} and {tuple(py.shape)}")
    B, S, T1 = px.shape
    T = py.shape[2]
    if py.shape != (B, S + 1, T) or T1 not in (T, T + 1):
        raise ValueError(f"{px_name} {tuple(px.shape)} and {py_name} {tuple(py.shape)} must be (B, S, T + 1) "
                         "or (B, S, T) and (B, S + 1, T)")
    return B, S, T


def mutual_information_recursion(
    px: Tensor, py: Tensor, boundary: Optional[Tensor] = None, return_grad: bool = False
):
    """k2's recursion (see the module docstring): returns the total log-probs (B,), differentiable in px and py;
    with ``return_grad`` also ``(px_grad, py_grad)``, the gradients of ``total.sum()`` (occupation probabilities).

    px: (B, S, T + 1) (regular) or (B, S, T) (modified/constrained); py: (B, S + 1, T); float32 or float64;
    boundary: optional (B, 4) int ``[s_begin, t_begin, s_end, t_end]``.
    """
    B, S, T = check_lattice_shapes(px, py, "px", "py")
    if px.dtype not in (torch.float32, torch.float64) or py.dtype != px.dtype:
        raise ValueError(f"px and py must both be float32 or float64, got {px.dtype} and {py.dtype}")
    return recursion(px, py, check_boundary(boundary, B, S, T, px.device), return_grad)


def recursion(px: Tensor, py: Tensor, boundary: Tensor, return_grad: bool = False):
    """:func:`mutual_information_recursion` without the argument checks (``boundary`` already validated)."""
    grads: List = []
    total = _MutualInformation.apply(px, py, boundary, return_grad, grads)
    return (total, (grads[0], grads[1])) if return_grad else total
