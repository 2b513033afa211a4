"""Tests for the attention-decoder head (asrkit.models.attention) and its decoders (asrkit.decoding.attention).

References are independent of the code under test: parameter names written out from icefall's
``zipformer/attention_decoder.py``, cross-entropy from ``forward``'s logits, exhaustive search over
every label sequence of a tiny vocabulary, and CTC probabilities by summing over all alignments.
"""

import itertools
import math
from typing import Dict, List, Tuple

import pytest
import torch
import torch.nn.functional as F

from asrkit.decoding.attention import CtcPrefixScorer, attention_beam_search, attention_rescore, attention_scores
from asrkit.models.attention import AttentionDecoder, AttentionDecoderConfig

SOS = EOS = 1


def tiny_head(vocab_size: int = 11, encoder_dim: int = 12, dropout: float = 0.0, label_smoothing: float = 0.1,
              **kw) -> AttentionDecoder:
    cfg = dict(decoder_dim=16, num_layers=2, attention_dim=24, num_heads=2, feedforward_dim=20)
    cfg.update(kw)
    return AttentionDecoder(AttentionDecoderConfig(**cfg, dropout=dropout, label_smoothing=label_smoothing),
                            encoder_dim, vocab_size, sos_id=SOS, eos_id=EOS)


def teacher_forcing_log_probs(head: AttentionDecoder, enc, enc_lens, targets) -> List[torch.Tensor]:
    """Per utterance, log p(y_l | sos, y_<l) for l over targets + [eos], from ``forward``'s logits."""
    L = 1 + max(len(t) for t in targets)
    ys_in = torch.full((len(targets), L), EOS)
    for i, t in enumerate(targets):
        ys_in[i, 0] = SOS
        ys_in[i, 1:len(t) + 1] = torch.tensor(t, dtype=torch.long)
    logits = head(enc, enc_lens, ys_in, torch.tensor([len(t) + 1 for t in targets]))
    lp = logits.log_softmax(-1)
    return [lp[i, torch.arange(len(t) + 1), torch.tensor(t + [EOS])] for i, t in enumerate(targets)]


# ---------------------------------------------------------------- module tree


def icefall_keys(num_layers: int) -> Dict[str, Tuple[int, ...]]:
    """State-dict keys and shapes of icefall's AttentionDecoderModel(vocab_size=11, decoder_dim=16,
    num_decoder_layers=num_layers, attention_dim=24, num_heads=2, feedforward_dim=20, memory_dim=12)."""
    keys = {"decoder.embed.weight": (11, 16)}
    for i in range(num_layers):
        p = f"decoder.layers.{i}."
        keys.update({
            p + "norm_self_attn.weight": (16,), p + "norm_self_attn.bias": (16,),
            p + "self_attn.linear_q.weight": (24, 16), p + "self_attn.linear_q.bias": (24,),
            p + "self_attn.linear_k.weight": (24, 16), p + "self_attn.linear_k.bias": (24,),
            p + "self_attn.linear_v.weight": (24, 16), p + "self_attn.linear_v.bias": (24,),
            p + "self_attn.out_proj.weight": (16, 24), p + "self_attn.out_proj.bias": (16,),
            p + "norm_src_attn.weight": (16,), p + "norm_src_attn.bias": (16,),
            p + "src_attn.linear_q.weight": (24, 16), p + "src_attn.linear_q.bias": (24,),
            p + "src_attn.linear_k.weight": (24, 12), p + "src_attn.linear_k.bias": (24,),
            p + "src_attn.linear_v.weight": (24, 12), p + "src_attn.linear_v.bias": (24,),
            p + "src_attn.out_proj.weight": (16, 24), p + "src_attn.out_proj.bias": (16,),
            p + "norm_ff.weight": (16,), p + "norm_ff.bias": (16,),
            p + "feed_forward.0.weight": (20, 16), p + "feed_forward.0.bias": (20,),
            p + "feed_forward.3.weight": (16, 20), p + "feed_forward.3.bias": (16,),
        })
    keys.update({"decoder.output_layer.weight": (11, 16), "decoder.output_layer.bias": (11,)})
    return keys


def test_parameter_names_and_shapes_match_icefall():
    head = tiny_head()
    got = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert list(got) == list(icefall_keys(2))  # same names, same order, no extra buffers
    assert got == icefall_keys(2)
    # a state dict with icefall's names loads strictly into a fresh head
    other = tiny_head()
    other.load_state_dict({k: torch.randn(s) for k, s in icefall_keys(2).items()}, strict=True)


