"""RNN-T losses in pure PyTorch: the full loss (torchaudio's conventions) and k2's pruned family.

Training a transducer the icefall way (what ``asrkit.models.transducer`` does)::

    simple_loss, (px_grad, py_grad) = rnnt_loss_smoothed(lm, am, y, blank, lm_only_scale=0.25, am_only_scale=0.0,
                                                         boundary=boundary, reduction="sum", return_grad=True)
    ranges = get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range=5)      # (B, T, 5)
    am_pruned, lm_pruned = do_rnnt_pruning(am=enc_proj, lm=dec_proj, ranges=ranges)
    logits = joiner(am_pruned, lm_pruned)                                       # (B, T, 5, V)
    pruned_loss = rnnt_loss_pruned(logits, y, ranges, blank, boundary, reduction="sum")

The k2 functions keep k2's names, arguments and conventions (``boundary`` rows are
``[begin_symbol, begin_frame, end_symbol, end_frame]``, default ``[0, 0, S, T]``; ``rnnt_type`` is
"regular", "modified" (one symbol per frame at most) or "constrained"); :func:`rnnt_loss` has torchaudio's.
All reduce to the lattice recursion of ``asrkit.losses.lattice`` (see there for the vectorisation).

Why the joiner losses (:func:`rnnt_loss`, :func:`rnnt_loss_k2`, :func:`rnnt_loss_pruned`) have their own
autograd Function: only the blank and target log-probs are gathered from the ``(..., V)`` logits, and the
gradient is written in one pass as ``softmax * occupation(cell) - occupation(arc)`` at the gathered ids
(like warp-transducer). The logits are kept by reference, so the 4-D tensor exists at most twice (logits and
their gradient), never as log-softmax copies.
"""

from __future__ import annotations

import warnings
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from asrkit.losses.lattice import NEG_INF, check_boundary, check_lattice_shapes, forward_backward, recursion

RNNT_TYPES = ("regular", "modified", "constrained")
_CHUNK = 1 << 24  # elements per log-normaliser chunk: bounds the temporary of logsumexp


def _reduce(loss: Tensor, reduction: Optional[str]) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def _check_common(symbols: Tensor, B: int, S: int, T: int, C: int, termination_symbol: int, rnnt_type: str,
                  boundary: Optional[Tensor], device: torch.device) -> Tensor:
    """Validate the arguments shared by the k2-style losses; return the (B, 4) int64 boundary."""
    if rnnt_type not in RNNT_TYPES:
        raise ValueError(f"rnnt_type must be one of {RNNT_TYPES}, got {rnnt_type!r}")
    if symbols.shape != (B, S) or symbols.dtype.is_floating_point:
        raise ValueError(f"symbols must be an integer tensor of shape (B, S) = ({B}, {S}), "
                         f"got {symbols.dtype} {tuple(symbols.shape)}")
    if not 0 <= termination_symbol < C:
        raise ValueError(f"termination_symbol {termination_symbol} is outside the vocabulary [0, {C})")
    if symbols.numel() and bool(((symbols < 0) | (symbols >= C)).any()):
        raise ValueError(f"symbols must be in [0, {C}), got values in [{int(symbols.min())}, {int(symbols.max())}]")
    boundary = check_boundary(boundary, B, S, T, device)
    if rnnt_type != "regular" and bool((boundary[:, 3] - boundary[:, 1] < boundary[:, 2] - boundary[:, 0]).any()):
        raise ValueError(f"rnnt_type={rnnt_type!r} emits at most one symbol per frame, so it needs "
                         f"frames >= symbols per utterance; boundary = {boundary.tolist()}")
    return boundary


