"""Tests for the CTC head (asrkit.models.ctc) and CTC decoding (asrkit.decoding.ctc).

The reference for both is brute force: enumerate every alignment of a tiny (T, V), collapse it,
and sum the probabilities per label sequence.
"""

import itertools
import logging
from typing import Dict, Tuple

import pytest
import torch
import torch.nn.functional as F

from asrkit.decoding.ctc import ctc_greedy_search, ctc_prefix_beam_search
from asrkit.models.ctc import CtcHead, ctc_feasible, ctc_min_frames


def collapse(ali, blank=0):
    out, prev = [], blank
    for a in ali:
        if a != blank and a != prev:
            out.append(a)
        prev = a
    return tuple(out)


def brute_force(log_probs: torch.Tensor, blank: int = 0) -> Dict[Tuple[int, ...], float]:
    """log P(labels) for every label sequence, by summing over all V**T alignments. log_probs (T, V)."""
    T, V = log_probs.shape
    per_seq: Dict[Tuple[int, ...], list] = {}
    lp = log_probs.double()
    for ali in itertools.product(range(V), repeat=T):
        score = lp[torch.arange(T), torch.tensor(ali)].sum()
        per_seq.setdefault(collapse(ali, blank), []).append(score)
    return {k: torch.logsumexp(torch.stack(v), 0).item() for k, v in per_seq.items()}


# ---------------------------------------------------------------- head


def test_ctc_min_frames_and_feasible():
    assert ctc_min_frames([]) == 0
    assert ctc_min_frames([1, 2, 3]) == 3
    assert ctc_min_frames([1, 1, 2, 2, 2]) == 8  # 5 tokens + 3 blanks between equal neighbours
    assert ctc_feasible([1, 1], 3) and not ctc_feasible([1, 1], 2)
    assert ctc_feasible([1, 2], 2)
    assert not ctc_feasible([1, 2, 3], 2)


@pytest.mark.parametrize("target", [[1], [1, 2], [2, 2], [1, 2, 1], [1, 1, 2]])
def test_loss_matches_brute_force(target):
    torch.manual_seed(0)
    head = CtcHead(encoder_dim=6, vocab_size=3, dropout=0.0)
    enc = torch.randn(1, 4, 6)
    loss, frames = head.loss(enc, torch.tensor([4]), [target])
    expected = -brute_force(head(enc)[0].detach())[tuple(target)]
    assert loss.item() == pytest.approx(expected, abs=1e-4)
    assert frames.item() == 4


def test_loss_batched_with_padding_sums_per_utterance_losses():
    torch.manual_seed(1)
    head = CtcHead(encoder_dim=5, vocab_size=3, dropout=0.0)
    enc = torch.randn(2, 4, 5)
    targets = [[1, 2], [2]]
    loss, frames = head.loss(enc, torch.tensor([4, 3]), targets)
    lp0 = head(enc[:1])[0].detach()
    lp1 = head(enc[1:, :3])[0].detach()
    expected = -brute_force(lp0)[(1, 2)] - brute_force(lp1)[(2,)]
    assert loss.item() == pytest.approx(expected, abs=1e-4)
    assert frames.item() == 7


def test_gradient_finite_and_nonzero():
    torch.manual_seed(2)
    head = CtcHead(encoder_dim=8, vocab_size=10, dropout=0.1)
    enc = torch.randn(3, 20, 8, requires_grad=True)
    loss, frames = head.loss(enc, torch.tensor([20, 15, 9]), [[1, 2, 3], [4, 4, 5, 5], [9]])
    (loss / frames).backward()
    for g in [enc.grad, head.proj.weight.grad, head.proj.bias.grad]:
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_infeasible_target_skipped_with_warning(caplog):
    torch.manual_seed(3)
    head = CtcHead(encoder_dim=4, vocab_size=5, dropout=0.0)
    enc = torch.randn(2, 6, 4, requires_grad=True)
    lens = torch.tensor([6, 3])
    with caplog.at_level(logging.WARNING, logger="asrkit.models.ctc"):
        loss, frames = head.loss(enc, lens, [[1, 2], [3, 3, 3]])  # second needs 5 frames, has 3
    assert "utt #1: 3 tokens need 5 frames, has 3" in caplog.text
    only_first, first_frames = head.loss(enc[:1], lens[:1], [[1, 2]])
    assert torch.isfinite(loss) and loss.item() == pytest.approx(only_first.item())
    assert frames.item() == first_frames.item() == 6
    loss.backward()
    assert torch.isfinite(enc.grad).all() and enc.grad[1].abs().sum() == 0

    strict = CtcHead(encoder_dim=4, vocab_size=5, dropout=0.0, on_infeasible="raise")
    with pytest.raises(ValueError, match="too short for their CTC targets"):
        strict.loss(enc, lens, [[1, 2], [3, 3, 3]])


def test_all_infeasible_gives_zero_loss_and_zero_frames():
    head = CtcHead(encoder_dim=4, vocab_size=5, dropout=0.0)
    enc = torch.randn(1, 2, 4, requires_grad=True)
    loss, frames = head.loss(enc, torch.tensor([2]), [[1, 2, 3]])
    assert loss.item() == 0.0 and frames.item() == 0
    loss.backward()  # still connected to the parameters
    assert head.proj.weight.grad is not None


def test_bad_target_ids_raise():
    head = CtcHead(encoder_dim=4, vocab_size=5)
    enc = torch.randn(1, 6, 4)
    with pytest.raises(ValueError, match="blank"):
        head.loss(enc, torch.tensor([6]), [[1, 0, 2]])
    with pytest.raises(ValueError, match="outside"):
        head.loss(enc, torch.tensor([6]), [[1, 5]])
    with pytest.raises(ValueError, match="batch mismatch"):
        head.loss(enc, torch.tensor([6]), [[1], [2]])


