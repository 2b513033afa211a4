"""Integration: the synthetic recipe's run.sh, every stage, in a tiny configuration.

A trained model must do far better than an untrained one of the same architecture.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from asrkit.bin.decode import recognise
from asrkit.config import config_from_dict
from asrkit.data.datamodule import DataConfig, eval_dataloader
from asrkit.data.features import load_cuts
from asrkit.decoding.search import SearchOptions
from asrkit.models.asr import AsrModel, AsrModelConfig
from asrkit.scoring import compute_error_rate
from asrkit.text.tokenizer import load_tokenizer

RECIPE = Path(__file__).resolve().parents[1] / "egs" / "synth" / "ASR"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_synth_recipe_trains_and_beats_untrained(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    data, exp = tmp_path / "data", tmp_path / "exp"
    overrides = "data.max_duration=20 data.num_workers=0 train.warmup_steps=30 train.progress_bar=false"
    cmd = [str(RECIPE / "run.sh"), "--data", str(data), "--exp-dir", str(exp), "--num-train", "400",
           "--num-dev", "20", "--num-test", "40", "--num-words", "20", "--epochs", "10", "--avg", "2",
           "--overrides", overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=2400)  # CI machines may be busy
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = (exp / "results.txt").read_text()
    wer = float(re.search(r"synth-en_cuts_test\s+greedy-search\s+%WER ([\d.]+)", results).group(1))
    assert re.search(r"synth-en_cuts_test\s+modified-beam-search\s+%WER", results)
    assert (exp / "greedy-search").is_dir() and (exp / "model.pt").is_file()

    # The same architecture, untrained, on the same test set.
    with open(exp / "config.yaml") as f:
        model_cfg = config_from_dict(AsrModelConfig, yaml.safe_load(f)["model"])
    torch.manual_seed(0)
    untrained = AsrModel(model_cfg).eval()
    tokenizer = load_tokenizer(exp / "lang")
    dl = eval_dataloader(DataConfig(num_workers=0), load_cuts(str(data / "fbank" / "synth-en_cuts_test.jsonl.gz")))
    pairs = recognise(untrained, tokenizer, dl, ["greedy-search"], SearchOptions(), "cpu")["greedy-search"]
    untrained_wer = compute_error_rate(pairs).rate
    assert untrained_wer > 95.0
    assert wer < 60.0, f"trained WER {wer} (untrained {untrained_wer})\n{results}"

    # Rerunning skips finished stages, and transcribe works from the experiment dir alone.
    rerun = subprocess.run(cmd + ["--stop-stage", "3"], env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0 and rerun.stdout.count("skip:") == 4
    wav = sorted((data / "synth-en" / "wav" / "test").glob("*.wav"))[0]
    out = subprocess.run(["asrkit", "transcribe", "--exp-dir", str(exp), str(wav)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith(str(wav))
