"""Write ``exp_dir/model.pt`` (model weights only), for decode, transcribe, stage hand-over and sharing.

    asrkit export --exp-dir exp/transducer --epoch 10 --avg 3 --use-averaged-model   # average epochs
    asrkit export --exp-dir exp/efin_stage2 --latest    # the newest checkpoint (a run budgeted by steps)

``--latest`` is what a recipe stage does when training stops at ``train.max_steps`` mid-epoch: the
newest ``checkpoint-N.pt``/``epoch-N.pt`` becomes ``model.pt``, carrying its step, epoch and training
FLOPs (``asrkit results`` and ``asrkit scaling`` read them), and ``model.pt`` marks the stage finished.
"""

from pathlib import Path

from asrkit.bin.decode import add_checkpoint_args
from asrkit.training.checkpoint import averaged_state_dict, latest_checkpoint, load_checkpoint, save_checkpoint


def add_args(p):
    p.add_argument("--exp-dir", required=True)
    p.add_argument("--latest", action="store_true", help="take the newest checkpoint as it is (no averaging)")
    add_checkpoint_args(p)


def export_latest(exp_dir: Path) -> Path:
    """``exp_dir/model.pt`` from the newest checkpoint; returns that checkpoint's path."""
    ckpt = latest_checkpoint(exp_dir)
    if ckpt is None:
        raise SystemExit(f"asrkit export: {exp_dir} has no checkpoint-N.pt or epoch-N.pt: did training run?")
    state = load_checkpoint(ckpt)
    out = {"model": state["model"], "source": ckpt.name}
    out.update({k: state[k] for k in ("step", "epoch", "flops") if k in state})
    save_checkpoint(exp_dir / "model.pt", out)
    print(f"wrote {exp_dir / 'model.pt'}: model of {ckpt.name} (step {state.get('step', '?')})")
    return ckpt


def run(args):
    exp_dir = Path(args.exp_dir)
    if args.latest:
        if args.epoch is not None:
            raise SystemExit("asrkit export: --latest and --epoch exclude each other")
        export_latest(exp_dir)
        return
    if args.epoch is None:
        raise SystemExit("asrkit export: --epoch (or --latest) is required")
    state = averaged_state_dict(exp_dir, args.epoch, args.avg, args.use_averaged_model)
    save_checkpoint(exp_dir / "model.pt", {"model": state})
    how = "running averages" if args.use_averaged_model else "epoch checkpoints"
    print(f"wrote {exp_dir / 'model.pt'}: epoch {args.epoch}, avg {args.avg} ({how})")
