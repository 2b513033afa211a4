"""Decoding with the attention-decoder head: beam search (optionally joint with CTC) and n-best rescoring.

Both take the encoder output and an :class:`asrkit.models.attention.AttentionDecoder`::

    enc, enc_lens = model.forward_encoder(feats, feat_lens)
    hyps = attention_beam_search(model.attention, enc, enc_lens, beam=4)
    # hybrid CTC/attention: CTC prefix scores join the search (Watanabe et al., 2017; ESPnet)
    hyps = attention_beam_search(model.attention, enc, enc_lens, beam=4,
                                 ctc_log_probs=model.ctc(enc), ctc_weight=0.3)
    # icefall's "attention-decoder rescoring" of a CTC n-best list
    nbest = ...  # per utterance [(tokens, first-pass log-prob), ...]
    hyps = attention_rescore(model.attention, enc, enc_lens, nbest, weight=1.0)

The beam search runs all utterances and all their hypotheses as one batch, one token per step,
with the decoder's KV cache (the encoder output is projected once per layer and shared by an
utterance's hypotheses). Every live hypothesis may end at every step; an utterance stops when its
best ended hypothesis beats anything its live ones can still reach (scores only fall as tokens are
added, bar the length bonus, which the bound includes), or at its length limit, and then leaves the
batch.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from asrkit.models.attention import AttentionDecoder

NEG_INF = float("-inf")


class CtcPrefixScorer:
    """CTC prefix scores of K hypotheses per utterance, all with the same number of tokens.

    For a label prefix g it keeps, per frame t, log r_t^n(g) and log r_t^b(g): the probability that
    frames 0..t emit exactly g, ending in a non-blank or a blank frame. The prefix score of g + c,
    the probability of all label sequences that start with g + c, is
    ``sum_t phi_{t-1}(g, c) p_t(c)`` with ``phi = r^b + r^n`` (only ``r^b`` when c repeats g's last
    label); the end score of g is ``r^n_{T-1}(g) + r^b_{T-1}(g)``. Frames past an utterance's end
    become certain blanks, so every quantity at frame T-1 is its value at the utterance's last frame.
    """

    def __init__(self, log_probs: Tensor, lens: Tensor, hyps_per_utt: int, blank_id: int):
        N, T, V = log_probs.shape
        valid = torch.arange(T, device=log_probs.device)[None, :] < lens[:, None]  # (N, T)
        x = log_probs.float().masked_fill(~valid[:, :, None], NEG_INF)
        x[:, :, blank_id] = x[:, :, blank_id].masked_fill(~valid, 0.0)
        self.x = x  # (N, T, V)
        self.xb = x[:, :, blank_id]  # (N, T)
        K = hyps_per_utt
        rn = torch.full((N, K, T), NEG_INF, device=x.device)  # the empty prefix: only blanks so far
        rb = self.xb.cumsum(dim=1)[:, None, :].expand(N, K, T).contiguous()
        self.r = torch.stack([rn, rb], dim=2)  # (N, K, 2, T)
        self.last = torch.full((N, K), -1, dtype=torch.long, device=x.device)  # -1: empty prefix
        self.num_tokens = 0

    def _token_frames(self, tokens: Tensor) -> Tensor:
        """log p_t(c) for tokens (N, K, C) -> (N, K, C, T)."""
        N, K, C = tokens.shape
        T = self.x.shape[1]
        idx = tokens.reshape(N, 1, K * C).expand(N, T, K * C)
        return self.x.gather(2, idx).view(N, T, K, C).permute(0, 2, 3, 1)

    def _phi(self, r: Tensor, last: Tensor, tokens: Tensor) -> Tensor:
        """phi_t(g, c) (N, K, C, T) for prefixes with r (N, K, 2, T), last (N, K) and tokens (N, K, C)."""
        rn, rb = r[:, :, None, 0], r[:, :, None, 1]  # (N, K, 1, T)
        return torch.where((tokens == last[:, :, None])[..., None], rb, torch.logaddexp(rn, rb))

    def prefix_scores(self, tokens: Tensor) -> Tensor:
        """Prefix scores (N, K, C) of every hypothesis extended by each of its candidate tokens (N, K, C)."""
        xc = self._token_frames(tokens)  # (N, K, C, T)
        phi = self._phi(self.r, self.last, tokens)
        start = max(self.num_tokens, 1)  # g + c needs len(g) + 1 frames: earlier terms are -inf
        terms = phi[..., start - 1:-1] + xc[..., start:]  # (N, K, C, T - start)
        if self.num_tokens == 0:
            terms = torch.cat([xc[..., :1], terms], dim=-1)  # c may start at frame 0
        return terms.logsumexp(dim=-1)

    def end_scores(self) -> Tensor:
        """log P(the label sequence is exactly g) (N, K)."""
        return torch.logaddexp(self.r[:, :, 0, -1], self.r[:, :, 1, -1])

    def advance(self, parent: Tensor, tokens: Tensor) -> None:
        """Hypothesis k becomes parent[:, k] (N, K) extended by tokens[:, k] (N, K)."""
        N, K = parent.shape
        T = self.x.shape[1]
        r = self.r.gather(1, parent[:, :, None, None].expand(N, K, 2, T))
        last = self.last.gather(1, parent)
        phi = self._phi(r, last, tokens[:, :, None])[:, :, 0]  # (N, K, T)
        xc = self._token_frames(tokens[:, :, None])[:, :, 0]  # (N, K, T)
        rn = torch.full((N, K, T), NEG_INF, device=r.device)
        rb = torch.full((N, K, T), NEG_INF, device=r.device)
        if self.num_tokens == 0:
            rn[:, :, 0] = xc[:, :, 0]
        for t in range(max(self.num_tokens, 1), T):
            rn[:, :, t] = torch.logaddexp(rn[:, :, t - 1], phi[:, :, t - 1]) + xc[:, :, t]
            rb[:, :, t] = torch.logaddexp(rn[:, :, t - 1], rb[:, :, t - 1]) + self.xb[:, None, t]
        self.r = torch.stack([rn, rb], dim=2)
        self.last = tokens
        self.num_tokens += 1

    def select_utts(self, utts: Tensor) -> None:
        self.x, self.xb, self.r, self.last = self.x[utts], self.xb[utts], self.r[utts], self.last[utts]


@torch.no_grad()
def attention_beam_search(
    head: AttentionDecoder,
    enc: Tensor,
    enc_lens: Tensor,
    beam: int = 4,
    max_len_ratio: float = 1.0,
    length_penalty: float = 0.0,
    ctc_log_probs: Optional[Tensor] = None,
    ctc_weight: float = 0.0,
    pre_beam: Optional[int] = None,
    blank_id: Optional[int] = 0,
    return_scores: bool = False,
) -> Union[List[List[int]], Tuple[List[List[int]], List[float]]]:
    """Best token list (no sos/eos) per utterance; enc (N, T, D), enc_lens (N,).

    A hypothesis scores ``(1 - ctc_weight) * attention log-prob + ctc_weight * CTC prefix score``
    (the attention part includes eos once it ends) plus ``length_penalty`` per token. At most
    ``max(1, floor(max_len_ratio * enc_len))`` tokens are emitted. With CTC (``ctc_log_probs``
    (N, T, V) and ``ctc_weight`` > 0), each hypothesis tries only its ``pre_beam`` (default
    ``1.5 * beam``) likeliest tokens under the attention decoder. ``blank_id`` (None: none) is never
    emitted. With ``return_scores`` it also returns each best hypothesis's score (-inf and an empty
    list when no hypothesis has a finite one, e.g. CTC finds every one impossible).
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    if max_len_ratio <= 0:
        raise ValueError(f"max_len_ratio must be > 0, got {max_len_ratio}")
    if not 0.0 <= ctc_weight <= 1.0:
        raise ValueError(f"ctc_weight must lie in [0, 1], got {ctc_weight}")
    if pre_beam is not None and pre_beam < 1:
        raise ValueError(f"pre_beam must be >= 1, got {pre_beam}")
    if enc.dim() != 3:
        raise ValueError(f"enc must be (N, T, D), got shape {tuple(enc.shape)}")
    V, eos = head.vocab_size, head.eos_id
    N, T = enc.shape[:2]
    use_ctc = ctc_weight > 0
    if use_ctc:
        if ctc_log_probs is None:
            raise ValueError("ctc_weight > 0 needs ctc_log_probs, the CTC head's (N, T, V) output")
        if ctc_log_probs.shape != (N, T, V):
            raise ValueError(f"ctc_log_probs must be (N, T, V) = ({N}, {T}, {V}), got {tuple(ctc_log_probs.shape)}")
        if blank_id is None or not 0 <= blank_id < V:
            raise ValueError(f"joint CTC decoding needs the CTC blank_id in [0, {V}), got {blank_id}")
    if blank_id is not None and blank_id == eos:
        raise ValueError(f"blank_id {blank_id} is the eos id")
    B = beam
    K = V if not use_ctc else max(1, min(V, pre_beam if pre_beam is not None else int(1.5 * beam)))
    was_training = head.training
    head.eval()
    try:
        state = head.init_state(enc, enc_lens, B)  # validates enc and enc_lens
        dev = enc.device
        lens = enc_lens.to(dev)
        max_len = (lens.double() * max_len_ratio).floor().long().clamp(min=1)  # (N,)
        ctc = CtcPrefixScorer(ctc_log_probs.to(dev), lens, B, blank_id) if use_ctc else None
        banned = torch.zeros(V, dtype=torch.bool, device=dev)
        banned[eos] = True
        if blank_id is not None:
            banned[blank_id] = True

        def combine(att: Tensor, ctc_score: Optional[Tensor]) -> Tensor:
            if ctc_score is None:
                return att
            if ctc_weight == 1.0:  # avoid 0 * -inf
                return ctc_score
            return (1.0 - ctc_weight) * att + ctc_weight * ctc_score

        utt = torch.arange(N, device=dev)  # original index of each utterance still in the batch
        att = torch.full((N, B), NEG_INF, device=dev)  # attention log-prob of each live prefix
        att[:, 0] = 0.0  # one live hypothesis: the empty prefix
        score = att.clone()  # combined score; -inf marks a dead slot
        prefix = torch.empty((N, B, 0), dtype=torch.long, device=dev)
        best = torch.full((N,), NEG_INF, device=dev)  # best ended hypothesis so far (length bonus included)
        best_prefix = torch.zeros((N, int(max_len.max()) if N else 0), dtype=torch.long, device=dev)
        best_len = torch.zeros((N,), dtype=torch.long, device=dev)
        out_hyps: List[List[int]] = [[] for _ in range(N)]
        out_scores: List[float] = [NEG_INF] * N
        last = torch.full((N, B), head.sos_id, dtype=torch.long, device=dev)
        i = 0  # tokens in every live prefix
        while utt.numel():
            n = utt.numel()
            lp = head.step(state, last)  # (n, B, V)
            dead = torch.isinf(score)  # (n, B)

            # every live hypothesis may end here
            end = combine(att + lp[:, :, eos], ctc.end_scores() if ctc else None) + length_penalty * i
            end = end.masked_fill(dead, NEG_INF)
            end_best, end_slot = end.max(dim=1)  # (n,)
            better = end_best > best
            best = torch.where(better, end_best, best)
            best_len = torch.where(better, i, best_len)
            if i:
                chosen = prefix[torch.arange(n, device=dev), end_slot]  # (n, i)
                best_prefix[:, :i] = torch.where(better[:, None], chosen, best_prefix[:, :i])

            # or grow by one token, unless at its length limit
            cand_lp, cand_tok = lp.masked_fill(banned, NEG_INF).topk(K, dim=-1)  # (n, B, K)
            cand_att = att[:, :, None] + cand_lp
            cand_ctc = ctc.prefix_scores(cand_tok) if ctc else None
            cand = combine(cand_att, cand_ctc)
            cand = cand.masked_fill(dead[:, :, None] | torch.isinf(cand_lp) | (i >= max_len)[:, None, None], NEG_INF)
            score, flat = cand.view(n, B * K).topk(B, dim=1)  # (n, B)
            parent = flat // K
            tok = cand_tok.view(n, B * K).gather(1, flat)
            att = cand_att.view(n, B * K).gather(1, flat)
            if ctc:
                ctc.advance(parent, tok)
            state.select_hyps((parent + torch.arange(n, device=dev)[:, None] * B).flatten())
            prefix = torch.cat([prefix.gather(1, parent[:, :, None].expand(n, B, i)), tok[:, :, None]], dim=2)
            last = tok
            i += 1

            # finished: nothing live, or nothing live can beat the best ended hypothesis
            # a live hypothesis ends with at most its score now plus the largest length bonus ahead
            reach = score.max(dim=1).values + length_penalty * (max_len if length_penalty > 0 else i)
            done = torch.isinf(score).all(dim=1) | (best >= reach)
            if bool(done.any()):
                for j in done.nonzero().flatten().tolist():
                    o = int(utt[j])
                    out_scores[o] = float(best[j])
                    if out_scores[o] > NEG_INF:
                        out_hyps[o] = best_prefix[j, : int(best_len[j])].tolist()
                keep = (~done).nonzero().flatten()
                utt, max_len, att, score = utt[keep], max_len[keep], att[keep], score[keep]
                prefix, last, best = prefix[keep], last[keep], best[keep]
                best_prefix, best_len = best_prefix[keep], best_len[keep]
                state.select_utts(keep)
                if ctc:
                    ctc.select_utts(keep)
    finally:
        head.train(was_training)
    return (out_hyps, out_scores) if return_scores else out_hyps


