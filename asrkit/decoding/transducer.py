"""Transducer decoding without k2: greedy search, modified beam search, beam search, CTC rescoring.

The searches take a :class:`asrkit.models.transducer.TransducerHead` (only its ``decoder`` and
``joiner`` are used), the encoder output ``(N, T, D)`` and its valid lengths ``(N,)``, and return
token ids per utterance (no blanks), ready for ``tokenizer.decode``::

    enc_out, enc_lens = encoder(feats, feat_lens)
    hyps = greedy_search(head, enc_out, enc_lens)                      # fastest
    hyps = modified_beam_search(head, enc_out, enc_lens, beam=4)       # the usual choice
    hyps = beam_search(head, enc_out, enc_lens, beam=4)                # the regular topology
    nbest = modified_beam_search(head, enc_out, enc_lens, beam=8, return_nbest=True)
    hyps = ctc_rescore(nbest, ctc_head(enc_out), enc_lens, blank_id=0, weight=0.3)

Two topologies, as in icefall's ``beam_search.py``. *One symbol per frame* (``greedy_search`` with
``max_sym_per_frame=1``, ``modified_beam_search``): at each frame the joiner picks blank or one
token and the search moves to the next frame either way, so every frame costs one batched joiner
call. *Regular transducer* (``beam_search``, ``greedy_search`` with ``max_sym_per_frame > 1``): a
token keeps the frame, only blank advances it, as in training. Scores are natural-log
probabilities under the search's topology, summed over the alignments the search kept.

The decoder is stateless (it sees the last ``context_size`` tokens), so hypotheses that end in the
same tokens share one decoder output; the start context is ``[-1] * (context_size - 1) + [blank]``
(-1 embeds to zero), which is what training's blank-padded input gives the first position.
Callers put the head in ``eval()`` mode; every function here runs under ``torch.inference_mode()``.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

NBest = List[Tuple[List[int], float]]  # (tokens, log-prob) per hypothesis, best first

# two polynomial hashes modulo primes below 2**31 identify token sequences in the batched beam
# (products stay below 2**62, far from int64 overflow); a collision needs both to agree (~1e-18)
_P1, _M1 = 1_000_003, 2_147_483_647
_P2, _M2 = 999_983, 2_147_483_629


def _check_inputs(head, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor) -> torch.Tensor:
    if encoder_out.dim() != 3:
        raise ValueError(f"encoder_out must be (N, T, D), got shape {tuple(encoder_out.shape)}")
    N, T, D = encoder_out.shape
    expected = head.joiner.encoder_proj.in_features
    if D != expected:
        raise ValueError(f"encoder_out has D={D} but the joiner expects encoder_dim={expected}")
    if encoder_out_lens.shape != (N,):
        raise ValueError(f"encoder_out_lens must be (N,) = ({N},), got shape {tuple(encoder_out_lens.shape)}")
    lens = encoder_out_lens.to(device=encoder_out.device, dtype=torch.long)
    if N and (int(lens.max()) > T or int(lens.min()) < 0):
        raise ValueError(f"encoder_out_lens must lie in [0, {T}], got min {int(lens.min())} max {int(lens.max())}")
    return lens


def _sort_by_length(lens: torch.Tensor) -> Tuple[torch.Tensor, List[int]]:
    """Longest first, so the utterances still running at frame t are a prefix of the batch (like
    ``pack_padded_sequence``). Returns the order (CPU) and how many utterances run at each frame."""
    lens = lens.cpu()
    order = torch.argsort(lens, descending=True, stable=True)
    t_max = int(lens.max()) if lens.numel() else 0
    active = (lens[order][None, :] > torch.arange(t_max)[:, None]).sum(1)  # (t_max,)
    return order, active.tolist()


def _unsort(sorted_results: list, order: torch.Tensor) -> list:
    out = [None] * len(sorted_results)
    for i, n in enumerate(order.tolist()):
        out[n] = sorted_results[i]
    return out


def _start_context(decoder, n: int, device: torch.device) -> torch.Tensor:
    ctx = [-1] * (decoder.context_size - 1) + [decoder.blank_id]
    return torch.tensor(ctx, dtype=torch.long, device=device).expand(n, -1).clone()  # (n, context_size)


def _decoder_out(head, ctx: torch.Tensor) -> torch.Tensor:
    """Projected decoder output for contexts ``(M, context_size)`` -> ``(M, joiner_dim)``."""
    return head.joiner.decoder_proj(head.decoder(ctx, need_pad=False)).squeeze(1)


# ------------------------------------------------------------------------------ greedy search


@torch.inference_mode()
def greedy_search(
    head, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor, max_sym_per_frame: int = 1
) -> List[List[int]]:
    """Most likely symbol at every step, batched over utterances.

    With ``max_sym_per_frame=1`` each frame emits blank or one token (icefall's
    ``greedy_search_batch``); with ``k > 1`` a frame keeps emitting until the joiner picks blank or
    ``k`` tokens are out, then moves on. Each step is one joiner call for the utterances still
    emitting and one decoder call for those that emitted.
    """
    lens = _check_inputs(head, encoder_out, encoder_out_lens)
    if max_sym_per_frame < 1:
        raise ValueError(f"max_sym_per_frame must be >= 1, got {max_sym_per_frame}")
    N = encoder_out.shape[0]
    device = encoder_out.device
    blank = head.decoder.blank_id
    order, active = _sort_by_length(lens)
    enc = head.joiner.encoder_proj(encoder_out[order.to(device)])  # (N, T, J)
    ctx = _start_context(head.decoder, N, device)  # (N, context_size)
    dec = _decoder_out(head, ctx[:1]).expand(N, -1).clone()  # (N, J)
    rows_hist: List[torch.Tensor] = []
    toks_hist: List[torch.Tensor] = []
    for t, n in enumerate(active):
        rows = torch.arange(n, device=device)
        for _ in range(max_sym_per_frame):
            logits = head.joiner(enc[rows, t], dec[rows], project_input=False)  # (R, V)
            y = logits.argmax(dim=-1)
            emit = y != blank
            rows, y = rows[emit], y[emit]
            if rows.numel() == 0:
                break
            ctx[rows] = torch.cat([ctx[rows, 1:], y[:, None]], dim=1)
            dec[rows] = _decoder_out(head, ctx[rows])
            rows_hist.append(rows)
            toks_hist.append(y)
    hyps: List[List[int]] = [[] for _ in range(N)]
    if rows_hist:  # one device-to-host copy; tokens stay in time order per utterance
        for r, tok in zip(torch.cat(rows_hist).tolist(), torch.cat(toks_hist).tolist()):
            hyps[r].append(tok)
    return _unsort(hyps, order)


# --------------------------------------------------------------------- modified beam search


@torch.inference_mode()
def modified_beam_search(
    head,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: int = 4,
    return_nbest: bool = False,
) -> Union[List[List[int]], List[NBest]]:
    """Beam search with at most one symbol per frame, batched over utterances and hypotheses.

    Every frame is one joiner call on ``(n, beam, V)`` and one decoder call on the distinct new
    contexts in the batch, plus about 40 small tensor operations, with no Python loop over
    utterances or hypotheses. A hypothesis ``y`` is reached at a frame both by ``y`` taking blank
    and by ``y[:-1]`` emitting ``y[-1]``; the two are merged (log-add) before the top-``beam``
    selection, so the beam holds ``beam`` distinct sequences. Sequences are identified by a 62-bit
    rolling hash. Returns the best tokens per utterance (highest log-prob, no length
    normalisation), or with ``return_nbest`` the beam as ``[(tokens, log_prob), ...]`` best first.
    """
    lens = _check_inputs(head, encoder_out, encoder_out_lens)
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    N = encoder_out.shape[0]
    device = encoder_out.device
    decoder, joiner = head.decoder, head.joiner
    blank, V, cs = decoder.blank_id, decoder.vocab_size, decoder.context_size
    if V == 1:  # only the blank: every utterance decodes to nothing with probability 1
        return [[([], 0.0)] for _ in range(N)] if return_nbest else [[] for _ in range(N)]

    B, K = beam, min(beam, V - 1)  # hypotheses kept; tokens tried per hypothesis and frame
    E = 1 + K  # candidates per hypothesis: blank, then its K best tokens
    neg_inf = float("-inf")
    order, active = _sort_by_length(lens)
    enc = joiner.encoder_proj(encoder_out[order.to(device)])  # (N, T, J)
    P = torch.tensor([_P1, _P2], device=device)
    M = torch.tensor([_M1, _M2], device=device)
    slot_ids = torch.arange(B, device=device)
    dead_hash = (M + slot_ids[:, None]).expand(N, B, 2)  # no live sequence hashes to >= M
    blank_col = torch.tensor([blank], device=device)

    # beam state, slot 0 = the empty sequence, the other slots dead (-inf)
    score = torch.full((N, B), neg_inf, device=device)
    score[:, 0] = 0.0
    h = torch.where(slot_ids[None, :, None] == 0, 0, dead_hash)  # (N, B, 2) hash of the sequence
    hp = torch.full((N, B, 2), -1, dtype=torch.long, device=device)  # hash without its last token; -1: none
    last = torch.full((N, B), blank, dtype=torch.long, device=device)  # last token (blank if empty)
    ctx = _start_context(decoder, N * B, device).view(N, B, cs)
    dec = _decoder_out(head, ctx[0, :1]).expand(N * B, -1).reshape(N, B, -1).clone()  # (N, B, J)
    J = dec.shape[-1]
    choice_hist = torch.zeros((len(active), N, B), dtype=torch.long, device=device)
    tok_hist = torch.full((len(active), N, B), -1, dtype=torch.long, device=device)

    for t, n in enumerate(active):
        s, hh, hhp, la = score[:n], h[:n], hp[:n], last[:n]
        logits = joiner(enc[:n, t, None, :], dec[:n], project_input=False)  # (n, B, V)
        lp = logits.float().log_softmax(dim=-1)

        # merge: slot b's blank candidate absorbs "parent + last(b)", the parent being the slot
        # that holds b's sequence minus its last token (if it is still in the beam)
        match = (hhp[:, :, None, :] == hh[:, None, :, :]).all(-1)  # (n, B, B): [b, parent]
        has_parent = match.any(-1)  # (n, B)
        parent = match.long().argmax(-1)  # (n, B)
        absorbed = torch.where(has_parent, parent * V + la, parent * V + blank)  # flat (slot, token)
        lp_flat = lp.view(n, B * V)
        via_parent = s.gather(1, parent) + lp_flat.gather(1, absorbed)
        blank_sc = s + lp[:, :, blank]
        blank_sc = torch.where(has_parent, torch.logaddexp(blank_sc, via_parent), blank_sc)
        lp_tok = lp.index_fill(-1, blank_col, neg_inf).view(n, B * V)
        lp_tok.scatter_(1, absorbed, neg_inf)  # absorbed extensions leave the race (or hit a blank)
        top_lp, top_tok = lp_tok.view(n, B, V).topk(K, dim=-1)  # (n, B, K)
        cand = torch.cat([blank_sc[:, :, None], s[:, :, None] + top_lp], dim=2).view(n, B * E)

        new_score, choice = cand.topk(B, dim=1)  # (n, B), sorted: slot 0 is the best
        par, j = choice // E, choice % E
        is_ext = j > 0
        tok = top_tok.view(n, B * K).gather(1, par * K + (j - 1).clamp(min=0))
        tok = torch.where(is_ext, tok, -1)
        dead = torch.isinf(new_score)
        ph = hh.gather(1, par[:, :, None].expand(-1, -1, 2))
        new_h = torch.where(is_ext[:, :, None], (ph * P + tok[:, :, None] + 1) % M, ph)
        new_hp = torch.where(is_ext[:, :, None], ph, hhp.gather(1, par[:, :, None].expand(-1, -1, 2)))
        new_ctx = ctx[:n].gather(1, par[:, :, None].expand(-1, -1, cs))
        new_ctx = torch.where(is_ext[:, :, None], torch.cat([new_ctx[:, :, 1:], tok[:, :, None]], 2), new_ctx)
        new_dec = dec[:n].gather(1, par[:, :, None].expand(-1, -1, J))
        ext = (is_ext & ~dead).view(-1).nonzero().squeeze(1)
        if ext.numel():  # the decoder runs once per distinct new context in the batch
            uniq, inv = torch.unique(new_ctx.view(-1, cs)[ext], dim=0, return_inverse=True)
            new_dec.view(-1, J)[ext] = _decoder_out(head, uniq).to(new_dec.dtype)[inv]

        score[:n] = new_score
        h[:n] = torch.where(dead[:, :, None], dead_hash[:n], new_h)
        hp[:n] = torch.where(dead[:, :, None], -1, new_hp)
        last[:n] = torch.where(is_ext, tok, la.gather(1, par))
        ctx[:n] = new_ctx
        dec[:n] = new_dec
        choice_hist[t, :n] = choice
        tok_hist[t, :n] = tok

    slots = torch.arange(B).expand(N, B).clone() if return_nbest else torch.zeros(N, 1, dtype=torch.long)
    seqs = _backtrack(choice_hist.cpu(), tok_hist.cpu(), slots, active, E)
    score = score.cpu()
    if not return_nbest:
        return _unsort([s[0] for s in seqs], order)
    nbest = [
        [(seq, float(sc)) for seq, sc in zip(seqs[i], score[i].tolist()) if sc != neg_inf] for i in range(N)
    ]
    return _unsort(nbest, order)


def _backtrack(
    choice_hist: torch.Tensor, tok_hist: torch.Tensor, slots: torch.Tensor, active: List[int], E: int
) -> List[List[List[int]]]:
    """Token sequences of the final ``slots (N, S)`` from per-frame choices ``(T, N, B)`` (CPU)."""
    N, S = slots.shape
    out = torch.full((N, S, len(active)), -1, dtype=torch.long)
    for t in range(len(active) - 1, -1, -1):
        n = active[t]
        out[:n, :, t] = tok_hist[t, :n].gather(1, slots[:n])
        slots[:n] = choice_hist[t, :n].gather(1, slots[:n]) // E
    return [[row[row >= 0].tolist() for row in utt] for utt in out]


# ------------------------------------------------------------------------------ beam search


@torch.inference_mode()
def beam_search(
    head,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: int = 4,
    max_sym_per_frame: Optional[int] = None,
    return_nbest: bool = False,
) -> Union[List[List[int]], List[NBest]]:
    """The regular transducer beam search (Graves 2012, Algorithm 1, as in icefall's ``beam_search``).

    Within a frame it repeatedly expands the most probable unfinished hypothesis: its blank
    extension finishes the frame, its ``beam`` best token extensions stay in the frame. The frame
    ends once ``beam`` finished hypotheses beat every unfinished one; equal sequences are merged
    (log-add) in both sets. This best-first expansion is inherently sequential, so utterances are
    decoded one at a time (the decoder cache is shared across the batch); prefer
    :func:`modified_beam_search` for speed. ``max_sym_per_frame`` (None: unlimited) caps the tokens
    one hypothesis may emit within a frame; after that it may only take blank. Returns what
    :func:`modified_beam_search` returns.
    """
    lens = _check_inputs(head, encoder_out, encoder_out_lens)
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    if max_sym_per_frame is not None and max_sym_per_frame < 1:
        raise ValueError(f"max_sym_per_frame must be >= 1 or None, got {max_sym_per_frame}")
    enc = head.joiner.encoder_proj(encoder_out)  # (N, T, J)
    dec_cache: Dict[Tuple[int, ...], torch.Tensor] = {}
    out = []
    for n, L in enumerate(lens.tolist()):
        nbest = _beam_search_one(head, enc[n, :L], beam, max_sym_per_frame, dec_cache)
        out.append(nbest if return_nbest else nbest[0][0])
    return out


def _logadd(a: float, b: float) -> float:
    if a == float("-inf"):
        return b
    if b == float("-inf"):
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


def _beam_search_one(
    head, enc: torch.Tensor, beam: int, max_sym: Optional[int], dec_cache: Dict[Tuple[int, ...], torch.Tensor]
) -> NBest:
    """One utterance; ``enc (T, J)`` already projected. Scores are Python floats (double)."""
    decoder, joiner = head.decoder, head.joiner
    blank, cs = decoder.blank_id, decoder.context_size
    K = min(beam, decoder.vocab_size - 1)
    device = enc.device
    start = (-1,) * (cs - 1) + (blank,)
    blank_col = torch.tensor([blank], device=device)

    def context(ys: Tuple[int, ...]) -> Tuple[int, ...]:
        return (start + ys)[-cs:]

    def fill(t: int, ctxs: Sequence[Tuple[int, ...]], cache: dict) -> None:
        """Blank log-prob and the K best (log-prob, token) at frame t for each new context, in one call."""
        new = [c for c in ctxs if c not in dec_cache]
        if new:
            for c, d in zip(new, _decoder_out(head, torch.tensor(new, dtype=torch.long, device=device))):
                dec_cache[c] = d
        dec = torch.stack([dec_cache[c] for c in ctxs])  # (C, J)
        lp = joiner(enc[t][None, :], dec, project_input=False).float().log_softmax(dim=-1)  # (C, V)
        vals, toks = lp.index_fill(1, blank_col, float("-inf")).topk(K, dim=1)
        for c, b, vs, ts in zip(ctxs, lp[:, blank].tolist(), vals.tolist(), toks.tolist()):
            cache[c] = (b, list(zip(vs, ts)))

    B: Dict[Tuple[int, ...], float] = {(): 0.0}  # finished hypotheses: tokens -> log-prob
    for t in range(enc.shape[0]):
        # unfinished: (tokens, tokens emitted in this frame) -> log-prob
        A: Dict[Tuple[Tuple[int, ...], int], float] = {(ys, 0): s for ys, s in B.items()}
        B = {}
        cache: Dict[Tuple[int, ...], Tuple[float, List[Tuple[float, int]]]] = {}
        fill(t, list(dict.fromkeys(context(ys) for ys, _ in A)), cache)
        while A:
            key = max(A, key=A.__getitem__)
            s = A.pop(key)
            ys, k = key
            c = context(ys)
            if c not in cache:
                fill(t, [c], cache)
            lp_blank, top = cache[c]
            B[ys] = _logadd(B.get(ys, float("-inf")), s + lp_blank)
            if K and (max_sym is None or k < max_sym):
                k_next = k + 1 if max_sym is not None else 0  # without a cap, counts need not split keys
                for v, tok in top:
                    nk = (ys + (tok,), k_next)
                    A[nk] = _logadd(A.get(nk, float("-inf")), s + v)
            best_unfinished = max(A.values(), default=float("-inf"))
            if sum(1 for sc in B.values() if sc > best_unfinished) >= beam:
                break
        B = dict(sorted(B.items(), key=lambda kv: kv[1], reverse=True)[:beam])
    return [(list(ys), sc) for ys, sc in sorted(B.items(), key=lambda kv: kv[1], reverse=True)]


# ---------------------------------------------------------------------------- CTC rescoring


@torch.inference_mode()
def ctc_rescore(
    nbest: List[NBest],
    ctc_log_probs: torch.Tensor,
    ctc_lens: torch.Tensor,
    blank_id: int = 0,
    weight: float = 0.3,
    max_elements: int = 1 << 25,
) -> List[List[int]]:
    """Best hypothesis per utterance under ``transducer log-prob + weight * CTC log-likelihood``.

    nbest: per utterance ``[(tokens, transducer log-prob), ...]`` (``return_nbest=True`` of the
    searches above); ctc_log_probs ``(N, T, V)`` from the CTC head on the same encoder output,
    ctc_lens ``(N,)``. The CTC log-likelihood of every hypothesis is ``-F.ctc_loss`` in batches of
    at most ``max_elements`` log-prob values (hypotheses are copies of their utterance's rows).
    A hypothesis CTC cannot align (too long for its frames, or holding the blank) scores -inf;
    if that is every hypothesis of an utterance, the transducer's best is kept.
    """
    if ctc_log_probs.dim() != 3:
        raise ValueError(f"ctc_log_probs must be (N, T, V), got shape {tuple(ctc_log_probs.shape)}")
    N, T, V = ctc_log_probs.shape
    if len(nbest) != N:
        raise ValueError(f"batch mismatch: ctc_log_probs has {N} utterances, nbest has {len(nbest)}")
    if ctc_lens.shape != (N,):
        raise ValueError(f"ctc_lens must be (N,) = ({N},), got shape {tuple(ctc_lens.shape)}")
    if not 0 <= blank_id < V:
        raise ValueError(f"blank_id {blank_id} is outside the vocabulary [0, {V})")
    if weight < 0:
        raise ValueError(f"weight must be >= 0 (a CTC log-likelihood is a bonus, not a penalty), got {weight}")
    lens = ctc_lens.to(device="cpu", dtype=torch.long)
    if N and (int(lens.max()) > T or int(lens.min()) < 0):
        raise ValueError(f"ctc_lens must lie in [0, {T}], got min {int(lens.min())} max {int(lens.max())}")

    flat = [(n, list(toks), float(sc)) for n, hyps in enumerate(nbest) for toks, sc in hyps]
    for n, toks, _ in flat:
        if any(not 0 <= tok < V for tok in toks):
            raise ValueError(f"utterance {n}: hypothesis {toks} has ids outside the CTC vocabulary [0, {V})")
    ctc = _ctc_log_likelihoods(ctc_log_probs, lens, flat, blank_id, max_elements)

    best: List[List[int]] = []
    pos = 0
    for hyps in nbest:
        rows = range(pos, pos + len(hyps))
        pos += len(hyps)
        if not hyps:
            best.append([])
            continue
        am = [flat[i][2] for i in rows]
        total = [a + weight * ctc[i] if weight else a for a, i in zip(am, rows)]
        if all(x == float("-inf") for x in total):
            total = am
        k = max(range(len(hyps)), key=total.__getitem__)
        best.append(list(hyps[k][0]))
    return best


def _ctc_log_likelihoods(
    log_probs: torch.Tensor, lens: torch.Tensor, flat: List[Tuple[int, List[int], float]], blank_id: int,
    max_elements: int,
) -> List[float]:
    N, T, V = log_probs.shape
    device = log_probs.device
    lp = log_probs.float().transpose(0, 1)  # (T, N, V)
    out = [float("-inf")] * len(flat)
    todo = [i for i, (_, toks, _) in enumerate(flat) if blank_id not in toks]
    chunk = max(1, max_elements // max(1, T * V))
    for start in range(0, len(todo), chunk):
        ids = todo[start : start + chunk]
        utt = torch.tensor([flat[i][0] for i in ids], dtype=torch.long)
        targets = torch.tensor([tok for i in ids for tok in flat[i][1]], dtype=torch.long, device=device)
        target_lens = torch.tensor([len(flat[i][1]) for i in ids], dtype=torch.long, device=device)
        nll = F.ctc_loss(
            lp[:, utt.to(device)], targets, lens[utt].to(device), target_lens,
            blank=blank_id, reduction="none", zero_infinity=False,
        )  # (H,), +inf where no alignment exists
        for i, v in zip(ids, (-nll).tolist()):
            out[i] = v
    return out
