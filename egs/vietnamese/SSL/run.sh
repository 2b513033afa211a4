#!/usr/bin/env bash
# VietASR (arXiv 2505.21527) at full scale: ASR-biased SSL on unlabelled Vietnamese audio, one GPU per run.
#   ./run.sh --corpus vivos --corpus-dir /data/vivos --audio-dir /data/vi_unlabelled
#   ./run.sh --corpus gigaspeech2 --corpus-dir /data/gigaspeech2 --train-split train_refined --dev-split dev \
#            --audio-dir /data/vi_youtube --iterations 2 --num-gpus 4
# Stages: 0 labelled cut manifests (asrkit prepare), 1 segment the unlabelled audio (asrkit segment, Silero VAD),
#   2 fbank of the labelled set, 3 BPE 2000, 4 supervised baseline on the labelled set,
#   5 [--fbank-hubert true] k-means on fbank -> labels -> pretraining -> fine-tuning,
#   6 ASR-biased iterations 1..--iterations: k-means (--num-clusters 500 on --kmeans-hours 100 h) of the 50 Hz
#     encoder output of the supervised model (iteration 1) or of the previous fine-tuned model, labels written as
#     Shar (recording flac + ssl_targets), masked-prediction pretraining from that Shar, fine-tuning,
#   7 decode + WER, 8 results table exp/results.md.
# Every step is skipped once its marker exists; training resumes from its newest checkpoint.
set -euo pipefail
cd "$(dirname "$0")"

stage=0
stop_stage=8
corpus=vivos          # labelled: vivos | gigaspeech2 | commonvoice (asrkit prepare)
corpus_dir=""
audio_dir=""          # unlabelled long recordings (asrkit segment --audio-dir)
data=data
exp=exp
nj=8
train_split=train
dev_split=test
test_splits=test
vocab_size=2000
iterations=2
fbank_hubert=false    # also the plain HuBERT system (k-means on fbank)
num_clusters=500
kmeans_hours=100      # k-means on the first ~100 h of frames of a shuffled pass (VietASR)
kmeans_n_init=20
layer=""              # encoder stack to cluster (empty: the encoder's 50 Hz output)
shard_size=1000       # cuts per Shar shard of the labels (keep shards >= GPUs x data.num_workers)
pt_steps=200000       # pretraining steps per iteration
ft_steps=60000        # fine-tuning steps of every system, the supervised baseline included
num_gpus=1            # >1: torchrun DDP for every training run
method=greedy-search
overrides=""          # key=value for every training run
pt_overrides=""
ft_overrides=""
device=""             # asrkit ssl / decode --device (default: cuda when available)

. ../../../tools/parse_options.sh
. ../../../tools/train_steps.sh

manifests="$data/manifests"
fbank="$data/fbank"
lang_dir="$data/lang_bpe_$vocab_size"
unlabelled="$data/unlabelled/cuts.jsonl.gz"   # written by asrkit segment
train_cuts="$fbank/${corpus}_cuts_$train_split.jsonl.gz"
dev_cuts="$fbank/${corpus}_cuts_$dev_split.jsonl.gz"
python_bin=$(command -v python3 || command -v python)
log() { echo "$(date '+%F %T') [stage $1] $2"; }
run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
splits=$(printf '%s\n' "$train_split" "$dev_split" $test_splits | sort -u | tr '\n' ' ')
train_launch=(asrkit train)
if [ "$num_gpus" -gt 1 ]; then train_launch=(torchrun --nproc_per_node "$num_gpus" -m asrkit.bin.train); fi
systems=("supervised only|$exp/supervised|-")
if [ "$fbank_hubert" = true ]; then systems+=("fbank-HuBERT|$exp/hubert_fbank/finetune|$exp/hubert_fbank/kmeans.npz"); fi
for i in $(seq 1 "$iterations"); do systems+=("ASR-biased iteration $i|$exp/iter$i/finetune|$exp/iter$i/kmeans.npz"); done

train_to() {  # STAGE EXP_DIR CONFIG STEPS [key=value ...], on $num_gpus GPU(s) (train_launch)
  local n=$1 dir=$2 config=$3 steps=$4
  shift 4
  # shellcheck disable=SC2086
  train_steps "$n" "$dir" "$config" "$steps" "$@" $overrides
}

finetune() {  # STAGE EXP_DIR [INIT_FROM]
  # shellcheck disable=SC2086
  train_to "$1" "$2" conf/finetune.yaml "$ft_steps" lang_dir="$lang_dir" data.train_cuts="$train_cuts" \
    data.valid_cuts="$dev_cuts" ${3:+init_from="$3"} $ft_overrides
}

