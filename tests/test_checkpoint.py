"""Tests for asrkit.training.checkpoint: atomic save, safe load, RNG states, averaging, discovery.

    .venv/bin/pytest tests/test_checkpoint.py -q
"""

import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from asrkit.training.checkpoint import (
    average_checkpoints,
    find_checkpoints,
    get_rng_state,
    latest_checkpoint,
    load_checkpoint,
    remove_old_checkpoints,
    save_checkpoint,
    set_rng_state,
)


class _ExplodingTensor(torch.Tensor):
    """Pickling it fails half-way through torch.save, like a crash during the write."""

    def __reduce_ex__(self, protocol):
        raise RuntimeError("simulated crash while writing")


def _old_state():
    return {"model": {"w": torch.arange(6.0)}, "step": 1}


def test_failed_save_leaves_the_old_checkpoint_intact(tmp_path):
    path = tmp_path / "checkpoint-1.pt"
    save_checkpoint(path, _old_state())
    new = {"model": {"w": torch.zeros(100_000)}, "bad": torch.zeros(3).as_subclass(_ExplodingTensor)}
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_checkpoint(path, new)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(6.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1.pt"]  # temp file removed


def test_killed_process_during_save_leaves_the_old_checkpoint_intact(tmp_path):
    """A process that dies mid-write (no cleanup at all) never leaves a partial file at the path."""
    path = tmp_path / "epoch-1.pt"
    save_checkpoint(path, _old_state())
    script = f"""
import os, torch
from asrkit.training.checkpoint import save_checkpoint
class Die(torch.Tensor):
    def __reduce_ex__(self, protocol):
        os._exit(3)
save_checkpoint({str(path)!r}, {{"model": {{"w": torch.ones(100_000)}}, "x": torch.zeros(2).as_subclass(Die)}})
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == 3, proc.stderr.decode()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(6.0))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "epoch-1.pt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".epoch-1.pt.") and leftovers[0].endswith(".tmp")
    assert find_checkpoints(tmp_path, "epoch") == [path] and latest_checkpoint(tmp_path) == path


def test_truncated_or_garbage_checkpoint_gives_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint-7.pt"
    save_checkpoint(path, {"model": {"w": torch.randn(1000)}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match=r"truncated or corrupt checkpoint .*checkpoint-7\.pt.*delete it"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(RuntimeError, match="truncated or corrupt checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_unsafe_objects_are_refused_on_save_and_load(tmp_path):
    with pytest.raises(TypeError, match=r"state\['rng'\]\['np'\] is a numpy.ndarray"):
        save_checkpoint(tmp_path / "a.pt", {"rng": {"np": np.zeros(3)}})
    assert not (tmp_path / "a.pt").exists()
    torch.save({"np": np.zeros(3)}, tmp_path / "foreign.pt")  # written by some other tool
    with pytest.raises(RuntimeError, match="weights_only"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # python and numpy keep a cached gaussian: it must survive too
    np.random.randn()
    save_checkpoint(tmp_path / "rng.pt", {"rng": get_rng_state()})
    expected = (random.random(), random.gauss(0, 1), np.random.randn(3).tolist(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    state = torch.load(tmp_path / "rng.pt", weights_only=True)
    set_rng_state(state["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.randn(3).tolist(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def test_average_checkpoints_arithmetic(tmp_path):
    paths = []
    for i, w in enumerate([1.0, 2.0, 6.0]):
        state = {
            "w": torch.full((2, 2), w),
            "half": torch.tensor([w], dtype=torch.float16),
            "num_batches_tracked": torch.tensor(10 * (i + 1)),
        }
        paths.append(save_checkpoint(tmp_path / f"epoch-{i + 1}.pt", {"model": state, "epoch": i + 1}))
    avg = average_checkpoints(paths)
    assert torch.equal(avg["w"], torch.full((2, 2), 3.0))
    assert avg["half"].dtype == torch.float16 and avg["half"].item() == 3.0
    assert avg["num_batches_tracked"].item() == 30 and avg["num_batches_tracked"].dtype == torch.int64
    torch.save({"w": torch.zeros(2, 2)}, tmp_path / "bare.pt")  # a bare state_dict with other keys
    with pytest.raises(KeyError, match="different parameters"):
        average_checkpoints([paths[0], tmp_path / "bare.pt"])
    with pytest.raises(ValueError):
        average_checkpoints([])


def test_find_latest_and_prune(tmp_path):
    for step in (9, 10, 100, 20):
        save_checkpoint(tmp_path / f"checkpoint-{step}.pt", {"step": step})
    (tmp_path / "checkpoint-x.pt").write_text("not ours")
    assert [p.name for p in find_checkpoints(tmp_path)] == [
        "checkpoint-9.pt", "checkpoint-10.pt", "checkpoint-20.pt", "checkpoint-100.pt"]
    assert latest_checkpoint(tmp_path).name == "checkpoint-100.pt"
    save_checkpoint(tmp_path / "epoch-1.pt", {"step": 60, "epoch_finished": True})
    assert latest_checkpoint(tmp_path).name == "checkpoint-100.pt"  # newer in training, not on disk
    save_checkpoint(tmp_path / "epoch-2.pt", {"step": 100, "epoch_finished": True})
    assert latest_checkpoint(tmp_path).name == "epoch-2.pt"  # same step, but the epoch is complete
    removed = remove_old_checkpoints(tmp_path, keep_last_k=2)
    assert [p.name for p in removed] == ["checkpoint-9.pt", "checkpoint-10.pt"]
    assert [p.name for p in find_checkpoints(tmp_path)] == ["checkpoint-20.pt", "checkpoint-100.pt"]
    assert find_checkpoints(tmp_path / "nope") == [] and latest_checkpoint(tmp_path / "nope") is None
