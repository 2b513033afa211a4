#!/usr/bin/env bash
# Multi-talker ASR on LibriSpeech mixtures with serialized output training (SOT): AED-SOT, then LLM-SOT
# (arXiv 2408.17431: an encoder, a projector and an LLM that writes "speaker 1 words <sc> speaker 2 words").
#   ./run.sh --corpus-dir /data --llm-dir /models/Qwen2-1.5B-Instruct     # /data: LibriSpeech/ wham_noise/ LibriMix/
#   ./run.sh --corpus-dir /data/LibriSpeech --librimix false --stop-stage 5  # AED-SOT on offset mixtures only
#   ./run.sh --conf-dir conf/wavlm --wavlm-dir /models/wavlm-large --llm-dir ...  # WavLM encoder (LLM-SOT's)
# Stages: 0 manifests: LibriSpeech parts (asrkit prepare librispeech) and, with --librimix true, LibriMix
#   (asrkit prepare librimix: lhotse MixedCuts from LibriSpeech + WHAM! + LibriMix's metadata CSVs),
#   1 offset mixtures simulated from LibriSpeech alone (asrkit mix: each next speaker starts 1.0-1.5 s
#     after the previous, ESPnet's sot_asr1 / the paper's modified LibriMix), train, dev and test,
#   2 fbank of the mixtures (none for WavLM: it reads waveforms), 3 BPE with <sc> as one piece,
#   4 AED-SOT training, 5 AED-SOT decode + SOT scores (cpWER, concatenated WER, speaker-count accuracy),
#   6/7/8 LLM-SOT stage A (projector; encoder from stage 4, LLM frozen) / B (+ encoder) / C (+ LoRA),
#   9 LLM-SOT decode + SOT scores.
# Test sets: the simulated test mixtures and, with --librimix true, Libri<n>Mix test-clean (clean, fully
# overlapped: speakers all start at 0, so the SOT order is the metadata's source order).
# A finished stage is skipped (its marker: .done, epoch-N.pt, model.pt, .decoded); training resumes.
# Nothing is downloaded: see README.md for what to fetch.
set -euo pipefail
cd "$(dirname "$0")"

stage=0
stop_stage=9
corpus_dir=""       # holds LibriSpeech/ (and for --librimix true wham_noise/, LibriMix/metadata/); or LibriSpeech/ itself
librimix=true       # also prepare Libri<n>Mix (needs WHAM! noise and LibriMix's metadata)
n_src=2             # speakers per mixture (2 or 3)
train_parts="train-clean-100 train-clean-360"  # LibriSpeech parts the training mixtures are drawn from
dev_part=dev-clean
test_part=test-clean
data=data
exp=exp
nj=8
seed=0
conf_dir=conf/zipformer  # conf/zipformer | conf/wavlm | conf/tiny (tests)
wavlm_dir=""        # conf/wavlm: a local Hugging Face WavLM dir (model.encoder_conf.model_dir)
llm_dir=""          # a local Hugging Face causal LM dir (model.llm_dir) for stages 6-9
vocab_size=500
epochs=40
avg=10
aed_method=joint-ctc-attention  # CTC prefix scores stop early end-of-sentence (egs/synth/SOT/README.md)
beam=4
stage_a_steps=4000  # starting points, not tuned
stage_b_steps=8000
stage_c_steps=8000
llm_methods=llm-greedy
max_new_tokens=200
overrides=""        # key=value for every training stage, e.g. "data.max_duration=200"
aed_overrides=""    # key=value for stage 4 only
llm_overrides=""    # key=value for stages 6-8
device=""           # asrkit decode --device (default: cuda when available)

. ../../../tools/parse_options.sh
. ../../../tools/train_steps.sh

python_bin=$(command -v python3 || command -v python)
log() { echo "$(date '+%F %T') [stage $1] $2"; }
die() { echo "$0: $*" >&2; exit 1; }
run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
[ -d "$conf_dir" ] || die "--conf-dir $conf_dir does not exist"

