"""Tests for asrkit.models.transducer and the heads of asrkit.models.asr.

    .venv/bin/pytest tests/test_transducer.py -q
"""

import pytest
import torch

from asrkit.decoding.transducer import beam_search, greedy_search
from asrkit.losses.rnnt import rnnt_loss
from asrkit.models.asr import AsrModel, AsrModelConfig
from asrkit.models.transducer import Decoder, TransducerHead, warmup_loss_scales
from asrkit.models.zipformer import Zipformer


@pytest.mark.parametrize("preset, want", [("small", 23_285_615), ("medium", 65_549_011)])
def test_zipformer_plus_transducer_has_icefalls_parameter_count(preset, want):
    """icefall's published counts for vocab 500 (egs/librispeech/ASR/RESULTS.md)."""
    encoder = Zipformer.from_preset(preset)
    head = TransducerHead(encoder.output_dim, vocab_size=500)
    n = sum(p.numel() for m in (encoder, head) for p in m.parameters())
    assert n == want


def test_decoder_sees_only_its_context():
    torch.manual_seed(0)
    dec = Decoder(vocab_size=10, decoder_dim=8, blank_id=0, context_size=2).eval()
    y = torch.tensor([[0, 3, 4, 5, 6]])
    out = dec(y)  # (1, 5, 8)
    y2 = torch.tensor([[0, 7, 4, 5, 6]])  # changes token 1: outputs 1 and 2 only
    out2 = dec(y2)
    changed = (out - out2).abs().amax(-1)[0] > 0
    assert changed.tolist() == [False, True, True, False, False]
    # search mode: exactly context_size tokens in, the last position's output out
    step = dec(torch.tensor([[4, 5]]), need_pad=False)
    torch.testing.assert_close(step[0, 0], out[0, 3])
    # a negative id ("before the start") embeds to zero, like left padding
    torch.testing.assert_close(dec(torch.tensor([[-1, 0]]), need_pad=False)[0, 0], out[0, 0])
    with pytest.raises(ValueError, match="expects 2 tokens"):
        dec(torch.tensor([[1, 2, 3]]), need_pad=False)


def test_warmup_scales_follow_icefall():
    assert warmup_loss_scales(0, 2000, 0.5) == (1.0, 0.1)
    s, p = warmup_loss_scales(1000, 2000, 0.5)
    assert s == pytest.approx(0.75) and p == pytest.approx(0.55)
    assert warmup_loss_scales(2000, 2000, 0.5) == (0.5, 1.0)
    assert warmup_loss_scales(10, 0, 0.5) == (0.5, 1.0)


def _head_inputs(N=3, T=20, D=16, V=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(N, T, D, generator=g)
    lens = torch.tensor([T, T - 5, T - 9])[:N]
    targets = [[1, 3, 5, 7], [2, 2, 4], [9]][:N]
    return enc, lens, targets


def test_pruned_loss_is_near_the_full_loss_and_ignores_padding():
    torch.manual_seed(0)
    head = TransducerHead(16, vocab_size=12, decoder_dim=16, joiner_dim=16, prune_range=5, lm_scale=0.0).eval()
    enc, lens, targets = _head_inputs()
    simple, pruned = head.loss(enc, lens, targets)
    # the full loss on the same joiner: prune_range covers every symbol here (at most 4 + 1)
    y = torch.zeros(3, 4, dtype=torch.long)
    for i, t in enumerate(targets):
        y[i, : len(t)] = torch.tensor(t)
    dec = head.decoder(torch.nn.functional.pad(y, (1, 0), value=0))
    logits = head.joiner(enc[:, :, None, :], dec[:, None, :, :])  # (N, T, S + 1, V)
    full = rnnt_loss(logits, y.int(), lens.int(), torch.tensor([4, 3, 1]).int(), blank=0, reduction="sum")
    torch.testing.assert_close(pruned, full, rtol=1e-5, atol=1e-4)
    assert torch.isfinite(simple) and simple > 0
    # padded frames do not matter
    enc2 = enc.clone()
    enc2[1, 15:] = 1e3
    torch.testing.assert_close(head.loss(enc2, lens, targets)[1], pruned)
    with pytest.raises(ValueError, match="blank"):
        head.loss(enc, lens, [[1, 0], [2], [3]])


def test_asr_model_heads_follow_their_weights():
    conf = dict(num_encoder_layers=[1, 1], downsampling_factor=[1, 2], encoder_dim=[32, 48], feedforward_dim=[64, 96],
                encoder_unmasked_dim=[32, 32], num_heads=2, cnn_module_kernel=7, query_head_dim=8, value_head_dim=8,
                pos_head_dim=4, pos_dim=8, embed_channels=[4, 8, 16])
    cfg = AsrModelConfig(encoder_conf=conf, vocab_size=12, ctc_weight=0.2, transducer_weight=1.0, attention_weight=0.3)
    cfg.transducer.decoder_dim = cfg.transducer.joiner_dim = 16
    cfg.attention.decoder_dim = cfg.attention.attention_dim = 16
    cfg.attention.num_layers, cfg.attention.num_heads, cfg.attention.feedforward_dim = 1, 2, 32
    torch.manual_seed(0)
    model = AsrModel(cfg)
    feats = torch.randn(2, 120, 80)
    lens = torch.tensor([120, 90])
    loss, parts, frames = model(feats, lens, [[3, 4, 5], [6, 7]])
    assert set(parts) == {"simple", "pruned", "ctc", "attention"}
    s, p = warmup_loss_scales(0, cfg.transducer.warm_step, cfg.transducer.simple_loss_scale)
    want = s * parts["simple"] + p * parts["pruned"] + 0.2 * parts["ctc"] + 0.3 * parts["attention"]
    torch.testing.assert_close(loss.detach(), want)
    assert frames == model.encoder(feats, lens)[1].sum()
    loss.backward()
    for name in ("transducer.joiner.output_linear.weight", "ctc.proj.weight", "attention.decoder.output_layer.weight"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="at least one"):
        AsrModel(AsrModelConfig(encoder_conf=conf, vocab_size=12, ctc_weight=0.0))
    ctc_only = AsrModel(AsrModelConfig(encoder_conf=conf, vocab_size=12))
    assert ctc_only.transducer is None and ctc_only.attention is None


def test_transducer_head_learns_a_fixed_mapping():
    """Trained on two fixed 'utterances', the searches spell their transcripts (untrained: they do not).

    The regular transducer may emit several symbols on one frame (here it learns to), so greedy
    search gets ``max_sym_per_frame=3``."""
    torch.manual_seed(0)
    head = TransducerHead(16, vocab_size=12, decoder_dim=16, joiner_dim=16, prune_range=3)
    enc, lens, targets = _head_inputs(N=2, T=12)
    targets = [[1, 3, 5, 7], [2, 4, 4]]
    assert greedy_search(head.eval(), enc, lens) != targets
    opt = torch.optim.Adam(head.parameters(), lr=0.02)
    head.train()
    for step in range(150):
        simple, pruned = head.loss(enc, lens, targets)
        s, p = warmup_loss_scales(step, 50, 0.5)
        opt.zero_grad()
        (s * simple + p * pruned).backward()
        opt.step()
    assert greedy_search(head.eval(), enc, lens, max_sym_per_frame=3) == targets
    assert beam_search(head, enc, lens, beam=4) == targets
