"""CTC decoding without k2: greedy search and prefix beam search over a batch of log-probs.

Both take the CTC head's output ``log_probs (N, T, V)`` with valid lengths ``lens (N,)`` and return
token ids per utterance (blanks removed, repeats collapsed), ready for ``tokenizer.decode``::

    log_probs = ctc_head(enc_out)                        # (N, T, V), asrkit.models.ctc.CtcHead
    hyps = ctc_greedy_search(log_probs, enc_lens)
    hyps = ctc_prefix_beam_search(log_probs, enc_lens, beam=4)

The prefix beam search is batched: every frame is about 35 tensor operations on
``(N, beam * (1 + beam))`` candidates, with no Python loop over utterances, hypotheses or tokens,
so its cost is per frame rather than per utterance (on CUDA a batch of 8 costs about what a batch of
64 does). Hypotheses that reach the same label prefix are merged through a 62-bit rolling hash of
the prefix (two independent 31-bit polynomial hashes; the chance that two of one utterance's
candidates collide at a frame is below 1e-15).
"""

from __future__ import annotations

from typing import List, Tuple, Union

import torch

# two polynomial hashes modulo primes below 2**31; products stay below 2**62, far from int64 overflow
_P1, _M1 = 1_000_003, 2_147_483_647
_P2, _M2 = 999_983, 2_147_483_629


def _check_inputs(log_probs: torch.Tensor, lens: torch.Tensor, blank_id: int) -> torch.Tensor:
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be (N, T, V), got shape {tuple(log_probs.shape)}")
    N, T, V = log_probs.shape
    if lens.shape != (N,):
        raise ValueError(f"lens must be (N,) = ({N},), got shape {tuple(lens.shape)}")
    if not 0 <= blank_id < V:
        raise ValueError(f"blank_id {blank_id} is outside the vocabulary [0, {V})")
    lens = lens.to(device=log_probs.device, dtype=torch.long)
    if N and (int(lens.max()) > T or int(lens.min()) < 0):
        raise ValueError(f"lens must lie in [0, {T}], got min {int(lens.min())} max {int(lens.max())}")
    return lens


def ctc_greedy_search(log_probs: torch.Tensor, lens: torch.Tensor, blank_id: int = 0) -> List[List[int]]:
    """Best token per frame, repeats collapsed, blanks dropped. log_probs (N, T, V), lens (N,)."""
    lens = _check_inputs(log_probs, lens, blank_id)
    N, T, _ = log_probs.shape
    best = log_probs.argmax(dim=-1)  # (N, T)
    prev = torch.nn.functional.pad(best[:, :-1], (1, 0), value=blank_id)  # (N, T) token at t-1
    valid = torch.arange(T, device=best.device)[None, :] < lens[:, None]  # (N, T)
    keep = (best != prev) & (best != blank_id) & valid  # (N, T)
    best, keep = best.cpu(), keep.cpu()
    return [best[n][keep[n]].tolist() for n in range(N)]