ssl_system() {  # STAGE DIR SOURCE (fbank | experiment dir)
  local n=$1 dir=$2 source=$3
  mkdir -p "$dir"
  if [ -f "$dir/kmeans.npz" ]; then log "$n" "skip: $dir/kmeans.npz exists"; else
    log "$n" "k-means ($num_clusters clusters, <= $kmeans_hours h) on $source frames of the unlabelled audio"
    asrkit ssl kmeans --cuts "$unlabelled" --source "$source" --out "$dir/kmeans.npz" --num-clusters "$num_clusters" \
      --max-hours "$kmeans_hours" --n-init "$kmeans_n_init" --num-workers "$nj" ${layer:+--layer "$layer"} \
      ${device:+--device "$device"}
  fi
  if [ -f "$dir/labels/.done" ] && [ "$dir/labels/.done" -nt "$dir/kmeans.npz" ]; then
    log "$n" "skip: $dir/labels/.done exists"
  else
    log "$n" "labels of the unlabelled audio, as Shar in $dir/labels/shar"
    rm -rf "$dir/labels/shar"
    asrkit ssl label --cuts "$unlabelled" --kmeans "$dir/kmeans.npz" --out-dir "$dir/labels" --shar \
      --shard-size "$shard_size" --num-workers "$nj" ${device:+--device "$device"}
    touch "$dir/labels/.done"
  fi
  # shellcheck disable=SC2086
  train_to "$n" "$dir/pretrain" conf/pretrain.yaml "$pt_steps" data.train_shar="$dir/labels/shar" \
    model.num_classes="$num_clusters" $pt_overrides
  finetune "$n" "$dir/finetune" "$dir/pretrain"
}

if run_stage 0; then
  if [ -f "$manifests/.${corpus}.done" ]; then log 0 "skip: $manifests/.${corpus}.done exists"; else
    [ -n "$corpus_dir" ] || { echo "$0: --corpus-dir is needed for stage 0" >&2; exit 1; }
    log 0 "cut manifests of $corpus from $corpus_dir"
    asrkit prepare "$corpus" --corpus-dir "$corpus_dir" --out-dir "$manifests" --num-jobs "$nj"
    touch "$manifests/.${corpus}.done"
  fi
fi

if run_stage 1; then
  if [ -f "$data/unlabelled/.done" ]; then log 1 "skip: $data/unlabelled/.done exists"; else
    [ -n "$audio_dir" ] || { echo "$0: --audio-dir (unlabelled audio) is needed for stage 1" >&2; exit 1; }
    log 1 "segment the unlabelled audio in $audio_dir"
    asrkit segment --audio-dir "$audio_dir" --out-dir "$data/unlabelled" --shar --num-jobs "$nj"
    touch "$data/unlabelled/.done"
  fi
fi

if run_stage 2; then
  if [ -f "$fbank/.${corpus}.done" ]; then log 2 "skip: $fbank/.${corpus}.done exists"; else
    log 2 "fbank of $corpus: $splits"
    cuts=()
    for s in $splits; do cuts+=("$manifests/${corpus}_cuts_$s.jsonl.gz"); done
    asrkit compute-fbank --cuts "${cuts[@]}" --out-dir "$fbank" --num-jobs "$nj"
    touch "$fbank/.${corpus}.done"
  fi
fi

if run_stage 3; then
  if [ -f "$lang_dir/.done" ]; then log 3 "skip: $lang_dir/.done exists"; else
    log 3 "BPE $vocab_size on the $train_split transcripts"
    asrkit train-tokenizer --cuts "$train_cuts" --lang-dir "$lang_dir" --type bpe --vocab-size "$vocab_size"
    touch "$lang_dir/.done"
  fi
fi

if run_stage 4; then
  finetune 4 "$exp/supervised"
fi

if run_stage 5 && [ "$fbank_hubert" = true ]; then
  ssl_system 5 "$exp/hubert_fbank" fbank
fi

if run_stage 6; then
  source_dir="$exp/supervised"
  for i in $(seq 1 "$iterations"); do
    [ -f "$source_dir/model.pt" ] || { echo "$0: $source_dir/model.pt missing: run the stage before" >&2; exit 1; }
    ssl_system 6 "$exp/iter$i" "$source_dir"
    source_dir="$exp/iter$i/finetune"
  done
fi

if run_stage 7; then
  cuts=()
  for s in $test_splits; do cuts+=("$fbank/${corpus}_cuts_$s.jsonl.gz"); done
  for sys in "${systems[@]}"; do
    IFS='|' read -r _ dir _ <<< "$sys"
    if [ -f "$dir/.decoded" ] && [ "$dir/.decoded" -nt "$dir/model.pt" ]; then
      log 7 "skip: $dir/.decoded is newer than its model.pt"; continue
    fi
    log 7 "decode $dir with $method"
    asrkit decode --exp-dir "$dir" --method "$method" ${device:+--device "$device"} --cuts "${cuts[@]}" \
      | tee "$dir/results.txt"
    touch "$dir/.decoded"
  done
fi

if run_stage 8; then
  args=()
  for sys in "${systems[@]}"; do IFS='|' read -r name dir km <<< "$sys"; args+=(--system "$name" "$dir" "$method" kmeans="$km"); done
  test_sets=()
  for s in $test_splits; do test_sets+=("${corpus}_cuts_$s"); done
  asrkit results --columns targets steps rate --out "$exp/results.md" --test-sets "${test_sets[@]}" \
    --title "VietASR: $corpus labelled + $audio_dir unlabelled, $ft_steps fine-tuning steps each" "${args[@]}"
fi
