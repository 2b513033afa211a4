"""Tests for asrkit.models.zipformer: sizes, shapes, padding invariance, training-time schedules.

    .venv/bin/pytest tests/test_zipformer.py -q
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from asrkit.models.encoder import build_encoder
from asrkit.models.zipformer import (
    ScheduledFloat,
    Zipformer,
    ZipformerConfig,
    icefall_to_asrkit_state_dict,
    set_batch_count,
)
from asrkit.models.zipformer import scaling

# Four stacks at 50, 25, 12.5 and 25 Hz; output dim 64 is gathered from stacks 2 (64) and 3 (48).
TINY = dict(
    num_encoder_layers=(1, 2, 1, 1),
    downsampling_factor=(1, 2, 4, 2),
    encoder_dim=(32, 48, 64, 48),
    feedforward_dim=(64, 96, 128, 96),
    encoder_unmasked_dim=(24, 32, 32, 32),
    num_heads=4,
    cnn_module_kernel=(7, 7, 5, 7),
    query_head_dim=8,
    value_head_dim=4,
    pos_head_dim=2,
    pos_dim=16,
)


@pytest.fixture
def tiny() -> Zipformer:
    torch.manual_seed(0)
    random.seed(0)
    return Zipformer(**TINY)


def _perturb(model: torch.nn.Module) -> None:
    # make zero/constant-initialised parameters (downsample weights, BiasNorm bias) matter
    with torch.no_grad():
        for p in model.parameters():
            std = p.std().item() if p.numel() > 1 else 0.0
            p.add_(torch.randn_like(p) * (0.2 * std if std > 1e-3 else 0.1))


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_preset_parameter_counts_equal_icefall():
    # icefall egs/librispeech/ASR/RESULTS.md: 23,285,615 / 65,549,011 / 148,439,574 for the
    # transducer (vocab 500); minus decoder, joiner and simple projections = encoder + front end
    assert _n_params(Zipformer.from_preset("small")) == 21_989_779
    assert _n_params(Zipformer.from_preset("medium")) == 63_994_103
    assert _n_params(Zipformer.from_preset("large")) == 148_439_574 - 1_813_980


def test_attributes_and_build_encoder():
    cfg = ZipformerConfig(**TINY)
    enc = build_encoder("zipformer", **dataclasses.asdict(cfg))
    assert isinstance(enc, Zipformer)
    assert enc.output_dim == 64 and enc.subsampling_factor == 4 and enc.embed_dim == 32
    assert enc.config.num_heads == (4, 4, 4, 4)
    # icefall flag syntax is accepted
    enc2 = Zipformer(**{**TINY, "num_encoder_layers": "1,2,1,1", "num_heads": "4"})
    assert _n_params(enc2) == _n_params(enc)


def test_config_errors_are_explained():
    with pytest.raises(ValueError, match="encoder_dim"):
        Zipformer(**{**TINY, "encoder_dim": (32, 48)})
    with pytest.raises(TypeError, match="unknown config keys"):
        Zipformer(**TINY, hidden_size=3)
    with pytest.raises(ValueError, match="preset"):
        Zipformer.from_preset("huge")
    with pytest.raises(NotImplementedError):
        Zipformer(**TINY, causal=True)


@pytest.mark.parametrize("lengths", [[9], [10, 9], [101, 64, 33], [256, 255, 200, 17]])
def test_output_shapes_and_lengths(tiny, lengths):
    tiny.eval()
    lens = torch.tensor(lengths)
    feats = torch.randn(len(lengths), max(lengths), 80)
    with torch.no_grad():
        out, out_lens = tiny(feats, lens)
    expected = ((lens - 7) // 2 + 1) // 2
    assert torch.equal(out_lens, expected)
    assert out.shape == (len(lengths), int(expected.max()), 64)
    assert torch.isfinite(out).all()


def test_too_short_input_is_rejected(tiny):
    with pytest.raises(ValueError, match="9 frames"):
        tiny(torch.randn(2, 20, 80), torch.tensor([20, 8]))
    with pytest.raises(ValueError, match="padded length"):
        tiny(torch.randn(2, 20, 80), torch.tensor([21, 20]))


def test_extra_padding_is_allowed_and_harmless(tiny):
    tiny.eval()
    feats = torch.randn(2, 90, 80)
    with torch.no_grad():
        out, out_lens = tiny(feats, torch.tensor([90, 70]))
        out2, out_lens2 = tiny(torch.cat([feats, torch.randn(2, 33, 80)], dim=1), torch.tensor([90, 70]))
    assert torch.equal(out_lens, out_lens2) and out2.shape[1] > out.shape[1]
    assert torch.allclose(out2[:, : out.shape[1]], out, atol=1e-5)


@pytest.mark.parametrize("padding_invariant", [True, False])
def test_padding_invariance(padding_invariant):
    torch.manual_seed(1)
    model = Zipformer(**TINY, padding_invariant=padding_invariant).eval()
    _perturb(model)
    lens = torch.tensor([131, 100, 61, 45])
    feats = torch.randn(4, 131, 80) * 3  # padding region holds random values, not zeros
    with torch.no_grad():
        out, out_lens = model(feats, lens)
        max_diff = 0.0
        for i, n in enumerate(lens.tolist()):
            alone, alone_len = model(feats[i : i + 1, :n], lens[i : i + 1])
            assert alone_len.item() == out_lens[i].item()
            max_diff = max(max_diff, (out[i, : out_lens[i]] - alone[0]).abs().max().item())
    if padding_invariant:
        assert max_diff < 1e-4
    else:  # icefall's behaviour: the frames near the end see the batch's padding
        assert max_diff > 1e-3


def test_eval_is_deterministic_and_ignores_schedules(tiny):
    feats, lens = torch.randn(2, 120, 80), torch.tensor([120, 99])
    tiny.eval()
    with torch.no_grad():
        a, _ = tiny(feats, lens)
        set_batch_count(tiny, 123.0)
        b, _ = tiny(feats, lens)
    assert torch.equal(a, b)


def test_train_mode_is_random_until_eval(tiny):
    set_batch_count(tiny, 100.0)  # dropout 0.3, layer skipping at its highest
    feats, lens = torch.randn(2, 120, 80), torch.tensor([120, 120])
    a, _ = tiny(feats, lens)
    b, _ = tiny(feats, lens)
    assert not torch.allclose(a, b)


def test_split_steps_equal_forward(tiny):
    tiny.eval()
    feats, lens = torch.randn(3, 150, 80), torch.tensor([150, 131, 60])
    with torch.no_grad():
        out, out_lens = tiny(feats, lens)
        x, x_lens = tiny.embed(feats, lens)
        assert x.shape == (3, 71, 32) and torch.equal(x_lens, (lens - 7) // 2)
        y, y_lens = tiny.encode(x, x_lens)
        h50, h50_lens = tiny(feats, lens, return_50hz=True)
        h50b, _ = tiny.encode(x, x_lens, downsample_output=False)
    assert torch.equal(out, y) and torch.equal(out_lens, y_lens)
    assert h50.shape == (3, 71, 64) and torch.equal(h50_lens, x_lens) and torch.equal(h50, h50b)


def test_backward_gives_finite_grads_for_all_params(tiny):
    set_batch_count(tiny, 50_000.0)  # past warm-up: positional encodings are never skipped
    feats, lens = torch.randn(2, 100, 80), torch.tensor([100, 81])
    out, out_lens = tiny(feats, lens)
    mask = torch.arange(out.shape[1])[None, :, None] < out_lens[:, None, None]
    (out * mask).pow(2).mean().backward()
    for name, p in tiny.named_parameters():
        if name.split(".")[-2].isdigit() and name.endswith(".bypass_scale"):
            assert p.grad is None, name  # icefall's unused per-layer parameter
            continue
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert tiny.encoder_embed.conv[0].weight.grad.abs().sum() > 0


def test_set_batch_count_drives_schedules(tiny):
    drop = tiny.encoder_embed.dropout.p
    layer = tiny.encoder.encoders[0].layers[0]
    assert isinstance(drop, ScheduledFloat)
    assert float(drop) == 0.0  # no batch count set yet: the default, as in icefall
    set_batch_count(tiny, 0.0)
    assert float(drop) == pytest.approx(0.3) and float(layer.conv_skip_rate) == pytest.approx(0.2)
    set_batch_count(tiny, 20_000.0)
    assert float(drop) == pytest.approx(0.1) and float(layer.conv_skip_rate) == pytest.approx(0.0)
    # stack 0's layer skipping warms up between 4000 * 1/5 and 4000 * 2/5 batches
    set_batch_count(tiny, 0.0)
    assert float(layer.bypass.skip_rate) == pytest.approx(0.5)
    set_batch_count(tiny, 1600.0)
    assert float(layer.bypass.skip_rate) == pytest.approx(0.035)
    tiny.eval()
    assert float(drop) == 0.0 and float(layer.bypass.skip_rate) == 0.0


def test_icefall_state_dict_mapping(tiny):
    sd = {f"module.{k}": v for k, v in tiny.state_dict().items()}
    sd["module.decoder.embedding.weight"] = torch.zeros(500, 512)
    sd["module.joiner.output_linear.weight"] = torch.zeros(500, 512)
    mapped = icefall_to_asrkit_state_dict(sd)
    other = Zipformer(**TINY)
    other.load_state_dict(mapped, strict=True)
    assert torch.equal(other.encoder_embed.out.weight, tiny.encoder_embed.out.weight)
    with pytest.raises(ValueError, match="icefall"):
        icefall_to_asrkit_state_dict({"decoder.x": torch.zeros(1)})


def test_tiny_model_fits_a_regression_target(tiny):
    torch.manual_seed(0)
    feats, lens = torch.randn(2, 60, 80), torch.tensor([60, 60])
    target = torch.randn(2, 13, 64) * 0.5
    opt = torch.optim.Adam(tiny.parameters(), lr=3e-3)
    losses = []
    for step in range(15):
        set_batch_count(tiny, 20_000.0 + step)
        out, _ = tiny(feats, lens)
        loss = (out - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


# --------------------------------------------------------------------------- scaling helpers


@pytest.mark.parametrize("kind", ["SwooshL", "SwooshR"])
def test_swoosh_variants_agree(kind):
    torch.manual_seed(0)
    x0 = torch.randn(200, 50, dtype=torch.float64) * 4
    offset, const = {"SwooshL": (4.0, 0.035), "SwooshR": (1.0, 0.313261687)}[kind]
    expected = torch.log1p(torch.exp(x0 - offset)) - 0.08 * x0 - const
    grads = {}
    for impl in scaling.SWOOSH_IMPLS:
        x = x0.clone().requires_grad_(True)
        y = scaling.swoosh_op(x, kind, impl)
        assert torch.allclose(y, expected, atol=1e-12)
        y.sum().backward()
        grads[impl] = x.grad
    assert torch.allclose(grads["recompute"], grads["autograd"], atol=1e-12)
    # uint8 storage: expectation-preserving rounding, at most one quantisation step off
    assert (grads["uint8"] - grads["autograd"]).abs().max() <= 1.005 / 255 + 1e-6


def test_activation_dropout_linear_matches_plain_composition():
    torch.manual_seed(0)
    m = scaling.ActivationDropoutAndLinear(16, 8, activation="SwooshR", dropout_p=0.0).double()
    x = torch.randn(5, 3, 16, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x, w, b: scaling._ActivationDropoutAndLinearFunction.apply(x, w, b, "SwooshR", 0.0, -1),
                             (x, m.weight, m.bias))
    m.eval()
    plain = torch.nn.functional.linear(scaling.swoosh(x, "SwooshR"), m.weight, m.bias)
    assert torch.allclose(m(x), plain)


def test_bias_norm_gradcheck_and_formula():
    torch.manual_seed(0)
    norm = scaling.BiasNorm(6).double().eval()
    with torch.no_grad():
        norm.bias.normal_()
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    expected = x * ((x - norm.bias).pow(2).mean(-1, keepdim=True) ** -0.5) * norm.log_scale.exp()
    assert torch.allclose(norm(x), expected)
    torch.autograd.gradcheck(lambda x, b, s: scaling._BiasNormFunction.apply(x, b, s, 1, False), (x, norm.bias, norm.log_scale))


def test_balancer_and_whiten_touch_only_gradients_in_training():
    torch.manual_seed(0)
    g = torch.randn(400, 8)
    # Balancer input: all positive, tiny spread; Whiten input: one dominant direction
    x_bal = torch.randn(400, 8) * 0.01 + 3.0
    x_wh = torch.randn(400, 1) * torch.ones(8) + 0.1 * torch.randn(400, 8)
    bal = scaling.Balancer(8, channel_dim=-1, min_positive=0.4, max_positive=0.6, min_abs=0.5, prob=1.0)
    wh = scaling.Whiten(num_groups=1, whitening_limit=1.1, prob=1.0, grad_scale=0.5)
    for module, x0 in ((bal, x_bal), (wh, x_wh)):
        x = x0.clone().requires_grad_(True)
        y = module(x)
        assert torch.equal(y, x0)
        y.backward(g)
        assert not torch.allclose(x.grad, g)  # training: gradient modified
        module.eval()
        x = x0.clone().requires_grad_(True)
        module(x).backward(g)
        assert torch.equal(x.grad, g)  # eval: identity in backward too


def test_scheduled_float_is_piecewise_linear():
    s = ScheduledFloat((0.0, 0.2), (4000.0, 0.05), (16000.0, 0.0), default=0.7)
    assert float(s) == 0.7
    s.batch_count = 2000.0
    assert float(s) == pytest.approx(0.125)
    s.batch_count = 10000.0
    assert float(s) == pytest.approx(0.025)
    s.batch_count = 1e9
    assert float(s) == 0.0
    with pytest.raises(ValueError):
        ScheduledFloat((1.0, 0.0), (0.0, 1.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_amp_steps_are_finite():
    torch.manual_seed(0)
    model = Zipformer(**TINY).eval()
    _perturb(model)
    feats, lens = torch.randn(3, 150, 80), torch.tensor([150, 120, 77])
    with torch.no_grad():
        ref, ref_lens = model(feats, lens)
        model.cuda()
        out, out_lens = model(feats.cuda(), lens.cuda())
    assert torch.equal(out_lens.cpu(), ref_lens)
    assert (out.cpu() - ref).abs().max() < 1e-3
    model.train()
    set_batch_count(model, 1000.0)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cuda", dtype=dtype):
            out, _ = model(feats.cuda(), lens.cuda())
        out.float().pow(2).mean().backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        model.zero_grad()
