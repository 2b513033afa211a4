"""Average the last checkpoints into ``exp_dir/model.pt`` (model weights only), for transcribe and sharing.

    asrkit export --exp-dir exp/ctc --epoch 10 --avg 3
"""

from pathlib import Path

from asrkit.training.checkpoint import average_checkpoints, save_checkpoint


def add_args(p):
    p.add_argument("--exp-dir", required=True)
    p.add_argument("--epoch", type=int, required=True)
    p.add_argument("--avg", type=int, default=1)


def run(args):
    exp_dir = Path(args.exp_dir)
    paths = [exp_dir / f"epoch-{e}.pt" for e in range(max(1, args.epoch - args.avg + 1), args.epoch + 1)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing checkpoints: {missing}")
    save_checkpoint(exp_dir / "model.pt", {"model": average_checkpoints(paths)})
    print(f"wrote {exp_dir / 'model.pt'} from {[p.name for p in paths]}")
