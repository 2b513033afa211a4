"""DDP: two CPU ranks (gloo) see disjoint shards of the data and end with identical weights.

    .venv/bin/pytest tests/test_ddp.py -q

One test drives the Trainer directly in two spawned processes (so it can record what each rank
saw); the other launches ``torchrun -m asrkit.bin.train`` on a tiny synthetic corpus, the way
users scale out.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lhotse.dataset import DynamicBucketingSampler
from torch.utils.data import DataLoader

from test_trainer import FeatsDataset, TinyModel, make_cfg, make_compute_loss, make_cuts

from asrkit.training.trainer import Trainer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        cuts = make_cuts(32, seed=0)
        sampler = DynamicBucketingSampler(cuts, max_duration=1.2, shuffle=True, num_buckets=2, seed=3,
                                          rank=rank, world_size=world_size, drop_last=True)
        dl = DataLoader(FeatsDataset(), sampler=sampler, batch_size=None)
        seen = []
        torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
        cfg = make_cfg(num_epochs=1, max_steps=4, average_period=2)
        trainer = Trainer(cfg, TinyModel(), dl, Path(out_dir) / "exp", make_compute_loss(seen))
        trainer.fit()
        torch.save({"model": trainer.model.module.state_dict(), "seen": seen, "step": trainer.step,
                    "is_ddp": isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)},
                   Path(out_dir) / f"rank-{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_see_disjoint_data_and_end_with_identical_weights(tmp_path):
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank-{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["is_ddp"] and r1["is_ddp"]
    assert r0["step"] == r1["step"] == 4
    ids0 = {i for batch in r0["seen"] for i in batch}
    ids1 = {i for batch in r1["seen"] for i in batch}
    assert ids0 and ids1 and not ids0 & ids1, "ranks read overlapping cuts"
    torch.manual_seed(0)
    init = TinyModel().state_dict()
    for name, w0 in r0["model"].items():
        assert torch.equal(w0, r1["model"][name]), f"{name} differs between ranks"
        assert not torch.equal(w0, init[name]), f"{name} did not train"
    ckpt = torch.load(tmp_path / "exp" / "checkpoint-4.pt", weights_only=True)  # only rank 0 writes
    assert ckpt["world_size"] == 2 and "model_avg" in ckpt


@pytest.mark.skipif(not Path(sys.executable).with_name("torchrun").exists(), reason="torchrun not installed")
def test_torchrun_trains_the_cli_with_two_cpu_ranks(tmp_path, tiny_asr_experiment):
    cfg, overrides = tiny_asr_experiment(tmp_path)
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "asrkit.bin.train", "--config", str(cfg), *overrides,
           "train.max_steps=2", "train.device=cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ckpt = torch.load(tmp_path / "exp" / "checkpoint-2.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["step"] == 2
