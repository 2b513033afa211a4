#!/usr/bin/env bash
# EFIN (arXiv 2508.04096) on AISHELL-1: LLM-based Mandarin ASR, staged (encoder first) vs joint training.
#   ./run.sh --corpus-dir /data/aishell --whisper-dir /models/whisper-small --llm-dir /models/Qwen2-1.5B-Instruct
#   ./run.sh --stage 7 --stop-stage 8 --llm-methods "llm-greedy llm-beam-search"   # decode again, with beams
#   ./run.sh --encoder zipformer --corpus-dir /data/aishell --llm-dir ...  # stage 1: egs/aishell/ASR's transducer
# Stages: 0 prepare manifests from your AISHELL-1 copy (asrkit prepare aishell),
#   1 features: Whisper log-mel with the Whisper's own mel bins (80, or 128 for large-v3/turbo), or fbank
#     for --encoder zipformer; the training set speed-perturbed 0.9/1.1 (--speed-perturb),
#   2 character lang dir (the stage-1 encoder's CTC/transducer targets),
#   3 EFIN stage 1: the speech encoder trained on ASR (Whisper encoder + CTC on characters; or Zipformer),
#   4 EFIN stage 2: projector only (encoder from stage 3 via model.encoder_init, LLM frozen),
#   5 EFIN stage 3: encoder + projector + LoRA (init_from stage 4),
#   6 baseline "joint post-training": the released Whisper encoder (not ASR-fine-tuned; a random Zipformer
#     with --encoder zipformer) + projector + LoRA from the start, trained until it has spent the training
#     FLOPs of EFIN's stages 1-3 together (--baseline-budget flops, the default),
#   7 decode (stage 1: its own head, --stage1-method; LLM systems: --llm-methods) and score CER,
#   8 the results table with training FLOPs, $exp/results.md.
# The Whisper and LLM directories are local Hugging Face dirs (nothing is downloaded; see README.md): by
# default those named in the configs (model.encoder_conf.model_dir of efin_stage1.yaml, model.llm_dir of
# efin_stage2.yaml), else --whisper-dir / --llm-dir. Relative paths are relative to this recipe's folder.
# A finished stage is skipped (its marker exists: .done, model.pt, .decoded); training resumes from its
# newest checkpoint. Training budgets are optimizer steps (train.max_steps).
set -euo pipefail
cd "$(dirname "$0")"

stage=0
stop_stage=8
corpus_dir=""      # your AISHELL-1 copy: the folder holding data_aishell/ (stage 0 only)
extract=false      # true: stage 0 unpacks data_aishell/wav/<SPK>.tar.gz first
data=data
exp=exp
nj=8
speed_perturb=true # add 0.9x and 1.1x copies of the training set (stage 1)
encoder=whisper    # whisper | zipformer: picks conf/<encoder>/, the features and the stage-1 head
conf_dir=""        # default conf/$encoder; conf/tiny is the test's
whisper_dir=""     # default: model.encoder_conf.model_dir of $conf_dir/efin_stage1.yaml
llm_dir=""         # default: model.llm_dir of $conf_dir/efin_stage2.yaml
stage1_config=""   # default $conf_dir/efin_stage1.yaml; --encoder zipformer: ../ASR/conf/zipformer_transducer.yaml
stage1_method=""   # default ctc-greedy (whisper) or greedy-search (zipformer)
stage1_steps=24000 # starting points, not tuned: ~3 epochs of the speed-perturbed set at 200 s per batch
stage2_steps=6000
stage3_steps=12000
baseline_budget=flops  # flops: EFIN's total training FLOPs (stages 1-3, their flops.json) | steps
baseline_steps=""  # --baseline-budget steps: empty = stage2_steps + stage3_steps; flops: a cap (default 1000000)
llm_methods="llm-greedy"  # and/or llm-beam-search
beam=4             # llm-beam-search
max_new_tokens=100 # llm-*: AISHELL transcripts are at most ~45 characters
overrides=""       # key=value for every training stage, e.g. "data.max_duration=100"
encoder_overrides=""  # key=value for the encoder of every stage (model.encoder_conf.*): they must agree
llm_overrides=""   # key=value for the speech-LLM stages (4, 5, 6), e.g. "model.lora.r=16"
device=""          # asrkit decode --device (default: cuda when available)

. ../../../tools/parse_options.sh
. ../../../tools/train_steps.sh

python_bin=$(command -v python3 || command -v python)
log() { echo "$(date '+%F %T') [stage $1] $2"; }
die() { echo "$0: $*" >&2; exit 1; }
run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }

case "$encoder" in
  whisper) feature_type=whisper-fbank; stage1_method=${stage1_method:-ctc-greedy} ;;
  zipformer) feature_type=fbank; stage1_method=${stage1_method:-greedy-search}
    stage1_config=${stage1_config:-../ASR/conf/zipformer_transducer.yaml} ;;
  *) die "--encoder must be whisper or zipformer, not $encoder" ;;
