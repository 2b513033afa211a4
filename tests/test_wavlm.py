"""WavLM encoder behind the Encoder protocol, and raw-waveform inputs in the data layer.

    .venv/bin/pytest -q tests/test_wavlm.py
"""

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

pytest.importorskip("transformers")
from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel  # noqa: E402

from asrkit.cli import main as cli_main  # noqa: E402
from asrkit.data.datamodule import (DataConfig, check_encoder_inputs, eval_dataloader, filter_cuts,  # noqa: E402
                                    train_dataloader)
from asrkit.data.features import compute_fbank, feature_extractor  # noqa: E402
from asrkit.models.encoder import build_encoder  # noqa: E402

# hidden 32, 2 layers, a 16-channel conv stack with WavLM's strides (320 samples per frame)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=[16] * 7,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, num_buckets=32, max_bucket_distance=100)
LARGE_LIKE = dict(TINY, feat_extract_norm="layer", do_stable_layer_norm=True)  # WavLM Large's layout
BASE_LIKE = dict(TINY, feat_extract_norm="group", do_stable_layer_norm=False)  # WavLM Base's layout

# torch warns about HF's mix of a bool key-padding mask and a float position bias; harmless here
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")


def save_tiny_wavlm(path: Path, config: dict, do_normalize: bool) -> Path:
    """A tiny random WavLMModel and its feature extractor config, laid out as a downloaded checkpoint."""
    torch.manual_seed(0)
    WavLMModel(WavLMConfig(**config)).save_pretrained(path)
    Wav2Vec2FeatureExtractor(do_normalize=do_normalize, return_attention_mask=True).save_pretrained(path)
    return Path(path)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_wavlm(tmp_path_factory.mktemp("wavlm-tiny"), LARGE_LIKE, do_normalize=True)


def waves(lens, total=None, seed=0) -> torch.Tensor:
    """(N, total, 1) noise-like audio, with junk (not zeros) past each length."""
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(len(lens), total or max(lens), 1, generator=g) + 0.05


def valid_frames(out_lens: torch.Tensor, frames: int) -> torch.Tensor:
    return torch.arange(frames) < out_lens[:, None]


# ---- encoder --------------------------------------------------------------------------------------

def test_loaded_encoder_matches_transformers(tiny_dir):
    """Loaded from a directory, our forward equals HF's own pipeline (feature extractor + WavLMModel)."""
    enc = build_encoder("wavlm", model_dir=str(tiny_dir)).eval()
    assert (enc.output_dim, enc.subsampling_factor, enc.feature_type, enc.num_layers) == (32, 320, "waveform", 2)
    assert enc.use_attention_mask and enc.do_normalize and enc.min_samples == 400
    lens = torch.tensor([16000, 9000, 4000])
    x = waves(lens.tolist())
    hf = WavLMModel.from_pretrained(tiny_dir, local_files_only=True).eval()
    fe = Wav2Vec2FeatureExtractor.from_pretrained(tiny_dir)
    inp = fe([x[i, :n, 0].numpy() for i, n in enumerate(lens.tolist())], sampling_rate=16000, padding=True,
             return_tensors="pt")
    with torch.no_grad():
        out, out_lens = enc(x, lens)
        ref = hf(inp.input_values, attention_mask=inp.attention_mask, output_hidden_states=True)
        layer1, _ = build_encoder("wavlm", model_dir=str(tiny_dir), output_layer=1).eval()(x, lens)
    assert out_lens.tolist() == hf._get_feat_extract_output_lengths(lens).tolist() == [49, 27, 12]
    assert out.shape == (3, 49, 32)
    v = valid_frames(out_lens, 49)
    assert (out - ref.last_hidden_state)[v].abs().max() < 1e-4
    assert (layer1 - ref.hidden_states[1])[v].abs().max() < 1e-4
    assert (layer1 - out)[v].abs().max() > 0.1  # really another layer


def test_padding_does_not_change_outputs_with_mask(tiny_dir):
    """With the attention mask (layer-norm models), each utterance's output is the one it gets alone,
    whatever the padding holds and however far the batch is padded."""
    enc = build_encoder("wavlm", model_dir=str(tiny_dir)).eval()
    lens = torch.tensor([16000, 9000, 4000])
    x = waves(lens.tolist(), total=17000, seed=1)
    with torch.no_grad():
        out, out_lens = enc(x, lens)
        for i, n in enumerate(lens.tolist()):
            alone, alone_lens = enc(x[i:i + 1, :n], lens[i:i + 1])
            assert alone_lens.item() == out_lens[i].item() and alone.shape[1] == out_lens[i]
            assert (alone[0] - out[i, :out_lens[i]]).abs().max() < 1e-4, i
    assert out.shape[1] == 49  # padding beyond the longest utterance is dropped