def test_float32_log_probs_under_autocast():
    torch.manual_seed(4)
    head = CtcHead(encoder_dim=8, vocab_size=7, dropout=0.0)
    enc = torch.randn(2, 10, 8)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        lp = head(enc)
        loss, _ = head.loss(enc, torch.tensor([10, 8]), [[1, 2], [3]])
    assert lp.dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.allclose(lp.exp().sum(-1), torch.ones(2, 10))
    assert torch.isfinite(loss)


# ---------------------------------------------------------------- decoding


def test_greedy_hand_made():
    # frames: a a - a b b - - c   (blank = 0, a=1, b=2, c=3)  -> a a b c
    best = [1, 1, 0, 1, 2, 2, 0, 0, 3]
    lp = F.one_hot(torch.tensor(best), 4).float().mul(5).log_softmax(-1)[None]  # (1, 9, 4)
    assert ctc_greedy_search(lp, torch.tensor([9])) == [[1, 1, 2, 3]]
    assert ctc_greedy_search(lp, torch.tensor([4])) == [[1, 1]]  # frames past lens are ignored
    assert ctc_greedy_search(lp, torch.tensor([0])) == [[]]
    # a different blank id
    assert ctc_greedy_search(lp, torch.tensor([9]), blank_id=1) == [[0, 2, 0, 3]]  # "0" is a token now


@pytest.mark.parametrize("seed", range(12))
def test_prefix_beam_search_finds_most_probable_sequence(seed):
    torch.manual_seed(seed)
    T, V = 5, 3
    lp = (torch.randn(1, T, V) * 2).log_softmax(-1)
    probs = brute_force(lp[0])
    best = max(probs, key=probs.get)
    hyps, scores = ctc_prefix_beam_search(lp, torch.tensor([T]), beam=64, return_scores=True)
    assert tuple(hyps[0]) == best
    assert scores[0] == pytest.approx(probs[best], abs=1e-4)


def test_prefix_beam_search_score_is_minus_ctc_loss():
    torch.manual_seed(5)
    lp = (torch.randn(1, 6, 4) * 2).log_softmax(-1)
    hyps, scores = ctc_prefix_beam_search(lp, torch.tensor([6]), beam=100, return_scores=True)
    target, lens = torch.tensor(hyps[0]), torch.tensor([6])
    loss = F.ctc_loss(lp.transpose(0, 1), target, lens, torch.tensor([len(target)]), reduction="sum")
    assert scores[0] == pytest.approx(-loss.item(), abs=1e-4)


def test_prefix_beam_search_beats_greedy_when_alignments_add_up():
    # per frame the blank wins, but "1" as a label sequence has more total probability than ""
    p = torch.tensor([[0.4, 0.35, 0.25]] * 3)
    lp = p.log()[None]
    assert ctc_greedy_search(lp, torch.tensor([3])) == [[]]
    probs = brute_force(lp[0])
    assert probs[(1,)] > probs[()]
    assert ctc_prefix_beam_search(lp, torch.tensor([3]), beam=8) == [[1]]


def test_beam_one_matches_greedy_on_peaky_inputs():
    torch.manual_seed(6)
    N, T, V = 4, 40, 12
    best = torch.randint(0, V, (N, T))
    best[:, ::3] = 0  # plenty of blanks, some repeats across them
    lp = (F.one_hot(best, V).float() * 8 + torch.randn(N, T, V) * 0.5).log_softmax(-1)
    lens = torch.tensor([40, 33, 20, 1])
    assert ctc_prefix_beam_search(lp, lens, beam=1) == ctc_greedy_search(lp, lens)


@pytest.mark.parametrize("beam", [1, 3, 8])
def test_batched_equals_per_utterance_with_padding(beam):
    torch.manual_seed(7)
    N, T, V = 5, 30, 9
    lens = torch.tensor([30, 17, 1, 0, 25])
    lp = (torch.randn(N, T, V) * 3).log_softmax(-1)  # padding frames hold random values too
    hyps, scores = ctc_prefix_beam_search(lp, lens, beam=beam, return_scores=True)
    for n in range(N):
        L = int(lens[n])
        one, one_score = ctc_prefix_beam_search(lp[n : n + 1, :L], torch.tensor([L]), beam=beam, return_scores=True)
        assert hyps[n] == one[0]
        assert scores[n] == pytest.approx(one_score[0], abs=1e-5)
    assert hyps[3] == [] and scores[3] == 0.0


def test_prefix_beam_search_nonzero_blank_and_fp16_input():
    torch.manual_seed(8)
    T, V = 5, 3
    lp = (torch.randn(1, T, V) * 2).log_softmax(-1)
    probs = brute_force(lp[0], blank=2)
    best = max(probs, key=probs.get)
    assert tuple(ctc_prefix_beam_search(lp, torch.tensor([T]), beam=64, blank_id=2)[0]) == best
    assert ctc_prefix_beam_search(lp.half(), torch.tensor([T]), beam=64, blank_id=2)[0] == list(best)


def test_decoder_input_errors():
    lp = torch.randn(2, 5, 4).log_softmax(-1)
    with pytest.raises(ValueError, match="lens must be"):
        ctc_greedy_search(lp, torch.tensor([5]))
    with pytest.raises(ValueError, match=r"lens must lie in \[0, 5\]"):
        ctc_prefix_beam_search(lp, torch.tensor([5, 6]))
    with pytest.raises(ValueError, match="beam must be"):
        ctc_prefix_beam_search(lp, torch.tensor([5, 5]), beam=0)
    with pytest.raises(ValueError, match="blank_id"):
        ctc_greedy_search(lp, torch.tensor([5, 5]), blank_id=4)