esac
conf_dir=${conf_dir:-conf/$encoder}
stage1_config=${stage1_config:-$conf_dir/efin_stage1.yaml}
[ -d "$conf_dir" ] || die "--conf-dir $conf_dir does not exist"
manifests="$data/manifests"
lang_dir="$data/lang_char"
s1="$exp/efin_stage1"; s2="$exp/efin_stage2"; s3="$exp/efin_stage3"; bl="$exp/baseline_joint"
if [ "$baseline_budget" = flops ]; then baseline_steps=${baseline_steps:-1000000}  # a cap: the FLOPs decide
else baseline_steps=${baseline_steps:-$((stage2_steps + stage3_steps))}; fi

# conf_get FILE KEY.PATH: a value of a YAML config, empty when absent
conf_get() {
  "$python_bin" -c 'import sys, yaml
v = yaml.safe_load(open(sys.argv[1], encoding="utf-8")) or {}
for k in sys.argv[2].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else v)' "$1" "$2"
}

# hf_dir WHAT DIR OPTION KEY CONFIG: DIR as an absolute path, or a clear error when it is no HF model dir
hf_dir() {
  local what=$1 dir=$2 option=$3 key=$4 config=$5
  [ -n "$dir" ] || die "no $what directory: pass $option DIR or set $key in $config (see README.md)"
  if [ ! -f "$dir/config.json" ]; then
    die "$what directory $dir is missing or not a Hugging Face model dir (no config.json): download it \
(README.md: \"What to download\") and pass $option DIR or set $key in $config"
  fi
  (cd "$dir" && pwd)
}

