"""HuBERT-style masked prediction (asrkit.models.ssl, asrkit.data.ssl_dataset, ``asrkit train`` with
``task: ssl``): fairseq's mask statistics, target alignment, a tiny pretraining run on k-means targets of
fbank, and the hand-over of its encoder to ASR fine-tuning through ``init_from``.

    .venv/bin/pytest tests/test_ssl.py -q
"""

import math

import numpy as np
import pytest
import torch
import yaml
from lhotse import CutSet, MonoCut
from lhotse.features.io import NumpyFilesWriter

from asrkit.cli import main
from asrkit.data.ssl_dataset import SslDataset, load_ssl_targets
from asrkit.models.asr import AsrModel, AsrModelConfig
from asrkit.models.ssl import IGNORE_INDEX, MaskedPredictionModel, SslConfig, align_targets, compute_span_mask
from asrkit.training.checkpoint import load_checkpoint
from conftest import TINY_ENCODER

NUM_CLASSES = 12
EPOCHS = 8  # of the tiny pretraining run (~70 steps)


def expected_mask_fraction(sz: int, p: float, span: int, min_masks: int) -> float:
    """Exact E[masked fraction] of fairseq's static, overlapping span masks for ``sz`` frames: with
    ``k`` starts drawn without replacement from ``m`` positions, frame j stays unmasked iff none of the
    ``w_j`` starts covering it is drawn: C(m - w_j, k) / C(m, k)."""
    base = p * sz / span
    k0, frac = math.floor(base), base - math.floor(base)
    total = 0.0
    for k, weight in ((k0, 1 - frac), (k0 + 1, frac)):
        k = max(min_masks, k)
        m = sz - span if sz - span > k else k + 1
        masked = sum(1 - math.comb(m - (min(j, m - 1) - max(0, j - span + 1) + 1), k) / math.comb(m, k)
                     for j in range(sz))
        total += weight * masked / sz
    return total


def runs(row: torch.Tensor) -> list:
    """Lengths of the runs of True in a 1-d bool tensor."""
    out, n = [], 0
    for v in row.tolist() + [False]:
        if v:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


@pytest.mark.parametrize("sz", [23, 101, 400])
def test_masked_fraction_matches_fairseq(sz):
    g = torch.Generator().manual_seed(sz)
    mask = compute_span_mask(torch.full((3000,), sz), sz, 0.8, 10, 2, generator=g)
    want = expected_mask_fraction(sz, 0.8, 10, 2)
    assert abs(mask.float().mean().item() - want) < 0.01, (mask.float().mean().item(), want)
    assert 0.5 < want < 0.65  # mask_prob 0.8 counts span starts x span, before overlaps


def test_span_lengths_and_counts():
    g = torch.Generator().manual_seed(1)
    sz = 300
    for p, share_exact in ((0.8, 0.25), (0.1, 0.85)):
        mask = compute_span_mask(torch.full((300,), sz), sz, p, 10, 2, generator=g)
        lengths = [n for row in mask for n in runs(row)]
        assert min(lengths) == 10, "spans overlap into longer runs, never shorter than mask_length"
        assert np.mean([n == 10 for n in lengths]) > share_exact
        # each run holds at least one start; there are max(2, floor(p * sz / 10 + U)) of them
        assert max(len(runs(row)) for row in mask) <= max(2, math.floor(p * sz / 10) + 1)
        assert mask.sum(1).max() <= 10 * max(2, math.floor(p * sz / 10) + 1)
    off = compute_span_mask(torch.full((50,), sz), sz, 0.0, 10, 2, generator=g)
    assert not off.any(), "mask_prob 0 masks nothing (min_masks included), as fairseq"


def test_no_mask_in_padding_and_min_masks():
    g = torch.Generator().manual_seed(2)
    lengths = torch.randint(1, 200, (2000,), generator=g)
    mask = compute_span_mask(lengths, 220, 0.8, 10, 2, generator=g)
    pad = torch.arange(220) >= lengths.unsqueeze(1)
    assert not (mask & pad).any()
    counts = mask.sum(1)
    assert bool((counts >= 1).all()) and bool((counts[lengths >= 12] >= 10).all()), \
        "min_masks: at least one whole span in every utterance that holds one"
    long = lengths >= 40
    assert bool((counts[long] < lengths[long]).all()), "long utterances keep unmasked frames"


