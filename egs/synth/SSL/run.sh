#!/usr/bin/env bash
# VietASR (arXiv 2505.21527) in miniature: ASR-biased self-supervised pretraining on synthetic Vietnamese.
#   ./run.sh                                   # every stage (timings: README)
#   ./run.sh --iterations 3 --stage 5          # one more ASR-biased iteration
# A small labelled set (--num-labelled utterances) and a large unlabelled one (--num-unlabelled, transcripts
# dropped); four kinds of system, each fine-tuned on the labelled set for the same --ft-steps:
#   supervised only; fbank-HuBERT (k-means on fbank, pretrain, fine-tune); ASR-biased iteration 1 (k-means on
#   the supervised model's 50 Hz encoder output); iteration i > 1 (on iteration i-1's fine-tuned encoder).
# Stages: 0 synthesise speech (espeak-ng), 1 fbank + labelled/unlabelled split, 2 character lang dir,
#   3 supervised baseline, 4 fbank-HuBERT: k-means, labels, pretraining, fine-tuning,
#   5 ASR-biased iterations 1..--iterations (same four steps each), 6 decode + WER, 7 results table exp/results.md.
# A finished step is skipped (its marker exists: .done, kmeans.npz, model.pt, .decoded); training resumes from
# its newest checkpoint.
set -euo pipefail
cd "$(dirname "$0")"

stage=0
stop_stage=7
data=data
exp=exp
nj=2
num_labelled=200   # 50 is too few: the supervised transducer stays at ~95% dev WER after 1,000 steps (README)
labelled_repeat=3  # fine-tuning epochs pass over the labelled cuts this many times (local/split_labelled.py)
num_unlabelled=2000
num_dev=100
num_test=200
train_speakers=40
dev_speakers=5
test_speakers=10
seed=0
num_words=100     # words of the built-in Vietnamese list used (0: all)
min_words=3
max_words=8
iterations=2      # ASR-biased iterations after the supervised model
num_clusters=100  # k-means clusters (VietASR: 500 on ~100 h)
kmeans_hours=""   # fit k-means on at most this many hours of frames (empty: all)
kmeans_n_init=5
layer=""          # encoder stack whose output is clustered (empty: the encoder's 50 Hz output)
pt_steps=1500     # pretraining steps of each SSL system
ft_steps=1000     # fine-tuning steps of every system, the supervised baseline included
method=greedy-search
overrides=""      # key=value for every training run, e.g. "train.device=cpu data.num_workers=0"
encoder_overrides=""  # key=value for the encoder of every run (model.encoder_conf.*): they must agree
pt_overrides=""   # key=value for pretraining only
ft_overrides=""   # key=value for fine-tuning and the supervised baseline only
device=""         # asrkit ssl / decode --device (default: cuda when available)

. ../../../tools/parse_options.sh
. ../../../tools/train_steps.sh

prefix="synth-vi"
corpus="$data/$prefix"
fbank="$data/fbank"
lang_dir="$data/lang_char"
labelled="$fbank/${prefix}_cuts_labelled.jsonl.gz"
labelled_train="$fbank/${prefix}_cuts_labelled_x$labelled_repeat.jsonl.gz"
unlabelled="$fbank/${prefix}_cuts_unlabelled.jsonl.gz"
dev="$fbank/${prefix}_cuts_dev.jsonl.gz"
test_cuts="$fbank/${prefix}_cuts_test.jsonl.gz"
python_bin=$(command -v python3 || command -v python)
log() { echo "$(date '+%F %T') [stage $1] $2"; }
run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
case "$iterations" in ''|*[!0-9]*) echo "$0: --iterations must be a number >= 0, not $iterations" >&2; exit 1 ;; esac
systems=("supervised only|$exp/supervised|-" "fbank-HuBERT|$exp/hubert_fbank/finetune|$exp/hubert_fbank/kmeans.npz")
for i in $(seq 1 "$iterations"); do
  systems+=("ASR-biased iteration $i|$exp/iter$i/finetune|$exp/iter$i/kmeans.npz")
done

# train_to STAGE EXP_DIR CONFIG STEPS [key=value ...]: train (or resume) to STEPS steps, then model.pt
train_to() {  # STAGE EXP_DIR CONFIG STEPS [key=value ...]
  local n=$1 dir=$2 config=$3 steps=$4
  shift 4
  # shellcheck disable=SC2086  # the *overrides are lists of key=value words
  train_steps "$n" "$dir" "$config" "$steps" "$@" $encoder_overrides $overrides
}

# finetune STAGE EXP_DIR [INIT_FROM]: transducer + CTC on the labelled set, from INIT_FROM's encoder if given
finetune() {
  # shellcheck disable=SC2086
  train_to "$1" "$2" conf/finetune.yaml "$ft_steps" lang_dir="$lang_dir" data.train_cuts="$labelled_train" \
    data.valid_cuts="$dev" ${3:+init_from="$3"} $ft_overrides
}