def _finish_px(px: Tensor, py: Tensor, boundary: Tensor, rnnt_type: str) -> Tensor:
    """px (B, S, T) of symbol log-probs -> the recursion's px, as k2 builds it.

    regular: an extra ``-inf`` frame T, and ``-inf`` at each utterance's ``end_frame`` (no symbol after the
    last blank); constrained: emitting a symbol also pays the blank of the next context on the same frame.
    """
    B, S, T = px.shape
    if rnnt_type == "regular":
        px = torch.cat((px, px.new_full((B, S, 1), NEG_INF)), dim=2)
        last = torch.arange(T + 1, device=px.device) == boundary[:, 3].view(B, 1, 1)
        px = px.masked_fill(last, NEG_INF)
    elif rnnt_type == "constrained":
        px = px + py[:, 1:, :]
    return px


def _add_delay_penalty(px: Tensor, boundary: Tensor, delay_penalty: float) -> Tensor:
    """k2's ``delay_penalty`` (k2 issue 955): symbols emitted before an utterance's middle frame gain, later ones
    lose, ``delay_penalty`` per frame; it counters time masking's pull towards late emission."""
    if delay_penalty <= 0.0:
        return px
    B, _, T0 = px.shape
    offset = (boundary[:, 3].to(px.dtype) - 1) / 2
    return px + delay_penalty * (offset.view(B, 1, 1) - torch.arange(T0, device=px.device, dtype=px.dtype))


# ------------------------------------------------------------------------------------------------- simple losses


def _check_simple(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int, rnnt_type: str,
                  boundary: Optional[Tensor]) -> Tensor:
    if lm.dim() != 3 or am.dim() != 3 or lm.shape[0] != am.shape[0] or lm.shape[2] != am.shape[2]:
        raise ValueError(f"lm must be (B, S + 1, C) and am (B, T, C), got {tuple(lm.shape)} and {tuple(am.shape)}")
    if lm.shape[1] < 1:
        raise ValueError("lm needs S + 1 >= 1 positions (the start context)")
    if am.dtype not in (torch.float32, torch.float64) or lm.dtype != am.dtype:
        raise ValueError(f"lm and am must both be float32 or float64, got {lm.dtype} and {am.dtype}")
    B, T, C = am.shape
    return _check_common(symbols, B, lm.shape[1] - 1, T, C, termination_symbol, rnnt_type, boundary, am.device)


def _simple_logprobs(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int, rnnt_type: str,
                     boundary: Tensor, smoothing: Optional[Tuple[float, float]] = None) -> Tuple[Tensor, Tensor]:
    """px, py of the joiner ``lm[s] + am[t]`` (arguments already checked); ``smoothing`` = (lm_only_scale,
    am_only_scale) interpolates as in :func:`get_rnnt_logprobs_smoothed`."""
    symbols = symbols.long()
    S = lm.shape[1] - 1
    am_max = am.detach().amax(dim=2, keepdim=True)  # (B, T, 1); constants: they cancel in the normaliser
    lm_max = lm.detach().amax(dim=2, keepdim=True)  # (B, S + 1, 1)
    am_probs, lm_probs = (am - am_max).exp(), (lm - lm_max).exp()
    tiny = torch.finfo(am.dtype).tiny
    # log sum_c exp(lm[s, c] + am[t, c]) for all (s, t) as one matmul of exponentials: (B, S + 1, T)
    norm = (torch.matmul(lm_probs, am_probs.transpose(1, 2)) + tiny).log() + lm_max + am_max.transpose(1, 2)
    px_am = am.transpose(1, 2).gather(1, symbols.unsqueeze(2).expand(-1, -1, am.shape[1]))  # (B, S, T)
    px_lm = lm[:, :S].gather(2, symbols.unsqueeze(2))  # (B, S, 1)
    py_am = am[:, :, termination_symbol].unsqueeze(1)  # (B, 1, T)
    py_lm = lm[:, :, termination_symbol].unsqueeze(2)  # (B, S + 1, 1)
    px = px_am + px_lm - norm[:, :S]
    py = py_am + py_lm - norm
    if smoothing is not None:
        lm_only_scale, am_only_scale = smoothing
        lm_sum = lm_probs.sum(dim=2, keepdim=True)  # (B, S + 1, 1)
        unigram = (lm_probs / lm_sum).mean(dim=(0, 1)) + tiny  # (C,)
        amonly_norm = (am_probs @ unigram).log().unsqueeze(1) + am_max.transpose(1, 2)  # (B, 1, T)
        log_unigram = unigram.log()
        lmonly_norm = lm_sum.log() + lm_max  # (B, S + 1, 1)
        px_amonly = px_am + log_unigram[symbols].unsqueeze(2) - amonly_norm
        px_lmonly = px_lm - lmonly_norm[:, :S]
        py_amonly = py_am + log_unigram[termination_symbol] - amonly_norm
        py_lmonly = py_lm - lmonly_norm
        combined = 1.0 - lm_only_scale - am_only_scale
        # exact zero scales would turn -inf * 0 into NaN (k2 does the same)
        lm_only_scale, am_only_scale = lm_only_scale or 1e-20, am_only_scale or 1e-20
        px = px * combined + px_lmonly * lm_only_scale + px_amonly * am_only_scale
        py = py * combined + py_lmonly * lm_only_scale + py_amonly * am_only_scale
    return _finish_px(px, py, boundary, rnnt_type), py


