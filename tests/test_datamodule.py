"""Data layer: fbank extraction, filtering, dataloaders, and clear errors on bad audio."""

import logging

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, Recording, SupervisionSegment

from asrkit.data.datamodule import DataConfig, eval_dataloader, filter_cuts, train_dataloader
from asrkit.data.features import check_audio, compute_fbank


def make_cuts(tmp_path, durations, sr=16000, texts=None):
    rng = np.random.default_rng(0)
    recs, sups = [], []
    for i, dur in enumerate(durations):
        t = np.arange(int(dur * sr)) / sr
        audio = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.01 * rng.standard_normal(t.size)
        path = tmp_path / f"utt{i}.wav"
        sf.write(path, audio.astype(np.float32), sr)
        rec = Recording.from_file(path, recording_id=f"utt{i}")
        recs.append(rec)
        text = texts[i] if texts else f"WORD{i} SOMETHING"
        sups.append(SupervisionSegment(f"utt{i}", f"utt{i}", 0, rec.duration, text=text, speaker="s"))
    return CutSet.from_manifests(recordings=__import__("lhotse").RecordingSet.from_recordings(recs),
                                 supervisions=__import__("lhotse").SupervisionSet.from_segments(sups))


def test_compute_fbank_and_loaders(tmp_path):
    cuts = make_cuts(tmp_path, [1.0, 1.5, 2.0, 0.8, 1.2, 1.7])
    fb = compute_fbank(cuts, tmp_path / "fbank", "toy", num_jobs=1)
    assert (tmp_path / "fbank" / "toy.jsonl.gz").is_file()
    feats = fb[0].load_features()
    assert feats.shape[1] == 80 and abs(feats.shape[0] - 100 * fb[0].duration) <= 2

    cfg = DataConfig(max_duration=3.0, num_workers=0, spec_augment=False, num_buckets=2)
    seen = []
    for batch in train_dataloader(cfg, fb):
        assert batch["feats"].shape[0] == len(batch["texts"]) == batch["feat_lens"].shape[0]
        assert batch["feats"].shape[2] == 80
        assert batch["feat_lens"].max() == batch["feats"].shape[1]
        seen += batch["cut_ids"]
    assert len(seen) == len(set(seen)) and len(seen) >= 4  # drop_last may drop one batch

    # Evaluation sees every cut once; on-the-fly fbank matches the stored (lilcom-compressed) one.
    ev = list(eval_dataloader(cfg, fb))
    assert sorted(c for b in ev for c in b["cut_ids"]) == sorted(c.id for c in cuts)
    otf = list(eval_dataloader(DataConfig(max_duration=3.0, num_workers=0, on_the_fly_feats=True), cuts))
    a, b = ev[0]["feats"], otf[0]["feats"]
    assert a.shape == b.shape and (a - b).abs().mean() < 0.05


def test_filter_cuts_counts_reasons(tmp_path, caplog):
    cuts = make_cuts(tmp_path, [0.1, 1.0, 1.0, 40.0], texts=["A", "", "HELLO", "B"])
    with caplog.at_level(logging.WARNING):
        kept = filter_cuts(cuts.to_eager(), min_duration=0.3, max_duration=30.0)
    assert [c.recording_id for c in kept] == ["utt2"]
    assert "too short" in caplog.text and "empty transcript" in caplog.text and "too long" in caplog.text
    # more tokens than output frames: 1 s -> about 24 frames at 4x subsampling
    with pytest.raises(ValueError, match="no usable cuts"):
        filter_cuts(make_cuts(tmp_path, [1.0], texts=["X " * 40]), frames_needed=lambda t: len(t.split()))


def test_bad_audio_is_named(tmp_path):
    cuts = make_cuts(tmp_path, [1.0, 1.0]).to_eager()
    (tmp_path / "utt1.wav").write_bytes(b"RIFF garbage")
    bad = check_audio(cuts)
    assert len(bad) == 1 and bad[0][0] == cuts[1].id and "utt1.wav" in bad[0][1]
    with pytest.raises(ValueError, match="utt1.wav"):
        compute_fbank(cuts, tmp_path / "fbank", "bad")
    (tmp_path / "utt0.wav").unlink()
    with pytest.raises(RuntimeError, match="utt0.wav"):
        next(iter(eval_dataloader(DataConfig(num_workers=0, on_the_fly_feats=True), cuts)))


def test_wrong_sample_rate_is_resampled(tmp_path):
    cuts = make_cuts(tmp_path, [1.0], sr=8000)
    assert "sample rate 8000" in check_audio(cuts)[0][1]
    fb = compute_fbank(cuts, tmp_path / "fbank", "sr8k")
    assert fb[0].sampling_rate == 16000 and fb[0].load_features().shape[1] == 80