# ssl_system STAGE DIR SOURCE: k-means on SOURCE's frames (fbank | an experiment dir), labels of the
# unlabelled set, masked-prediction pretraining on them, fine-tuning from the pretrained encoder
ssl_system() {
  local n=$1 dir=$2 source=$3
  mkdir -p "$dir"
  if [ -f "$dir/kmeans.npz" ]; then log "$n" "skip: $dir/kmeans.npz exists"; else
    log "$n" "k-means ($num_clusters clusters) on $source frames of the unlabelled set"
    asrkit ssl kmeans --cuts "$unlabelled" --source "$source" --out "$dir/kmeans.npz" --num-clusters "$num_clusters" \
      --n-init "$kmeans_n_init" --seed "$seed" --num-workers 0 ${kmeans_hours:+--max-hours "$kmeans_hours"} \
      ${layer:+--layer "$layer"} ${device:+--device "$device"}
  fi
  if [ -f "$dir/labels/.done" ] && [ "$dir/labels/.done" -nt "$dir/kmeans.npz" ]; then
    log "$n" "skip: $dir/labels/.done exists"
  else
    log "$n" "label the unlabelled set with $dir/kmeans.npz"
    asrkit ssl label --cuts "$unlabelled" --kmeans "$dir/kmeans.npz" --out-dir "$dir/labels" --num-workers 0 \
      ${device:+--device "$device"}
    touch "$dir/labels/.done"
  fi
  # shellcheck disable=SC2086
  train_to "$n" "$dir/pretrain" conf/pretrain.yaml "$pt_steps" \
    data.train_cuts="$dir/labels/${prefix}_cuts_unlabelled.jsonl.gz" model.num_classes="$num_clusters" $pt_overrides
  finetune "$n" "$dir/finetune" "$dir/pretrain"
}

if run_stage 0; then
  if [ -f "$corpus/.done" ]; then log 0 "skip: $corpus/.done exists"; else
    log 0 "synthesise $((num_labelled + num_unlabelled))/$num_dev/$num_test Vietnamese utterances"
    asrkit synth --lang vi --out-dir "$corpus" --num-train "$((num_labelled + num_unlabelled))" --num-dev "$num_dev" \
      --num-test "$num_test" --train-speakers "$train_speakers" --dev-speakers "$dev_speakers" \
      --test-speakers "$test_speakers" --seed "$seed" --num-jobs "$nj" --min-words "$min_words" \
      --max-words "$max_words" ${num_words:+$([ "$num_words" -gt 0 ] && echo --vocab-size "$num_words")}
    touch "$corpus/.done"
  fi
fi

if run_stage 1; then
  if [ -f "$fbank/.done" ]; then log 1 "skip: $fbank/.done exists"; else
    log 1 "compute fbank; keep $num_labelled training utterances labelled, drop the others' transcripts"
    asrkit compute-fbank --cuts "$corpus"/manifests/"${prefix}"_cuts_{train,dev,test}.jsonl.gz \
      --out-dir "$fbank" --num-jobs "$nj"
    "$python_bin" local/split_labelled.py --cuts "$fbank/${prefix}_cuts_train.jsonl.gz" \
      --num-labelled "$num_labelled" --labelled "$labelled" --unlabelled "$unlabelled" \
      --repeat "$labelled_repeat" --labelled-repeated "$labelled_train"
    touch "$fbank/.done"
  fi
fi

if run_stage 2; then
  if [ -f "$lang_dir/.done" ]; then log 2 "skip: $lang_dir/.done exists"; else
    log 2 "character table of the labelled transcripts in $lang_dir"
    asrkit train-tokenizer --cuts "$labelled" --lang-dir "$lang_dir" --type char
    touch "$lang_dir/.done"
  fi
fi

if run_stage 3; then
  finetune 3 "$exp/supervised"
fi

if run_stage 4; then
  ssl_system 4 "$exp/hubert_fbank" fbank
fi

if run_stage 5; then
  source_dir="$exp/supervised"
  for i in $(seq 1 "$iterations"); do
    [ -f "$source_dir/model.pt" ] || { echo "$0: $source_dir/model.pt missing: run the stage before" >&2; exit 1; }
    ssl_system 5 "$exp/iter$i" "$source_dir"
    source_dir="$exp/iter$i/finetune"
  done
fi

if run_stage 6; then
  for sys in "${systems[@]}"; do
    IFS='|' read -r _ dir _ <<< "$sys"
    if [ -f "$dir/.decoded" ] && [ "$dir/.decoded" -nt "$dir/model.pt" ]; then
      log 6 "skip: $dir/.decoded is newer than its model.pt"; continue
    fi
    log 6 "decode $dir with $method, score WER"
    asrkit decode --exp-dir "$dir" --method "$method" ${device:+--device "$device"} --cuts "$dev" "$test_cuts" \
      | tee "$dir/results.txt"
    touch "$dir/.decoded"
  done
fi

if run_stage 7; then
  log 7 "results table in $exp/results.md"
  args=()
  for sys in "${systems[@]}"; do
    IFS='|' read -r name dir km <<< "$sys"
    args+=(--system "$name" "$dir" "$method" kmeans="$km")
  done
  asrkit results --columns targets steps rate --out "$exp/results.md" \
    --test-sets "${prefix}_cuts_dev" "${prefix}_cuts_test" --title "VietASR in miniature: $num_labelled labelled + $num_unlabelled unlabelled synthetic \
Vietnamese utterances, $ft_steps fine-tuning steps each, $pt_steps pretraining steps" "${args[@]}"
fi
