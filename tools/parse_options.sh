#!/usr/bin/env bash
# Source from a recipe after setting defaults: `--stop-stage 3` sets stop_stage=3.
# Only variables that already exist can be set, so a typo is an error, not a silent no-op.
#   . "$(dirname "$0")/../../../tools/parse_options.sh"
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      echo "usage: $0 [--name value ...]; options: see the variables at the top of $0"; exit 0 ;;
    --*)
      name=$(echo "${1#--}" | tr '-' '_')
      if [ -z "${!name+set}" ]; then echo "$0: unknown option $1" >&2; exit 1; fi
      if [ $# -lt 2 ]; then echo "$0: option $1 needs a value" >&2; exit 1; fi
      printf -v "$name" '%s' "$2"; shift 2 ;;
    *) echo "$0: unexpected argument $1" >&2; exit 1 ;;
  esac
done
