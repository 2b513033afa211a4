"""Integration: the EFIN recipe egs/synth/ASR_LLM/run.sh, every stage, in a tiny configuration (~50 s).

20 Mandarin utterances, a 2-stack Zipformer, a 1-layer random LLM and a few steps per stage: this checks
the plumbing (hand-over between stages, decoding, the table, resuming), not EFIN's claim.

    .venv/bin/pytest tests/test_recipe_synth_llm.py -q
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from conftest import TINY_ENCODER  # noqa: E402

from asrkit.training.checkpoint import load_checkpoint  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "egs" / "synth" / "ASR_LLM"
STEPS = {"efin_stage1": 3, "efin_stage2": 2, "efin_stage3": 2}  # the baseline: EFIN's FLOPs
SYSTEMS = ["EFIN stage 1: encoder alone", "EFIN stage 2: projector only",
           "EFIN stage 3: encoder + projector + LoRA", "baseline: joint post-training"]


def _encoder_overrides() -> str:
    def value(v):
        return ",".join(map(str, v)) if isinstance(v, list) else str(v)

    return " ".join(f"model.encoder_conf.{k}={value(v)}" for k, v in TINY_ENCODER.items())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_efin_recipe_all_stages_tiny(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1")
    data, exp = tmp_path / "data", tmp_path / "exp"
    cmd = [str(RECIPE / "run.sh"), "--data", str(data), "--exp", str(exp), "--nj", "1",
           "--num-train", "20", "--num-dev", "4", "--num-test", "4", "--train-speakers", "4", "--dev-speakers", "1",
           "--test-speakers", "1", "--num-words", "20", "--min-words", "2", "--max-words", "3",
           "--llm", "tiny", "--tiny-llm-opts", "--hidden 32 --layers 1 --heads 4 --vocab-size 300",
           "--stage1-steps", str(STEPS["efin_stage1"]), "--stage2-steps", str(STEPS["efin_stage2"]),
           "--stage3-steps", str(STEPS["efin_stage3"]),
           "--encoder-overrides", _encoder_overrides(),
           "--overrides", "data.max_duration=8 data.num_workers=0 data.num_buckets=2 train.progress_bar=false "
                          "train.tensorboard=false train.log_interval=1 train.warmup_steps=1 train.save_every_n=1",
           "--llm-overrides", "model.projector_dim=32 model.lora.r=4 model.lora.alpha=8 model.lora.dropout=0.0",
           "--max-new-tokens", "4", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (data / "llm.txt").read_text().split()[0] == "tiny"

    # every stage trained exactly its budget and left model.pt (the marker decode and the next stage read)
    states = {}
    for name, steps in STEPS.items():
        assert (exp / name / f"checkpoint-{steps}.pt").is_file(), f"{name}: no checkpoint-{steps}.pt"
        states[name] = load_checkpoint(exp / name / "model.pt")
        assert states[name]["step"] == steps
    enc1 = {k: v for k, v in states["efin_stage1"]["model"].items() if k.startswith("encoder.")}
    s2 = states["efin_stage2"]["model"]
    assert enc1 and all(torch.equal(s2[k], v) for k, v in enc1.items()), "stage 2's frozen encoder is not stage 1's"
    assert not any("lora" in k for k in s2)
    assert any("lora" in k for k in states["efin_stage3"]["model"])
    # the baseline trained until it had spent EFIN's compute (stages 1-3), and stopped there
    efin_flops = sum(json.loads((exp / n / "flops.json").read_text())["flops"] for n in STEPS)
    baseline = load_checkpoint(exp / "baseline_joint" / "model.pt")
    before_last = load_checkpoint(exp / "baseline_joint" / f"checkpoint-{baseline['step'] - 1}.pt") \
        if baseline["step"] > 1 else {"flops": 0.0}
    assert before_last["flops"] < efin_flops <= baseline["flops"]
    bl = baseline["model"]
    assert any("lora" in k for k in bl)
    assert not all(torch.equal(bl[k], v) for k, v in enc1.items()), "the baseline's encoder must not be stage 1's"

    # one table row per system with a CER for dev and test
    table = (exp / "results.md").read_text()
    for system in SYSTEMS:
        row = re.search(rf"^\| {re.escape(system)} \| [\w-]+ \| ([^|]+) \| ([\d.]+) \| ([\d.]+) \|$", table, re.M)
        assert row, f"no parsable row for {system!r} in:\n{table}"
        assert row.group(1).strip() == "n/a" or float(row.group(1)) > 0  # FLOPs, when the trainer wrote flops.json

    # a rerun skips every finished stage and retrains nothing
    mtimes = {name: (exp / name / "model.pt").stat().st_mtime_ns for name in STEPS}
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    for n in range(8):
        assert re.search(rf"\[stage {n}\] skip:", rerun.stdout), f"stage {n} was not skipped:\n{rerun.stdout}"
    assert rerun.stdout.count("[stage 8] skip:") == 4
    assert {name: (exp / name / "model.pt").stat().st_mtime_ns for name in STEPS} == mtimes

    # asking for another LLM than the one the experiments were built with is an error, not a silent mix
    switched = [c if c != "tiny" else "smollm2" for c in cmd] + ["--stage", "5", "--stop-stage", "5"]
    other = subprocess.run(switched, env=env, capture_output=True, text=True, timeout=60)
    assert other.returncode != 0 and "remove" in other.stderr
