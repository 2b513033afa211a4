"""Staged speech-LLM training through the CLI, as the EFIN recipes run it:

1. ``asrkit train`` an ASR model (Zipformer + CTC);
2. a speech-LLM whose encoder starts from stage 1 (``model.encoder_init``), encoder and LLM frozen:
   only the projector trains;
3. ``init_from`` stage 2, LoRA on, encoder unfrozen; then ``asrkit decode --method llm-greedy``.

    .venv/bin/pytest tests/test_train_llm_cli.py -q
"""

import pytest
import torch
import yaml

pytest.importorskip("transformers")
pytest.importorskip("peft")

from conftest import TINY_ENCODER  # noqa: E402
from test_speech_llm import llm_dirs  # noqa: E402,F401  (fixture)

from asrkit.cli import main  # noqa: E402
from asrkit.training.checkpoint import load_checkpoint  # noqa: E402


def _llm_config(path, exp_dir, data, llm_dir, **model):
    train, dev = data
    cfg = {
        "exp_dir": str(exp_dir),
        "data": {"train_cuts": str(train), "valid_cuts": str(dev), "max_duration": 8, "num_workers": 0,
                 "spec_augment": False, "num_buckets": 2},
        "model": {"encoder": "zipformer", "encoder_conf": TINY_ENCODER, "downsample": 2, "projector_dim": 32,
                  "llm_dir": str(llm_dir), "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, **model},
        "train": {"optimizer": "adamw", "lr": 1e-3, "warmup_steps": 1, "log_interval": 1, "progress_bar": False,
                  "tensorboard": False, "num_epochs": 1, "max_steps": 3, "average_period": 0},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_three_stages_hand_over_weights_and_decode(tmp_path, tiny_asr_experiment, tiny_asr_data, llm_dirs):  # noqa: F811
    data = tiny_asr_data[:2]
    # stage 1: the ASR encoder
    s1 = tmp_path / "s1"
    s1.mkdir()
    cfg1, _ = tiny_asr_experiment(s1)
    assert main(["train", "--config", str(cfg1)]) == 0  # one epoch: epoch-1.pt
    enc1 = {k: v for k, v in load_checkpoint(s1 / "exp" / "epoch-1.pt")["model"].items() if k.startswith("encoder.")}
    assert enc1

    # stage 2: projector only
    cfg2 = _llm_config(tmp_path / "s2.yaml", tmp_path / "s2", data, llm_dirs["qwen2"], encoder_init=str(s1 / "exp"),
                       freeze_encoder=True, lora={"enabled": False})
    assert main(["train", "--config", str(cfg2)]) == 0
    state2 = load_checkpoint(tmp_path / "s2" / "checkpoint-3.pt")["model"]
    for k, v in enc1.items():
        assert torch.equal(state2[k], v), f"frozen encoder weight {k} changed or was not handed over"
    assert not any("lora" in k for k in state2)
    assert not any(k.startswith("llm.") for k in state2), "a frozen LLM must not be stored in the checkpoint"

    # stage 3: everything from stage 2, LoRA added; lr 0 so the hand-over itself is visible
    cfg3 = _llm_config(tmp_path / "s3.yaml", tmp_path / "s3", data, llm_dirs["qwen2"], freeze_encoder=False)
    assert main(["train", "--config", str(cfg3), f"init_from={tmp_path / 's2'}", "train.lr=0.0",
                 "train.max_steps=null"]) == 0  # a whole epoch: epoch-1.pt, which decode loads
    state3 = load_checkpoint(tmp_path / "s3" / "epoch-1.pt")["model"]
    for k, v in state2.items():
        assert torch.equal(state3[k], v), f"{k} was not initialised from stage 2"
    assert any("lora" in k for k in state3)

    # decode the speech-LLM with its own tokenizer
    assert main(["decode", "--exp-dir", str(tmp_path / "s3"), "--cuts", str(data[1]), "--method", "llm-greedy",
                 "--max-new-tokens", "5", "--device", "cpu"]) == 0
    assert list((tmp_path / "s3" / "llm-greedy").glob("wer-summary-*"))