def ctc_prefix_beam_search(
    log_probs: torch.Tensor,
    lens: torch.Tensor,
    beam: int = 4,
    blank_id: int = 0,
    return_scores: bool = False,
) -> Union[List[List[int]], Tuple[List[List[int]], List[float]]]:
    """CTC prefix beam search; returns the best label sequence per utterance.

    log_probs: (N, T, V) log-probabilities (any float dtype; computed in float32); lens: (N,).
    At each frame every hypothesis is extended only by that frame's ``beam`` most likely non-blank
    tokens. With ``return_scores`` it also returns each best sequence's log-probability, the
    log-sum over all its alignments kept by the search (exact when nothing was pruned).
    """
    lens = _check_inputs(log_probs, lens, blank_id)
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    N, T, V = log_probs.shape
    device = log_probs.device
    neg_inf = float("-inf")
    valid = torch.arange(T, device=device)[None, :] < lens[:, None]  # (N, T)
    # frames past an utterance's end become "certainly blank": every prefix keeps its probability
    lp_all = log_probs.float().masked_fill(~valid[:, :, None], neg_inf)  # (N, T, V)
    lp_all[:, :, blank_id].masked_fill_(~valid, 0.0)
    if V == 1:  # a vocabulary of only the blank: every utterance decodes to nothing
        hyps: List[List[int]] = [[] for _ in range(N)]
        return (hyps, lp_all[:, :, 0].sum(1).cpu().tolist()) if return_scores else hyps

    B, K = beam, min(beam, V - 1)  # hypotheses kept; tokens tried per hypothesis and frame
    E = 1 + K  # candidates per hypothesis: "stay" (prefix unchanged), then K "extend" (prefix + c)
    top_lp, top_tok = lp_all.index_fill(-1, torch.tensor([blank_id], device=device), neg_inf).topk(K, dim=-1)
    lp_blank = lp_all[:, :, blank_id]  # (N, T)
    P = torch.tensor([_P1, _P2], device=device)
    M = torch.tensor([_M1, _M2], device=device)
    # a dead slot (score -inf) gets a hash no live prefix can have (>= M), unique to its slot
    dead_hash = (M + torch.arange(B, device=device)[:, None]).expand(N, B, 2)  # (N, B, 2)

    # beam state: slot 0 holds the empty prefix, the other slots are dead
    pb = torch.full((N, B), neg_inf, device=device)  # log P(prefix, path ends in blank)
    pb[:, 0] = 0.0
    pnb = torch.full((N, B), neg_inf, device=device)  # log P(prefix, path ends in a token)
    last = torch.full((N, B), blank_id, dtype=torch.long, device=device)  # last token; blank = empty prefix
    h = torch.where(torch.arange(B, device=device)[None, :, None] == 0, 0, dead_hash)  # (N, B, 2) prefix hash
    ext_pb = torch.full((N, B, K), neg_inf, device=device)  # an extension always ends in a token
    chosen_hist = torch.empty((T, N, B), dtype=torch.long, device=device)  # candidate index per slot

    for t in range(T):
        tok_t = top_tok[:, t, None, :].expand(N, B, K)  # (N, B, K)
        total = torch.logaddexp(pb, pnb)  # (N, B)
        stay_pb = total + lp_blank[:, t, None]  # (N, B)
        stay_pnb = pnb + lp_all[:, t].gather(1, last)  # (N, B) the last token repeated
        # extending by the last token again needs a blank in between: only pb may extend
        ext_base = torch.where(tok_t == last[:, :, None], pb[:, :, None], total[:, :, None])  # (N, B, K)
        ext_pnb = ext_base + top_lp[:, t, None, :]  # (N, B, K)
        cand_pb = torch.cat([stay_pb[:, :, None], ext_pb], dim=2).view(N, B * E)  # (N, C)
        cand_pnb = torch.cat([stay_pnb[:, :, None], ext_pnb], dim=2).view(N, B * E)
        cand_last = torch.cat([last[:, :, None], tok_t], dim=2).view(N, B * E)
        ext_h = (h[:, :, None, :] * P + tok_t[..., None] + 1) % M  # (N, B, K, 2) rolling hash of prefix + c
        cand_h = torch.cat([h[:, :, None, :], ext_h], dim=2).view(N, B * E, 2)

        # merge equal prefixes: with distinct prefixes in the beam, a prefix is reached at most twice
        # (slot b' staying, and slot b extended by b''s last token), so after sorting by hash, equal
        # prefixes are adjacent pairs: fold the second into the first and kill the second
        key = cand_h[..., 0] * (1 << 31) + cand_h[..., 1]  # (N, C)
        key, order = key.sort(dim=1)
        p = torch.stack([cand_pb, cand_pnb], dim=2).gather(1, order[:, :, None].expand(-1, -1, 2))  # (N, C, 2)
        same = (key[:, 1:] == key[:, :-1])[:, :, None]  # (N, C-1, 1)
        first = torch.where(same, torch.logaddexp(p[:, :-1], p[:, 1:]), p[:, :-1])
        p = torch.cat([first, p[:, -1:]], dim=1)
        p[:, 1:].masked_fill_(same, neg_inf)

        score, best = torch.logaddexp(p[..., 0], p[..., 1]).topk(B, dim=1)  # (N, B)
        p = p.gather(1, best[:, :, None].expand(-1, -1, 2))
        pb, pnb = p[..., 0], p[..., 1]
        chosen = order.gather(1, best)  # (N, B) index into the candidates
        last = cand_last.gather(1, chosen)
        h = cand_h.gather(1, chosen[:, :, None].expand(-1, -1, 2))
        h = torch.where(torch.isinf(score)[:, :, None], dead_hash, h)
        chosen_hist[t] = chosen

    final = torch.logaddexp(pb, pnb)  # (N, B)
    best_score, slot = final.max(dim=1)  # (N,)
    hyps = _backtrack(chosen_hist.cpu(), top_tok.cpu(), slot.cpu(), E)
    if return_scores:
        return hyps, best_score.cpu().tolist()
    return hyps


def _backtrack(chosen_hist: torch.Tensor, top_tok: torch.Tensor, slot: torch.Tensor, E: int) -> List[List[int]]:
    """Token sequences from the per-frame candidate indices (T, N, B), all utterances at once (CPU)."""
    T, N, _ = chosen_hist.shape
    rows = torch.arange(N)
    out = torch.full((N, T), -1, dtype=torch.long)
    for t in range(T - 1, -1, -1):
        c = chosen_hist[t, rows, slot]  # (N,)
        j = c % E  # 0 = stay, j > 0 = extended by the frame's j-th best token
        out[:, t] = torch.where(j > 0, top_tok[rows, t, (j - 1).clamp(min=0)], -1)
        slot = c // E
    return [row[row >= 0].tolist() for row in out]
