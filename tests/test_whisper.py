"""Whisper encoder behind the Encoder protocol, and Whisper log-mel features in the data layer.

    .venv/bin/pytest -q tests/test_whisper.py
"""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

pytest.importorskip("transformers")
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration  # noqa: E402
from transformers.audio_utils import mel_filter_bank  # noqa: E402

from asrkit.cli import main as cli_main  # noqa: E402
from asrkit.data.datamodule import DataConfig, eval_dataloader, train_dataloader  # noqa: E402
from asrkit.data.features import compute_fbank, feature_extractor, slaney_mel_filters  # noqa: E402
from asrkit.models.asr import AsrModel, AsrModelConfig  # noqa: E402
from asrkit.models.encoder import build_encoder  # noqa: E402

TINY = dict(d_model=32, encoder_layers=3, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
            decoder_attention_heads=2, decoder_ffn_dim=64, vocab_size=64, max_target_positions=16,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)


def save_tiny_whisper(path: Path, **cfg) -> Path:
    """Save a tiny random WhisperForConditionalGeneration and its feature extractor config to ``path``,
    laid out as a downloaded checkpoint, so tests load through the path users take."""
    config = WhisperConfig(**{**TINY, **cfg})
    torch.manual_seed(0)
    WhisperForConditionalGeneration(config).save_pretrained(path)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(path)
    return Path(path)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_whisper(tmp_path_factory.mktemp("whisper-tiny"))


@pytest.fixture(scope="module")
def hf_encoder(tiny_dir):
    """transformers' own encoder from the same directory, the reference."""
    return WhisperForConditionalGeneration.from_pretrained(tiny_dir, local_files_only=True).model.encoder.eval()


def whisper_feats(n: int, t: int, bins: int = 80, seed: int = 0) -> torch.Tensor:
    """(n, t, bins) values in Whisper log-mel's range (floor -1.5, peaks ~1.5)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, t, bins, generator=g) * 2.5 - 1.0)


def make_cuts(tmp_path: Path, durations) -> CutSet:
    rng = np.random.default_rng(0)
    recs, sups = [], []
    for i, dur in enumerate(durations):
        t = np.arange(int(dur * 16000)) / 16000
        audio = 0.3 * np.sin(2 * np.pi * (220 + 60 * i) * t) * np.sin(2 * np.pi * 3 * t)
        audio += 0.01 * rng.standard_normal(t.size)
        sf.write(tmp_path / f"w{i}.wav", audio.astype(np.float32), 16000)
        rec = Recording.from_file(tmp_path / f"w{i}.wav", recording_id=f"w{i}")
        recs.append(rec)
        sups.append(SupervisionSegment(f"w{i}", f"w{i}", 0, rec.duration, text=f"WORD{i}", speaker="s"))
    return CutSet.from_manifests(recordings=RecordingSet.from_recordings(recs),
                                 supervisions=SupervisionSet.from_segments(sups))


# ---- encoder --------------------------------------------------------------------------------------

def test_loaded_encoder_matches_transformers_on_30s(tiny_dir, hf_encoder):
    enc = build_encoder("whisper", model_dir=str(tiny_dir), pad_to_30s=True).eval()
    assert (enc.output_dim, enc.subsampling_factor, enc.num_mel_bins, enc.num_layers) == (32, 2, 80, 3)
    x = whisper_feats(2, 3000)
    with torch.no_grad():
        out, lens = enc(x, torch.tensor([3000, 3000]))
        ref = hf_encoder(x.transpose(1, 2)).last_hidden_state  # (2, 1500, 32)
        masked, _ = build_encoder("whisper", model_dir=str(tiny_dir), pad_to_30s=True, use_padding_mask=True)(
            x, torch.tensor([3000, 3000]))
    assert out.shape == ref.shape == (2, 1500, 32) and lens.tolist() == [1500, 1500]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(masked, ref, atol=1e-5, rtol=0)  # a mask with nothing to mask changes nothing


def test_pad_to_30s_pads_with_log_mel_silence(tiny_dir, hf_encoder):
    """A short input gives transformers' output on the input padded to 3000 frames with its silence floor,
    cut to the input's frames; this is a different function from the trimmed encoder."""
    x = whisper_feats(1, 301)
    floor = (x.max() - 2.0).clamp(min=-1.5)
    padded = torch.cat([x, floor.expand(1, 3000 - 301, 80)], dim=1)
    with torch.no_grad():
        out, lens = build_encoder("whisper", model_dir=str(tiny_dir), pad_to_30s=True).eval()(x, torch.tensor([301]))
        ref = hf_encoder(padded.transpose(1, 2)).last_hidden_state[:, :151]
        trimmed, _ = build_encoder("whisper", model_dir=str(tiny_dir)).eval()(x, torch.tensor([301]))
    assert out.shape == (1, 151, 32) and lens.tolist() == [151]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert (trimmed - out).abs().max() > 1e-2  # attention over 1500 vs 151 frames


