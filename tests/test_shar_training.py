"""Training from lhotse Shar (``data.train_shar``): shards split over workers and ranks, every cut once per epoch.

    .venv/bin/pytest tests/test_shar_training.py -q

Shar dirs of cuts with lilcom fbank and ``ssl_targets`` are written from small random arrays; the
loader is :func:`asrkit.data.datamodule.shar_train_dataloader` with the real SslDataset.
"""

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lhotse import CutSet, Features, LilcomFilesWriter, MonoCut, NumpyFilesWriter
from torch import nn

from asrkit.data.datamodule import DataConfig, shar_fields, shar_train_dataloader
from asrkit.data.ssl_dataset import SslDataset
from asrkit.training.trainer import TrainConfig, Trainer

SHARD = 4  # cuts per shard


def write_shar(root: Path, name: str, n: int) -> Path:
    """``n`` cuts ``name-000``.. of 0.3-0.6 s with 80-dim fbank (lilcom) and 50 Hz labels = the cut's index."""
    rng = np.random.default_rng(len(name) + n)
    cuts = []
    with LilcomFilesWriter(root / f"{name}_feats") as fw, NumpyFilesWriter(root / f"{name}_labels") as lw:
        for i in range(n):
            cid, dur = f"{name}-{i:03d}", 0.3 + 0.1 * (i % 4)
            frames = int(round(dur * 100))
            key = fw.write(cid, rng.standard_normal((frames, 80)).astype(np.float32))
            feats = Features(type="kaldi-fbank", num_frames=frames, num_features=80, frame_shift=0.01,
                             sampling_rate=16000, start=0.0, duration=dur, storage_type=fw.name,
                             storage_path=str(fw.storage_path), storage_key=key)
            labels = lw.store_array(cid, np.full(frames // 2, i, dtype=np.int16), frame_shift=0.02, temporal_dim=0)
            cuts.append(MonoCut(id=cid, start=0.0, duration=dur, channel=0, features=feats,
                                custom={"ssl_targets": labels}))
    out = root / name
    out.mkdir(parents=True)
    CutSet.from_cuts(cuts).to_shar(out, fields={"features": "lilcom", "ssl_targets": "numpy"}, shard_size=SHARD)
    return out


class WorkerSslDataset(SslDataset):
    """SslDataset that also says which DataLoader worker made the batch."""

    def __getitem__(self, cuts):
        batch = super().__getitem__(cuts)
        info = torch.utils.data.get_worker_info()
        batch["worker"] = -1 if info is None else info.id
        return batch


def _cfg(dirs, **kw) -> DataConfig:
    return DataConfig(train_shar=[str(d) for d in dirs], max_duration=1.5, num_buckets=2, spec_augment=False,
                      shar_buffer_size=50, seed=7, **kw)


def _read_epoch(dl, epoch: int):
    """{cut id: worker}, and the cut ids in the order seen, for one epoch; checks labels and features."""
    dl.dataset.set_epoch(epoch)
    owner, order = {}, []
    for batch in dl:
        for row, cid in enumerate(batch["cut_ids"]):
            assert cid not in owner, f"cut {cid} seen twice in epoch {epoch}"
            owner[cid] = batch["worker"]
            order.append(cid)
            t = batch["ssl_targets"][row]
            frames = int(batch["feat_lens"][row])
            assert (t[: frames // 2] == int(cid[-3:])).all() and (t[frames // 2:] == -100).all()
        assert batch["feats"].shape[-1] == 80
    return owner, order


@pytest.fixture(scope="module")
def shar_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("shar")
    return [write_shar(root, "a", 4 * SHARD), write_shar(root, "b", 3 * SHARD + 2)]  # 8 shards, the last short


def test_fields_read_only_what_training_needs(shar_dirs):
    fields = shar_fields(shar_dirs, DataConfig())
    assert sorted(fields) == ["cuts", "features", "ssl_targets"]
    assert len(fields["cuts"]) == len(fields["features"]) == 8
    with pytest.raises(ValueError, match="no recording shards"):
        shar_fields(shar_dirs, DataConfig(on_the_fly_feats=True))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        shar_fields([shar_dirs[0] / "nope"], DataConfig())


def test_two_workers_read_disjoint_shards_and_every_cut_once_per_epoch(shar_dirs):
    dl = shar_train_dataloader(_cfg(shar_dirs, num_workers=2), require_text=False, dataset_cls=WorkerSslDataset)
    all_ids = {c.id for d in shar_dirs for c in CutSet.from_shar(fields={"cuts": sorted(map(str, d.glob("cuts.*")))})}
    assert len(all_ids) == 30
    orders = []
    for epoch in (0, 1):
        owner, order = _read_epoch(dl, epoch)
        assert set(owner) == all_ids  # every cut, once (checked in _read_epoch)
        shard_worker = {}
        for cid, w in owner.items():
            shard = (cid[0], int(cid[-3:]) // SHARD)
            assert shard_worker.setdefault(shard, w) == w, f"shard {shard} read by two workers"
        assert sorted(set(shard_worker.values())) == [0, 1]  # both workers read, disjoint shards
        orders.append((order, shard_worker))
    assert orders[0] != orders[1]  # a new shard order (and shuffle) each epoch
    assert _read_epoch(dl, 1)[1] == orders[1][0]  # the same epoch again: the same order (seed + epoch)


def test_trainer_sets_the_shar_epoch(shar_dirs, tmp_path):
    """Through the Trainer: two epochs, each sees every cut once, in different orders."""
    dl = shar_train_dataloader(_cfg(shar_dirs, num_workers=1), require_text=False, dataset_cls=SslDataset)
    seen = []

    def compute_loss(model, batch, is_training):
        seen.append(list(batch["cut_ids"]))
        loss = model(batch["feats"]).pow(2).sum()
        frames = float(batch["feat_lens"].sum())
        return loss / frames, {"loss": float(loss.detach())}, frames

    cfg = TrainConfig(num_epochs=2, lr=1e-3, device="cpu", tensorboard=False, progress_bar=False,
                      count_flops=False, warmup_steps=0, average_period=0)
    trainer = Trainer(cfg, nn.Linear(80, 2), dl, tmp_path / "exp", compute_loss)
    trainer.fit()
    per_epoch = len(seen) // 2
    epochs = [[c for b in seen[:per_epoch] for c in b], [c for b in seen[per_epoch:] for c in b]]
    assert sorted(epochs[0]) == sorted(epochs[1]) and len(set(epochs[0])) == len(epochs[0]) == 30
    assert epochs[0] != epochs[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, world_size: int, port: int, dirs, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        dl = shar_train_dataloader(_cfg(dirs, num_workers=0), require_text=False, dataset_cls=SslDataset,
                                   rank=rank, world_size=world_size)
        dl.dataset.set_epoch(0)
        ids, batches = [], 0
        for batch in dl:
            ids += batch["cut_ids"]
            batches += 1
        # without the loader's synchronisation: what this rank's shards hold
        dl.dataset.set_epoch(0)
        full = [c.id for c in dl.dataset.sampler.cuts[0]]
        torch.save({"ids": ids, "batches": batches, "full": full}, Path(out_dir) / f"rank-{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_read_disjoint_shards_and_end_their_epoch_together(tmp_path):
    # 5 shards: rank 0 reads 3, rank 1 reads 2, so rank 0 has more batches; both must stop together
    dirs = [write_shar(tmp_path, "c", 5 * SHARD)]
    mp.start_processes(_rank_worker, args=(2, _free_port(), dirs, str(tmp_path)), nprocs=2, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank-{r}.pt", weights_only=True) for r in (0, 1))
    assert not set(r0["full"]) & set(r1["full"])
    assert sorted(r0["full"] + r1["full"]) == [f"c-{i:03d}" for i in range(20)]  # every cut once over the ranks
    assert {len(r0["full"]), len(r1["full"])} == {12, 8}
    assert r0["batches"] == r1["batches"] > 0  # the longer rank dropped its tail
    assert set(r0["ids"]) <= set(r0["full"]) and set(r1["ids"]) <= set(r1["full"])