def get_rnnt_logprobs(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
                      rnnt_type: str = "regular", boundary: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """k2's px (B, S, T + 1) or (B, S, T) and py (B, S + 1, T) for the joiner ``log_softmax(lm[s] + am[t])``."""
    boundary = _check_simple(lm, am, symbols, termination_symbol, rnnt_type, boundary)
    return _simple_logprobs(lm, am, symbols, termination_symbol, rnnt_type, boundary)


def get_rnnt_logprobs_smoothed(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
                               lm_only_scale: float = 0.1, am_only_scale: float = 0.1,
                               boundary: Optional[Tensor] = None, rnnt_type: str = "regular") -> Tuple[Tensor, Tensor]:
    """k2's smoothed px, py: log-probs interpolated as
    ``lm_only_scale * lm-only + am_only_scale * am-only + (1 - both) * combined``, where lm-only is
    ``log_softmax(lm[s])`` and am-only uses ``am[t]`` with a unigram LM (``softmax(lm)`` averaged over batch and
    positions, padding included, as k2 does). The smoothing keeps the simple loss from trusting one side alone."""
    boundary = _check_simple(lm, am, symbols, termination_symbol, rnnt_type, boundary)
    return _simple_logprobs(lm, am, symbols, termination_symbol, rnnt_type, boundary,
                            (lm_only_scale, am_only_scale))


def _recursion_loss(px: Tensor, py: Tensor, boundary: Tensor, delay_penalty: float, reduction: Optional[str],
                    return_grad: bool):
    out = recursion(_add_delay_penalty(px, boundary, delay_penalty), py, boundary, return_grad)
    total, grads = out if return_grad else (out, None)
    loss = _reduce(-total, reduction)
    return (loss, grads) if return_grad else loss


def rnnt_loss_simple(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
                     boundary: Optional[Tensor] = None, rnnt_type: str = "regular", delay_penalty: float = 0.0,
                     reduction: Optional[str] = "mean", return_grad: bool = False
                     ) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]:
    """RNN-T loss with the joiner ``lm[s] + am[t]`` (k2's ``rnnt_loss_simple``).

    lm (B, S + 1, C), am (B, T, C), symbols (B, S). Returns the negated total log-prob, reduced; with
    ``return_grad`` also ``(px_grad, py_grad)``, the occupation probabilities d(total log-prob)/d(px, py)
    that :func:`get_rnnt_prune_ranges` reads.
    """
    boundary = _check_simple(lm, am, symbols, termination_symbol, rnnt_type, boundary)
    px, py = _simple_logprobs(lm, am, symbols, termination_symbol, rnnt_type, boundary)
    return _recursion_loss(px, py, boundary, delay_penalty, reduction, return_grad)


