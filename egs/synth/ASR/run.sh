#!/usr/bin/env bash
# Synthetic English ASR with a Zipformer transducer + CTC, end to end on a laptop CPU (make demo):
#   ./run.sh                          # all stages
#   ./run.sh --stage 3 --stop-stage 4 # train and decode only
# Stages: 0 synthesise speech (espeak-ng), 1 fbank, 2 BPE tokenizer, 3 train, 4 decode + score.
# A finished stage is skipped (its marker file exists); training resumes from its newest checkpoint.
set -euo pipefail
cd "$(dirname "$0")"

stage=0
stop_stage=4
data=data      # where corpora, features and the tokenizer go
nj=2
lang=en
num_train=2000
num_dev=100
num_test=200
seed=0
num_words=100  # 0: the whole built-in word list (~340 words); N: only its first N words
token_type=char  # char | bpe
vocab_size=200   # bpe only
config=conf/zipformer_transducer.yaml   # or conf/zipformer_ctc.yaml (then --methods "ctc-greedy ctc-prefix-beam")
exp_dir=exp/zipformer_transducer
epochs=7
avg=2
use_averaged_model=true  # average the running weight averages (icefall's --use-averaged-model)
methods="greedy-search modified-beam-search"  # asrkit decode --method names
beam=4
overrides=""   # extra key=value for asrkit train, e.g. "train.lr=2e-3 data.max_duration=150"

. ../../../tools/parse_options.sh
. ../../../tools/train_steps.sh  # has_checkpoint

corpus="$data/synth-$lang"
prefix="synth-$lang"
if [ "$token_type" = bpe ]; then lang_dir="$data/lang_bpe_$vocab_size"; else lang_dir="$data/lang_$token_type"; fi
log() { echo "$(date '+%F %T') [stage $1] $2"; }
run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }

if run_stage 0; then
  if [ -f "$corpus/.done" ]; then log 0 "skip: $corpus/.done exists"; else
    log 0 "synthesise $num_train/$num_dev/$num_test $lang utterances"
    asrkit synth --lang "$lang" --out-dir "$corpus" --num-train "$num_train" --num-dev "$num_dev" \
      --num-test "$num_test" --seed "$seed" --num-jobs "$nj" ${num_words:+$([ "$num_words" -gt 0 ] && echo --vocab-size "$num_words")}
    touch "$corpus/.done"
  fi
fi

if run_stage 1; then
  if [ -f "$data/fbank/.done" ]; then log 1 "skip: $data/fbank/.done exists"; else
    log 1 "compute fbank"
    asrkit compute-fbank --cuts "$corpus"/manifests/"${prefix}"_cuts_{train,dev,test}.jsonl.gz \
      --out-dir "$data/fbank" --num-jobs "$nj"
    touch "$data/fbank/.done"
  fi
fi

if run_stage 2; then
  if [ -f "$lang_dir/.done" ]; then log 2 "skip: $lang_dir/.done exists"; else
    log 2 "build the $token_type tokenizer in $lang_dir"
    asrkit train-tokenizer --cuts "$data/fbank/${prefix}_cuts_train.jsonl.gz" --lang-dir "$lang_dir" \
      --type "$token_type" --vocab-size "$vocab_size"
    touch "$lang_dir/.done"
  fi
fi

if run_stage 3; then
  if [ -f "$exp_dir/epoch-$epochs.pt" ]; then log 3 "skip: $exp_dir/epoch-$epochs.pt exists"; else
    resume=""
    if has_checkpoint "$exp_dir"; then resume="--resume"; fi
    log 3 "train $config into $exp_dir ${resume:+(resuming)}"
    # shellcheck disable=SC2086  # overrides is a list of key=value words
    asrkit train --config "$config" $resume exp_dir="$exp_dir" lang_dir="$lang_dir" \
      data.train_cuts="$data/fbank/${prefix}_cuts_train.jsonl.gz" \
      data.valid_cuts="$data/fbank/${prefix}_cuts_dev.jsonl.gz" train.num_epochs="$epochs" $overrides
  fi
fi

if run_stage 4; then
  log 4 "decode and score (epoch $epochs, average of $avg, averaged model: $use_averaged_model)"
  avg_opts=(--epoch "$epochs" --avg "$avg")
  if [ "$use_averaged_model" = true ]; then avg_opts+=(--use-averaged-model); fi
  asrkit export --exp-dir "$exp_dir" "${avg_opts[@]}"
  # shellcheck disable=SC2086  # methods is a list of words
  asrkit decode --exp-dir "$exp_dir" "${avg_opts[@]}" --method $methods --beam "$beam" \
    --cuts "$data/fbank/${prefix}_cuts_dev.jsonl.gz" "$data/fbank/${prefix}_cuts_test.jsonl.gz" \
    | tee "$exp_dir/results.txt"
fi
