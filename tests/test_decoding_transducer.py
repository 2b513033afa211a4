"""Tests for transducer decoding (asrkit.decoding.transducer).

References are written here from scratch: a per-utterance greedy loop, the exact probability of a
label sequence by brute force over alignments (tiny T and V) and by the forward recursion over the
(t, u) lattice, and path log-probs recomputed from the head with ``project_input=True``.
"""

import itertools
import math
from typing import Dict, List, Optional, Tuple

import pytest
import torch

from asrkit.decoding.transducer import beam_search, ctc_rescore, greedy_search, modified_beam_search
from asrkit.models.transducer import TransducerHead

BLANK = 0


def make_head(seed: int, V: int = 5, D: int = 6, context_size: int = 2, blank_bias: float = 1.0) -> TransducerHead:
    """A tiny head whose log-probs depend clearly on both frame and context (the default init is
    nearly uniform, which would make every search agree trivially)."""
    torch.manual_seed(seed)
    head = TransducerHead(encoder_dim=D, vocab_size=V, decoder_dim=8, joiner_dim=8, context_size=context_size)
    with torch.no_grad():
        j = head.joiner
        for lin, scale in ((j.encoder_proj, 1.5), (j.decoder_proj, 3.0), (j.output_linear, 1.5)):
            lin.weight.normal_(0, scale / lin.in_features**0.5)
            lin.bias.normal_(0, 0.5)
        head.joiner.output_linear.bias[BLANK] += blank_bias
    return head.eval()


class Ref:
    """Log-probs of one utterance straight from the head, cached per (frame, context)."""

    def __init__(self, head: TransducerHead, enc: torch.Tensor):  # enc (T, D)
        self.head, self.enc, self.cache = head, enc, {}
        cs = head.decoder.context_size
        self.start = (-1,) * (cs - 1) + (BLANK,)

    def lp(self, t: int, ys: Tuple[int, ...]) -> torch.Tensor:
        ctx = (self.start + tuple(ys))[-self.head.decoder.context_size :]
        if (t, ctx) not in self.cache:
            with torch.no_grad():
                dec = self.head.decoder(torch.tensor([ctx]), need_pad=False)  # (1, 1, C)
                logits = self.head.joiner(self.enc[t][None, None], dec)  # (1, 1, V)
            self.cache[t, ctx] = logits[0, 0].double().log_softmax(-1)
        return self.cache[t, ctx]


def ref_greedy(head: TransducerHead, enc: torch.Tensor, max_sym: int) -> List[int]:
    ref, hyp = Ref(head, enc), []
    for t in range(enc.shape[0]):
        for _ in range(max_sym):
            y = int(ref.lp(t, tuple(hyp)).argmax())
            if y == BLANK:
                break
            hyp.append(y)
    return hyp


def one_per_frame_path_logprob(head: TransducerHead, enc: torch.Tensor, labels: List[int]) -> float:
    """log-prob of one alignment in the one-symbol-per-frame topology (a label per frame)."""
    ref, ys, total = Ref(head, enc), (), 0.0
    for t, y in enumerate(labels):
        total += float(ref.lp(t, ys)[y])
        if y != BLANK:
            ys += (y,)
    return total


def one_per_frame_forward(head: TransducerHead, enc: torch.Tensor, ys: List[int]) -> float:
    """Exact log P(ys) in the one-symbol-per-frame topology: alpha[t][u] after t frames, u tokens."""
    ref, T, U = Ref(head, enc), enc.shape[0], len(ys)
    alpha = [[-math.inf] * (U + 1) for _ in range(T + 1)]
    alpha[0][0] = 0.0
    for t in range(T):
        for u in range(U + 1):
            stay = alpha[t][u] + float(ref.lp(t, tuple(ys[:u]))[BLANK])
            emit = alpha[t][u - 1] + float(ref.lp(t, tuple(ys[: u - 1]))[ys[u - 1]]) if u else -math.inf
            alpha[t + 1][u] = torch.logsumexp(torch.tensor([stay, emit], dtype=torch.float64), 0).item()
    return alpha[T][U]


def one_per_frame_brute_force(head: TransducerHead, enc: torch.Tensor) -> Dict[Tuple[int, ...], float]:
    """Exact log P(y) in the one-symbol-per-frame topology: every labelling of every frame."""
    T, V = enc.shape[0], head.decoder.vocab_size
    per_seq: Dict[Tuple[int, ...], List[float]] = {}
    for labels in itertools.product(range(V), repeat=T):
        seq = tuple(y for y in labels if y != BLANK)
        per_seq.setdefault(seq, []).append(one_per_frame_path_logprob(head, enc, list(labels)))
    return {k: torch.logsumexp(torch.tensor(v, dtype=torch.float64), 0).item() for k, v in per_seq.items()}