def rnnt_loss_smoothed(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
                       lm_only_scale: float = 0.1, am_only_scale: float = 0.1, boundary: Optional[Tensor] = None,
                       rnnt_type: str = "regular", delay_penalty: float = 0.0, reduction: Optional[str] = "mean",
                       return_grad: bool = False) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]:
    """:func:`rnnt_loss_simple` on the smoothed log-probs of :func:`get_rnnt_logprobs_smoothed` (k2's
    ``rnnt_loss_smoothed``, the one icefall trains with)."""
    boundary = _check_simple(lm, am, symbols, termination_symbol, rnnt_type, boundary)
    px, py = _simple_logprobs(lm, am, symbols, termination_symbol, rnnt_type, boundary,
                              (lm_only_scale, am_only_scale))
    return _recursion_loss(px, py, boundary, delay_penalty, reduction, return_grad)


# ------------------------------------------------------------------------------------------------- pruning


def _monotonic_lower_bound(x: Tensor) -> Tensor:
    """The largest non-decreasing sequence below ``x`` along the last dim: suffix minima."""
    return x.flip(-1).cummin(dim=-1).values.flip(-1)


def _adjust_pruning_lower_bound(s_begin: Tensor, max_step: int) -> Tensor:
    """Make the range starts (B, T) non-decreasing, start at 0 and grow by less than ``max_step`` per frame
    (so no symbol is skipped), moving each start as little as possible.

    ``s[t + 1] - s[t] <= max_step - 1`` is the same as ``(max_step - 1) * t - s[t]`` being non-decreasing, so both
    constraints are suffix minima, the second in those transformed coordinates (k2's construction).
    """
    T = s_begin.shape[1]
    slope = (max_step - 1) * torch.arange(T, device=s_begin.device)
    s_begin = _monotonic_lower_bound(s_begin)
    x = _monotonic_lower_bound(slope - s_begin).clamp(min=0)  # clamp: the first frame starts at symbol 0
    return slope - x


def get_rnnt_prune_ranges(px_grad: Tensor, py_grad: Tensor, boundary: Tensor, s_range: int) -> Tensor:
    """For each frame, the ``s_range`` consecutive symbol positions to keep: ranges (B, T, s_range) int64.

    k2's algorithm (Pruned RNN-T paper, section 3.2): each frame keeps the window with the most occupation
    mass (blank occupations in the window minus the symbol arc entering it from below), then the window starts
    are made monotonic, start at 0, advance by less than ``s_range`` per frame (at most 1 for modified/constrained,
    detected from px_grad's shape) and reach ``end_symbol - s_range + 1`` at each utterance's last frame.
    As in k2, ``s_range`` is raised (with a warning) to the minimum that can reach every utterance's end,
    ``(S_b - 1) // T_b + 2`` for regular, and lowered to ``S + 1`` when larger: check ``ranges.shape[2]``.
    """
    B, S, T = check_lattice_shapes(px_grad, py_grad, "px_grad", "py_grad")
    if boundary is None:
        raise ValueError("get_rnnt_prune_ranges needs the boundary (B, 4) tensor")
    boundary = check_boundary(boundary, B, S, T, px_grad.device)
    T1 = px_grad.shape[2]
    regular = T1 == T + 1
    Ss, Ts = boundary[:, 2], boundary[:, 3]
    if not regular and bool((Ts < Ss).any()):
        raise ValueError(f"modified/constrained transducers need end_frame >= end_symbol, got {boundary.tolist()}")
    if s_range < 1:
        raise ValueError(f"s_range must be >= 1, got {s_range}")
    if regular and B:
        s_range_min = int(((Ss - 1).div(Ts.clamp(min=1), rounding_mode="trunc") + 2).max())
        if s_range < s_range_min:
            # few distinct texts, so Python's warning filter shows each once instead of once per batch
            warnings.warn(f"get_rnnt_prune_ranges: raised s_range from {s_range} to {s_range_min} so that every "
                          "utterance can reach its last symbol (needs (S_b - 1) // T_b + 2)")
            s_range = s_range_min
    if s_range > S:
        s_range = S + 1  # keeps every symbol; ranges must stay within the S + 1 positions
    if regular and s_range < min(2, S + 1):
        raise ValueError(f"the regular transducer needs s_range >= 2, got {s_range}")
    S1 = S + 1
    # occupation mass of the blank arcs of positions s .. s + s_range - 1, minus the symbol arc into s
    blk = py_grad.unfold(1, s_range, 1).sum(dim=-1)  # (B, S1 - s_range + 1, T)
    px_in = torch.cat((px_grad.new_zeros((B, 1, T1)), px_grad), dim=1)[:, : S1 - s_range + 1, :T]
    s_begin = (blk - px_in).argmax(dim=1)  # (B, T)
    # from each utterance's last frame on, force the window to end at its last symbol
    last = torch.arange(T, device=px_grad.device).view(1, T) >= (Ts - 1).view(B, 1)
    s_end = (Ss - s_range + 1).clamp(min=0).view(B, 1)
    s_begin = torch.where(last, s_end, s_begin)
    s_begin = _adjust_pruning_lower_bound(s_begin, s_range if regular else 2)
    return s_begin.unsqueeze(2) + torch.arange(s_range, device=px_grad.device)


