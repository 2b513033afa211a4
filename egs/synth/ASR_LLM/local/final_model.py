#!/usr/bin/env python3
"""Write ``EXP_DIR/model.pt`` from the newest checkpoint of a finished run (a step budget ends mid-epoch).

    python local/final_model.py exp/efin_stage2

``model.pt`` is what ``asrkit decode`` loads (without --epoch) and what ``model.encoder_init`` and
``init_from`` read; run.sh also uses it as the stage's "finished" marker. The step and the training
FLOPs of the checkpoint travel along.
"""

import sys
from pathlib import Path

from asrkit.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


def main(exp_dir: str) -> None:
    ckpt = latest_checkpoint(exp_dir)
    if ckpt is None:
        raise SystemExit(f"{exp_dir}: no checkpoint-N.pt or epoch-N.pt; did training run?")
    state = load_checkpoint(ckpt)
    out = {"model": state["model"], "source": ckpt.name}
    for key in ("step", "epoch", "flops"):
        if key in state:
            out[key] = state[key]
    save_checkpoint(Path(exp_dir) / "model.pt", out)
    print(f"{Path(exp_dir) / 'model.pt'}: model of {ckpt.name} (step {state.get('step', '?')})")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