whisper_ready=false
need_whisper() {  # sets whisper_dir (absolute) and num_mel_bins; fbank for the Zipformer
  [ "$whisper_ready" = true ] && return
  if [ "$encoder" = zipformer ]; then num_mel_bins=80; whisper_ready=true; return; fi
  whisper_dir=${whisper_dir:-$(conf_get "$stage1_config" model.encoder_conf.model_dir)}
  whisper_dir=$(hf_dir Whisper "$whisper_dir" --whisper-dir model.encoder_conf.model_dir "$stage1_config")
  num_mel_bins=$("$python_bin" -c 'import json, sys
print(json.load(open(sys.argv[1] + "/config.json"))["num_mel_bins"])' "$whisper_dir")
  encoder_overrides="model.encoder_conf.model_dir=$whisper_dir $encoder_overrides"
  whisper_ready=true
}
need_llm() {
  llm_dir=${llm_dir:-$(conf_get "$conf_dir/efin_stage2.yaml" model.llm_dir)}
  llm_dir=$(hf_dir LLM "$llm_dir" --llm-dir model.llm_dir "$conf_dir/efin_stage2.yaml")
}
feats_dir() {  # the features of this encoder: Whisper's bins in the name, as they differ between models
  if [ "$encoder" = zipformer ]; then echo "$data/fbank"; else echo "$data/whisper-fbank-$num_mel_bins"; fi
}

# train_stage STAGE EXP_DIR CONFIG STEPS [key=value ...]: train (or resume) to STEPS steps, then model.pt
train_stage() {  # STAGE EXP_DIR CONFIG STEPS [key=value ...]: tools/train_steps.sh with this corpus
  local n=$1 dir=$2 config=$3 steps=$4
  shift 4
  if [ -f "$dir/model.pt" ]; then log "$n" "skip: $dir/model.pt exists"; return; fi
  need_whisper
  local feats
  feats=$(feats_dir)
  # shellcheck disable=SC2086  # the *overrides are lists of key=value words
  train_steps "$n" "$dir" "$config" "$steps" \
    data.train_cuts="$feats/aishell_cuts_train.jsonl.gz" data.valid_cuts="$feats/aishell_cuts_dev.jsonl.gz" \
    data.feature_type="$feature_type" data.num_mel_bins="$num_mel_bins" "$@" $encoder_overrides $overrides
}

if run_stage 0; then
  if [ -f "$manifests/.done" ]; then log 0 "skip: $manifests/.done exists"; else
    [ -n "$corpus_dir" ] || die "stage 0 needs --corpus-dir DIR, your AISHELL-1 copy (the folder holding data_aishell/)"
    log 0 "prepare AISHELL-1 manifests from $corpus_dir"
    asrkit prepare aishell --corpus-dir "$corpus_dir" --out-dir "$manifests" --num-jobs "$nj" \
      $([ "$extract" = true ] && echo --extract)
    touch "$manifests/.done"
  fi
fi

if run_stage 1; then
  need_whisper
  feats=$(feats_dir)
  if [ -f "$feats/.done" ]; then log 1 "skip: $feats/.done exists"; else
    log 1 "compute $num_mel_bins-bin $feature_type into $feats (speed perturbation of train: $speed_perturb)"
    asrkit compute-fbank --cuts "$manifests/aishell_cuts_train.jsonl.gz" --out-dir "$feats" --num-jobs "$nj" \
      --feature-type "$feature_type" --num-mel-bins "$num_mel_bins" \
      $([ "$speed_perturb" = true ] && echo --speed-perturb 0.9 1.1)
    asrkit compute-fbank --cuts "$manifests"/aishell_cuts_{dev,test}.jsonl.gz --out-dir "$feats" --num-jobs "$nj" \
      --feature-type "$feature_type" --num-mel-bins "$num_mel_bins"
    touch "$feats/.done"
  fi
fi

if run_stage 2; then
  if [ -f "$lang_dir/.done" ]; then log 2 "skip: $lang_dir/.done exists"; else
    log 2 "character table for the stage-1 encoder in $lang_dir"
    asrkit train-tokenizer --cuts "$manifests/aishell_cuts_train.jsonl.gz" --lang-dir "$lang_dir" --type char
    touch "$lang_dir/.done"
  fi
fi

if run_stage 3; then
  train_stage 3 "$s1" "$stage1_config" "$stage1_steps" lang_dir="$lang_dir"
fi

if run_stage 4; then
  [ -f "$s2/model.pt" ] || need_llm
  # shellcheck disable=SC2086
  train_stage 4 "$s2" "$conf_dir/efin_stage2.yaml" "$stage2_steps" model.llm_dir="$llm_dir" \
    model.encoder_init="$s1" $llm_overrides
fi

if run_stage 5; then
  [ -f "$s3/model.pt" ] || need_llm
  # shellcheck disable=SC2086
  train_stage 5 "$s3" "$conf_dir/efin_stage3.yaml" "$stage3_steps" model.llm_dir="$llm_dir" init_from="$s2" \
    $llm_overrides
fi

if run_stage 6; then
  budget=()
  if [ ! -f "$bl/model.pt" ]; then
    need_llm
    if [ "$baseline_budget" = flops ]; then
      efin_flops=$("$python_bin" -c 'import sys; from asrkit.scaling import compute_of
print(sum(compute_of(d) for d in sys.argv[1:]))' "$s1" "$s2" "$s3")
      budget=(train.max_flops="$efin_flops")
      log 6 "baseline budget: EFIN's training compute, $efin_flops FLOPs"
    elif [ "$baseline_budget" != steps ]; then
      die "--baseline-budget must be flops or steps, not $baseline_budget"
    fi
  fi
  # shellcheck disable=SC2086
  train_stage 6 "$bl" "$conf_dir/baseline_joint.yaml" "$baseline_steps" model.llm_dir="$llm_dir" "${budget[@]}" \
    $llm_overrides
fi

if run_stage 7; then
  need_whisper
  feats=$(feats_dir)
  for sys in "$s1 $stage1_method" "$s2 $llm_methods" "$s3 $llm_methods" "$bl $llm_methods"; do
    read -r dir methods <<< "$sys"
    if [ -f "$dir/.decoded" ] && [ "$dir/.decoded" -nt "$dir/model.pt" ] \
       && [ "$(cat "$dir/.decoded")" = "$methods" ]; then
      log 7 "skip: $dir/.decoded is newer than its model.pt (methods: $methods)"; continue
    fi
    log 7 "decode $dir with $methods, score CER"
    # shellcheck disable=SC2086  # methods is a list of method names
    asrkit decode --exp-dir "$dir" --method $methods --beam "$beam" --unit char --max-new-tokens "$max_new_tokens" \
      ${device:+--device "$device"} --cuts "$feats/aishell_cuts_dev.jsonl.gz" "$feats/aishell_cuts_test.jsonl.gz" \
      | tee "$dir/results.txt"
    echo "$methods" > "$dir/.decoded"
  done
fi

if run_stage 8; then
  log 8 "results table in $exp/results.md"
  systems=(--system "EFIN stage 1: encoder alone" "$s1" "$stage1_method")
  for m in $llm_methods; do
    systems+=(--system "EFIN stage 2: projector only" "$s2" "$m" compute="$s1,$s2"
              --system "EFIN stage 3: encoder + projector + LoRA" "$s3" "$m" compute="$s1,$s2,$s3"
              --system "baseline: joint post-training" "$bl" "$m")
  done
  llm_name="?"; enc_name=$encoder  # as the experiments recorded them
  if [ -f "$s2/config.yaml" ]; then llm_name=$(conf_get "$s2/config.yaml" model.llm_dir); fi
  if [ "$encoder" = whisper ] && [ -f "$s1/config.yaml" ]; then
    enc_name="whisper ($(conf_get "$s1/config.yaml" model.encoder_conf.model_dir))"
  fi
  asrkit results --out "$exp/results.md" \
    --test-sets aishell_cuts_dev aishell_cuts_test \
    --title "EFIN on AISHELL-1, encoder: $enc_name, LLM: $llm_name" "${systems[@]}"
fi