def test_trimmed_equals_manual_computation(tiny_dir, hf_encoder):
    """Trimming = Whisper's own modules on the unpadded input with embed_positions[:T']."""
    x = whisper_feats(1, 301)
    with torch.no_grad():
        out, lens = build_encoder("whisper", model_dir=str(tiny_dir)).eval()(x, torch.tensor([301]))
        e = hf_encoder
        h = torch.nn.functional.gelu(e.conv1(x.transpose(1, 2)))
        h = torch.nn.functional.gelu(e.conv2(h)).transpose(1, 2)  # (1, 151, 32)
        h = h + e.embed_positions.weight[:151]
        for layer in e.layers:
            h = layer(h, None)
        ref = e.layer_norm(h)
    assert out.shape == (1, 151, 32) and lens.tolist() == [151]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pad_to_30s", [False, True])
def test_batch_padding_invariance_with_mask(tiny_dir, pad_to_30s):
    lens = [301, 200, 157]  # odd lengths exercise conv2's look past the last frame
    x = whisper_feats(3, 301, seed=1)
    for i, n in enumerate(lens):
        x[i, n:] = -23.0  # lhotse's padding value for features, far outside Whisper's range
    enc = build_encoder("whisper", model_dir=str(tiny_dir), pad_to_30s=pad_to_30s, use_padding_mask=True).eval()
    with torch.no_grad():
        out, out_lens = enc(x, torch.tensor(lens))
        alone = [enc(x[i:i + 1, :n], torch.tensor([n]))[0][0] for i, n in enumerate(lens)]
    assert out_lens.tolist() == [151, 100, 79] and out.shape == (3, 151, 32)
    for i, n in enumerate(out_lens.tolist()):
        torch.testing.assert_close(out[i, :n], alone[i], atol=1e-5, rtol=0)

    if not pad_to_30s:  # why the mask exists: without it, padding leaks into the short utterances
        unmasked = build_encoder("whisper", model_dir=str(tiny_dir), use_padding_mask=False).eval()
        with torch.no_grad():
            out_u, _ = unmasked(x, torch.tensor(lens))
            alone_u = unmasked(x[2:, :157], torch.tensor([157]))[0][0]
        assert (out_u[2, :79] - alone_u).abs().max() > 1e-3


