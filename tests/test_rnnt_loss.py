"""Tests for asrkit.losses.rnnt and asrkit.losses.lattice.

The reference is the textbook transducer recursion written as explicit Python loops over frames t and
symbols u (Graves' alpha over ``(t, u)``, not k2's ``px``/``py`` layout), on log-probs computed straight from
each loss's definition; its gradients come from autograd through those loops. Larger cases are checked
against warprnnt_numba (float32).
"""

import warnings

import pytest
import torch

from asrkit.losses.lattice import mutual_information_recursion
from asrkit.losses.rnnt import (
    do_rnnt_pruning,
    get_rnnt_logprobs,
    get_rnnt_prune_ranges,
    rnnt_loss,
    rnnt_loss_k2,
    rnnt_loss_pruned,
    rnnt_loss_simple,
    rnnt_loss_smoothed,
)

NEG_INF = float("-inf")
f64 = torch.float64


# ------------------------------------------------------------------------------------------------- references


def _lse(terms):
    # drop -inf arcs (no path): keeps the reference's gradients finite
    terms = [x for x in terms if x is not None and float(x.detach()) > NEG_INF]
    return torch.logsumexp(torch.stack(terms), 0) if terms else None


def ref_transducer(sym, blank, T: int, U: int, rnnt_type: str = "regular", delay_penalty: float = 0.0):
    """log P of one utterance. sym[t][u]: log-prob of emitting target u from context u on frame t (u < U),
    blank[t][u]: log-prob of the blank from context u on frame t."""
    def arc(t, u):
        x = sym[t][u] + delay_penalty * ((T - 1) / 2 - t) if delay_penalty else sym[t][u]
        return x + blank[t][u + 1] if rnnt_type == "constrained" else x

    alpha = {}
    if rnnt_type == "regular":  # alpha[t, u]: frames 0..t seen, u symbols emitted, still on frame t
        for t in range(T):
            for u in range(U + 1):
                if t == 0 and u == 0:
                    alpha[t, u] = torch.zeros((), dtype=f64)
                    continue
                a = _lse([alpha[t - 1, u] + blank[t - 1][u] if alpha.get((t - 1, u)) is not None else None,
                          alpha[t, u - 1] + arc(t, u - 1) if alpha.get((t, u - 1)) is not None else None])
                alpha[t, u] = a
        last = alpha.get((T - 1, U))
        return last + blank[T - 1][U] if last is not None else torch.tensor(NEG_INF, dtype=f64)
    for t in range(T + 1):  # modified / constrained: every arc consumes a frame; alpha[t, u] after t frames
        for u in range(U + 1):
            if t == 0:
                alpha[t, u] = torch.zeros((), dtype=f64) if u == 0 else None
                continue
            alpha[t, u] = _lse([
                alpha[t - 1, u] + blank[t - 1][u] if alpha.get((t - 1, u)) is not None else None,
                alpha[t - 1, u - 1] + arc(t - 1, u - 1) if u > 0 and alpha.get((t - 1, u - 1)) is not None else None])
    out = alpha.get((T, U))
    return out if out is not None else torch.tensor(NEG_INF, dtype=f64)


def ref_joint(lsm, targets, T_lens, U_lens, blank=0, rnnt_type="regular", delay_penalty=0.0):
    """-log P per utterance from log-probs lsm (B, T, U + 1, V)."""
    out = []
    for b in range(lsm.shape[0]):
        T, U = int(T_lens[b]), int(U_lens[b])
        sym = [[lsm[b, t, u, int(targets[b, u])] for u in range(U)] for t in range(T)]
        blk = [[lsm[b, t, u, blank] for u in range(U + 1)] for t in range(T)]
        out.append(-ref_transducer(sym, blk, T, U, rnnt_type, delay_penalty))
    return torch.stack(out)


def ref_recursion(px, py, boundary):
    """k2's recursion in its own layout, loops over s and t from (s_begin, t_begin)."""
    B, S, T1 = px.shape
    regular = T1 == py.shape[2] + 1
    out = []
    for b in range(B):
        s0, t0, s1, t1 = boundary[b].tolist()
        p = {(s0, t0): torch.zeros((), dtype=px.dtype)}
        for s in range(s0, s1 + 1):
            for t in range(t0, t1 + 1):
                if (s, t) == (s0, t0):
                    continue
                sp, tp = (s - 1, t) if regular else (s - 1, t - 1)
                v = _lse([p[sp, tp] + px[b, sp, tp] if (sp, tp) in p else None,
                          p[s, t - 1] + py[b, s, t - 1] if (s, t - 1) in p else None])
                if v is not None:
                    p[s, t] = v
        out.append(p[s1, t1])
    return torch.stack(out)