@torch.no_grad()
def attention_scores(
    head: AttentionDecoder,
    enc: Tensor,
    enc_lens: Tensor,
    hyps: Sequence[Sequence[Sequence[int]]],
    batch_size: int = 256,
) -> List[List[float]]:
    """Attention log-likelihood (eos included) of every hypothesis ``hyps[n][k]`` of utterance n.

    Hypotheses of all utterances are scored together, ``batch_size`` at a time.
    """
    N = enc.shape[0] if enc.dim() == 3 else -1
    if len(hyps) != N:
        raise ValueError(f"batch mismatch: enc has shape {tuple(enc.shape)} (want (N, T, D)), "
                         f"{len(hyps)} n-best lists")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    flat = [(n, list(h)) for n, utt_hyps in enumerate(hyps) for h in utt_hyps]
    scores: List[float] = []
    was_training = head.training
    head.eval()
    try:
        for s in range(0, len(flat), batch_size):
            chunk = flat[s:s + batch_size]
            idx = torch.tensor([n for n, _ in chunk], device=enc.device)
            nll = head.nll(enc[idx], enc_lens.to(enc.device)[idx], [h for _, h in chunk])
            scores.extend((-nll).tolist())
    finally:
        head.train(was_training)
    out: List[List[float]] = []
    for utt_hyps in hyps:
        out.append(scores[:len(utt_hyps)])
        scores = scores[len(utt_hyps):]
    return out