def test_group_norm_models_get_no_mask_and_no_normalisation():
    """Base-layout models (GroupNorm conv) run as HF's extractor feeds them: zero padding, no mask."""
    enc = build_encoder("wavlm", config=BASE_LIKE).eval()
    assert not enc.use_attention_mask and not enc.do_normalize
    hf = WavLMModel(WavLMConfig(**BASE_LIKE)).eval()
    hf.load_state_dict(enc.wavlm.state_dict())
    lens = torch.tensor([12000, 7000])
    x = waves(lens.tolist(), total=13000, seed=2)
    zero_padded = torch.where(torch.arange(12000) < lens[:, None], x[:, :12000, 0], 0.0)
    with torch.no_grad():
        out, out_lens = enc(x, lens)
        ref = hf(zero_padded).last_hidden_state
        alone, _ = enc(x[1:, :7000], lens[1:])
    assert out_lens.tolist() == [37, 21] and out.shape == (2, 37, 32)
    assert (out - ref).abs().max() < 1e-4
    assert (alone[0] - out[1, :21]).abs().max() > 1e-3  # the padding is seen, as in pretraining
    forced = build_encoder("wavlm", config=BASE_LIKE, use_attention_mask=True, do_normalize=True)
    assert forced.use_attention_mask and forced.do_normalize


def test_freezing_and_partial_unfreezing(tiny_dir):
    default = build_encoder("wavlm", model_dir=str(tiny_dir))
    trainable = {n for n, p in default.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("wavlm.feature_extractor.") for n in trainable)  # the CNN is frozen
    assert "wavlm.encoder.layers.0.attention.q_proj.weight" in trainable
    out, lens = default(waves([8000]), torch.tensor([8000]))
    out.sum().backward()
    assert default.wavlm.encoder.layers[0].attention.q_proj.weight.grad is not None
    assert default.wavlm.feature_extractor.conv_layers[0].conv.weight.grad is None

    cnn = build_encoder("wavlm", model_dir=str(tiny_dir), freeze_feature_encoder=False)
    cnn(waves([8000]), torch.tensor([8000]))[0].sum().backward()
    assert cnn.wavlm.feature_extractor.conv_layers[0].conv.weight.grad.abs().sum() > 0

    frozen = build_encoder("wavlm", model_dir=str(tiny_dir), freeze=True)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not frozen(waves([8000]), torch.tensor([8000]))[0].requires_grad

    part = build_encoder("wavlm", model_dir=str(tiny_dir), unfreeze_last_n_layers=1)  # "freeze the rest"
    trainable = {n for n, p in part.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("wavlm.encoder.layers.1.", "wavlm.encoder.layer_norm.")) for n in trainable)
    assert "wavlm.encoder.layer_norm.weight" in trainable  # Large's final norm sits on top of layer 1
    part(waves([8000]), torch.tensor([8000]))[0].sum().backward()
    assert part.wavlm.encoder.layers[1].feed_forward.intermediate_dense.weight.grad is not None
    assert part.wavlm.encoder.layers[0].feed_forward.intermediate_dense.weight.grad is None

    # output_layer=1 drops the top layer: unfreezing counts kept layers, the final norm is unused
    low = build_encoder("wavlm", model_dir=str(tiny_dir), output_layer=1, unfreeze_last_n_layers=1)
    assert low.num_layers == 1 and not any(".layers.1." in n for n in low.state_dict())
    assert {n.split(".")[3] for n, p in low.named_parameters() if p.requires_grad} == {"0"}
    with pytest.raises(ValueError, match="unfreeze_last_n_layers must be in 0..2"):
        build_encoder("wavlm", model_dir=str(tiny_dir), unfreeze_last_n_layers=3)


def test_weighted_layer_sum_is_trainable(tiny_dir):
    """layer_weighting: softmax weights over hidden states 0..L, equal at first, trained even when WavLM is frozen."""
    enc = build_encoder("wavlm", model_dir=str(tiny_dir), layer_weighting=True, freeze=True).eval()
    assert [n for n, p in enc.named_parameters() if p.requires_grad] == ["layer_weights"]
    assert enc.layer_weights.shape == (3,)
    lens = torch.tensor([9000, 6000])
    x = waves(lens.tolist(), seed=3)
    with torch.no_grad():
        layers = [build_encoder("wavlm", model_dir=str(tiny_dir), output_layer=k).eval()(x, lens)[0] for k in range(3)]
        out, out_lens = enc(x, lens)
    v = valid_frames(out_lens, out.shape[1])
    assert (out - torch.stack(layers).mean(0))[v].abs().max() < 1e-4

    # pull the output towards the top hidden state: its weight must grow and the loss fall
    opt = torch.optim.Adam([enc.layer_weights], lr=0.2)
    losses = []
    for _ in range(10):
        out, _ = enc(x, lens)
        loss = ((out - layers[2]) ** 2)[v].mean()
        opt.zero_grad()
        loss.backward()
        assert enc.layer_weights.grad.abs().sum() > 0
        opt.step()
        losses.append(float(loss.detach()))
    weights = enc.layer_weights.softmax(0).tolist()
    assert weights[2] > 0.6 and losses[-1] < 0.3 * losses[0], (weights, losses)


