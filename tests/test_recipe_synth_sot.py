"""Integration: the SOT recipe egs/synth/SOT/run.sh (AED-SOT vs LLM-SOT), every stage, in a tiny configuration.

8 English source utterances per split mixed into 2-speaker mixtures (plus the single-speaker cuts), a
2-stack Zipformer, a 1-layer attention decoder, a 1-layer random LLM and 2-3 steps per stage: this checks
the plumbing (mixtures, <sc> in both tokenizers, hand-over between stages, SOT scoring, the table,
resuming), not LLM-SOT's claim.

    .venv/bin/pytest tests/test_recipe_synth_sot.py -q
"""

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

from asrkit.data.datamodule import cut_text  # noqa: E402
from asrkit.data.features import load_cuts  # noqa: E402
from asrkit.training.checkpoint import load_checkpoint  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "egs" / "synth" / "SOT"
STEPS = {"aed_sot": 3, "llm_sot_a": 2, "llm_sot_b": 2, "llm_sot_c": 2}
METHODS = {"aed_sot": "joint-ctc-attention", "llm_sot_a": "llm-greedy", "llm_sot_b": "llm-greedy",
           "llm_sot_c": "llm-greedy"}
SYSTEMS = ["AED-SOT: Zipformer + attention decoder + CTC", "LLM-SOT stage A: projector",
           "LLM-SOT stage B: + encoder", "LLM-SOT stage C: + LoRA"]
PREFIX = "synth-en-sot_cuts"


def _encoder_overrides() -> str:
    def value(v):
        return ",".join(map(str, v)) if isinstance(v, list) else str(v)

    return " ".join(f"model.encoder_conf.{k}={value(v)}" for k, v in TINY_ENCODER.items())


def _encoder(state):
    return {k: v for k, v in state.items() if k.startswith("encoder.")}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_sot_recipe_all_stages_tiny(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1")
    data, exp = tmp_path / "data", tmp_path / "exp"
    cmd = [str(RECIPE / "run.sh"), "--data", str(data), "--exp", str(exp), "--nj", "1",
           "--num-train", "8", "--num-dev", "2", "--num-test", "2", "--train-speakers", "3", "--dev-speakers", "2",
           "--test-speakers", "2", "--num-words", "20", "--min-words", "2", "--max-words", "3",
           "--llm", "tiny", "--tiny-llm-opts", "--hidden 32 --layers 1 --heads 4 --vocab-size 300",
           "--aed-steps", str(STEPS["aed_sot"]), "--stage-a-steps", str(STEPS["llm_sot_a"]),
           "--stage-b-steps", str(STEPS["llm_sot_b"]), "--stage-c-steps", str(STEPS["llm_sot_c"]),
           "--encoder-overrides", _encoder_overrides(),
           "--overrides", "data.max_duration=8 data.num_workers=0 data.num_buckets=2 train.progress_bar=false "
                          "train.tensorboard=false train.log_interval=1 train.warmup_steps=1 train.save_every_n=1",
           "--aed-overrides", "model.attention.decoder_dim=32 model.attention.attention_dim=32 "
                              "model.attention.num_layers=1 model.attention.feedforward_dim=64",
           "--llm-overrides", "model.projector_dim=32 model.lora.r=4 model.lora.alpha=8 model.lora.dropout=0.0",
           "--beam", "2", "--max-new-tokens", "4", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # stage 1: each split holds its single-speaker cuts and as many 2-speaker mixtures, whose SOT text has one <sc>
    for split, n in (("train", 8), ("dev", 2), ("test", 2)):
        texts = [cut_text(c) for c in load_cuts(data / "fbank" / f"{PREFIX}_{split}.jsonl.gz")]
        assert sorted(t.count("<sc>") for t in texts) == [0] * n + [1] * n, (split, texts)
    # stage 3: <sc> is one token of the AED-SOT table
    assert "<sc>" in (data / "lang_char" / "tokens.txt").read_text().split()
    assert (data / "llm.txt").read_text().split()[0] == "tiny"

    # stages 4-7: each trained exactly its budget and left model.pt
    states = {}
    for name, steps in STEPS.items():
        assert (exp / name / f"checkpoint-{steps}.pt").is_file(), f"{name}: no checkpoint-{steps}.pt"
        states[name] = load_checkpoint(exp / name / "model.pt")
        assert states[name]["step"] == steps
    aed, a, b, c = (states[n]["model"] for n in STEPS)
    assert any(k.startswith("attention.") for k in aed) and any(k.startswith("ctc.") for k in aed)
    enc = _encoder(aed)
    assert enc and all(torch.equal(a[k], v) for k, v in enc.items()), "stage A's frozen encoder is not AED-SOT's"
    assert not all(torch.equal(b[k], v) for k, v in enc.items()), "stage B must train the encoder"
    assert not any("lora" in k for k in {**a, **b}) and any("lora" in k for k in c)
    assert all(any("trainable_tokens_delta" in k for k in s) for s in (a, b, c)), "the <sc> rows must train"

    # stage 8: every system scored with the SOT figures next to the plain ones
    for name, method in METHODS.items():
        for split in ("dev", "test"):
            plain = list((exp / name / method).glob(f"wer-summary-{PREFIX}_{split}-final*.txt"))
            sot = list((exp / name / method / "sot").glob(f"wer-summary-{PREFIX}_{split}-final*.txt"))
            assert len(plain) == 1 and len(sot) == 1, (name, split, plain, sot)
            lines = sot[0].read_text().splitlines()
            assert [line.split()[0] for line in lines] == ["%cpWER", "%concatWER", "%SpkCountAcc"]
            assert re.search(r"\[ \d+ / 4 \]$", lines[2]), lines  # 2 single-speaker cuts + 2 mixtures
        assert "%cpWER" in (exp / name / f"results-{method}.txt").read_text()

    # stage 9: one row per system: training FLOPs, then cpWER, concatenated WER, speaker-count accuracy (dev, test)
    table = (exp / "results.md").read_text()
    flops = {}
    for system in SYSTEMS:
        row = re.search(rf"^\| {re.escape(system)} \| [\w-]+ \| (\S+) \|((?: [\d.]+ \|){{6}})$", table, re.M)
        assert row, f"no parsable row for {system!r} in:\n{table}"
        flops[system] = float(row.group(1))
        acc = [float(x) for x in row.group(2).strip(" |").split(" | ")][4:]
        assert all(0 <= x <= 100 for x in acc)
    # FLOPs are cumulative: each LLM-SOT stage counts the stages (and the AED-SOT encoder) it starts from
    assert 0 < flops[SYSTEMS[0]] < flops[SYSTEMS[1]] < flops[SYSTEMS[2]] < flops[SYSTEMS[3]], flops

    # a rerun skips every finished stage and retrains nothing
    mtimes = {name: (exp / name / "model.pt").stat().st_mtime_ns for name in STEPS}
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    for n in range(8):
        assert re.search(rf"\[stage {n}\] skip:", rerun.stdout), f"stage {n} was not skipped:\n{rerun.stdout}"
    assert rerun.stdout.count("[stage 8] skip:") == 4
    assert {name: (exp / name / "model.pt").stat().st_mtime_ns for name in STEPS} == mtimes

    # stage C (LoRA added) must start from stage B's <sc> rows: peft names them differently with LoRA
    init_c = re.search(r"init_from \S*llm_sot_b\S*: loaded .*", proc.stderr)
    assert init_c, proc.stderr[-3000:]
    assert "0 of the checkpoint's unused" in init_c.group(0), init_c.group(0)[:300]
