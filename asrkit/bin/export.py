"""Average checkpoints into ``exp_dir/model.pt`` (model weights only), for transcribe and sharing.

    asrkit export --exp-dir exp/transducer --epoch 10 --avg 3 --use-averaged-model
"""

from pathlib import Path

from asrkit.bin.decode import add_checkpoint_args
from asrkit.training.checkpoint import averaged_state_dict, save_checkpoint


def add_args(p):
    p.add_argument("--exp-dir", required=True)
    add_checkpoint_args(p)


def run(args):
    if args.epoch is None:
        raise SystemExit("asrkit export: --epoch is required")
    exp_dir = Path(args.exp_dir)
    state = averaged_state_dict(exp_dir, args.epoch, args.avg, args.use_averaged_model)
    save_checkpoint(exp_dir / "model.pt", {"model": state})
    how = "running averages" if args.use_averaged_model else "epoch checkpoints"
    print(f"wrote {exp_dir / 'model.pt'}: epoch {args.epoch}, avg {args.avg} ({how})")