def test_out_lens_formula():
    enc = build_encoder("whisper", config=dict(TINY, encoder_layers=1)).eval()
    lens = torch.tensor([3000, 1, 2, 3, 4, 5, 100, 101])
    with torch.no_grad():
        out, out_lens = enc(whisper_feats(len(lens), 3000), lens)
    assert out_lens.tolist() == [(n - 1) // 2 + 1 for n in lens.tolist()] == [1500, 1, 1, 2, 2, 3, 50, 51]
    assert out.shape == (8, 1500, 32) and torch.isfinite(out).all()
    with torch.no_grad():  # batch padding beyond the longest utterance is dropped
        out2, _ = enc(whisper_feats(2, 500), torch.tensor([101, 40]))
    assert out2.shape == (2, 51, 32)


def test_freezing_and_partial_unfreezing(tiny_dir):
    full = build_encoder("whisper", model_dir=str(tiny_dir))
    pos = full.whisper.embed_positions.weight
    assert not pos.requires_grad  # Whisper's sinusoid never trains
    assert all(p.requires_grad for n, p in full.named_parameters() if "embed_positions" not in n)

    frozen = build_encoder("whisper", model_dir=str(tiny_dir), freeze=True)
    assert not any(p.requires_grad for p in frozen.parameters())
    out, _ = frozen(whisper_feats(1, 50), torch.tensor([50]))
    assert not out.requires_grad

    part = build_encoder("whisper", model_dir=str(tiny_dir), freeze=True, unfreeze_last_n_layers=1)
    trainable = {n for n, p in part.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("whisper.layers.2.", "whisper.layer_norm.")) for n in trainable)
    expected = sum(p.numel() for p in part.whisper.layers[2].parameters()) + \
        sum(p.numel() for p in part.whisper.layer_norm.parameters())
    assert sum(p.numel() for p in part.parameters() if p.requires_grad) == expected
    out, _ = part(whisper_feats(1, 50), torch.tensor([50]))
    out.sum().backward()
    assert part.whisper.layers[2].fc1.weight.grad is not None and part.whisper.layers[1].fc1.weight.grad is None
    assert part.whisper.conv1.weight.grad is None

    # unfreeze_last_n_layers alone means "freeze the rest"
    two = build_encoder("whisper", model_dir=str(tiny_dir), unfreeze_last_n_layers=2)
    assert {n.split(".")[2] for n, p in two.named_parameters() if p.requires_grad and ".layers." in n} == {"1", "2"}
    assert not two.whisper.conv2.weight.requires_grad
    with pytest.raises(ValueError, match="unfreeze_last_n_layers must be in 0..3"):
        build_encoder("whisper", model_dir=str(tiny_dir), unfreeze_last_n_layers=4)


def test_errors(tmp_path, tiny_dir):
    with pytest.raises(FileNotFoundError, match="Whisper model_dir not found"):
        build_encoder("whisper", model_dir=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="missing config.json and weights"):
        build_encoder("whisper", model_dir=str(tmp_path / "empty"))
    (tmp_path / "cfg_only").mkdir()
    (tmp_path / "cfg_only" / "config.json").write_text((tiny_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"missing weights \(one of model.safetensors"):
        build_encoder("whisper", model_dir=str(tmp_path / "cfg_only"))
    with pytest.raises(ValueError, match="set encoder_conf.model_dir"):
        build_encoder("whisper")
    with pytest.raises(ValueError, match="dtype"):
        build_encoder("whisper", config=TINY, dtype="int8")

    enc = build_encoder("whisper", config=dict(TINY, encoder_layers=1, num_mel_bins=128))
    with pytest.raises(ValueError, match="expects \\(N, T, 128\\) features, got 80 mel bins: compute features with "
                                         "--feature-type whisper-fbank --num-mel-bins 128"):
        enc(whisper_feats(1, 100, bins=80), torch.tensor([100]))
    with pytest.raises(ValueError, match=r"3001 frames \(30.01 s\) is longer than Whisper's 3000-frame \(30 s\)"):
        enc(whisper_feats(1, 3001, bins=128), torch.tensor([3001]))
    with pytest.raises(ValueError, match="feat_lens"):
        enc(whisper_feats(1, 10, bins=128), torch.tensor([11]))


def test_asr_model_with_whisper_encoder_trains(tiny_dir):
    """AsrModel(encoder: whisper, CTC) from a saved checkpoint, top layer unfrozen: loss falls on a fixed batch
    and the frozen layers do not move."""
    cfg = AsrModelConfig(encoder="whisper", vocab_size=8, ctc_weight=1.0, head_dropout=0.0,
                         encoder_conf={"model_dir": str(tiny_dir), "unfreeze_last_n_layers": 1})
    model = AsrModel(cfg).train()
    feats, lens = whisper_feats(2, 120, seed=3), torch.tensor([120, 90])
    targets = [[1, 2, 3, 4, 5], [6, 7, 3]]
    frozen_before = model.encoder.whisper.layers[0].fc1.weight.clone()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(12):
        loss, parts, frames = model(feats, lens, targets)
        opt.zero_grad()
        (loss / frames).backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert float(frames) == 60 + 45
    assert losses[-1] < 0.5 * losses[0], losses
    assert torch.equal(model.encoder.whisper.layers[0].fc1.weight, frozen_before)


# ---- features -------------------------------------------------------------------------------------

@pytest.mark.parametrize("bins", [80, 128])
def test_mel_filters_match_whisper(bins):
    ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=bins, min_frequency=0.0, max_frequency=8000.0,
                          sampling_rate=16000, norm="slaney", mel_scale="slaney").T  # (bins, 201)
    ours = slaney_mel_filters(bins)
    assert ours.shape == (bins, 201)
    np.testing.assert_allclose(ours, ref, atol=1e-6 * np.abs(ref).max(), rtol=0)