def random_case(B=3, T=6, U=4, V=7, dtype=f64, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, U + 1, V, generator=g, dtype=dtype).requires_grad_()
    targets = torch.randint(1, V, (B, U), generator=g)
    T_lens = torch.tensor([T] + [max(1, T - 1 - i) for i in range(B - 1)])
    U_lens = torch.tensor([U] + [max(0, U - 2 - i) for i in range(B - 1)])
    return logits, targets, T_lens, U_lens


def k2_boundary(U_lens, T_lens):
    z = torch.zeros_like(U_lens)
    return torch.stack((z, z, U_lens, T_lens), dim=1)


def grad(out, x):
    return torch.autograd.grad(out.sum(), x, retain_graph=True)[0]


# ------------------------------------------------------------------------------------------------- the recursion


@pytest.mark.parametrize("regular", [True, False])
@pytest.mark.parametrize("with_boundary", [True, False])
def test_recursion_matches_loops(regular, with_boundary):
    B, S, T = 3, 4, 6
    px = torch.randn(B, S, T + 1 if regular else T, dtype=f64, requires_grad=True)
    py = torch.randn(B, S + 1, T, dtype=f64, requires_grad=True)
    boundary = torch.tensor([[0, 0, S, T], [1, 2, 3, 5], [0, 1, 2, 6]]) if with_boundary else None
    total, (px_grad, py_grad) = mutual_information_recursion(px, py, boundary, return_grad=True)
    ref = ref_recursion(px, py, boundary if with_boundary else torch.tensor([[0, 0, S, T]] * B))
    torch.testing.assert_close(total, ref, atol=1e-10, rtol=0)
    ref_gx, ref_gy = torch.autograd.grad(ref.sum(), (px, py))
    torch.testing.assert_close(px_grad, ref_gx, atol=1e-10, rtol=0)
    torch.testing.assert_close(py_grad, ref_gy, atol=1e-10, rtol=0)
    gx, gy = torch.autograd.grad((total * torch.arange(1.0, B + 1, dtype=f64)).sum(), (px, py))
    torch.testing.assert_close(gx[1], 2 * ref_gx[1], atol=1e-10, rtol=0)
    assert px_grad.shape == px.shape and py_grad.shape == py.shape
    assert (px_grad >= 0).all() and (py_grad >= 0).all() and px_grad.max() <= 1 + 1e-12