# ---------------------------------------------------------------- losses


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_is_label_smoothed_cross_entropy(smoothing):
    head = tiny_head(label_smoothing=smoothing).eval()
    enc, enc_lens = torch.randn(3, 9, 12), torch.tensor([9, 5, 7])
    targets = [[2, 3, 4], [5], []]
    loss = head.loss(enc, enc_lens, targets)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # reference: -((1 - eps) log p(y) + eps / V sum_v log p(v)) over targets + eos, from forward's logits
    L = 4
    ys_in = torch.full((3, L), EOS)
    for i, t in enumerate(targets):
        ys_in[i, 0] = SOS
        ys_in[i, 1:len(t) + 1] = torch.tensor(t, dtype=torch.long)
    lp = head(enc, enc_lens, ys_in, torch.tensor([4, 2, 1])).log_softmax(-1)
    expected = 0.0
    for i, t in enumerate(targets):
        for pos, y in enumerate(t + [EOS]):
            expected -= (1 - smoothing) * lp[i, pos, y] + smoothing / 11 * lp[i, pos].sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    nll = head.nll(enc, enc_lens, targets)
    if smoothing == 0.0:
        assert loss.item() == pytest.approx(nll.sum().item(), rel=1e-5)
    else:
        assert loss.item() != pytest.approx(nll.sum().item(), rel=1e-3)


def test_nll_is_sum_of_token_log_probs_from_forward():
    head = tiny_head().eval()
    enc, enc_lens = torch.randn(3, 8, 12), torch.tensor([8, 3, 6])
    targets = [[2, 3, 4, 5], [6], [7, 7]]
    nll = head.nll(enc, enc_lens, targets)
    assert nll.shape == (3,)
    expected = [-lp.sum().item() for lp in teacher_forcing_log_probs(head, enc, enc_lens, targets)]
    assert nll.tolist() == pytest.approx(expected, rel=1e-5)
    assert min(expected) > 0


def test_loss_and_nll_are_padding_invariant():
    head = tiny_head().eval()
    enc, enc_lens = torch.randn(3, 10, 12), torch.tensor([10, 4, 7])
    targets = [[2, 3], [4, 5, 6, 7, 8], []]
    batch_nll = head.nll(enc, enc_lens, targets)
    single_nll = [head.nll(enc[i:i + 1, :n], enc_lens[i:i + 1], [t]).item()
                  for i, (n, t) in enumerate(zip(enc_lens.tolist(), targets))]
    assert batch_nll.tolist() == pytest.approx(single_nll, rel=1e-5)
    single_loss = sum(head.loss(enc[i:i + 1, :n], enc_lens[i:i + 1], [t]).item()
                      for i, (n, t) in enumerate(zip(enc_lens.tolist(), targets)))
    assert head.loss(enc, enc_lens, targets).item() == pytest.approx(single_loss, rel=1e-5)
    # frames past enc_lens are ignored: changing them changes nothing
    enc2 = enc.clone()
    enc2[1, 4:] = 100.0
    assert head.nll(enc2, enc_lens, targets).tolist() == pytest.approx(batch_nll.tolist(), rel=1e-5)


def test_training_path_computes_the_same_loss_and_flows_gradients():
    """In training with gradients attention is explicit (icefall's score penalty); it must equal the SDPA path."""
    head = tiny_head(dropout=0.0)
    enc, enc_lens = torch.randn(2, 7, 12, requires_grad=True), torch.tensor([7, 5])
    targets = [[2, 3, 4], [5, 6]]
    head.train()
    loss = head.loss(enc, enc_lens, targets)
    loss.backward()
    head.eval()
    with torch.no_grad():
        ref = head.loss(enc, enc_lens, targets)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())
    assert enc.grad[1, 5:].abs().max() == 0 and enc.grad[1, :5].abs().max() > 0  # padding gets no gradient


