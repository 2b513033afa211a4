"""Integration: egs/aishell/ASR_LLM/run.sh (EFIN on AISHELL-1), every stage, on a fake AISHELL-1 tree.

Espeak-ng Mandarin laid out as AISHELL-1 (tests/fake_corpora.py), a tiny random Whisper and a tiny random
LLM saved to tmp as local Hugging Face dirs, conf/tiny and a few steps per stage: this checks the plumbing
(Whisper mel bins, hand-over between stages, decoding, the table, resuming, errors), not EFIN's claim.

    .venv/bin/pytest tests/test_recipe_aishell_llm.py -q
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
from lhotse import CutSet

pytest.importorskip("transformers")
pytest.importorskip("peft")

from transformers import WhisperConfig, WhisperForConditionalGeneration  # noqa: E402

from asrkit.data.synth import synthesize_corpus  # noqa: E402
from asrkit.models.tiny_llm import make_tiny_llm  # noqa: E402
from asrkit.training.checkpoint import load_checkpoint  # noqa: E402
from fake_corpora import make_fake_aishell, utts_from_cuts  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "egs" / "aishell" / "ASR_LLM"
NUM_UTTS = {"train": 12, "dev": 3, "test": 3}
STEPS = {"efin_stage1": 3, "efin_stage2": 2, "efin_stage3": 2}  # the baseline: EFIN's FLOPs
MEL_BINS = 128  # as large-v3: run.sh must take the bins from the Whisper's config.json, not assume 80
LLM_METHODS = ["llm-greedy", "llm-beam-search"]
SYSTEMS = ["EFIN stage 2: projector only", "EFIN stage 3: encoder + projector + LoRA", "baseline: joint post-training"]


def save_tiny_whisper(path: Path) -> Path:
    """A random 2-layer, 64-dim Whisper saved as a downloaded checkpoint (the encoder is what the recipe uses)."""
    config = WhisperConfig(d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128,
                           decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, vocab_size=64,
                           max_target_positions=16, num_mel_bins=MEL_BINS, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, decoder_start_token_id=1)
    torch.manual_seed(0)
    WhisperForConditionalGeneration(config).save_pretrained(path)
    return path


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_aishell_efin_recipe_all_stages_tiny(tmp_path):
    cuts = synthesize_corpus(tmp_path / "synth", lang="zh", num_utts=NUM_UTTS,
                             num_speakers={"train": 2, "dev": 1, "test": 1}, max_words=3, seed=0, num_jobs=2)
    fake = make_fake_aishell(tmp_path / "aishell", utts_from_cuts(cuts))
    whisper = save_tiny_whisper(tmp_path / "whisper-tiny")
    llm = make_tiny_llm(tmp_path / "llm-tiny", [c.supervisions[0].text for c in cuts["train"]], hidden_size=32,
                        layers=1, heads=4, vocab_size=300, seed=0)
    data, exp = tmp_path / "data", tmp_path / "exp"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1")
    base = ["bash", str(RECIPE / "run.sh"), "--data", str(data), "--exp", str(exp), "--nj", "2",
            "--conf-dir", "conf/tiny", "--whisper-dir", str(whisper), "--llm-dir", str(llm),
            "--stage1-steps", str(STEPS["efin_stage1"]), "--stage2-steps", str(STEPS["efin_stage2"]),
            "--stage3-steps", str(STEPS["efin_stage3"]), "--llm-methods", " ".join(LLM_METHODS), "--beam", "2",
            "--max-new-tokens", "4", "--device", "cpu"]
    proc = subprocess.run(base + ["--corpus-dir", str(fake.root)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # stages 0-1: the fake corpus prepared, Whisper log-mel with the Whisper's 128 bins, train speed-perturbed
    feats = data / f"whisper-fbank-{MEL_BINS}"
    train = CutSet.from_file(feats / "aishell_cuts_train.jsonl.gz")
    ids = sorted(fake.texts["train"])
    assert sorted(c.id for c in train) == sorted(ids + [f"{i}_sp0.9" for i in ids] + [f"{i}_sp1.1" for i in ids])
    assert train[0].load_features().shape[1] == MEL_BINS
    assert "whisper" in train[0].features.type  # Whisper's log-mel, not Kaldi fbank
    dev = CutSet.from_file(feats / "aishell_cuts_dev.jsonl.gz")
    assert {c.id: c.supervisions[0].text for c in dev} == fake.texts["dev"]
    assert (data / "lang_char" / ".done").is_file()

    # stages 3-5: every EFIN stage trained exactly its budget and left model.pt
    states = {}
    for name, steps in STEPS.items():
        assert (exp / name / f"checkpoint-{steps}.pt").is_file(), f"{name}: no checkpoint-{steps}.pt"
        states[name] = load_checkpoint(exp / name / "model.pt")
        assert states[name]["step"] == steps
    enc1 = {k: v for k, v in states["efin_stage1"]["model"].items() if k.startswith("encoder.")}
    assert any(k.startswith("ctc.") for k in states["efin_stage1"]["model"])  # a CTC head on characters
    s2 = states["efin_stage2"]["model"]
    assert enc1 and all(torch.equal(s2[k], v) for k, v in enc1.items()), "stage 2's frozen encoder is not stage 1's"
    assert not any("lora" in k for k in s2)
    s3 = states["efin_stage3"]["model"]
    assert any("lora" in k for k in s3) and not all(torch.equal(s3[k], v) for k, v in enc1.items())
    # stage 6: the baseline starts from the released Whisper (not stage 1) and spends EFIN's FLOPs
    released = WhisperForConditionalGeneration.from_pretrained(whisper).model.encoder.state_dict()
    bl_cfg = (exp / "baseline_joint" / "config.yaml").read_text()
    assert str(whisper) in bl_cfg and "encoder_init: null" in bl_cfg and "init_from: ''" in bl_cfg
    efin_flops = sum(json.loads((exp / n / "flops.json").read_text())["flops"] for n in STEPS)
    baseline = load_checkpoint(exp / "baseline_joint" / "model.pt")
    before_last = load_checkpoint(exp / "baseline_joint" / f"checkpoint-{baseline['step'] - 1}.pt") \
        if baseline["step"] > 1 else {"flops": 0.0}
    assert before_last["flops"] < efin_flops <= baseline["flops"]
    assert any("lora" in k for k in baseline["model"])
    # a few AdamW steps (lr <= 1e-3) move no weight far from where it started: the released Whisper
    bl_enc = {k[len("encoder.whisper."):]: v for k, v in baseline["model"].items() if k.startswith("encoder.whisper.")}
    assert bl_enc.keys() == released.keys()
    assert max(float((bl_enc[k] - v).abs().max()) for k, v in released.items()) < 0.01
    assert float(released["layers.0.fc1.weight"].std()) > 0.01  # random weights: a fresh init would be far off
    assert not all(torch.equal(baseline["model"][k], v) for k, v in enc1.items())

    # stages 7-8: one table row per system and method, with a CER for dev and test and the FLOPs
    table = (exp / "results.md").read_text()
    assert "LLM: " + str(llm) in table
    rows = [("EFIN stage 1: encoder alone", "ctc-greedy")] + [(s, m) for m in LLM_METHODS for s in SYSTEMS]
    for system, method in rows:
        row = re.search(rf"^\| {re.escape(system)} \| {method} \| ([^|]+) \| ([\d.]+) \| ([\d.]+) \|$", table, re.M)
        assert row, f"no parsable row for {system!r} / {method} in:\n{table}"
        assert float(row.group(1)) > 0
    for name in ("efin_stage2", "efin_stage3", "baseline_joint"):
        assert list((exp / name / "llm-beam-search").glob("wer-summary-aishell_cuts_test-final-beam2.txt"))

    # a rerun skips every finished stage (no corpus needed) and retrains nothing
    mtimes = {name: (exp / name / "model.pt").stat().st_mtime_ns for name in [*STEPS, "baseline_joint"]}
    rerun = subprocess.run(base, env=env, capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    for n in range(7):
        assert re.search(rf"\[stage {n}\] skip:", rerun.stdout), f"stage {n} was not skipped:\n{rerun.stdout}"
    assert rerun.stdout.count("[stage 7] skip:") == 4
    assert {name: (exp / name / "model.pt").stat().st_mtime_ns for name in mtimes} == mtimes

    # a missing Whisper or LLM dir is a clear error before anything runs
    for option, what in (("--whisper-dir", "Whisper"), ("--llm-dir", "LLM")):
        missing = [c if c != str(whisper if what == "Whisper" else llm) else str(tmp_path / "nowhere") for c in base]
        stage = "1" if what == "Whisper" else "4"
        proc = subprocess.run(missing + ["--exp", str(tmp_path / "exp2"), "--stage", stage, "--stop-stage", "4"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and f"{what} directory {tmp_path / 'nowhere'} is missing" in proc.stderr, \
            proc.stderr
        assert option in proc.stderr
