#!/usr/bin/env bash
# Source from a recipe: defines train_steps, the one way a recipe stage trains to a step budget, and
# has_checkpoint, the one test of whether a training run can resume (epoch-based stages use it alone).
#   . ../../../tools/train_steps.sh
#   train_steps STAGE EXP_DIR CONFIG STEPS [key=value ...]
#   if has_checkpoint EXP_DIR; then resume="--resume"; fi
# Skips the stage when EXP_DIR/model.pt exists; resumes from EXP_DIR's newest checkpoint when there is one;
# trains to train.max_steps=STEPS (epochs unbounded); then `asrkit export --latest` writes model.pt (a step
# budget ends mid-epoch), which marks the stage finished and is what later stages read.
# The training command is `asrkit train`, or the array train_launch when the recipe sets it, e.g.
#   train_launch=(torchrun --nproc_per_node 4 -m asrkit.bin.train)
# The recipe defines log STAGE MESSAGE.

has_checkpoint() {  # DIR: true when DIR holds a step or an epoch checkpoint, either kind alone enough
  compgen -G "$1/checkpoint-*.pt" >/dev/null || compgen -G "$1/epoch-*.pt" >/dev/null
}

train_steps() {
  local n=$1 dir=$2 config=$3 steps=$4
  shift 4
  if [ -f "$dir/model.pt" ]; then log "$n" "skip: $dir/model.pt exists"; return; fi
  local resume="" cmd=(asrkit train)
  if [ -n "${train_launch+set}" ]; then cmd=("${train_launch[@]}"); fi
  if has_checkpoint "$dir"; then resume="--resume"; fi
  log "$n" "train $config into $dir for $steps steps ${resume:+(resuming)}"
  "${cmd[@]}" --config "$config" $resume exp_dir="$dir" train.max_steps="$steps" train.num_epochs=1000000 "$@"
  asrkit export --latest --exp-dir "$dir"
}
