"""``asrkit train`` on a tiny real corpus: CTC, transducer and hybrid models train, resume exactly,
and average their weights as icefall's ``--use-averaged-model`` does.

    .venv/bin/pytest tests/test_train_cli.py -q
"""

import pytest
import torch

from asrkit.cli import main
from asrkit.training.checkpoint import averaged_state_dict, load_checkpoint

HEADS = {
    "ctc": {"ctc_weight": 1.0},
    "transducer+ctc": {"transducer_weight": 1.0, "ctc_weight": 0.2,
                       "transducer": {"decoder_dim": 32, "joiner_dim": 32, "warm_step": 4}},
}


def train(cfg, *overrides):
    assert main(["train", "--config", str(cfg), *overrides]) == 0


@pytest.mark.parametrize("heads", sorted(HEADS))
def test_resumed_run_reproduces_the_uninterrupted_one(tmp_path, tiny_asr_experiment, heads):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    cfg_a, _ = tiny_asr_experiment(a, **HEADS[heads])
    cfg_b, _ = tiny_asr_experiment(b, **HEADS[heads])
    common = ["train.num_epochs=2", "train.save_every_n=1", "train.keep_last_k=0"]
    train(cfg_a, *common, "train.max_steps=7")
    train(cfg_b, *common, "train.max_steps=3")  # "killed" after step 3, mid-epoch
    assert main(["train", "--config", str(cfg_b), "--resume", *common, "train.max_steps=7"]) == 0
    ca = load_checkpoint(a / "exp" / "checkpoint-7.pt")
    cb = load_checkpoint(b / "exp" / "checkpoint-7.pt")
    assert ca["epoch"] == 2, "the run should cross an epoch boundary"
    for key in ("model", "model_avg"):
        for name, wa in ca[key].items():
            assert torch.equal(wa, cb[key][name]), f"{key}.{name} differs after resume"


def test_averaged_model_is_the_mean_of_the_snapshots(tmp_path, tiny_asr_experiment):
    """epoch-2's running average minus epoch-1's recovers the mean of epoch 2's snapshots."""
    cfg, _ = tiny_asr_experiment(tmp_path, **HEADS["ctc"])
    train(cfg, "train.num_epochs=2", "train.save_every_n=1", "train.keep_last_k=0", "train.average_period=1")
    exp = tmp_path / "exp"
    e1, e2 = (load_checkpoint(exp / f"epoch-{e}.pt") for e in (1, 2))
    snapshots = [load_checkpoint(exp / f"checkpoint-{s}.pt")["model"] for s in range(e1["step"] + 1, e2["step"] + 1)]
    avg = averaged_state_dict(exp, epoch=2, avg=1, use_averaged_model=True)
    for name, value in avg.items():
        if value.is_floating_point():
            want = torch.stack([s[name].double() for s in snapshots]).mean(0)
            torch.testing.assert_close(value.double(), want, rtol=1e-5, atol=1e-6)
    whole = averaged_state_dict(exp, epoch=2, avg=2, use_averaged_model=True)  # from the start of training
    for name, value in whole.items():
        assert torch.equal(value, e2["model_avg"][name].to(value.dtype))
    with pytest.raises(ValueError, match="--avg"):
        averaged_state_dict(exp, epoch=2, avg=3, use_averaged_model=True)
