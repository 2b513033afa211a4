#!/usr/bin/env bash
# AISHELL-1 (178 h of read Mandarin) with a Zipformer pruned-transducer + CTC model on characters.
#   ./run.sh --corpus-dir /data/aishell                  # all stages; the folder that holds data_aishell/
#   ./run.sh --corpus-dir /data/aishell --extract true   # the same, unpacking data_aishell/wav/*.tar.gz first
#   ./run.sh --stage 3 --stop-stage 4 --overrides "data.max_duration=500"   # train and decode only
# Stages: 0 prepare manifests (asrkit prepare aishell), 1 fbank (train speed-perturbed 0.9/1.1),
# 2 character tokenizer, 3 train, 4 export + decode + score (CER).
# A finished stage is skipped (its marker file exists); training resumes from its newest checkpoint.
# Nothing is downloaded: fetch data_aishell.tgz from https://www.openslr.org/33 yourself.
set -euo pipefail
cd "$(dirname "$0")"

stage=0
stop_stage=4
corpus_dir=""  # your AISHELL-1 copy: the folder holding data_aishell/ (stage 0 only)
extract=false  # true: stage 0 unpacks data_aishell/wav/<SPK>.tar.gz files that are not extracted yet
data=data      # where manifests, features and the tokenizer go
nj=8
speed_perturb=true  # add 0.9x and 1.1x copies of the training set, as icefall does
config=conf/zipformer_transducer.yaml
exp_dir=exp/zipformer_transducer
num_gpus=1     # >1: DDP with torchrun; the effective batch is num_gpus x data.max_duration (icefall used 2 GPUs)
epochs=60
decode_epoch=""  # default: $epochs (icefall's published medium row decodes epoch 55, average of 17)
avg=17
use_averaged_model=true  # average the running model averages over the last $avg epochs (icefall's default)
decode_methods="greedy-search modified-beam-search ctc-greedy ctc-prefix-beam"  # asrkit decode --method
beam=4
overrides=""   # extra key=value for asrkit train, e.g. "data.max_duration=500 train.amp_dtype=fp16"

. ../../../tools/parse_options.sh
. ../../../tools/train_steps.sh  # has_checkpoint

manifests="$data/manifests"
fbank="$data/fbank"
lang_dir="$data/lang_char"
decode_epoch=${decode_epoch:-$epochs}
log() { echo "$(date '+%F %T') [stage $1] $2"; }
run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }

if run_stage 0; then
  if [ -f "$manifests/.done" ]; then log 0 "skip: $manifests/.done exists"; else
    if [ -z "$corpus_dir" ]; then
      echo "$0: stage 0 needs --corpus-dir DIR, your AISHELL-1 copy (the folder holding data_aishell/)" >&2; exit 1
    fi
    log 0 "prepare AISHELL-1 manifests from $corpus_dir"
    asrkit prepare aishell --corpus-dir "$corpus_dir" --out-dir "$manifests" --num-jobs "$nj" \
      $([ "$extract" = true ] && echo --extract)
    touch "$manifests/.done"
  fi
fi

if run_stage 1; then
  if [ -f "$fbank/.done" ]; then log 1 "skip: $fbank/.done exists"; else
    log 1 "compute fbank (speed perturbation of train: $speed_perturb)"
    asrkit compute-fbank --cuts "$manifests/aishell_cuts_train.jsonl.gz" --out-dir "$fbank" --num-jobs "$nj" \
      $([ "$speed_perturb" = true ] && echo --speed-perturb 0.9 1.1)
    asrkit compute-fbank --cuts "$manifests"/aishell_cuts_{dev,test}.jsonl.gz --out-dir "$fbank" --num-jobs "$nj"
    touch "$fbank/.done"
  fi
fi

if run_stage 2; then
  if [ -f "$lang_dir/.done" ]; then log 2 "skip: $lang_dir/.done exists"; else
    log 2 "build the character table in $lang_dir"
    asrkit train-tokenizer --cuts "$manifests/aishell_cuts_train.jsonl.gz" --lang-dir "$lang_dir" --type char
    touch "$lang_dir/.done"
  fi
fi

if run_stage 3; then
  if [ -f "$exp_dir/epoch-$epochs.pt" ]; then log 3 "skip: $exp_dir/epoch-$epochs.pt exists"; else
    resume=""
    if has_checkpoint "$exp_dir"; then resume="--resume"; fi
    train=(asrkit train)
    if [ "$num_gpus" -gt 1 ]; then train=(torchrun --nproc_per_node "$num_gpus" -m asrkit.bin.train); fi
    log 3 "train $config into $exp_dir on $num_gpus GPU(s) ${resume:+(resuming)}"
    # shellcheck disable=SC2086  # overrides is a list of key=value words
    "${train[@]}" --config "$config" $resume exp_dir="$exp_dir" lang_dir="$lang_dir" \
      data.train_cuts="$fbank/aishell_cuts_train.jsonl.gz" \
      data.valid_cuts="$fbank/aishell_cuts_dev.jsonl.gz" train.num_epochs="$epochs" $overrides
  fi
fi

if run_stage 4; then
  averaged=""; tag="epoch-$decode_epoch-avg-$avg"
  if [ "$use_averaged_model" = true ]; then averaged="--use-averaged-model"; tag="$tag-use-averaged-model"; fi
  results="$exp_dir/results-$tag-${decode_methods// /_}.txt"
  if [ -f "$results" ]; then log 4 "skip: $results exists"; else
    log 4 "decode and score ($tag: $decode_methods)"
    asrkit export --exp-dir "$exp_dir" --epoch "$decode_epoch" --avg "$avg" $averaged
    # shellcheck disable=SC2086  # decode_methods is a list of method names
    asrkit decode --exp-dir "$exp_dir" --epoch "$decode_epoch" --avg "$avg" $averaged --method $decode_methods \
      --beam "$beam" --unit char --cuts "$fbank"/aishell_cuts_{dev,test}.jsonl.gz > "$results.tmp"
    mv "$results.tmp" "$results"
    cat "$results"
  fi
fi
