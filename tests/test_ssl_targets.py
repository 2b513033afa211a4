"""SSL frame targets: streaming k-means, per-frame labels aligned with the Zipformer, Shar round trip.

    .venv/bin/pytest tests/test_ssl_targets.py -q
"""

import json

import numpy as np
import pytest
import torch
from lhotse import CutSet

from asrkit.cli import main
from asrkit.data.ssl_targets import (FIELD, KMeansConfig, StreamingKMeans, assign, blob_stream, encoder_frames_50hz,
                                     kmeans_memory_table, load_centroids)

SMALL_KM = ["--num-clusters", "8", "--batch-size", "400", "--n-init", "2", "--num-workers", "0", "--device", "cpu"]


def labels_of(manifest) -> dict:
    return {c.id: c.load_custom(FIELD) for c in CutSet.from_file(manifest)}


def purity(pred: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of frames whose cluster's majority blob is their own blob."""
    hits = sum(np.bincount(truth[pred == k]).max() for k in np.unique(pred))
    return hits / len(truth)


def test_streaming_kmeans_recovers_separated_blobs():
    stream, centres = blob_stream(6000, dim=8, num_blobs=12, seed=3, chunk=250, spread=6.0)
    cfg = KMeansConfig(num_clusters=12, batch_size=500, n_init=4, seed=0)
    result = StreamingKMeans(cfg).fit(stream)
    frames = np.concatenate(list(stream(0)))
    truth = np.arange(len(frames)) % 12
    pred = assign(torch.from_numpy(frames), torch.from_numpy(result.centroids))[0].numpy()
    assert purity(pred, truth) > 0.95
    assert result.frames == 6000 and result.centroids.shape == (12, 8)
    # each true centre has a centroid close by (unit-variance blobs: the mean of ~500 frames is within ~0.2)
    nearest = torch.cdist(torch.from_numpy(centres), torch.from_numpy(result.centroids)).min(dim=1).values
    assert float(nearest.max()) < 1.0, nearest
    assert result.inertia[-1] < 1.2 * 8  # ~ dim (the blob variance) per frame once the blobs are found


def test_max_frames_and_passes():
    stream, _ = blob_stream(3000, dim=4, num_blobs=5, seed=1, chunk=300)
    result = StreamingKMeans(KMeansConfig(num_clusters=5, batch_size=200, n_init=1, passes=2, max_frames=1000)
                             ).fit(stream)
    assert result.frames == 1000 and len(result.inertia) == 2
    with pytest.raises(ValueError, match="fewer than num_clusters"):
        KMeansConfig(num_clusters=50, max_frames=10).check()
    with pytest.raises(ValueError, match="int16"):
        KMeansConfig(num_clusters=40000).check()


def test_fbank_labels_are_deterministic_by_seed(tmp_path, tiny_asr_data):
    train, _, _ = tiny_asr_data
    runs = {}
    for tag, seed in (("a", 0), ("b", 0), ("c", 1)):
        km = tmp_path / f"km_{tag}.npz"
        assert main(["ssl", "kmeans", "--cuts", str(train), "--source", "fbank", "--out", str(km),
                     "--seed", str(seed), *SMALL_KM]) == 0
        assert main(["ssl", "label", "--cuts", str(train), "--kmeans", str(km), "--out-dir", str(tmp_path / tag),
                     "--num-workers", "0"]) == 0
        runs[tag] = labels_of(tmp_path / tag / "tiny_cuts_train.jsonl.gz")
    cents_a, meta = load_centroids(tmp_path / "km_a.npz")
    assert cents_a.shape == (8, 80) and cents_a.dtype == np.float32
    assert meta["source"] == "fbank" and meta["frame_shift"] == 0.01 and meta["frames"] > 1000
    assert json.loads((tmp_path / "km_a.json").read_text())["num_clusters"] == 8
    np.testing.assert_array_equal(cents_a, load_centroids(tmp_path / "km_b.npz")[0])
    cuts = CutSet.from_file(train)
    assert set(runs["a"]) == {c.id for c in cuts}
    for c in cuts:  # fbank labels: one per 100 Hz feature frame
        assert runs["a"][c.id].dtype == np.int16 and len(runs["a"][c.id]) == c.num_frames
        np.testing.assert_array_equal(runs["a"][c.id], runs["b"][c.id])
    a, other = (np.concatenate([r[c.id] for c in cuts]) for r in (runs["a"], runs["c"]))
    assert len(np.unique(a)) == 8
    assert (a != other).mean() > 0.2, "another seed should give other clusters (or other cluster ids)"


def test_label_counts_match_the_zipformer_50hz_output(tmp_path, tiny_asr_data, tiny_asr_experiment, capsys):
    from asrkit.models import load_model

    train, _, _ = tiny_asr_data
    cfg, _ = tiny_asr_experiment(tmp_path)
    assert main(["train", "--config", str(cfg)]) == 0
    exp = tmp_path / "exp"
    km = tmp_path / "km.npz"
    assert main(["ssl", "kmeans", "--cuts", str(train), "--source", str(exp), "--out", str(km), *SMALL_KM]) == 0
    assert "peak memory for" in capsys.readouterr().out  # the memory report of the k-means step
    assert main(["ssl", "label", "--cuts", str(train), "--kmeans", str(km), "--out-dir", str(tmp_path / "lab"),
                 "--num-workers", "0", "--device", "cpu"]) == 0  # --source from the k-means file
    labelled = CutSet.from_file(tmp_path / "lab" / "tiny_cuts_train.jsonl.gz").to_eager()
    encoder = load_model(exp).encoder
    lengths = set()
    for cut in labelled:
        feats = torch.from_numpy(cut.load_features()).unsqueeze(0)  # (1, T, 80)
        with torch.no_grad():
            out, out_lens = encoder(feats, torch.tensor([feats.shape[1]]), return_50hz=True)
        labels = cut.load_custom(FIELD)
        assert cut.custom[FIELD].frame_shift == 0.02 and labels.dtype == np.int16
        assert len(labels) == out.shape[1] == int(out_lens[0]) == encoder_frames_50hz(cut.num_frames)
        lengths.add(cut.num_frames % 4)
    assert len(lengths) >= 3, "want cuts of odd and even lengths"
    # a different checkpoint may not label with these centroids
    torch.manual_seed(1)
    state = torch.load(exp / "epoch-1.pt", weights_only=True)
    for name in state["model"]:
        if name.startswith("encoder.") and state["model"][name].is_floating_point():
            state["model"][name] = state["model"][name] + 0.01
            break
    torch.save(state, exp / "model.pt")
    with pytest.raises(ValueError, match="weights differ"):
        main(["ssl", "label", "--cuts", str(train), "--kmeans", str(km), "--out-dir", str(tmp_path / "x"),
              "--num-workers", "0", "--device", "cpu"])


def test_frame_count_formula_on_the_front_end():
    from asrkit.models.zipformer.zipformer import Zipformer
    from conftest import TINY_ENCODER

    enc = Zipformer(**TINY_ENCODER).eval()
    lens = torch.arange(9, 30)  # odd and even, down to the shortest the encoder takes
    feats = torch.randn(len(lens), int(lens.max()), 80)
    with torch.no_grad():
        out, out_lens = enc(feats, lens, return_50hz=True)
    assert out_lens.tolist() == [encoder_frames_50hz(int(t)) for t in lens]
    assert out.shape[1] == encoder_frames_50hz(int(lens.max()))


def test_shar_round_trip_keeps_labels_bit_exact(tmp_path, tiny_asr_data):
    train, _, _ = tiny_asr_data
    km = tmp_path / "km.npz"
    assert main(["ssl", "kmeans", "--cuts", str(train), "--source", "fbank", "--out", str(km), *SMALL_KM]) == 0
    out = tmp_path / "lab"
    assert main(["ssl", "label", "--cuts", str(train), "--kmeans", str(km), "--out-dir", str(out), "--shar",
                 "--shard-size", "10", "--num-workers", "0"]) == 0
    want = labels_of(out / "tiny_cuts_train.jsonl.gz")
    shards = sorted(p.name for p in (out / "shar").iterdir())
    assert "ssl_targets.000002.tar" in shards and "recording.000000.tar" in shards  # 24 cuts, 10 per shard
    back = CutSet.from_shar(in_dir=out / "shar")
    seen = 0
    for cut in back:
        got = cut.load_custom(FIELD)
        assert got.dtype == np.int16 and np.array_equal(got, want[cut.id])
        assert cut.custom[FIELD].frame_shift == 0.01
        assert cut.load_features().shape[0] == len(got)
        seen += 1
    assert seen == len(want) == 24


def test_kmeans_memory_stays_flat_in_frames():
    rows = kmeans_memory_table([2000, 16000], dim=16, num_clusters=10, batch_size=250, n_init=1)
    small, large = rows
    assert small["traced_mib"] > 0 and large["all_frames_mib"] == 8 * small["all_frames_mib"]
    assert large["traced_mib"] < 1.2 * small["traced_mib"] + 0.05, rows  # streaming: ~ the buffer, not the frames


def test_bad_kmeans_output_name(tmp_path, tiny_asr_data):
    train, _, _ = tiny_asr_data
    with pytest.raises(SystemExit, match=".npz"):
        main(["ssl", "kmeans", "--cuts", str(train), "--source", "fbank", "--out", str(tmp_path / "km.pkl")])


def test_cuts_without_features_get_them_on_the_fly(tmp_path, tiny_asr_data):
    """Audio-only cuts are labelled from fbank computed on the fly: same frame counts, nearly the same
    labels as from the stored (lilcom-quantised) fbank."""
    train, _, _ = tiny_asr_data
    audio_only = tmp_path / "audio_cuts.jsonl.gz"
    CutSet.from_file(train).drop_features().to_file(audio_only)
    km = tmp_path / "km.npz"
    assert main(["ssl", "kmeans", "--cuts", str(train), "--source", "fbank", "--out", str(km), *SMALL_KM]) == 0
    for name, cuts in (("stored", train), ("otf", audio_only)):
        assert main(["ssl", "label", "--cuts", str(cuts), "--kmeans", str(km), "--out-dir", str(tmp_path / name),
                     "--num-workers", "0"]) == 0
    stored = labels_of(tmp_path / "stored" / "tiny_cuts_train.jsonl.gz")
    otf = labels_of(tmp_path / "otf" / "audio_cuts.jsonl.gz")
    assert set(stored) == set(otf)
    for cid in stored:
        assert len(otf[cid]) == len(stored[cid])
    agree = np.mean(np.concatenate([otf[c] == stored[c] for c in stored]))
    assert agree > 0.9, agree
