#!/usr/bin/env bash
# Supervised Vietnamese ASR: Zipformer (medium) pruned transducer + CTC on BPE 2000, one GPU (VietASR's baseline).
#   ./run.sh --corpus vivos --corpus-dir /data/vivos
#   ./run.sh --corpus gigaspeech2 --corpus-dir /data/gigaspeech2 --train-split train_refined --dev-split dev
#   ./run.sh --corpus commonvoice --corpus-dir /data/cv-corpus-17.0 --stage 3 --num-gpus 2
# Stages: 0 cut manifests (asrkit prepare), 1 fbank, 2 BPE tokenizer, 3 train, 4 decode + score (WER).
# A finished stage is skipped (its marker exists); training resumes from its newest checkpoint.
set -euo pipefail
cd "$(dirname "$0")"

stage=0
stop_stage=4
corpus=vivos         # vivos | gigaspeech2 | commonvoice (asrkit prepare)
corpus_dir=""        # your local copy of it
data=data
nj=8
train_split=train    # gigaspeech2: train_refined (or train_raw)
dev_split=test       # vivos has train/test only; gigaspeech2 / commonvoice: dev
test_splits=test
vocab_size=2000
config=conf/zipformer_transducer.yaml
exp_dir=exp/zipformer_transducer
num_gpus=1           # >1: torchrun DDP
epochs=30
avg=9
methods="greedy-search modified-beam-search"
beam=4
overrides=""         # key=value for asrkit train, e.g. "data.max_duration=600"

. ../../../tools/parse_options.sh
. ../../../tools/train_steps.sh  # has_checkpoint

manifests="$data/manifests"
fbank="$data/fbank"
lang_dir="$data/lang_bpe_$vocab_size"
log() { echo "$(date '+%F %T') [stage $1] $2"; }
run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
splits=$(printf '%s\n' "$train_split" "$dev_split" $test_splits | sort -u | tr '\n' ' ')

if run_stage 0; then
  if [ -f "$manifests/.${corpus}.done" ]; then log 0 "skip: $manifests/.${corpus}.done exists"; else
    [ -n "$corpus_dir" ] || { echo "$0: --corpus-dir is needed for stage 0" >&2; exit 1; }
    log 0 "cut manifests of $corpus from $corpus_dir"
    asrkit prepare "$corpus" --corpus-dir "$corpus_dir" --out-dir "$manifests" --num-jobs "$nj"
    touch "$manifests/.${corpus}.done"
  fi
fi

if run_stage 1; then
  if [ -f "$fbank/.${corpus}.done" ]; then log 1 "skip: $fbank/.${corpus}.done exists"; else
    log 1 "fbank of $corpus: $splits"
    cuts=()
    for s in $splits; do cuts+=("$manifests/${corpus}_cuts_$s.jsonl.gz"); done
    asrkit compute-fbank --cuts "${cuts[@]}" --out-dir "$fbank" --num-jobs "$nj"
    touch "$fbank/.${corpus}.done"
  fi
fi

if run_stage 2; then
  if [ -f "$lang_dir/.done" ]; then log 2 "skip: $lang_dir/.done exists"; else
    log 2 "BPE $vocab_size on the $train_split transcripts"
    asrkit train-tokenizer --cuts "$fbank/${corpus}_cuts_$train_split.jsonl.gz" --lang-dir "$lang_dir" \
      --type bpe --vocab-size "$vocab_size"
    touch "$lang_dir/.done"
  fi
fi

if run_stage 3; then
  if [ -f "$exp_dir/epoch-$epochs.pt" ]; then log 3 "skip: $exp_dir/epoch-$epochs.pt exists"; else
    resume=""
    if has_checkpoint "$exp_dir"; then resume="--resume"; fi
    launch=(asrkit train)
    if [ "$num_gpus" -gt 1 ]; then launch=(torchrun --nproc_per_node "$num_gpus" -m asrkit.bin.train); fi
    log 3 "train $config into $exp_dir on $num_gpus GPU(s) ${resume:+(resuming)}"
    # shellcheck disable=SC2086
    "${launch[@]}" --config "$config" $resume exp_dir="$exp_dir" lang_dir="$lang_dir" \
      data.train_cuts="$fbank/${corpus}_cuts_$train_split.jsonl.gz" \
      data.valid_cuts="$fbank/${corpus}_cuts_$dev_split.jsonl.gz" train.num_epochs="$epochs" $overrides
  fi
fi

if run_stage 4; then
  log 4 "decode epoch $epochs, average of $avg (running weight averages)"
  cuts=()
  for s in $test_splits; do cuts+=("$fbank/${corpus}_cuts_$s.jsonl.gz"); done
  asrkit export --exp-dir "$exp_dir" --epoch "$epochs" --avg "$avg" --use-averaged-model
  # shellcheck disable=SC2086
  asrkit decode --exp-dir "$exp_dir" --epoch "$epochs" --avg "$avg" --use-averaged-model --method $methods \
    --beam "$beam" --cuts "${cuts[@]}" | tee "$exp_dir/results.txt"
fi