# ------------------------------------------------------------------------------------------------- full losses


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_rnnt_loss_matches_reference(reduction):
    logits, targets, T_lens, U_lens = random_case()
    targets[2, U_lens[2]:] = -1  # padding may hold anything
    loss = rnnt_loss(logits, targets.int(), T_lens.int(), U_lens.int(), blank=0, reduction=reduction)
    ref = ref_joint(logits.log_softmax(-1), targets, T_lens, U_lens)
    ref = {"none": ref, "mean": ref.mean(), "sum": ref.sum()}[reduction]
    torch.testing.assert_close(loss, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(grad(loss, logits), grad(ref, logits), atol=1e-10, rtol=0)


def test_rnnt_loss_blank_not_zero_and_unfused():
    logits, targets, T_lens, U_lens = random_case(V=6, seed=1)
    targets = targets % 5  # ids 0..4, blank is 5
    loss = rnnt_loss(logits, targets, T_lens, U_lens, blank=5, reduction="sum")
    ref = ref_joint(logits.log_softmax(-1), targets, T_lens, U_lens, blank=5).sum()
    torch.testing.assert_close(loss, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(grad(loss, logits), grad(ref, logits), atol=1e-10, rtol=0)
    # fused_log_softmax=False: the logits are taken as log-probs as they are
    lp = logits.detach().log_softmax(-1).requires_grad_()
    loss = rnnt_loss(lp, targets, T_lens, U_lens, blank=5, reduction="sum", fused_log_softmax=False)
    ref = ref_joint(lp, targets, T_lens, U_lens, blank=5).sum()
    torch.testing.assert_close(loss, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(grad(loss, lp), grad(ref, lp), atol=1e-10, rtol=0)


def test_rnnt_loss_clamp_clamps_the_per_utterance_gradient():
    logits, targets, T_lens, U_lens = random_case(seed=2)
    g_free = grad(rnnt_loss(logits, targets, T_lens, U_lens, reduction="sum"), logits)
    assert g_free.abs().max() > 0.3
    g_sum = grad(rnnt_loss(logits, targets, T_lens, U_lens, clamp=0.1, reduction="sum"), logits)
    torch.testing.assert_close(g_sum, g_free.clamp(-0.1, 0.1))
    g_mean = grad(rnnt_loss(logits, targets, T_lens, U_lens, clamp=0.1, reduction="mean"), logits)
    torch.testing.assert_close(g_mean, g_free.clamp(-0.1, 0.1) / 3)


@pytest.mark.parametrize("rnnt_type", ["regular", "modified", "constrained"])
@pytest.mark.parametrize("with_boundary", [True, False])
def test_rnnt_loss_k2_matches_reference(rnnt_type, with_boundary):
    logits, targets, T_lens, U_lens = random_case(T=6, U=4, seed=3)
    B, T, U1, _ = logits.shape
    if not with_boundary:
        T_lens, U_lens = torch.full((B,), T), torch.full((B,), U1 - 1)
    boundary = k2_boundary(U_lens, T_lens) if with_boundary else None
    loss = rnnt_loss_k2(logits, targets, 0, boundary=boundary, rnnt_type=rnnt_type, reduction="none")
    ref = ref_joint(logits.log_softmax(-1), targets, T_lens, U_lens, rnnt_type=rnnt_type)
    torch.testing.assert_close(loss, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(grad(loss, logits), grad(ref, logits), atol=1e-10, rtol=0)


def test_delay_penalty_matches_reference():
    logits, targets, T_lens, U_lens = random_case(seed=4)
    loss = rnnt_loss_k2(logits, targets, 0, k2_boundary(U_lens, T_lens), delay_penalty=0.3, reduction="none")
    ref = ref_joint(logits.log_softmax(-1), targets, T_lens, U_lens, delay_penalty=0.3)
    torch.testing.assert_close(loss, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(grad(loss, logits), grad(ref, logits), atol=1e-10, rtol=0)


def test_rnnt_loss_matches_warprnnt_numba():
    pytest.importorskip("warprnnt_numba")
    from warprnnt_numba import RNNTLossNumba

    g = torch.Generator().manual_seed(5)
    B, T, U, V = 4, 50, 15, 40
    logits = (3 * torch.randn(B, T, U + 1, V, generator=g)).requires_grad_()
    targets = torch.randint(1, V, (B, U), generator=g, dtype=torch.int32)
    T_lens = torch.tensor([50, 41, 7, 30], dtype=torch.int32)
    U_lens = torch.tensor([15, 11, 0, 15], dtype=torch.int32)
    loss = rnnt_loss(logits, targets, T_lens, U_lens, reduction="none")
    ref = RNNTLossNumba(blank=0, reduction="none")(logits, targets, T_lens, U_lens)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)
    w = torch.rand(B, generator=g)  # different weights per utterance exercise the scaling of the gradient
    g_ours, g_ref = grad(loss * w, logits), grad(ref * w, logits)
    # float32 on log-probs of magnitude ~300: both are ~1e-4 from a float64 run (ours is the closer one)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-3, atol=3e-4)
    assert g_ours[2, 7:].abs().max() == 0 and g_ours[1, :, 12:].abs().max() == 0  # padding has no gradient


# ------------------------------------------------------------------------------------------------- simple losses


def simple_case(B=3, T=6, S=4, C=7, seed=6):
    g = torch.Generator().manual_seed(seed)
    lm = torch.randn(B, S + 1, C, generator=g, dtype=f64).requires_grad_()
    am = torch.randn(B, T, C, generator=g, dtype=f64).requires_grad_()
    symbols = torch.randint(1, C, (B, S), generator=g)
    return lm, am, symbols, torch.tensor([T, T - 1, 4]), torch.tensor([S, 2, 0])


@pytest.mark.parametrize("rnnt_type", ["regular", "modified"])
@pytest.mark.parametrize("with_boundary", [True, False])
def test_simple_loss_matches_reference(rnnt_type, with_boundary):
    lm, am, symbols, T_lens, U_lens = simple_case()
    B, T, S = am.shape[0], am.shape[1], symbols.shape[1]
    if not with_boundary:
        T_lens, U_lens = torch.full((B,), T), torch.full((B,), S)
    boundary = k2_boundary(U_lens, T_lens) if with_boundary else None
    loss = rnnt_loss_simple(lm, am, symbols, 0, boundary=boundary, rnnt_type=rnnt_type, reduction="none")
    lsm = (am.unsqueeze(2) + lm.unsqueeze(1)).log_softmax(-1)  # (B, T, S + 1, C)
    ref = ref_joint(lsm, symbols, T_lens, U_lens, rnnt_type=rnnt_type)
    torch.testing.assert_close(loss, ref, atol=1e-10, rtol=0)
    for x in (lm, am):
        torch.testing.assert_close(grad(loss, x), grad(ref, x), atol=1e-10, rtol=0)


@pytest.mark.parametrize("rnnt_type", ["regular", "modified"])
@pytest.mark.parametrize("scales", [(0.25, 0.0), (0.1, 0.2)])
def test_smoothed_loss_matches_reference(rnnt_type, scales):
    lm, am, symbols, T_lens, U_lens = simple_case(seed=7)
    lm_scale, am_scale = scales
    loss = rnnt_loss_smoothed(lm, am, symbols, 0, lm_only_scale=lm_scale, am_only_scale=am_scale,
                              boundary=k2_boundary(U_lens, T_lens), rnnt_type=rnnt_type, reduction="sum")
    combined = (am.unsqueeze(2) + lm.unsqueeze(1)).log_softmax(-1)  # (B, T, S + 1, C)
    lm_only = lm.log_softmax(-1).unsqueeze(1)  # (B, 1, S + 1, C)
    unigram = lm.softmax(-1).mean(dim=(0, 1))  # averaged over batch and positions, padding included (as k2)
    am_only = (am + unigram.log()).log_softmax(-1).unsqueeze(2)  # (B, T, 1, C)
    lsm = (1 - lm_scale - am_scale) * combined + lm_scale * lm_only + am_scale * am_only
    ref = ref_joint(lsm, symbols, T_lens, U_lens, rnnt_type=rnnt_type).sum()
    torch.testing.assert_close(loss, ref, atol=1e-10, rtol=0)
    for x in (lm, am):
        torch.testing.assert_close(grad(loss, x), grad(ref, x), atol=1e-10, rtol=0)


@pytest.mark.parametrize("rnnt_type", ["regular", "modified"])
def test_returned_grads_are_autograd_grads_of_the_total(rnnt_type):
    lm, am, symbols, T_lens, U_lens = simple_case(seed=8)
    boundary = k2_boundary(U_lens, T_lens)
    px, py = get_rnnt_logprobs(lm, am, symbols, 0, rnnt_type=rnnt_type, boundary=boundary)
    px, py = px.detach().requires_grad_(), py.detach().requires_grad_()
    total = mutual_information_recursion(px, py, boundary)
    auto_px, auto_py = torch.autograd.grad(total.sum(), (px, py))
    loss, (px_grad, py_grad) = rnnt_loss_simple(lm, am, symbols, 0, boundary=boundary, rnnt_type=rnnt_type,
                                                reduction="sum", return_grad=True)
    torch.testing.assert_close(loss, -total.sum())
    torch.testing.assert_close(px_grad, auto_px, atol=1e-12, rtol=0)
    torch.testing.assert_close(py_grad, auto_py, atol=1e-12, rtol=0)
    assert px_grad.shape == (3, 4, 7 if rnnt_type == "regular" else 6) and py_grad.shape == (3, 5, 6)
    # occupations: every path crosses each frame boundary once, so blank (+ modified symbol) mass per frame is 1
    per_frame = py_grad.sum(1) + (px_grad.sum(1) if rnnt_type == "modified" else 0)
    for b in range(3):
        torch.testing.assert_close(per_frame[b, : T_lens[b]], torch.ones(int(T_lens[b]), dtype=f64))


# ------------------------------------------------------------------------------------------------- pruning


def prune_case(rnnt_type="regular", s_range=3, seed=9, B=3, T=8, S=5, C=6):
    g = torch.Generator().manual_seed(seed)
    lm = torch.randn(B, S + 1, C, generator=g, dtype=f64)
    am = torch.randn(B, T, C, generator=g, dtype=f64)
    symbols = torch.randint(1, C, (B, S), generator=g)
    T_lens, U_lens = torch.tensor([T, T - 2, 5]), torch.tensor([S, 3, 0])
    boundary = k2_boundary(U_lens, T_lens)
    _, (px_grad, py_grad) = rnnt_loss_smoothed(lm, am, symbols, 0, boundary=boundary, rnnt_type=rnnt_type,
                                               return_grad=True)
    ranges = get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range)
    logits = torch.randn(B, T, ranges.shape[2], C, generator=g, dtype=f64).requires_grad_()
    return logits, symbols, ranges, boundary, T_lens, U_lens


@pytest.mark.parametrize("rnnt_type", ["regular", "modified", "constrained"])
def test_pruned_loss_matches_reference(rnnt_type):
    logits, symbols, ranges, boundary, T_lens, U_lens = prune_case(rnnt_type)
    loss = rnnt_loss_pruned(logits, symbols, ranges, 0, boundary=boundary, rnnt_type=rnnt_type, reduction="none")
    lsm = logits.log_softmax(-1)  # (B, T, R, C) -> (B, T, S + 1, C) with -inf outside the ranges
    B, T, R, C = lsm.shape
    S = symbols.shape[1]
    full = torch.full((B, T, S + 1, C), NEG_INF, dtype=f64)
    for b in range(B):
        for t in range(T):
            for j in range(R):
                full[b, t, int(ranges[b, t, j])] = lsm[b, t, j]
    ref = ref_joint(full, symbols, T_lens, U_lens, rnnt_type=rnnt_type)
    torch.testing.assert_close(loss, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(grad(loss, logits), grad(ref, logits), atol=1e-10, rtol=0)


@pytest.mark.parametrize("rnnt_type", ["regular", "modified"])
def test_pruned_equals_full_when_range_covers_every_symbol(rnnt_type):
    logits, targets, T_lens, U_lens = random_case(B=3, T=6, U=4, seed=10)
    B, T, U1, V = logits.shape
    boundary = k2_boundary(U_lens, T_lens)
    full = rnnt_loss_k2(logits, targets, 0, boundary, rnnt_type=rnnt_type, reduction="none")
    px_grad = torch.rand(B, U1 - 1, T + (rnnt_type == "regular"), dtype=f64)
    ranges = get_rnnt_prune_ranges(px_grad, torch.rand(B, U1, T, dtype=f64), boundary, s_range=U1 + 3)
    assert ranges.shape == (B, T, U1) and (ranges == torch.arange(U1)).all()
    pruned = rnnt_loss_pruned(logits, targets, ranges, 0, boundary, rnnt_type=rnnt_type, reduction="none")
    torch.testing.assert_close(pruned, full, atol=1e-12, rtol=0)
    torch.testing.assert_close(grad(pruned, logits), grad(full, logits), atol=1e-12, rtol=0)


def test_pruned_loss_is_at_least_the_full_loss():
    logits, targets, T_lens, U_lens = random_case(B=3, T=8, U=6, seed=11)
    boundary = k2_boundary(U_lens, T_lens)
    px_grad = torch.rand(3, 6, 9, dtype=f64)
    ranges = get_rnnt_prune_ranges(px_grad, torch.rand(3, 7, 8, dtype=f64), boundary, s_range=3)
    B, T, R = ranges.shape
    pruned_logits = logits.detach().gather(2, ranges.unsqueeze(3).expand(B, T, R, logits.shape[3]))
    pruned = rnnt_loss_pruned(pruned_logits, targets, ranges, 0, boundary, reduction="none")
    full = rnnt_loss_k2(logits.detach(), targets, 0, boundary, reduction="none")
    assert torch.isfinite(pruned).all() and (pruned >= full - 1e-12).all() and (pruned > full + 1e-3).any()


@pytest.mark.parametrize("rnnt_type", ["regular", "modified"])
def test_prune_ranges_have_k2_properties(rnnt_type):
    g = torch.Generator().manual_seed(12)
    B, S, T, R = 4, 12, 20, 4
    px_grad = torch.rand(B, S, T + (rnnt_type == "regular"), generator=g)
    py_grad = torch.rand(B, S + 1, T, generator=g)
    T_lens, U_lens = torch.tensor([20, 15, 12, 3]), torch.tensor([12, 9, 0, 2])
    ranges = get_rnnt_prune_ranges(px_grad, py_grad, k2_boundary(U_lens, T_lens), R)
    assert ranges.shape == (B, T, R) and ranges.dtype == torch.int64
    assert (ranges == ranges[:, :, :1] + torch.arange(R)).all()
    start = ranges[:, :, 0]
    step = start[:, 1:] - start[:, :-1]
    assert (start[:, 0] == 0).all() and (step >= 0).all()
    assert (step <= (R - 1 if rnnt_type == "regular" else 1)).all()
    assert (start >= 0).all() and (start <= S - R + 1).all()
    for b in range(B):  # each utterance's last frame ends its window on its last symbol
        assert int(start[b, T_lens[b] - 1]) == max(0, int(U_lens[b]) - R + 1)
    assert (step > 0).any() and not (step == step[:, :1]).all()  # the argmax, not a fixed schedule


def test_prune_ranges_follow_the_occupations():
    # one path: symbols 0..3 emitted on frames 0, 2, 4, 6; each window of 2 must hold the cells it visits,
    # ties going to the lower window (argmax's first maximum, as in k2)
    B, S, T = 1, 4, 8
    px_grad, py_grad = torch.zeros(B, S, T + 1), torch.zeros(B, S + 1, T)
    visited = []
    s = 0
    for t in range(T):
        cells = [s]
        if t % 2 == 0 and s < S:
            px_grad[0, s, t] = 1
            s += 1
            cells.append(s)
        py_grad[0, s, t] = 1
        visited.append(cells)
    ranges = get_rnnt_prune_ranges(px_grad, py_grad, k2_boundary(torch.tensor([S]), torch.tensor([T])), 2)
    assert ranges[0, :, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for t, cells in enumerate(visited):
        assert set(cells) <= set(ranges[0, t].tolist())


def test_prune_range_adjustments():
    px_grad, py_grad = torch.rand(1, 9, 3), torch.rand(1, 10, 2)
    boundary = torch.tensor([[0, 0, 9, 2]])  # 9 symbols in 2 frames need windows of (9 - 1) // 2 + 2 = 6
    with pytest.warns(UserWarning, match="from 2 to 6"):
        assert get_rnnt_prune_ranges(px_grad, py_grad, boundary, 2).shape == (1, 2, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_rnnt_prune_ranges(px_grad, py_grad, boundary, 50).shape == (1, 2, 10)  # at most S + 1


def test_do_rnnt_pruning():
    am, lm = torch.randn(2, 5, 3), torch.randn(2, 4, 3)
    ranges = torch.tensor([[0, 1], [0, 1], [1, 2], [2, 3], [2, 3]]).expand(2, 5, 2)
    am_p, lm_p = do_rnnt_pruning(am, lm, ranges)
    assert am_p.shape == lm_p.shape == (2, 5, 2, 3)
    torch.testing.assert_close(am_p[1, 3, 1], am[1, 3])
    torch.testing.assert_close(lm_p[1, 3, 1], lm[1, 3])
    torch.testing.assert_close(lm_p[0, 2, 0], lm[0, 1])


def test_training_pipeline_float32():
    """icefall's sequence end to end in float32: finite losses and gradients that reach every input."""
    g = torch.Generator().manual_seed(13)
    B, T, S, C, J = 3, 30, 8, 12, 16
    enc = torch.randn(B, T, J, generator=g, requires_grad=True)
    dec = torch.randn(B, S + 1, J, generator=g, requires_grad=True)
    proj_am, proj_lm, out = torch.nn.Linear(J, C), torch.nn.Linear(J, C), torch.nn.Linear(J, C)
    symbols = torch.randint(1, C, (B, S), generator=g)
    boundary = k2_boundary(torch.tensor([8, 5, 0]), torch.tensor([30, 22, 9]))
    simple, (px_grad, py_grad) = rnnt_loss_smoothed(proj_lm(dec), proj_am(enc), symbols, 0, lm_only_scale=0.25,
                                                    am_only_scale=0.0, boundary=boundary, reduction="sum",
                                                    return_grad=True)
    ranges = get_rnnt_prune_ranges(px_grad, py_grad, boundary, 5)
    am_p, lm_p = do_rnnt_pruning(enc, dec, ranges)
    pruned = rnnt_loss_pruned(out(torch.tanh(am_p + lm_p)), symbols, ranges, 0, boundary, reduction="sum")
    (simple + pruned).backward()
    assert torch.isfinite(simple) and torch.isfinite(pruned) and simple.dtype == torch.float32
    for x in (enc, dec, proj_am.weight, out.weight):
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert enc.grad[2, 9:].abs().max() == 0  # frames past an utterance's end get nothing


# ------------------------------------------------------------------------------------------------- gradcheck


def test_gradcheck():
    logits, targets, T_lens, U_lens = random_case(B=2, T=3, U=2, V=4, seed=14)
    assert torch.autograd.gradcheck(lambda x: rnnt_loss(x, targets, T_lens, U_lens, reduction="none"), (logits,))
    lm, am, symbols, _, _ = simple_case(B=2, T=3, S=2, C=4, seed=15)
    boundary = k2_boundary(torch.tensor([2, 1]), torch.tensor([3, 2]))
    for rnnt_type in ("regular", "modified"):
        assert torch.autograd.gradcheck(
            lambda a, b: rnnt_loss_smoothed(a, b, symbols, 0, boundary=boundary, rnnt_type=rnnt_type,
                                            reduction="none"), (lm, am))
    ranges = torch.tensor([[0, 1], [1, 2], [1, 2]]).expand(2, 3, 2)
    pl = torch.randn(2, 3, 2, 4, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: rnnt_loss_pruned(x, targets, ranges, 0, boundary, reduction="none"),
                                    (pl,))
    px = torch.randn(2, 2, 4, dtype=f64, requires_grad=True)
    py = torch.randn(2, 3, 3, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: mutual_information_recursion(a, b), (px, py))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_cuda_matches_cpu(dtype):
    """The same code on CUDA (run where a GPU exists): full loss, the pruned pipeline, modified recursion."""
    logits, targets, T_lens, U_lens = random_case(B=3, T=40, U=12, V=30, dtype=dtype, seed=19)
    boundary = k2_boundary(U_lens, T_lens)
    g = torch.Generator().manual_seed(20)
    lm = torch.randn(3, 13, 30, generator=g, dtype=dtype, requires_grad=True)
    am = torch.randn(3, 40, 30, generator=g, dtype=dtype, requires_grad=True)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)

    def run(device):
        x, a, b = (t.detach().to(device).requires_grad_() for t in (logits, lm, am))
        full = rnnt_loss(x, targets.to(device), T_lens.to(device), U_lens.to(device), reduction="none")
        bd = boundary.to(device)
        simple, (pxg, pyg) = rnnt_loss_smoothed(a, b, targets.to(device), 0, boundary=bd, reduction="none",
                                                return_grad=True)
        ranges = get_rnnt_prune_ranges(pxg, pyg, bd, 4)
        pl = x.gather(2, ranges.unsqueeze(3).expand(*ranges.shape, x.shape[3]))
        pruned = rnnt_loss_pruned(pl, targets.to(device), ranges, 0, bd, reduction="none")
        modified = rnnt_loss_simple(a, b, targets.to(device), 0, boundary=bd, rnnt_type="modified", reduction="none")
        out = torch.cat((full, simple, pruned, modified))
        grads = torch.autograd.grad(out.sum(), (x, a, b))
        return [t.cpu() for t in (out, ranges) + grads]

    for c, r in zip(run("cuda"), run("cpu")):
        if c.dtype == torch.int64:
            assert torch.equal(c, r)
        else:
            torch.testing.assert_close(c, r, **tol)


# ------------------------------------------------------------------------------------------------- edge cases


def test_empty_targets_and_single_frame():
    B, T, V = 2, 5, 4
    logits = torch.randn(B, T, 1, V, dtype=f64, requires_grad=True)
    targets = torch.zeros(B, 0, dtype=torch.long)
    loss = rnnt_loss(logits, targets, torch.tensor([5, 2]), torch.tensor([0, 0]), reduction="none")
    expected = -logits.log_softmax(-1)[:, :, 0, 0]  # S = 0: blanks on every frame
    torch.testing.assert_close(loss, torch.stack((expected[0].sum(), expected[1, :2].sum())))
    # the pruned pipeline on an all-empty batch: one-position windows
    lm, am = torch.randn(B, 1, V, dtype=f64), torch.randn(B, T, V, dtype=f64)
    boundary = k2_boundary(torch.tensor([0, 0]), torch.tensor([5, 2]))
    _, (px_grad, py_grad) = rnnt_loss_simple(lm, am, targets, 0, boundary=boundary, return_grad=True)
    ranges = get_rnnt_prune_ranges(px_grad, py_grad, boundary, 5)
    assert ranges.shape == (B, T, 1) and (ranges == 0).all()
    pruned = rnnt_loss_pruned(logits, targets, ranges, 0, boundary, reduction="none")
    torch.testing.assert_close(pruned, loss)
    # T = 1: all symbols then the blank on the only frame
    logits1, targets1, _, _ = random_case(B=2, T=1, U=3, seed=16)
    loss1 = rnnt_loss(logits1, targets1, torch.tensor([1, 1]), torch.tensor([3, 1]), reduction="none")
    lsm = logits1.log_softmax(-1)[:, 0]  # (B, U + 1, V)
    exp0 = -(lsm[0, 0, targets1[0, 0]] + lsm[0, 1, targets1[0, 1]] + lsm[0, 2, targets1[0, 2]] + lsm[0, 3, 0])
    exp1 = -(lsm[1, 0, targets1[1, 0]] + lsm[1, 1, 0])
    torch.testing.assert_close(loss1, torch.stack((exp0, exp1)))


def test_float32_and_float64_agree():
    logits, targets, T_lens, U_lens = random_case(B=3, T=20, U=6, V=10, seed=17)
    l64 = rnnt_loss(logits, targets, T_lens, U_lens, reduction="none")
    l32 = rnnt_loss(logits.detach().float().requires_grad_(), targets, T_lens, U_lens, reduction="none")
    assert l32.dtype == torch.float32
    torch.testing.assert_close(l32.double(), l64, rtol=1e-5, atol=1e-5)


def test_float32_precision_at_librispeech_lengths():
    g = torch.Generator().manual_seed(18)
    B, T, S, C = 2, 400, 100, 50
    lm, am = 3 * torch.randn(B, S + 1, C, generator=g, dtype=f64), 3 * torch.randn(B, T, C, generator=g, dtype=f64)
    symbols = torch.randint(1, C, (B, S), generator=g)
    l64, (gx64, gy64) = rnnt_loss_simple(lm, am, symbols, 0, reduction="none", return_grad=True)
    l32, (gx32, gy32) = rnnt_loss_simple(lm.float(), am.float(), symbols, 0, reduction="none", return_grad=True)
    assert (l64 > 1000).all()  # large totals: the case where float32 could drift
    torch.testing.assert_close(l32.double(), l64, rtol=2e-6, atol=0)
    # occupations exp(alpha + arc + beta - total) inherit float32 rounding of |alpha| ~ 3000 (eps * 3000 ~ 4e-4
    # per add): ~1e-3, as in any float32 recursion (k2, warp-transducer)
    torch.testing.assert_close(gx32.double(), gx64, rtol=0, atol=3e-3)
    torch.testing.assert_close(gy32.double(), gy64, rtol=0, atol=3e-3)


def test_modified_loss_with_more_symbols_than_frames_is_an_error():
    lm, am, symbols, T_lens, U_lens = simple_case(T=3, S=4)
    with pytest.raises(ValueError, match="frames >= symbols"):
        rnnt_loss_simple(lm, am, symbols, 0, rnnt_type="modified")
    # the regular transducer can emit several symbols on a frame
    assert torch.isfinite(rnnt_loss_simple(lm, am, symbols, 0))


@pytest.mark.parametrize("bad, match", [
    (dict(target_lengths=torch.tensor([5, 1])), "target_lengths must be in"),
    (dict(logit_lengths=torch.tensor([7, 1])), "logit_lengths must be in"),
    (dict(logit_lengths=torch.tensor([0, 1])), "logit_lengths must be in"),
    (dict(logit_lengths=torch.tensor([6])), "logit_lengths must be an integer tensor"),
    (dict(targets=torch.ones(2, 3, dtype=torch.long)), "targets must be"),
    (dict(targets=torch.full((2, 4), 9)), r"symbols must be in \[0, 7\)"),
    (dict(logits=torch.randn(2, 6, 5)), "logits must be 4-D"),
    (dict(logits=torch.randn(2, 6, 5, 7).half()), "float32 or float64"),
    (dict(blank=7), "outside the vocabulary"),
    (dict(reduction="avg"), "reduction must be"),
])
def test_rnnt_loss_errors(bad, match):
    args = dict(logits=torch.randn(2, 6, 5, 7), targets=torch.ones(2, 4, dtype=torch.long),
                logit_lengths=torch.tensor([6, 3]), target_lengths=torch.tensor([4, 2]))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        rnnt_loss(**args)


def test_k2_style_errors():
    lm, am, symbols, T_lens, U_lens = simple_case()
    with pytest.raises(ValueError, match="boundary row 1"):
        rnnt_loss_simple(lm, am, symbols, 0, boundary=k2_boundary(torch.tensor([4, 5, 0]), T_lens))
    with pytest.raises(ValueError, match="boundary row 0"):
        rnnt_loss_simple(lm, am, symbols, 0, boundary=k2_boundary(U_lens, torch.tensor([7, 1, 1])))
    with pytest.raises(ValueError, match="rnnt_type"):
        rnnt_loss_simple(lm, am, symbols, 0, rnnt_type="fancy")
    with pytest.raises(ValueError, match="symbols must be an integer tensor"):
        rnnt_loss_simple(lm, am, symbols[:, :3], 0)
    with pytest.raises(ValueError, match="lm must be"):
        rnnt_loss_simple(lm, am[:, :, :5], symbols, 0)
    logits = torch.randn(3, 6, 2, 7)
    with pytest.raises(ValueError, match="ranges must index"):
        rnnt_loss_pruned(logits, symbols, torch.full((3, 6, 2), 4) + torch.arange(2), 0)
    with pytest.raises(ValueError, match="more than the S"):
        rnnt_loss_pruned(torch.randn(3, 6, 6, 7), symbols, torch.arange(6).expand(3, 6, 6), 0)
    with pytest.raises(ValueError, match="ranges must be an integer tensor"):
        rnnt_loss_pruned(logits, symbols, torch.zeros(3, 6, 3, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="needs the boundary"):
        get_rnnt_prune_ranges(torch.rand(3, 4, 7), torch.rand(3, 5, 6), None, 2)
    with pytest.raises(ValueError, match="px_grad"):
        get_rnnt_prune_ranges(torch.rand(3, 4, 8), torch.rand(3, 5, 6), k2_boundary(U_lens, T_lens), 2)
