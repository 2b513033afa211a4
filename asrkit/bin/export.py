"""Average the last checkpoints into ``exp_dir/model.pt`` (model weights only), for transcribe and sharing.

    asrkit export --exp-dir exp/ctc --epoch 10 --avg 3
"""

from pathlib import Path

from asrkit.training.checkpoint import average_checkpoints, epoch_checkpoints, save_checkpoint


def add_args(p):
    p.add_argument("--exp-dir", required=True)
    p.add_argument("--epoch", type=int, required=True)
    p.add_argument("--avg", type=int, default=1)


def run(args):
    exp_dir = Path(args.exp_dir)
    paths = epoch_checkpoints(exp_dir, args.epoch, args.avg)
    save_checkpoint(exp_dir / "model.pt", {"model": average_checkpoints(paths)})
    print(f"wrote {exp_dir / 'model.pt'} from {[p.name for p in paths]}")