def test_bad_inputs_raise():
    head = tiny_head()
    enc, enc_lens = torch.randn(2, 5, 12), torch.tensor([5, 3])
    with pytest.raises(ValueError, match="token id 11"):
        head.loss(enc, enc_lens, [[2], [11]])
    with pytest.raises(ValueError, match="sos/eos"):
        head.nll(enc, enc_lens, [[2, EOS], [3]])
    with pytest.raises(ValueError, match="batch mismatch"):
        head.loss(enc, enc_lens, [[2]])
    with pytest.raises(ValueError, match="enc_lens must lie"):
        head.loss(enc, torch.tensor([6, 3]), [[2], [3]])
    with pytest.raises(ValueError, match="enc_lens must lie"):
        head.loss(enc, torch.tensor([5, 0]), [[2], [3]])
    with pytest.raises(ValueError, match="want \\(N, T, D\\)"):
        head.loss(enc[0], enc_lens, [[2], [3]])
    with pytest.raises(ValueError, match="even"):
        tiny_head(decoder_dim=15)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        tiny_head(attention_dim=25)
    with pytest.raises(ValueError, match="label_smoothing"):
        tiny_head(label_smoothing=1.0)
    with pytest.raises(ValueError, match="ctc_log_probs"):
        attention_beam_search(head, enc, enc_lens, ctc_weight=0.3)
    with pytest.raises(ValueError, match="n-best list 1 is empty"):
        attention_rescore(head, enc, enc_lens, [[([2], 0.0)], []], weight=1.0)


# ---------------------------------------------------------------- incremental decoding


def test_step_with_cache_matches_forward():
    head = tiny_head().eval()
    enc, enc_lens = torch.randn(2, 6, 12), torch.tensor([6, 4])
    ys = torch.tensor([[SOS, 2, 3, 4, 5], [SOS, 6, 6, 7, 2]])
    with torch.no_grad():
        full = head(enc, enc_lens, ys, torch.tensor([5, 5])).log_softmax(-1)  # (2, 5, V)
        # K = 2 hypotheses per utterance: the sequence and its reverse-order twin in slot 1
        state = head.init_state(enc, enc_lens, hyps_per_utt=2)
        for t in range(5):
            tokens = torch.stack([ys[:, t], ys.flip(0)[:, t]], dim=1)  # (N=2, K=2)
            lp = head.step(state, tokens)
            assert torch.allclose(lp[:, 0], full[:, t], atol=1e-5)
            # slot 1 of utterance 0 feeds utterance 1's tokens over utterance 0's frames
            assert not torch.allclose(lp[0, 1], full[1, t], atol=1e-3)
        # after swapping the slots the cache follows its hypotheses
        state.select_hyps(torch.tensor([1, 0, 3, 2]))
        lp = head.step(state, torch.tensor([[8, 3], [8, 3]]))
    ys2 = torch.cat([ys, torch.tensor([[3], [3]])], dim=1)
    with torch.no_grad():
        full2 = head(enc, enc_lens, ys2, torch.tensor([6, 6])).log_softmax(-1)
    assert torch.allclose(lp[0, 1], full2[0, 5], atol=1e-5)
    assert torch.allclose(lp[1, 1], full2[1, 5], atol=1e-5)