def do_rnnt_pruning(am: Tensor, lm: Tensor, ranges: Tensor) -> Tuple[Tensor, Tensor]:
    """Joiner inputs for the kept cells: am (B, T, C) and lm (B, S + 1, C) -> two (B, T, s_range, C) tensors
    (``am`` is an expanded view, ``lm`` gathered at ``ranges``)."""
    if am.dim() != 3 or lm.dim() != 3 or ranges.dim() != 3:
        raise ValueError(f"am (B, T, C), lm (B, S + 1, C) and ranges (B, T, s_range) expected, got "
                         f"{tuple(am.shape)}, {tuple(lm.shape)}, {tuple(ranges.shape)}")
    B, T, R = ranges.shape
    if am.shape[:2] != (B, T) or lm.shape[0] != B:
        raise ValueError(f"am {tuple(am.shape)} and lm {tuple(lm.shape)} do not match ranges {tuple(ranges.shape)}")
    C = lm.shape[2]
    am_pruned = am.unsqueeze(2).expand(B, T, R, am.shape[2])
    lm_pruned = lm.gather(1, ranges.reshape(B, T * R, 1).expand(B, T * R, C)).reshape(B, T, R, C)
    return am_pruned, lm_pruned


# ------------------------------------------------------------------------------------------------- joiner losses