def test_whisper_fbank_features(tmp_path):
    cuts = make_cuts(tmp_path, [1.0, 1.5, 2.0, 1.2])
    fb = compute_fbank(cuts, tmp_path / "wf", "toy", feature_type="whisper-fbank", num_mel_bins=128)
    cut = fb[2]
    feats = cut.load_features()
    assert feats.shape == (200, 128) and cut.features.type == "whisper-fbank"
    # Whisper's own front end on the same audio; frames whose STFT window stays inside the audio agree
    audio = cut.load_audio()[0]
    ref = WhisperFeatureExtractor(feature_size=128)(audio, sampling_rate=16000, return_tensors="np").input_features[0].T
    np.testing.assert_allclose(feats[:198], ref[:198], atol=3e-3, rtol=0)  # lilcom at 2^-8 steps
    assert np.abs(feats[:198] - ref[:198]).max() > 0  # really read back from lossy storage

    # on-the-fly features in AsrDataset: same front end, right dims
    otf = next(iter(eval_dataloader(DataConfig(num_workers=0, on_the_fly_feats=True, feature_type="whisper-fbank",
                                               num_mel_bins=128, max_duration=10), cuts)))
    stored = next(iter(eval_dataloader(DataConfig(num_workers=0, max_duration=10), fb)))
    assert otf["feats"].shape == stored["feats"].shape == (4, 200, 128)
    assert otf["cut_ids"] == stored["cut_ids"]
    valid = torch.arange(200) < otf["feat_lens"][:, None]
    assert (otf["feats"] - stored["feats"])[valid].abs().max() < 3e-3
    with pytest.raises(ValueError, match="num_mel_bins 80 or 128"):
        feature_extractor("whisper-fbank", 64)
    with pytest.raises(ValueError, match="unknown feature type"):
        feature_extractor("mfcc")

    # training refuses precomputed features of the wrong kind or size before reading any batch
    with pytest.raises(ValueError, match="hold 128-dim whisper-fbank features but the config asks for 80-dim fbank"):
        train_dataloader(DataConfig(num_workers=0, max_duration=3, num_buckets=2), fb)
    train_dataloader(DataConfig(num_workers=0, max_duration=3, num_buckets=2, feature_type="whisper-fbank",
                                num_mel_bins=128), fb)


def test_compute_fbank_cli_whisper(tmp_path):
    cuts = make_cuts(tmp_path, [1.0, 0.7])
    cuts.to_file(tmp_path / "toy_cuts.jsonl.gz")
    assert cli_main(["compute-fbank", "--cuts", str(tmp_path / "toy_cuts.jsonl.gz"), "--out-dir", str(tmp_path / "f"),
                     "--feature-type", "whisper-fbank", "--num-mel-bins", "80"]) == 0
    out = CutSet.from_file(tmp_path / "f" / "toy_cuts.jsonl.gz")
    assert sorted(c.load_features().shape for c in out) == [(70, 80), (100, 80)]
    assert {c.features.type for c in out} == {"whisper-fbank"}