def regular_brute_force(head: TransducerHead, enc: torch.Tensor, max_u: int) -> Dict[Tuple[int, ...], float]:
    """Exact log P(y) in the regular topology for every y with at most ``max_u`` tokens, by walking
    every alignment (a token keeps the frame, blank advances it; the last frame ends with blank)."""
    ref, T, V = Ref(head, enc), enc.shape[0], head.decoder.vocab_size
    per_seq: Dict[Tuple[int, ...], List[float]] = {}

    def walk(t: int, ys: Tuple[int, ...], score: float) -> None:
        if t == T:
            per_seq.setdefault(ys, []).append(score)
            return
        lp = ref.lp(t, ys)
        walk(t + 1, ys, score + float(lp[BLANK]))
        if len(ys) < max_u:
            for v in range(V):
                if v != BLANK:
                    walk(t, ys + (v,), score + float(lp[v]))

    walk(0, (), 0.0)
    return {k: torch.logsumexp(torch.tensor(v, dtype=torch.float64), 0).item() for k, v in per_seq.items()}


def regular_forward(head: TransducerHead, enc: torch.Tensor, ys: List[int]) -> float:
    """Exact log P(ys) in the regular topology by the forward recursion over the (t, u) lattice."""
    ref, T, U = Ref(head, enc), enc.shape[0], len(ys)
    alpha = [[-math.inf] * (U + 1) for _ in range(T)]
    for t in range(T):
        for u in range(U + 1):
            if t == 0 and u == 0:
                alpha[t][u] = 0.0
                continue
            terms = []
            if t > 0:
                terms.append(alpha[t - 1][u] + float(ref.lp(t - 1, tuple(ys[:u]))[BLANK]))
            if u > 0:
                terms.append(alpha[t][u - 1] + float(ref.lp(t, tuple(ys[: u - 1]))[ys[u - 1]]))
            alpha[t][u] = torch.logsumexp(torch.tensor(terms, dtype=torch.float64), 0).item()
    return alpha[T - 1][U] + float(ref.lp(T - 1, tuple(ys))[BLANK])