manifests=$data/manifests
mix=$data/mix
lang_dir=$data/lang_bpe_$vocab_size
sim=sim${n_src}mix   # the simulated offset mixtures: $mix/${sim}_cuts_{train,dev,test}.jsonl.gz
aed=$exp/aed_sot; la=$exp/llm_sot_a; lb=$exp/llm_sot_b; lc=$exp/llm_sot_c
feature_type=$("$python_bin" -c 'import sys, yaml
print((yaml.safe_load(open(sys.argv[1])).get("data") or {}).get("feature_type", "fbank"))' "$conf_dir/aed_sot.yaml")
if [ "$feature_type" = waveform ]; then feats=$mix; else feats=$data/fbank; fi  # WavLM reads the audio
test_sets="$feats/${sim}_cuts_test.jsonl.gz"
librimix_test="libri${n_src}mix_cuts_${test_part}_clean.jsonl.gz"
if [ "$librimix" = true ]; then test_sets="$test_sets $feats/$librimix_test"; fi
encoder_overrides=""
if [ "$feature_type" = waveform ]; then
  [ -n "$wavlm_dir" ] || die "$conf_dir needs --wavlm-dir DIR, a local Hugging Face WavLM (e.g. microsoft/wavlm-large)"
  [ -f "$wavlm_dir/config.json" ] || die "--wavlm-dir $wavlm_dir is no Hugging Face model dir (no config.json)"
  encoder_overrides="model.encoder_conf.model_dir=$(cd "$wavlm_dir" && pwd)"
fi

# llm_stage STAGE EXP_DIR CONFIG STEPS [key=value ...]: a speech-LLM stage (tools/train_steps.sh)
llm_stage() {
  local n=$1 dir=$2 config=$3 steps=$4
  shift 4
  if [ -f "$dir/model.pt" ]; then log "$n" "skip: $dir/model.pt exists"; return; fi
  [ -f "$llm_dir/config.json" ] || die "stage $n needs --llm-dir DIR, a local Hugging Face causal LM (config.json)"
  # shellcheck disable=SC2086  # the *overrides are lists of key=value words
  train_steps "$n" "$dir" "$config" "$steps" model.llm_dir="$(cd "$llm_dir" && pwd)" \
    data.train_cuts="$feats/${sim}_cuts_train.jsonl.gz" data.valid_cuts="$feats/${sim}_cuts_dev.jsonl.gz" \
    "$@" $encoder_overrides $overrides $llm_overrides
}

# decode_sot STAGE EXP_DIR METHODS [asrkit decode options]: decode the test sets, SOT-score them
decode_sot() {
  local n=$1 dir=$2 methods=$3
  shift 3
  if [ -f "$dir/.decoded" ] && [ "$(cat "$dir/.decoded")" = "$methods" ]; then
    log "$n" "skip: $dir/.decoded exists (methods: $methods)"; return
  fi
  log "$n" "decode $dir with $methods; SOT scores in $dir/<method>/sot/"
  # shellcheck disable=SC2086  # methods and test_sets are lists
  asrkit decode --exp-dir "$dir" --method $methods --beam "$beam" --max-new-tokens "$max_new_tokens" --sot \
    ${device:+--device "$device"} "$@" --cuts $test_sets | tee "$dir/results.txt"
  echo "$methods" > "$dir/.decoded"
}

if run_stage 0; then
  if [ -f "$manifests/.done" ]; then log 0 "skip: $manifests/.done exists"; else
    [ -n "$corpus_dir" ] || die "stage 0 needs --corpus-dir DIR (holding LibriSpeech/, wham_noise/, LibriMix/metadata/)"
    ls_dir=$corpus_dir; [ -d "$corpus_dir/LibriSpeech" ] && ls_dir=$corpus_dir/LibriSpeech
    log 0 "LibriSpeech $train_parts $dev_part $test_part from $ls_dir"
    # shellcheck disable=SC2086  # train_parts is a list
    asrkit prepare librispeech --corpus-dir "$ls_dir" --out-dir "$manifests" --num-jobs "$nj" \
      --parts $train_parts "$dev_part" "$test_part"
    if [ "$librimix" = true ]; then
      log 0 "Libri${n_src}Mix from $corpus_dir"
      asrkit prepare librimix --corpus-dir "$corpus_dir" --librispeech-dir "$ls_dir" --out-dir "$manifests" \
        --n-src "$n_src" --num-jobs "$nj"
    fi
    touch "$manifests/.done"
  fi
fi

if run_stage 1; then
  if [ -f "$mix/.done" ]; then log 1 "skip: $mix/.done exists"; else
    log 1 "simulate $n_src-speaker offset mixtures from LibriSpeech into $mix"
    train_cuts=(); for p in $train_parts; do train_cuts+=("$manifests/librispeech_cuts_$p.jsonl.gz"); done
    for split in train dev test; do
      case $split in train) src=("${train_cuts[@]}") ;; dev) src=("$manifests/librispeech_cuts_$dev_part.jsonl.gz") ;;
        test) src=("$manifests/librispeech_cuts_$test_part.jsonl.gz") ;; esac
      asrkit mix --cuts "${src[@]}" --out "$mix/${sim}_cuts_$split.jsonl.gz" --num-speakers "$n_src" \
        --min-offset 1.0 --max-offset 1.5 --seed "$seed" --id-prefix "${sim}-$split-"
    done
    if [ "$librimix" = true ]; then cp "$manifests/$librimix_test" "$mix/$librimix_test"; fi
    touch "$mix/.done"
  fi