def _log_normaliser(logits: Tensor) -> Tensor:
    """logsumexp over the last dim, in chunks along dim 1 so its temporary stays small."""
    if logits.numel() == 0:
        return torch.logsumexp(logits, dim=-1)
    per_row = logits[0, 0].numel() * logits.shape[0]
    step = max(1, _CHUNK // per_row)
    return torch.cat([torch.logsumexp(c, dim=-1) for c in logits.split(step, dim=1)], dim=1)


class _JoinerLoss(torch.autograd.Function):
    """-log P per utterance from joiner logits (B, T, R, V); R = S + 1 (full) or s_range (pruned, ``ranges``)."""

    @staticmethod
    def forward(ctx, logits: Tensor, symbols: Tensor, ranges: Optional[Tensor], blank: int, boundary: Tensor,
                rnnt_type: str, delay_penalty: float, clamp: float, fused: bool) -> Tensor:
        B, T, R, V = logits.shape
        S = symbols.shape[1]
        ext = torch.cat((symbols, symbols.new_full((B, 1), blank)), dim=1)  # (B, S + 1); position S: blank
        if ranges is None:
            labels = ext.unsqueeze(1).expand(B, T, S + 1)
        else:
            labels = ext.gather(1, ranges.reshape(B, T * R)).reshape(B, T, R)
        lse = _log_normaliser(logits) if fused else None  # (B, T, R)
        lp_sym = logits.gather(3, labels.unsqueeze(3)).squeeze(3)
        lp_blank = logits[..., blank]
        if fused:
            lp_sym, lp_blank = lp_sym - lse, lp_blank - lse
        if ranges is not None:  # band -> lattice columns, -inf outside the kept cells
            full = lp_sym.new_full((B, T, S + 1), NEG_INF)
            lp_sym, lp_blank = full.scatter(2, ranges, lp_sym), full.scatter(2, ranges, lp_blank)
        px = lp_sym[:, :, :S].transpose(1, 2)  # (B, S, T)
        py = lp_blank.transpose(1, 2).contiguous()  # (B, S + 1, T)
        px = _add_delay_penalty(_finish_px(px, py, boundary, rnnt_type), boundary, delay_penalty).contiguous()
        need = ctx.needs_input_grad[0]
        total, px_occ, py_occ = forward_backward(px, py, boundary, need)
        if need:
            occ_sym = torch.nn.functional.pad(px_occ[:, :, :T].transpose(1, 2), (0, 1))  # (B, T, S + 1)
            occ_blank = py_occ.transpose(1, 2).clone()  # (B, T, S + 1)
            if rnnt_type == "constrained":  # px included py[:, 1:]
                occ_blank[:, :, 1:] += occ_sym[:, :, :S]
            if ranges is not None:
                occ_sym, occ_blank = occ_sym.gather(2, ranges), occ_blank.gather(2, ranges)
            ctx.save_for_backward(logits, lse, labels, occ_sym, occ_blank)
        ctx.blank, ctx.clamp, ctx.fused = blank, clamp, fused
        return -total

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        logits, lse, labels, occ_sym, occ_blank = ctx.saved_tensors
        if ctx.fused:  # d(-log P)/d logits = softmax * occupation(cell) - occupation(arc) at its label
            g = logits - lse.unsqueeze(3)
            g.exp_().mul_((occ_sym + occ_blank).unsqueeze(3))
        else:  # logits are already log-probs: only the gathered entries have a gradient
            g = torch.zeros_like(logits)
        g.scatter_add_(3, labels.unsqueeze(3), -occ_sym.unsqueeze(3))
        g[..., ctx.blank] -= occ_blank
        if ctx.clamp > 0:
            g.clamp_(-ctx.clamp, ctx.clamp)
        g.mul_(grad_loss.view(-1, 1, 1, 1))
        return g, None, None, None, None, None, None, None, None


def _check_logits(logits: Tensor, name: str = "logits") -> None:
    if logits.dim() != 4:
        raise ValueError(f"{name} must be 4-D (B, T, S + 1 or s_range, V), got {tuple(logits.shape)}")
    if logits.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name} must be float32 or float64 (cast under autocast), got {logits.dtype}")


def rnnt_loss_k2(logits: Tensor, symbols: Tensor, termination_symbol: int, boundary: Optional[Tensor] = None,
                 rnnt_type: str = "regular", delay_penalty: float = 0.0,
                 reduction: Optional[str] = "mean") -> Tensor:
    """k2's full ``rnnt_loss``: logits (B, T, S + 1, C) from the joiner, symbols (B, S)."""
    _check_logits(logits)
    B, T, S1, C = logits.shape
    boundary = _check_common(symbols, B, S1 - 1, T, C, termination_symbol, rnnt_type, boundary, logits.device)
    loss = _JoinerLoss.apply(logits, symbols.long(), None, termination_symbol, boundary, rnnt_type,
                             delay_penalty, -1.0, True)
    return _reduce(loss, reduction)


