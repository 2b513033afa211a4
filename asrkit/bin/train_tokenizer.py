"""Train a sentencepiece BPE model, or build a character table, from the transcripts of a manifest.

    asrkit train-tokenizer --cuts data/fbank/synth-en_cuts_train.jsonl.gz --lang-dir data/lang_bpe_200 \\
        --type bpe --vocab-size 200
    asrkit train-tokenizer --cuts ... --lang-dir data/lang_char --type char
"""

from pathlib import Path

from asrkit.data.features import load_cuts
from asrkit.text.tokenizer import BpeTokenizer, CharTokenizer


def add_args(p):
    p.add_argument("--cuts", nargs="+", required=True)
    p.add_argument("--lang-dir", required=True)
    p.add_argument("--type", choices=["bpe", "char"], default="bpe")
    p.add_argument("--vocab-size", type=int, default=500)
    p.add_argument("--user-defined-symbols", "--special-tokens", nargs="*", default=[],
                   help="symbols kept as one token, e.g. <sc> for SOT (added by itself when the text has it)")


def run(args):
    texts = [s.text for path in args.cuts for c in load_cuts(path) for s in c.supervisions if s.text]
    Path(args.lang_dir).mkdir(parents=True, exist_ok=True)
    if args.type == "bpe":
        tok = BpeTokenizer.train(texts, args.lang_dir, args.vocab_size,
                                 user_defined_symbols=args.user_defined_symbols)
    else:
        tok = CharTokenizer.build(texts, args.lang_dir, user_defined_symbols=args.user_defined_symbols)
    print(f"{args.type} tokenizer with {tok.vocab_size} tokens in {args.lang_dir}")