fi

if run_stage 2 && [ "$feature_type" != waveform ]; then
  if [ -f "$feats/.done" ]; then log 2 "skip: $feats/.done exists"; else
    log 2 "fbank of the mixtures into $feats"
    # shellcheck disable=SC2086
    asrkit compute-fbank --cuts "$mix/${sim}_cuts_train.jsonl.gz" "$mix/${sim}_cuts_dev.jsonl.gz" \
      $(for t in $test_sets; do echo "$mix/$(basename "$t")"; done) --out-dir "$feats" --num-jobs "$nj"
    touch "$feats/.done"
  fi
fi

if run_stage 3; then
  if [ -f "$lang_dir/.done" ]; then log 3 "skip: $lang_dir/.done exists"; else
    log 3 "BPE ($vocab_size pieces, <sc> one of them) in $lang_dir"
    train_cuts=(); for p in $train_parts; do train_cuts+=("$manifests/librispeech_cuts_$p.jsonl.gz"); done
    asrkit train-tokenizer --cuts "${train_cuts[@]}" --lang-dir "$lang_dir" --type bpe --vocab-size "$vocab_size" \
      --user-defined-symbols "<sc>"
    touch "$lang_dir/.done"
  fi
fi

if run_stage 4; then
  if [ -f "$aed/epoch-$epochs.pt" ]; then log 4 "skip: $aed/epoch-$epochs.pt exists"; else
    resume=""
    if has_checkpoint "$aed"; then resume="--resume"; fi
    log 4 "train AED-SOT $conf_dir/aed_sot.yaml into $aed ${resume:+(resuming)}"
    # shellcheck disable=SC2086
    asrkit train --config "$conf_dir/aed_sot.yaml" $resume exp_dir="$aed" lang_dir="$lang_dir" \
      data.train_cuts="$feats/${sim}_cuts_train.jsonl.gz" data.valid_cuts="$feats/${sim}_cuts_dev.jsonl.gz" \
      train.num_epochs="$epochs" $encoder_overrides $overrides $aed_overrides
  fi
fi

if run_stage 5; then
  if [ ! -f "$aed/model.pt" ] || [ "$aed/epoch-$epochs.pt" -nt "$aed/model.pt" ]; then
    log 5 "export $aed (epoch $epochs, average of $avg)"
    asrkit export --exp-dir "$aed" --epoch "$epochs" --avg "$avg"
  fi
  decode_sot 5 "$aed" "$aed_method"
fi

if run_stage 6; then
  llm_stage 6 "$la" "$conf_dir/llm_sot_a.yaml" "$stage_a_steps" model.encoder_init="$aed"
fi
if run_stage 7; then
  llm_stage 7 "$lb" "$conf_dir/llm_sot_b.yaml" "$stage_b_steps" init_from="$la"
fi
if run_stage 8; then
  llm_stage 8 "$lc" "$conf_dir/llm_sot_c.yaml" "$stage_c_steps" init_from="$lb"
fi

if run_stage 9; then
  for dir in "$la" "$lb" "$lc"; do decode_sot 9 "$dir" "$llm_methods"; done
fi