def test_train_tiny_decoder_until_beam_search_reproduces_targets():
    torch.manual_seed(0)
    head = tiny_head(vocab_size=12, dropout=0.0, decoder_dim=32, attention_dim=32, num_heads=4, feedforward_dim=64)
    enc, enc_lens = torch.randn(4, 10, 12), torch.tensor([10, 8, 6, 9])
    targets = [[3, 4, 5, 6, 7], [8, 9], [10, 3, 11, 4, 5, 6], [7, 7, 2]]
    assert attention_beam_search(head, enc, enc_lens, beam=4) != targets
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        loss = head.loss(enc, enc_lens, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert math.isfinite(losses[-1]) and losses[-1] < 0.25 * losses[0]
    assert attention_beam_search(head, enc, enc_lens, beam=4) == targets
    assert attention_beam_search(head, enc, enc_lens, beam=1) == targets
    # each utterance alone (no padding) gives the same result
    for i, n in enumerate(enc_lens.tolist()):
        assert attention_beam_search(head, enc[i:i + 1, :n], enc_lens[i:i + 1], beam=4) == [targets[i]]
    # the search restores the mode it found
    assert head.training
    # rescoring an n-best list that hides the truth among distractors finds it, whatever the first pass says
    nbest = [[(t[:-1], 0.0), (t, -2.0), (t + [2], -1.0)] for t in targets]
    assert attention_rescore(head, enc, enc_lens, nbest, weight=1.0) == targets
    assert attention_rescore(head, enc, enc_lens, nbest, weight=0.0) == [t[:-1] for t in targets]


def test_beam_search_leaves_the_greedy_path():
    """Trained on [3, 4], [3, 5], [3, 6], [7, 8], [7, 8]: greedy takes 3 (p 0.6) and ends at p 0.2;
    beam 2 finds [7, 8] (p 0.4)."""
    torch.manual_seed(1)
    head = tiny_head(label_smoothing=0.0)
    targets = [[3, 4], [3, 5], [3, 6], [7, 8], [7, 8]]
    enc, enc_lens = torch.randn(1, 4, 12).expand(5, -1, -1), torch.full((5,), 4)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(60):
        loss = head.loss(enc, enc_lens, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    hyps, scores = attention_beam_search(head, enc[:1], enc_lens[:1], beam=2, return_scores=True)
    assert hyps == [[7, 8]] and scores[0] == pytest.approx(math.log(0.4), abs=0.05)
    with torch.no_grad():
        assert scores[0] == pytest.approx(-head.nll(enc[:1], enc_lens[:1], [[7, 8]]).item(), abs=1e-4)
    greedy, greedy_scores = attention_beam_search(head, enc[:1], enc_lens[:1], beam=1, return_scores=True)
    assert greedy[0][0] == 3 and greedy_scores[0] == pytest.approx(math.log(0.2), abs=0.1)
    assert greedy_scores[0] < scores[0] - 0.4


# ---------------------------------------------------------------- exact search on a tiny vocabulary


def ctc_brute_force(log_probs: torch.Tensor, blank: int = 0) -> Dict[Tuple[int, ...], float]:
    """log P(labels) of every label sequence, summing all V**T alignments. log_probs (T, V)."""
    T, V = log_probs.shape
    per_seq: Dict[Tuple[int, ...], List[torch.Tensor]] = {}
    lp = log_probs.double()
    for ali in itertools.product(range(V), repeat=T):
        labels, prev = [], blank
        for a in ali:
            if a != blank and a != prev:
                labels.append(a)
            prev = a
        per_seq.setdefault(tuple(labels), []).append(lp[torch.arange(T), torch.tensor(ali)].sum())
    return {k: torch.logsumexp(torch.stack(v), 0).item() for k, v in per_seq.items()}


def test_ctc_prefix_scorer_matches_brute_force():
    torch.manual_seed(3)
    T, V = 4, 3
    log_probs = torch.randn(2, T, V).log_softmax(-1)
    lens = torch.tensor([4, 3])
    for n, length in enumerate(lens.tolist()):
        exact = ctc_brute_force(log_probs[n, :length])
        for prefix in [(), (1,), (2,), (1, 1), (2, 1), (1, 2, 1)]:
            scorer = CtcPrefixScorer(log_probs[n:n + 1], lens[n:n + 1], hyps_per_utt=1, blank_id=0)
            for tok in prefix:
                scorer.advance(torch.zeros(1, 1, dtype=torch.long), torch.tensor([[tok]]))
            got = scorer.prefix_scores(torch.tensor([[[1, 2]]]))[0, 0]
            for c, g in zip((1, 2), got.tolist()):
                ext = prefix + (c,)
                ref = [v for k, v in exact.items() if k[:len(ext)] == ext]
                assert g == (pytest.approx(torch.logsumexp(torch.tensor(ref), 0).item(), abs=1e-4)
                             if ref else float("-inf"))
            end = scorer.end_scores()[0, 0].item()
            assert end == (pytest.approx(exact[prefix], abs=1e-4) if prefix in exact else float("-inf"))


@pytest.mark.parametrize("ctc_weight,length_penalty", [(0.0, 0.0), (0.0, 1.5), (0.5, 0.0), (1.0, -0.5)])
def test_full_beam_search_finds_the_exhaustive_best(ctc_weight, length_penalty):
    """With a beam as wide as every prefix of a 3-token vocabulary, beam search is exhaustive search."""
    torch.manual_seed(4)
    V, T, max_len = 5, 4, 3  # 0 blank, 1 sos/eos, tokens 2..4
    head = tiny_head(vocab_size=V).eval()
    enc, enc_lens = torch.randn(2, T, 12) * 3, torch.tensor([4, 3])
    ctc_lp = (torch.randn(2, T, V) * 2).log_softmax(-1)
    seqs = [list(s) for n in range(max_len + 1) for s in itertools.product((2, 3, 4), repeat=n)]
    hyps, scores = attention_beam_search(head, enc, enc_lens, beam=27, max_len_ratio=max_len / 3 + 1e-6,
                                         length_penalty=length_penalty, ctc_log_probs=ctc_lp,
                                         ctc_weight=ctc_weight, pre_beam=V, return_scores=True)
    for n in range(2):
        L = int(enc_lens[n])
        with torch.no_grad():
            att = -head.nll(enc[n:n + 1].expand(len(seqs), -1, -1), enc_lens[n:n + 1].expand(len(seqs)), seqs)
        ctc = ctc_brute_force(ctc_lp[n, :L]) if ctc_weight else {}
        total = []
        for s, a in zip(seqs, att.tolist()):
            c = ctc.get(tuple(s), float("-inf")) if ctc_weight else 0.0
            score = c if ctc_weight == 1.0 else (1 - ctc_weight) * a + ctc_weight * c
            total.append(score + length_penalty * len(s))
        best = max(range(len(seqs)), key=total.__getitem__)
        runner_up = sorted(total)[-2]
        assert total[best] - runner_up > 1e-3  # a unique answer
        assert hyps[n] == seqs[best]
        assert scores[n] == pytest.approx(total[best], abs=1e-4)


def test_beam_search_batch_equals_single_scores_and_max_len():
    torch.manual_seed(5)
    head = tiny_head().eval()
    N, T, V = 8, 12, 11
    enc, enc_lens = torch.randn(N, T, 12) * 2, torch.tensor([12, 5, 8, 12, 9, 7, 11, 10])
    ctc_lp = torch.randn(N, T, V).log_softmax(-1)
    for w in (0.0, 0.3):
        kw = dict(ctc_log_probs=ctc_lp, ctc_weight=w) if w else {}
        # an untrained decoder ends at once unless a length bonus outweighs its flat token probabilities
        batch, scores = attention_beam_search(head, enc, enc_lens, beam=3, max_len_ratio=0.5, length_penalty=1.5,
                                              return_scores=True, **kw)
        assert sum(map(len, batch)) >= 2 * N
        for i, n in enumerate(enc_lens.tolist()):
            one = dict(ctc_log_probs=ctc_lp[i:i + 1, :n], ctc_weight=w) if w else {}
            assert attention_beam_search(head, enc[i:i + 1, :n], enc_lens[i:i + 1], beam=3, max_len_ratio=0.5,
                                         length_penalty=1.5, **one) == [batch[i]]
            assert len(batch[i]) <= max(1, n // 2)
            assert 0 not in batch[i] and EOS not in batch[i]  # no blank, no eos in the output
            # the reported score is the hypothesis's score, recomputed independently
            with torch.no_grad():
                att = -head.nll(enc[i:i + 1], enc_lens[i:i + 1], [batch[i]]).item()
            ctc = -F.ctc_loss(ctc_lp[i, :n, None], torch.tensor([batch[i]], dtype=torch.long).view(1, -1),
                              torch.tensor([n]), torch.tensor([len(batch[i])]), reduction="sum").item()
            assert scores[i] == pytest.approx((1 - w) * att + w * ctc + 1.5 * len(batch[i]), abs=1e-4)


def test_rescore_weights_and_attention_scores():
    torch.manual_seed(6)
    head = tiny_head().eval()
    enc, enc_lens = torch.randn(2, 6, 12), torch.tensor([6, 4])
    nbest = [[([2, 3], -1.0), ([4], -2.0), ([5, 6, 7], -3.0)], [([8], -0.5), ([], -0.7)]]
    hyps = [[h for h, _ in utt] for utt in nbest]
    att = attention_scores(head, enc, enc_lens, hyps, batch_size=2)  # chunks cross utterances
    for n in range(2):
        with torch.no_grad():
            lps = teacher_forcing_log_probs(head, enc[n:n + 1].expand(len(hyps[n]), -1, -1),
                                            enc_lens[n:n + 1].expand(len(hyps[n])), hyps[n])
        assert att[n] == pytest.approx([lp.sum().item() for lp in lps], rel=1e-5)
    assert attention_rescore(head, enc, enc_lens, nbest, weight=0.0) == [[2, 3], [8]]
    big = attention_rescore(head, enc, enc_lens, nbest, weight=1e4)
    assert big == [hyps[n][max(range(len(att[n])), key=att[n].__getitem__)] for n in range(2)]
    for w in (0.3, 1.0):
        got = attention_rescore(head, enc, enc_lens, nbest, weight=w)
        for n in range(2):
            totals = [s + w * a for (_, s), a in zip(nbest[n], att[n])]
            assert got[n] == hyps[n][totals.index(max(totals))]
