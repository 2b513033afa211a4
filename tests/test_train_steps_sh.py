"""tools/train_steps.sh: the recipes' one step-budgeted training stage skips, starts or resumes as it should.

A fake ``asrkit`` on PATH records its arguments, so no model trains here.
"""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_train_steps(tmp_path: Path, files: list) -> list:
    """The ``asrkit`` calls train_steps makes for an exp dir holding ``files`` (one list per call)."""
    exp = tmp_path / "exp dir"  # a space: every path must be quoted
    exp.mkdir()
    for name in files:
        (exp / name).write_bytes(b"")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    fake = bin_dir / "asrkit"
    fake.write_text(f'#!/bin/sh\nprintf "%s|" "$@" >> "{calls}"\necho >> "{calls}"\n')
    fake.chmod(0o755)
    script = (f'set -euo pipefail; log() {{ echo "[stage $1] $2"; }}; . "{REPO}/tools/train_steps.sh"; '
              f'train_steps 3 "{exp}" conf.yaml 100 lr=1')
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    subprocess.run(["bash", "-c", script], check=True, env=env, capture_output=True, text=True)
    if not calls.exists():
        return []
    return [line.rstrip("|").split("|") for line in calls.read_text().splitlines()]


@pytest.mark.parametrize("files,resume", [
    ([], False),
    (["epoch-1.pt"], True),  # only epoch checkpoints: once restarted from scratch (ls of both globs failed)
    (["checkpoint-20.pt"], True),
    (["checkpoint-20.pt", "epoch-1.pt"], True),
])
def test_trains_and_resumes_from_either_checkpoint_kind(tmp_path, files, resume):
    calls = run_train_steps(tmp_path, files)
    assert len(calls) == 2, calls
    train, export = calls
    assert train[:3] == ["train", "--config", "conf.yaml"]
    assert ("--resume" in train) == resume
    assert "train.max_steps=100" in train and "lr=1" in train
    assert export[:2] == ["export", "--latest"]


def test_skips_a_finished_stage(tmp_path):
    assert run_train_steps(tmp_path, ["model.pt", "epoch-1.pt"]) == []