def rnnt_loss_pruned(logits: Tensor, symbols: Tensor, ranges: Tensor, termination_symbol: int,
                     boundary: Optional[Tensor] = None, rnnt_type: str = "regular", delay_penalty: float = 0.0,
                     reduction: Optional[str] = "mean") -> Tensor:
    """k2's ``rnnt_loss_pruned``: logits (B, T, s_range, C) of the joiner on the cells kept by ``ranges``
    (B, T, s_range) from :func:`get_rnnt_prune_ranges`; cells outside the ranges have probability 0."""
    _check_logits(logits)
    B, T, R, C = logits.shape
    if symbols.dim() != 2:
        raise ValueError(f"symbols must be (B, S), got {tuple(symbols.shape)}")
    S = symbols.shape[1]
    if ranges.shape != (B, T, R) or ranges.dtype.is_floating_point:
        raise ValueError(f"ranges must be an integer tensor of shape {(B, T, R)} matching logits, "
                         f"got {ranges.dtype} {tuple(ranges.shape)}")
    if R > S + 1:
        raise ValueError(f"s_range={R} is more than the S + 1 = {S + 1} symbol positions (see get_rnnt_prune_ranges)")
    boundary = _check_common(symbols, B, S, T, C, termination_symbol, rnnt_type, boundary, logits.device)
    ranges = ranges.long()
    if ranges.numel() and bool(((ranges < 0) | (ranges > S)).any()):
        raise ValueError(f"ranges must index symbol positions 0..S={S}, got values in "
                         f"[{int(ranges.min())}, {int(ranges.max())}]")
    loss = _JoinerLoss.apply(logits, symbols.long(), ranges, termination_symbol, boundary, rnnt_type,
                             delay_penalty, -1.0, True)
    return _reduce(loss, reduction)


def rnnt_loss(logits: Tensor, targets: Tensor, logit_lengths: Tensor, target_lengths: Tensor, blank: int = 0,
              clamp: float = -1, reduction: str = "mean", fused_log_softmax: bool = True) -> Tensor:
    """The full RNN-T loss with torchaudio's conventions (``torchaudio.functional.rnnt_loss``).

    logits (B, T, U + 1, V): joiner output, unnormalised (log-softmax is applied inside) unless
    ``fused_log_softmax=False``, in which case they are taken as log-probs and only the gathered entries get a
    gradient. targets (B, U) int, logit_lengths and target_lengths (B,) int. ``clamp > 0`` clamps each element of
    the per-utterance gradient wrt the logits to ``[-clamp, clamp]`` before it is scaled by the incoming
    gradient (torchaudio's semantics). reduction: "none" (B,), "mean" over the batch, or "sum".
    """
    _check_logits(logits)
    B, T, U1, V = logits.shape
    if targets.dim() != 2 or targets.shape != (B, U1 - 1):
        raise ValueError(f"targets must be (B, U) = ({B}, {U1 - 1}) to match logits {tuple(logits.shape)}, "
                         f"got {tuple(targets.shape)}")
    for name, lens, top, low in (("logit_lengths", logit_lengths, T, 1), ("target_lengths", target_lengths, U1 - 1, 0)):
        if lens.shape != (B,) or lens.dtype.is_floating_point:
            raise ValueError(f"{name} must be an integer tensor of shape ({B},), got {lens.dtype} {tuple(lens.shape)}")
        if B and bool(((lens < low) | (lens > top)).any()):
            raise ValueError(f"{name} must be in [{low}, {top}] (the logits' size), got {lens.tolist()}")
    if not 0 <= blank < V:
        raise ValueError(f"blank {blank} is outside the vocabulary [0, {V})")
    device = logits.device
    targets, target_lengths = targets.to(device), target_lengths.to(device)
    # padding after each target may hold anything (e.g. -1): make it the blank so it can be gathered
    pad = torch.arange(U1 - 1, device=device).view(1, -1) >= target_lengths.view(-1, 1)
    targets = targets.long().masked_fill(pad, blank)
    zeros = torch.zeros(B, dtype=torch.int64, device=device)
    boundary = torch.stack((zeros, zeros, target_lengths.long(), logit_lengths.to(device).long()), dim=1)
    boundary = _check_common(targets, B, U1 - 1, T, V, blank, "regular", boundary, device)
    loss = _JoinerLoss.apply(logits, targets, None, blank, boundary, "regular", 0.0,
                             float(clamp), fused_log_softmax)
    return _reduce(loss, reduction)