def test_errors(tmp_path, tiny_dir):
    with pytest.raises(FileNotFoundError, match="WavLM model_dir not found"):
        build_encoder("wavlm", model_dir=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="missing config.json and weights"):
        build_encoder("wavlm", model_dir=str(tmp_path / "empty"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "whisper"}')
    (tmp_path / "other" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="model_type 'whisper', not 'wavlm'"):
        build_encoder("wavlm", model_dir=str(tmp_path / "other"))
    with pytest.raises(ValueError, match="set encoder_conf.model_dir"):
        build_encoder("wavlm")
    with pytest.raises(ValueError, match=r"output_layer must be in -3..2"):
        build_encoder("wavlm", config=TINY, output_layer=3)
    with pytest.raises(ValueError, match="add_adapter"):
        build_encoder("wavlm", config=dict(TINY, add_adapter=True))

    enc = build_encoder("wavlm", model_dir=str(tiny_dir))
    with pytest.raises(ValueError, match=r"takes raw waveforms \(N, samples, 1\), got shape \(1, 100, 80\): "
                                         "set data.feature_type=waveform"):
        enc(torch.zeros(1, 100, 80), torch.tensor([100]))
    with pytest.raises(ValueError, match="399 samples is shorter than the conv front end's 400"):
        enc(torch.zeros(2, 1000, 1), torch.tensor([1000, 399]))
    with pytest.raises(ValueError, match="feat_lens"):
        enc(torch.zeros(1, 1000, 1), torch.tensor([1001]))


# ---- data layer -----------------------------------------------------------------------------------

def make_cuts(tmp_path: Path, durations, rates=None, texts=None) -> CutSet:
    rng = np.random.default_rng(0)
    recs, sups = [], []
    for i, dur in enumerate(durations):
        sr = (rates or [16000] * len(durations))[i]
        t = np.arange(int(dur * sr)) / sr
        audio = 0.3 * np.sin(2 * np.pi * (220 + 60 * i) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(tmp_path / f"w{i}.wav", audio.astype(np.float32), sr)
        rec = Recording.from_file(tmp_path / f"w{i}.wav", recording_id=f"w{i}")
        recs.append(rec)
        sups.append(SupervisionSegment(f"w{i}", f"w{i}", 0, rec.duration, text=texts[i] if texts else f"WORD{i}",
                                       speaker="s"))
    return CutSet.from_manifests(recordings=RecordingSet.from_recordings(recs),
                                 supervisions=SupervisionSet.from_segments(sups))


def test_datamodule_gives_waveform_batches(tmp_path, caplog):
    cuts = make_cuts(tmp_path, [1.0, 1.5, 0.7, 1.2], rates=[16000, 16000, 8000, 16000]).to_eager()
    cfg = DataConfig(feature_type="waveform", num_workers=0, max_duration=10)
    batch = next(iter(eval_dataloader(cfg, cuts)))
    feats, lens = batch["feats"], batch["feat_lens"]
    assert feats.shape == (4, 24000, 1) and feats.dtype == torch.float32
    assert lens.tolist() == [24000, 19200, 16000, 11200]  # sorted by duration; the 8 kHz cut resampled
    for i, cid in enumerate(batch["cut_ids"]):
        ref = cuts[cid].resample(16000).load_audio()[0]
        assert np.allclose(feats[i, :lens[i], 0].numpy(), ref, atol=1e-6)
        assert not feats[i, lens[i]:].any()  # zero padding

    # training: the default spec_augment is skipped for waveforms, speed perturbation needs no on_the_fly_feats
    tcfg = DataConfig(feature_type="waveform", num_workers=0, max_duration=4, num_buckets=2, speed_perturb=[0.9, 1.1])
    with caplog.at_level(logging.INFO, logger="asrkit.data.datamodule"):
        tbatches = list(train_dataloader(tcfg, cuts))
    assert "spec_augment is off for waveforms" in caplog.text
    every = {c.id: c for f in (0.9, 1.1) for c in cuts.perturb_speed(f)} | {c.id: c for c in cuts}
    seen = [cid for b in tbatches for cid in b["cut_ids"]]
    assert any("_sp" in cid for cid in seen) and any("_sp" not in cid for cid in seen)
    for b in tbatches:
        assert b["feats"].shape[2] == 1 and int(b["feat_lens"].max()) == b["feats"].shape[1]
        for i, cid in enumerate(b["cut_ids"]):
            assert b["feat_lens"][i] == every[cid].resample(16000).load_audio().shape[1], cid

    # precomputed features and waveforms do not mix, either way round
    fb = compute_fbank(cuts, tmp_path / "fbank", "toy")
    with pytest.raises(ValueError, match="hold 80-dim fbank features but data.feature_type=waveform reads the audio"):
        train_dataloader(tcfg, fb)
    with pytest.raises(ValueError, match="no precomputed features"):
        train_dataloader(DataConfig(num_workers=0, max_duration=10), cuts)
    with pytest.raises(ValueError, match="no features to compute"):
        compute_fbank(cuts, tmp_path / "fbank", "toy", feature_type="waveform")

    # the front end of `asrkit transcribe`
    samples = np.arange(5, dtype=np.float64)
    assert feature_extractor("waveform").extract(samples, 16000).shape == (5, 1)
    with pytest.raises(ValueError, match="16000 Hz"):
        feature_extractor("waveform").extract(samples, 8000)


def test_encoder_input_checks_and_frame_filter(tmp_path, tiny_dir):
    wavlm = build_encoder("wavlm", model_dir=str(tiny_dir))
    check_encoder_inputs(DataConfig(feature_type="waveform"), wavlm, "wavlm")
    with pytest.raises(ValueError, match="model.encoder=wavlm takes waveforms but data.feature_type=fbank"):
        check_encoder_inputs(DataConfig(), wavlm, "wavlm")
    with pytest.raises(ValueError, match="model.encoder=zipformer takes filterbank features but data.feature_type=wav"):
        check_encoder_inputs(DataConfig(feature_type="waveform"), torch.nn.Linear(1, 1), "zipformer")

    # 1 s of audio gives WavLM 49 frames: 49 tokens fit, 50 do not
    assert wavlm.output_lengths(torch.tensor([16000])).item() == 49
    cuts = make_cuts(tmp_path, [1.0, 1.0], texts=["A " * 49, "A " * 50]).to_eager()
    kept = filter_cuts(cuts, frames_needed=lambda t: len(t.split()), subsampling_factor=320, feature_type="waveform")
    assert [c.recording_id for c in kept] == ["w0"]


# ---- training through the CLI ---------------------------------------------------------------------

def test_asrkit_train_wavlm_ctc_lowers_the_loss(tmp_path, tiny_asr_experiment, tiny_asr_data, tiny_dir, caplog,
                                                capsys):
    """`asrkit train` of AsrModel(encoder: wavlm, CTC) on waveform cuts: the validation loss falls
    (here from ~1.46 to ~0.74 per frame in 16 steps)."""
    train, dev, _ = tiny_asr_data
    for name, src in (("train", train), ("dev", dev)):  # the same corpus, without its features
        CutSet.from_file(src).drop_features().to_file(tmp_path / f"wave_{name}.jsonl.gz")
    path, _ = tiny_asr_experiment(tmp_path, encoder="wavlm",
                                  encoder_conf={"model_dir": str(tiny_dir), "config": {"layerdrop": 0.0}})
    cfg = yaml.safe_load(path.read_text())
    cfg["data"].update(train_cuts=str(tmp_path / "wave_train.jsonl.gz"), valid_cuts=str(tmp_path / "wave_dev.jsonl.gz"),
                       feature_type="waveform")
    cfg["train"].update(optimizer="adamw", scheduler="constant", lr=3e-3, warmup_steps=0, num_epochs=4,
                        valid_interval=2, save_best=False)
    path.write_text(yaml.safe_dump(cfg))
    with warnings.catch_warnings(), caplog.at_level(logging.INFO):
        warnings.simplefilter("ignore", UserWarning)
        assert cli_main(["train", "--config", str(path)]) == 0
    valid = [float(v) for v in re.findall(r"validation at epoch \d+ step \d+: loss ([\d.e+-]+)", caplog.text)]
    assert len(valid) >= 4 and valid[-1] < 0.7 * valid[0], valid

    # `asrkit transcribe` feeds the trained model a file's samples through the waveform front end
    wav = CutSet.from_file(dev)[0].recording.sources[0].source
    capsys.readouterr()
    assert cli_main(["transcribe", "--exp-dir", cfg["exp_dir"], wav]) == 0
    assert capsys.readouterr().out.startswith(f"{wav}\t")
