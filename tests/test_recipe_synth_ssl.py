"""Integration: the VietASR miniature egs/synth/SSL/run.sh, every stage, in a tiny configuration.

36 Vietnamese utterances (12 labelled, 24 unlabelled), a 2-stack Zipformer, 8 k-means clusters and two
steps per training run: this checks the plumbing (k-means sources, labels, the pretrained encoder handed
to fine-tuning, two ASR-biased iterations, decoding, the table, resuming), not VietASR's claim.

    .venv/bin/pytest tests/test_recipe_synth_ssl.py -q
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lhotse import CutSet

from conftest import TINY_ENCODER

from asrkit.training.checkpoint import load_checkpoint

RECIPE = Path(__file__).resolve().parents[1] / "egs" / "synth" / "SSL"
PT_STEPS, FT_STEPS, K = 2, 2, 8
SYSTEMS = ["supervised only", "fbank-HuBERT", "ASR-biased iteration 1", "ASR-biased iteration 2"]


def _encoder_overrides() -> str:
    def value(v):
        return ",".join(map(str, v)) if isinstance(v, list) else str(v)

    return " ".join(f"model.encoder_conf.{k}={value(v)}" for k, v in TINY_ENCODER.items())


def _encoder(state) -> dict:
    return {k: v for k, v in state["model"].items() if k.startswith("encoder.") and v.is_floating_point()}


def _distance(a: dict, b: dict) -> float:
    return float(sum((a[k].double() - b[k].double()).square().sum() for k in a)) ** 0.5


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_ssl_recipe_all_stages_tiny(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1")
    data, exp = tmp_path / "data", tmp_path / "exp"
    cmd = [str(RECIPE / "run.sh"), "--data", str(data), "--exp", str(exp), "--nj", "1",
           "--num-labelled", "12", "--num-unlabelled", "24", "--num-dev", "3", "--num-test", "3",
           "--train-speakers", "4", "--dev-speakers", "1", "--test-speakers", "1", "--num-words", "20",
           "--min-words", "2", "--max-words", "3", "--num-clusters", str(K), "--kmeans-n-init", "1",
           "--pt-steps", str(PT_STEPS), "--ft-steps", str(FT_STEPS), "--iterations", "2",
           "--encoder-overrides", _encoder_overrides(),
           "--overrides", "data.max_duration=8 data.num_workers=0 data.num_buckets=2 train.progress_bar=false "
                          "train.tensorboard=false train.log_interval=1 train.count_flops=false train.average_period=1",
           "--pt-overrides", "model.final_dim=16",
           # fine-tuning at a vanishing lr leaves each fine-tuned encoder equal to the one it was handed
           "--ft-overrides", "model.transducer.decoder_dim=32 model.transducer.joiner_dim=32 train.lr=1e-9",
           "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]

    # the split: 12 labelled cuts with transcripts, 24 unlabelled ones without
    fbank = data / "fbank"
    labelled = CutSet.from_file(fbank / "synth-vi_cuts_labelled.jsonl.gz")
    unlabelled = CutSet.from_file(fbank / "synth-vi_cuts_unlabelled.jsonl.gz")
    assert len(labelled) == 12 and all(c.supervisions[0].text for c in labelled)
    assert len(unlabelled) == 24 and not any(s.text for c in unlabelled for s in c.supervisions)

    # every training run trained exactly its budget and left model.pt
    runs = {"supervised": FT_STEPS}
    for system in ("hubert_fbank", "iter1", "iter2"):
        runs.update({f"{system}/pretrain": PT_STEPS, f"{system}/finetune": FT_STEPS})
    states = {}
    for run, steps in runs.items():
        states[run] = load_checkpoint(exp / run / "model.pt")
        assert states[run]["step"] == steps, run

    # k-means on the right frames: fbank, then the supervised encoder, then iteration 1's fine-tuned one
    sources = {"hubert_fbank": "fbank", "iter1": str((exp / "supervised").resolve()),
               "iter2": str((exp / "iter1" / "finetune").resolve())}
    enc_dim = max(TINY_ENCODER["encoder_dim"])
    for system, source in sources.items():
        with np.load(exp / system / "kmeans.npz") as z:
            centroids = z["centroids"]
        meta = json.loads((exp / system / "kmeans.json").read_text())
        assert meta["source"] == source
        assert centroids.shape == (K, 80 if source == "fbank" else enc_dim)
        # labels: one per frame of every unlabelled cut, in range, at 100 Hz (fbank) or 50 Hz (encoder)
        cuts = CutSet.from_file(exp / system / "labels" / "synth-vi_cuts_unlabelled.jsonl.gz")
        assert len(cuts) == 24
        for cut in cuts:
            field = cut.custom["ssl_targets"]
            labels = cut.load_custom("ssl_targets")
            assert field.frame_shift == (0.01 if source == "fbank" else 0.02)
            assert labels.min() >= 0 and labels.max() < K
            want = cut.num_frames if source == "fbank" else (cut.num_frames - 7) // 2
            assert len(labels) == want
        # the pretraining saw those targets and was sized for them
        pt = states[f"{system}/pretrain"]["model"]
        assert pt["label_embs"].shape[0] == K
        # the pretrained encoder was handed to fine-tuning (lr ~0 there): the fine-tuned encoder is the
        # pretrained one, not the random initialisation the supervised run kept
        ft_enc, pt_enc = _encoder(states[f"{system}/finetune"]), _encoder(states[f"{system}/pretrain"])
        assert set(ft_enc) == set(pt_enc)
        assert _distance(ft_enc, pt_enc) < 1e-3 * _distance(pt_enc, _encoder(states["supervised"]))
        assert re.search(rf"init_from {re.escape(str(exp / system / 'pretrain'))}/model\.pt: loaded \d+ tensors", out)
    assert not any(k.startswith(("mask_emb", "final_proj", "label_embs")) for k in states["iter1/finetune"]["model"])

    # the table: one row per system with WERs for dev and test
    table = (exp / "results.md").read_text()
    for system in SYSTEMS:
        row = re.search(rf"^\| {re.escape(system)} \| ([^|]+) \| {FT_STEPS} \| ([\d.]+) \| ([\d.]+) \|$", table, re.M)
        assert row, f"no parsable row for {system!r} in:\n{table}"
    assert f"| ASR-biased iteration 2 | {K} x iter1/finetune |" in table

    # a rerun skips every finished step and retrains nothing
    mtimes = {run: (exp / run / "model.pt").stat().st_mtime_ns for run in runs}
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    for n in range(6):
        assert re.search(rf"\[stage {n}\] skip:", rerun.stdout), f"stage {n} was not skipped:\n{rerun.stdout}"
    assert rerun.stdout.count("[stage 6] skip:") == 4 and "k-means (" not in rerun.stdout
    assert {run: (exp / run / "model.pt").stat().st_mtime_ns for run in runs} == mtimes


@pytest.mark.parametrize("recipe", ["synth/SSL", "vietnamese/ASR", "vietnamese/SSL"])
def test_recipe_scripts_parse_and_configs_load(recipe):
    """The full-scale Vietnamese recipes need real corpora and GPUs: check their shell syntax and configs here."""
    from asrkit.bin.train import ExperimentConfig, SslExperimentConfig, is_ssl_config
    from asrkit.config import load_config

    root = RECIPE.parents[1] / recipe
    assert subprocess.run(["bash", "-n", str(root / "run.sh")], capture_output=True).returncode == 0
    configs = sorted((root / "conf").glob("*.yaml"))
    assert configs
    for path in configs:
        ssl = is_ssl_config(str(path), [])
        cfg = load_config(SslExperimentConfig if ssl else ExperimentConfig, path)
        if ssl:
            assert not cfg.data.spec_augment and cfg.model.num_classes >= 2
        elif "finetune" in path.name:
            assert cfg.train.scheduler == "tri_stage" and cfg.data.spec_augment