def test_hundred_hz_labels_align_with_front_end_frames():
    """Label i of 50 Hz targets is front-end frame i; 100 Hz labels are read at 2i; the excess is cut."""
    for t in (57, 101, 102):
        cut = MonoCut(id=f"c{t}", start=0.0, duration=t * 0.01, channel=0)
        cut = cut.attach_tensor("ssl_targets", np.arange(t, dtype=np.int16), frame_shift=0.01, temporal_dim=0)
        targets = load_ssl_targets(cut)
        assert targets.tolist() == list(range(0, t, 2))
        t50 = (t - 7) // 2
        aligned = align_targets(targets.unsqueeze(0), t50)[0]
        assert aligned.tolist() == [2 * i for i in range(t50)]
    padded = align_targets(torch.tensor([[3, 4]]), 5)
    assert padded.tolist() == [[3, 4, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]
    cut = MonoCut(id="odd", start=0.0, duration=0.5, channel=0).attach_tensor(
        "ssl_targets", np.zeros(17, dtype=np.int16), frame_shift=0.03, temporal_dim=0)
    with pytest.raises(ValueError, match="frame_shift"):
        load_ssl_targets(cut)
    with pytest.raises(ValueError, match="asrkit ssl label"):
        load_ssl_targets(MonoCut(id="bare", start=0.0, duration=0.5, channel=0))


def test_targets_line_up_with_encoder_frames_for_odd_lengths():
    torch.manual_seed(0)
    cfg = SslConfig(encoder_conf=dict(TINY_ENCODER, input_dim=20), num_classes=NUM_CLASSES, final_dim=16,
                    unmasked_weight=1.0)
    model = MaskedPredictionModel(cfg).eval()
    feat_lens = torch.tensor([61, 47])  # odd: 27 and 20 front-end frames
    feats = torch.randn(2, 61, 20)
    enc, enc_lens = model.encoder(feats, feat_lens, return_50hz=True)
    assert enc.shape[1] == (61 - 7) // 2 and enc_lens.tolist() == [27, 20]
    targets = torch.randint(0, NUM_CLASSES, (2, 31))  # more labels than frames: cut to 27 columns
    targets[1, 25:] = IGNORE_INDEX
    _, parts, frames = model(feats, feat_lens, targets)
    assert int(frames) == 27 + 20, "every frame with a label counts once: masked + unmasked (weight 1)"
    short = targets[:, :24]  # fewer labels than frames: frames 24.. have none and cost nothing
    _, _, frames = model(feats, feat_lens, short)
    assert int(frames) == 24 + 20
    # an utterance alone gives the same loss as inside a padded batch (no masks: deterministic)
    with torch.no_grad():
        both, _, _ = model(feats, feat_lens, targets, mask=False)
        one, _, _ = model(feats[:1], feat_lens[:1], targets[:1], mask=False)
        two, _, _ = model(feats[1:, :47], feat_lens[1:], targets[1:, :20], mask=False)
    torch.testing.assert_close(both, one + two, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="num_classes"):
        model(feats, feat_lens, torch.full((2, 27), NUM_CLASSES))


def test_mask_embedding_replaces_masked_frames_only(monkeypatch):
    """The stacks see the front-end output with the mask embedding at exactly the masked frames."""
    torch.manual_seed(0)
    model = MaskedPredictionModel(SslConfig(encoder_conf=dict(TINY_ENCODER, input_dim=20), num_classes=4,
                                            final_dim=8)).eval()
    feats, feat_lens = torch.randn(1, 80, 20), torch.tensor([80])
    front, _ = model.encoder.embed(feats, feat_lens)  # eval mode: no randomness in the front end
    seen = {}
    encode = model.encoder.encode

    def spy(x, x_lens, **kw):
        seen["x"] = x.detach().clone()
        return encode(x, x_lens, **kw)

    monkeypatch.setattr(model.encoder, "encode", spy)
    torch.manual_seed(5)
    model(feats, feat_lens, torch.zeros(1, 40, dtype=torch.long))
    torch.manual_seed(5)
    m = compute_span_mask(torch.tensor([36]), 36, 0.8, 10, 2)[0]  # the same draw: (80 - 7) // 2 = 36 frames
    assert m.any() and (~m).any()
    x = seen["x"][0]
    assert torch.equal(x[~m], front[0, ~m].detach())
    assert torch.equal(x[m], model.mask_emb.detach().expand(int(m.sum()), -1))


# ---------------------------------------------------------------- tiny pretraining and fine-tuning


def fit_kmeans(cuts: CutSet, k: int, iters: int = 15) -> torch.Tensor:
    """Plain HuBERT iteration-0 targets: k-means (Lloyd, seeded) on the cuts' 100 Hz fbank frames."""
    frames = torch.cat([torch.from_numpy(c.load_features()) for c in cuts])
    g = torch.Generator().manual_seed(0)
    centres = frames[torch.randperm(len(frames), generator=g)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(frames, centres).argmin(1)
        for j in range(k):
            if (assign == j).any():
                centres[j] = frames[assign == j].mean(0)
    return centres


def attach_labels(cuts: CutSet, centres: torch.Tensor, out_dir) -> CutSet:
    """Each cut with its nearest-centre labels at 100 Hz as the ``ssl_targets`` TemporalArray."""
    out = []
    with NumpyFilesWriter(out_dir) as writer:
        for c in cuts:
            labels = torch.cdist(torch.from_numpy(c.load_features()), centres).argmin(1).numpy().astype(np.int16)
            c.ssl_targets = writer.store_array(c.id, labels, frame_shift=0.01, temporal_dim=0, start=c.start)
            out.append(c)
    return CutSet.from_cuts(out)


@pytest.fixture(scope="module")
def ssl_run(tiny_asr_data, tmp_path_factory):
    """(config dict, exp dir, train cuts) of a finished tiny pretraining run through ``asrkit train``."""
    train, dev, _ = tiny_asr_data
    root = tmp_path_factory.mktemp("ssl")
    paths = {}
    centres = fit_kmeans(CutSet.from_file(train), NUM_CLASSES)
    for name, src in (("train", train), ("dev", dev)):
        cuts = attach_labels(CutSet.from_file(src), centres, root / f"targets_{name}")
        paths[name] = root / f"cuts_{name}.jsonl.gz"
        cuts.to_file(paths[name])
    cfg = {
        "task": "ssl", "exp_dir": str(root / "exp"),
        "data": {"train_cuts": str(paths["train"]), "valid_cuts": str(paths["dev"]), "max_duration": 4,
                 "num_workers": 0, "spec_augment": False, "num_buckets": 2},
        "model": {"encoder": "zipformer", "encoder_conf": TINY_ENCODER, "num_classes": NUM_CLASSES, "final_dim": 16},
        "train": {"optimizer": "scaled_adam", "scheduler": "eden", "lr": 0.045, "warmup_steps": 5, "grad_clip": 0,
                  "ref_duration": 0.05, "log_interval": 5, "progress_bar": False, "tensorboard": False,
                  "num_epochs": EPOCHS, "average_period": 2, "count_flops": False},
    }
    path = root / "ssl.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path)]) == 0
    return cfg, root / "exp", CutSet.from_file(paths["train"])


def masked_ce(model: MaskedPredictionModel, cuts: CutSet) -> float:
    """Masked-frame CE per frame on all of ``cuts`` with masks from a fixed seed (eval mode)."""
    batch = SslDataset()[cuts]
    model.eval()
    torch.manual_seed(123)
    with torch.no_grad():
        loss, _, frames = model(batch["feats"], batch["feat_lens"], batch["ssl_targets"])
    return float(loss / frames)


def test_tiny_pretraining_lowers_the_masked_loss(ssl_run):
    """~70 steps on 24 utterances: the masked CE falls well below its start and below the entropy of the
    label frequencies (the best guess without context), so the model predicts masked frames from context."""
    cfg, exp, train = ssl_run
    ssl_cfg = SslConfig(**cfg["model"])
    torch.manual_seed(42)  # train.seed: ``asrkit train`` seeds just before building the model, so this is its start
    before = MaskedPredictionModel(ssl_cfg)
    after = MaskedPredictionModel(ssl_cfg)
    after.load_state_dict(load_checkpoint(exp / f"epoch-{EPOCHS}.pt")["model"])
    ce0, ce1 = masked_ce(before, train), masked_ce(after, train)
    labels = torch.cat([load_ssl_targets(c) for c in train])
    freq = torch.bincount(labels, minlength=NUM_CLASSES).double() / len(labels)
    prior = float(-(freq[freq > 0] * freq[freq > 0].log()).sum())
    assert ce1 < 0.6 * ce0, (ce0, ce1)
    assert ce1 < prior - 0.1, (ce1, prior)


def test_finetuning_starts_from_the_pretrained_encoder(ssl_run, tiny_asr_experiment, tmp_path):
    _, ssl_exp, _ = ssl_run
    ssl_state = load_checkpoint(ssl_exp / f"epoch-{EPOCHS}.pt")["model"]
    cfg, _ = tiny_asr_experiment(tmp_path, transducer_weight=1.0, ctc_weight=0.2,
                                 transducer={"decoder_dim": 16, "joiner_dim": 16})
    # lr 0: the one step changes nothing, so the run's checkpoint shows the weights it started from
    assert main(["train", "--config", str(cfg), f"init_from={ssl_exp}", "train.lr=0.0", "train.max_steps=1",
                 "train.count_flops=false"]) == 0
    asr = load_checkpoint(tmp_path / "exp" / "checkpoint-1.pt")["model"]
    enc_keys = [k for k in asr if k.startswith("encoder.")]
    assert enc_keys and all(k in ssl_state for k in enc_keys)
    for k in enc_keys:
        assert torch.equal(asr[k], ssl_state[k]), k
    assert not any(k.startswith(("mask_emb", "final_proj", "label_embs")) for k in asr)
    # and the plain-model route: AsrModel + init_weights
    from asrkit.bin.train import init_weights

    model = AsrModel(AsrModelConfig(encoder_conf=TINY_ENCODER, vocab_size=8, ctc_weight=1.0))
    init_weights(model, str(ssl_exp))
    for k, v in model.state_dict().items():
        if k.startswith("encoder."):
            assert torch.equal(v, ssl_state[k]), k


def test_ssl_config_refuses_time_warping(tmp_path):
    """SpecAugment's time warp would move the features away from their frame targets."""
    cfg = {"task": "ssl", "exp_dir": str(tmp_path / "exp"), "data": {"train_cuts": "unused.jsonl.gz"},
           "model": {"encoder_conf": TINY_ENCODER, "num_classes": NUM_CLASSES}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))  # data.spec_augment defaults to true
    with pytest.raises(ValueError, match="spec_augment"):
        main(["train", "--config", str(path)])
    with pytest.raises(ValueError, match="only 'ssl'"):
        main(["train", "--config", str(path), "task=asr"])