def attention_rescore(
    head: AttentionDecoder,
    enc: Tensor,
    enc_lens: Tensor,
    nbest: Sequence[Sequence[Tuple[Sequence[int], float]]],
    weight: float,
    batch_size: int = 256,
) -> List[List[int]]:
    """Best hypothesis per utterance under ``first-pass score + weight * attention log-likelihood``.

    nbest[n] is utterance n's list of (tokens, first-pass log-prob), e.g. from
    ``ctc_prefix_beam_search`` or a transducer beam search. Ties go to the earlier hypothesis.
    With weight 0 the decoder is not run. To try several weights, call :func:`attention_scores` once.
    """
    if not math.isfinite(weight):
        raise ValueError(f"weight must be finite, got {weight}")
    if enc.dim() != 3 or len(nbest) != enc.shape[0]:
        raise ValueError(f"batch mismatch: enc has shape {tuple(enc.shape)} (want (N, T, D)), "
                         f"{len(nbest)} n-best lists")
    for n, utt_hyps in enumerate(nbest):
        if not utt_hyps:
            raise ValueError(f"n-best list {n} is empty")
    hyps = [[list(h) for h, _ in utt_hyps] for utt_hyps in nbest]
    if weight == 0:
        att = [[0.0] * len(h) for h in hyps]
    else:
        att = attention_scores(head, enc, enc_lens, hyps, batch_size)
    best: List[List[int]] = []
    for utt_hyps, utt_att, utt_tokens in zip(nbest, att, hyps):
        totals = [float(s) + weight * a for (_, s), a in zip(utt_hyps, utt_att)]
        best.append(utt_tokens[max(range(len(totals)), key=totals.__getitem__)])
    return best
