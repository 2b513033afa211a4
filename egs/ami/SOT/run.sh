#!/usr/bin/env bash
# AMI meetings with serialized output training (SOT): an AED-SOT model on utterance groups (runs of
# overlapping or touching segments, arXiv 2211.00482), scored with SOT cpWER on the same groups.
#   ./run.sh --corpus-dir /data/ami                  # the folder holding amicorpus/ and ami_public_manual_1.6.2/
#   ./run.sh --stage 3 --train-mic sdm --exp exp_sdm # train on the distant microphone instead
# Stages: 0 manifests for each of --mics (asrkit prepare ami: lhotse's prepare_ami, full-corpus-asr split,
#   English normalisation, meetings cut into utterance groups: ami-<mic>_cuts_<split>),
#   1 fbank of the groups, 2 BPE with <sc> as one piece, 3 AED-SOT training on --train-mic,
#   4 decode dev and test groups of every mic, SOT scores (cpWER, concatenated WER, speaker-count accuracy)
#   in $exp/aed_sot_<train mic>/<method>/sot/.
# The SOT target of a group: its speakers' words by start time, a speaker's consecutive segments merged,
# speakers joined by <sc> (asrkit.data.datamodule.cut_text). A finished stage is skipped; training resumes.
# Nothing is downloaded: see README.md for what to fetch.
set -euo pipefail
cd "$(dirname "$0")"

stage=0
stop_stage=4
corpus_dir=""      # holds amicorpus/<MEETING>/audio/*.wav and ami_public_manual_1.6.2/ (or its .zip)
mics="ihm-mix sdm" # microphone settings to prepare and test (ihm-mix: headsets summed; sdm: array 1, mic 1)
train_mic=ihm-mix
max_pause=0.0      # s of silence that still joins two segments into one utterance group
data=data
exp=exp
nj=8
config=conf/aed_sot.yaml
vocab_size=500
epochs=40
avg=10
method=joint-ctc-attention  # CTC prefix scores stop early end-of-sentence (egs/synth/SOT/README.md)
beam=4
overrides=""       # key=value for asrkit train, e.g. "data.max_duration=400"
device=""          # asrkit decode --device

. ../../../tools/parse_options.sh
. ../../../tools/train_steps.sh  # has_checkpoint

log() { echo "$(date '+%F %T') [stage $1] $2"; }
die() { echo "$0: $*" >&2; exit 1; }
run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
case " $mics " in *" $train_mic "*) ;; *) die "--train-mic $train_mic is not one of --mics \"$mics\"" ;; esac

manifests=$data/manifests
fbank=$data/fbank
lang_dir=$data/lang_bpe_$vocab_size
aed=$exp/aed_sot_$train_mic

if run_stage 0; then
  if [ -f "$manifests/.done" ]; then log 0 "skip: $manifests/.done exists"; else
    [ -n "$corpus_dir" ] || die "stage 0 needs --corpus-dir DIR (holding amicorpus/ and ami_public_manual_1.6.2/)"
    log 0 "AMI ($mics) utterance groups from $corpus_dir"
    # shellcheck disable=SC2086  # mics is a list
    asrkit prepare ami --corpus-dir "$corpus_dir" --out-dir "$manifests" --mic $mics --max-pause "$max_pause" \
      --num-jobs "$nj"
    touch "$manifests/.done"
  fi
fi

if run_stage 1; then
  if [ -f "$fbank/.done" ]; then log 1 "skip: $fbank/.done exists"; else
    log 1 "fbank of the utterance groups into $fbank"
    for mic in $mics; do
      asrkit compute-fbank --cuts "$manifests/ami-${mic}_cuts_"{train,dev,test}.jsonl.gz --out-dir "$fbank" --num-jobs "$nj"
    done
    touch "$fbank/.done"
  fi
fi

if run_stage 2; then
  if [ -f "$lang_dir/.done" ]; then log 2 "skip: $lang_dir/.done exists"; else
    log 2 "BPE ($vocab_size pieces, <sc> one of them) in $lang_dir"
    asrkit train-tokenizer --cuts "$manifests/ami-${train_mic}_cuts_train.jsonl.gz" --lang-dir "$lang_dir" --type bpe \
      --vocab-size "$vocab_size" --user-defined-symbols "<sc>"
    touch "$lang_dir/.done"
  fi
fi

if run_stage 3; then
  if [ -f "$aed/epoch-$epochs.pt" ]; then log 3 "skip: $aed/epoch-$epochs.pt exists"; else
    resume=""
    if has_checkpoint "$aed"; then resume="--resume"; fi
    log 3 "train AED-SOT $config on $train_mic into $aed ${resume:+(resuming)}"
    # shellcheck disable=SC2086
    asrkit train --config "$config" $resume exp_dir="$aed" lang_dir="$lang_dir" \
      data.train_cuts="$fbank/ami-${train_mic}_cuts_train.jsonl.gz" \
      data.valid_cuts="$fbank/ami-${train_mic}_cuts_dev.jsonl.gz" train.num_epochs="$epochs" $overrides
  fi
fi

if run_stage 4; then
  if [ -f "$aed/.decoded" ] && [ "$aed/.decoded" -nt "$aed/epoch-$epochs.pt" ]; then log 4 "skip: $aed/.decoded exists"; else
    log 4 "export $aed (epoch $epochs, average of $avg), decode the dev and test groups of: $mics"
    asrkit export --exp-dir "$aed" --epoch "$epochs" --avg "$avg"
    sets=(); for mic in $mics; do sets+=("$fbank/ami-${mic}_cuts_dev.jsonl.gz" "$fbank/ami-${mic}_cuts_test.jsonl.gz"); done
    asrkit decode --exp-dir "$aed" --method "$method" --beam "$beam" --sot ${device:+--device "$device"} \
      --cuts "${sets[@]}" | tee "$aed/results.txt"
    touch "$aed/.decoded"
  fi
fi