def batch(seed: int, lens: List[int], D: int = 6, T: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Encoder output with garbage (large random values) in the padding frames."""
    torch.manual_seed(seed)
    T = T or max(lens)
    enc = torch.randn(len(lens), T, D)
    for n, L in enumerate(lens):
        enc[n, L:] = torch.randn(T - L, D) * 10
    return enc, torch.tensor(lens)


# ------------------------------------------------------------------------------ references


def test_forward_reference_matches_alignment_brute_force():
    head = make_head(0, V=3)
    enc, _ = batch(1, [3])
    exact = regular_brute_force(head, enc[0], max_u=3)
    for ys in [(), (1,), (2, 1), (1, 1, 2)]:
        assert regular_forward(head, enc[0], list(ys)) == pytest.approx(exact[ys], abs=1e-9)
    one = one_per_frame_brute_force(head, enc[0])
    for ys in [(), (2,), (1, 2), (2, 2, 1)]:
        assert one_per_frame_forward(head, enc[0], list(ys)) == pytest.approx(one[ys], abs=1e-9)
    assert sum(math.exp(v) for v in one.values()) == pytest.approx(1.0, abs=1e-9)
    # in the regular topology sequences of any length are possible: more of the mass with longer ones
    mass = [sum(math.exp(v) for v in regular_brute_force(head, enc[0], max_u=u).values()) for u in (3, 6)]
    assert mass[0] < mass[1] <= 1.0


# ---------------------------------------------------------------------------- greedy search


@pytest.mark.parametrize("context_size", [1, 2])
@pytest.mark.parametrize("max_sym", [1, 2, 3])
def test_greedy_matches_per_utterance_loop(max_sym, context_size):
    head = make_head(2, V=6, context_size=context_size)
    lens = [12, 7, 0, 1, 12, 9]
    enc, enc_lens = batch(3, lens)
    hyps = greedy_search(head, enc, enc_lens, max_sym_per_frame=max_sym)
    expected = [ref_greedy(head, enc[n, :L], max_sym) for n, L in enumerate(lens)]
    assert hyps == expected
    assert hyps[2] == [] and sum(len(h) for h in hyps) >= 10  # something was decoded
    if max_sym > 1:
        assert any(len(h) > L for h, L in zip(hyps, lens)), "no frame emitted two symbols; the test is too weak"
    for n, L in enumerate(lens):  # padding invariance: the same utterance alone, unpadded
        assert greedy_search(head, enc[n : n + 1, :L], torch.tensor([L]), max_sym_per_frame=max_sym) == [hyps[n]]


def test_greedy_rejects_bad_inputs():
    head = make_head(0)
    enc, lens = batch(0, [4, 3])
    with pytest.raises(ValueError, match="encoder_dim=6"):
        greedy_search(head, torch.randn(2, 4, 5), lens)
    with pytest.raises(ValueError, match="must lie in"):
        greedy_search(head, enc, torch.tensor([5, 3]))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        greedy_search(head, enc, torch.tensor([4]))
    with pytest.raises(ValueError, match="max_sym_per_frame"):
        greedy_search(head, enc, lens, max_sym_per_frame=0)
    with pytest.raises(ValueError, match="beam"):
        modified_beam_search(head, enc, lens, beam=0)


# ------------------------------------------------------------------------ modified beam search


def test_modified_beam_one_equals_greedy():
    head = make_head(4, V=7)
    enc, lens = batch(5, [20, 13, 1, 0, 17])
    assert modified_beam_search(head, enc, lens, beam=1) == greedy_search(head, enc, lens, max_sym_per_frame=1)


@pytest.mark.parametrize("context_size", [1, 2])
@pytest.mark.parametrize("seed", range(3))
def test_modified_beam_is_exact_without_pruning(seed, context_size):
    # T=3, two tokens: 1 + 2 + 4 + 8 = 15 sequences fit in a beam of 16, so merging must give
    # every sequence its exact probability (the sum over all its one-symbol-per-frame alignments)
    head = make_head(10 + seed, V=3, context_size=context_size)
    enc, lens = batch(20 + seed, [3])
    exact = one_per_frame_brute_force(head, enc[0])
    nbest = modified_beam_search(head, enc, lens, beam=16, return_nbest=True)[0]
    assert len(nbest) == len(exact) == 15
    for toks, score in nbest:
        assert score == pytest.approx(exact[tuple(toks)], abs=1e-5)
    assert [s for _, s in nbest] == sorted((s for _, s in nbest), reverse=True)
    assert tuple(modified_beam_search(head, enc, lens, beam=16)[0]) == max(exact, key=exact.get)


@pytest.mark.parametrize("seed", range(4))
def test_modified_beam_scores_at_least_greedy_path(seed):
    head = make_head(30 + seed, V=8, blank_bias=0.5)
    lens = [15, 11, 6, 15]
    enc, enc_lens = batch(40 + seed, lens)
    nbest = modified_beam_search(head, enc, enc_lens, beam=4, return_nbest=True)
    for n, L in enumerate(lens):
        ref, labels, ys = Ref(head, enc[n, :L]), [], ()
        for t in range(L):  # the greedy path, one label per frame
            y = int(ref.lp(t, ys).argmax())
            labels.append(y)
            ys += (y,) if y != BLANK else ()
        greedy_score = one_per_frame_path_logprob(head, enc[n, :L], labels)
        seqs = [tuple(toks) for toks, _ in nbest[n]]
        assert len(nbest[n]) == 4 and len(set(seqs)) == 4  # distinct sequences: equal ones were merged
        assert nbest[n][0][1] >= greedy_score - 1e-5
        for toks, score in nbest[n]:  # scores sum the alignments the search kept: never above the exact value
            assert score <= one_per_frame_forward(head, enc[n, :L], toks) + 1e-5


@pytest.mark.parametrize("beam", [2, 4])
def test_modified_beam_batch_equals_single_utterance(beam):
    head = make_head(6, V=9)
    lens = [25, 3, 0, 1, 18, 25]
    enc, enc_lens = batch(7, lens)
    nbest = modified_beam_search(head, enc, enc_lens, beam=beam, return_nbest=True)
    best = modified_beam_search(head, enc, enc_lens, beam=beam)
    assert best == [nb[0][0] for nb in nbest]
    assert nbest[2] == [([], 0.0)]
    for n, L in enumerate(lens):
        one = modified_beam_search(head, enc[n : n + 1, :L], torch.tensor([L]), beam=beam, return_nbest=True)[0]
        assert [t for t, _ in one] == [t for t, _ in nbest[n]]
        assert [s for _, s in one] == pytest.approx([s for _, s in nbest[n]], abs=1e-4)


# ----------------------------------------------------------------------------- beam search


@pytest.mark.parametrize("context_size", [1, 2])
@pytest.mark.parametrize("seed", range(4))
def test_beam_search_against_exact_probabilities(seed, context_size):
    head = make_head(50 + seed, V=3, context_size=context_size, blank_bias=0.5)
    enc, lens = batch(60 + seed, [3])
    exact = regular_brute_force(head, enc[0], max_u=7)
    greedy = greedy_search(head, enc, lens, max_sym_per_frame=3)[0]
    nbest = beam_search(head, enc, lens, beam=4, return_nbest=True)[0]
    best = nbest[0][0]
    assert beam_search(head, enc, lens, beam=4) == [best]
    assert regular_forward(head, enc[0], best) >= regular_forward(head, enc[0], greedy) - 1e-6
    for toks, score in nbest:  # scores sum the alignments the search kept: never above the exact value
        assert score <= regular_forward(head, enc[0], toks) + 1e-5
    # a wide beam finds the most probable sequence (all of them with <= 7 tokens were enumerated)
    assert beam_search(head, enc, lens, beam=12)[0] == list(max(exact, key=exact.get))


def test_beam_search_batch_and_symbol_cap():
    # two tokens and an unlikely blank: the most probable sequences (summed over their many
    # alignments) hold more tokens than frames. (With more tokens the single most probable
    # sequence stays short even so, as every alignment pays for T blanks whatever its length.)
    head = make_head(7, V=3, blank_bias=-3.0)
    lens = [10, 4, 0, 7]
    enc, enc_lens = batch(8, lens)
    hyps = beam_search(head, enc, enc_lens, beam=3)
    for n, L in enumerate(lens):
        assert beam_search(head, enc[n : n + 1, :L], torch.tensor([L]), beam=3) == [hyps[n]]
    assert hyps[2] == [] and any(len(h) > L for h, L in zip(hyps, lens))
    capped = beam_search(head, enc, enc_lens, beam=3, max_sym_per_frame=1, return_nbest=True)
    for nb, L in zip(capped, lens):
        assert all(len(toks) <= L for toks, _ in nb)
    # with one symbol per frame allowed, a hypothesis still pays for the blank that ends each frame
    toks, score = capped[0][0]
    assert score <= regular_forward(head, enc[0, :10], toks) + 1e-5


# --------------------------------------------------------------------------- "trained" head


def test_all_searches_find_the_trained_sequence():
    """Train a tiny head (plain cross-entropy on the desired label at each lattice cell of one
    alignment) until it spells a known sequence, then every search must output it."""
    T, V, D = 8, 6, 6
    target = [3, 1, 4, 1, 5]
    emit_at = {1: 3, 2: 1, 4: 4, 5: 1, 7: 5}  # frame -> token
    torch.manual_seed(0)
    head = TransducerHead(encoder_dim=D, vocab_size=V, decoder_dim=8, joiner_dim=16, context_size=2).eval()
    enc = torch.randn(1, T, D)
    frames, contexts, labels, ys = [], [], [], []
    for t in range(T):
        ctx = ([-1, BLANK] + ys)[-2:]
        if t in emit_at:  # emit the token, then blank at the same frame with the new context
            frames += [t, t]
            contexts += [ctx, ([-1, BLANK] + ys + [emit_at[t]])[-2:]]
            labels += [emit_at[t], BLANK]
            ys.append(emit_at[t])
        else:
            frames.append(t)
            contexts.append(ctx)
            labels.append(BLANK)
    opt = torch.optim.Adam(head.parameters(), lr=0.03)
    for _ in range(150):
        dec = head.decoder(torch.tensor(contexts), need_pad=False)[:, 0]  # (E, C)
        logits = head.joiner(enc[0, frames], dec)  # (E, V)
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.02

    lens = torch.tensor([T])
    assert greedy_search(head, enc, lens) == [target]
    assert greedy_search(head, enc, lens, max_sym_per_frame=3) == [target]
    assert modified_beam_search(head, enc, lens, beam=4) == [target]
    assert beam_search(head, enc, lens, beam=4) == [target]
    nbest = modified_beam_search(head, enc, lens, beam=4, return_nbest=True)[0]
    assert nbest[0][0] == target and nbest[0][1] > math.log(0.5) > nbest[1][1]


# ---------------------------------------------------------------------------- CTC rescoring


def _peaked_ctc(frames: List[int], V: int) -> torch.Tensor:
    """(T, V) log-probs with 90% on the given label per frame."""
    p = torch.full((len(frames), V), 0.1 / (V - 1))
    p[torch.arange(len(frames)), torch.tensor(frames)] = 0.9
    return p.log()


def test_ctc_rescore_weight_decides():
    V = 5
    # utterance 0: CTC spells 2 3 (frames 2 - 3 3), the transducer prefers 1 3
    # utterance 1 (3 of 4 frames valid): CTC spells 4, the transducer prefers 4 4 4 4, which CTC
    # cannot align in 3 frames (-inf, never picked unless the weight is 0)
    lp = torch.stack([_peaked_ctc([2, 0, 3, 3], V), _peaked_ctc([0, 4, 0, 1], V)])
    lens = torch.tensor([4, 3])
    nbest = [
        [([1, 3], -1.0), ([2, 3], -1.5), ([], -6.0)],
        [([4, 4, 4, 4], -0.5), ([4], -2.0), ([1], -2.5)],
    ]
    assert ctc_rescore(nbest, lp, lens, blank_id=0, weight=0.0) == [[1, 3], [4, 4, 4, 4]]
    assert ctc_rescore(nbest, lp, lens, blank_id=0, weight=5.0) == [[2, 3], [4]]
    # a small weight leaves the transducer's order where CTC is feasible but drops the infeasible one
    assert ctc_rescore(nbest, lp, lens, blank_id=0, weight=0.01) == [[1, 3], [4]]
    # the CTC log-likelihood is exactly -ctc_loss: with a weight of 1, [1, 3] wins iff
    # -1.0 + ll(1 3) > -1.5 + ll(2 3); make that a close call decided by the third decimal
    ll = {}
    for toks in ([1, 3], [2, 3]):
        ll[tuple(toks)] = -torch.nn.functional.ctc_loss(
            lp[0][:, None], torch.tensor([toks]), torch.tensor([4]), torch.tensor([2]), reduction="sum"
        ).item()
    gap = (-1.0 + ll[(1, 3)]) - (-1.5 + ll[(2, 3)])
    close = [[([1, 3], -1.0 - gap + 1e-3), ([2, 3], -1.5)]]
    assert ctc_rescore(close, lp[:1], lens[:1], weight=1.0) == [[1, 3]]
    close = [[([1, 3], -1.0 - gap - 1e-3), ([2, 3], -1.5)]]
    assert ctc_rescore(close, lp[:1], lens[:1], weight=1.0) == [[2, 3]]


def test_ctc_rescore_all_infeasible_and_edge_cases():
    V = 4
    lp = torch.stack([_peaked_ctc([1, 2], V)])
    nbest = [[([1, 1, 2], -3.0), ([3, 3], -2.0)]]  # both need 3+ frames, only 2 exist
    assert ctc_rescore(nbest, lp, torch.tensor([2]), weight=1.0) == [[3, 3]]
    assert ctc_rescore([[([1, 0], -0.1), ([1, 2], -0.2)]], lp, torch.tensor([2]), weight=1.0) == [[1, 2]]
    assert ctc_rescore([[]], lp, torch.tensor([2]), weight=1.0) == [[]]
    with pytest.raises(ValueError, match="outside the CTC vocabulary"):
        ctc_rescore([[([7], 0.0)]], lp, torch.tensor([2]), weight=1.0)
    with pytest.raises(ValueError, match="batch mismatch"):
        ctc_rescore([[], []], lp, torch.tensor([2]), weight=1.0)
    with pytest.raises(ValueError, match="weight must be >= 0"):
        ctc_rescore(nbest, lp, torch.tensor([2]), weight=-1.0)


def test_ctc_rescore_chunks_agree():
    torch.manual_seed(9)
    lp = torch.randn(3, 6, 5).log_softmax(-1)
    lens = torch.tensor([6, 4, 2])
    nbest = [[(list(torch.randint(1, 5, (k,)).tolist()), -float(k)) for k in range(4)] for _ in range(3)]
    assert ctc_rescore(nbest, lp, lens, weight=1.0) == ctc_rescore(nbest, lp, lens, weight=1.0, max_elements=1)


def test_beam_nbest_feeds_ctc_rescore():
    head = make_head(11, V=6)
    lens = [9, 5]
    enc, enc_lens = batch(12, lens)
    nbest = modified_beam_search(head, enc, enc_lens, beam=4, return_nbest=True)
    lp = torch.randn(2, 9, 6).log_softmax(-1)
    assert ctc_rescore(nbest, lp, enc_lens, weight=0.0) == modified_beam_search(head, enc, enc_lens, beam=4)
    for choice, nb in zip(ctc_rescore(nbest, lp, enc_lens, weight=0.5), nbest):
        assert choice in [toks for toks, _ in nb]
