"""Turn an icefall Zipformer checkpoint (transducer / CTC / attention decoder) into an asrkit experiment dir.

    asrkit import-icefall --checkpoint icefall-exp/pretrained.pt --flags flags.json \\
        --bpe-model icefall-data/lang_bpe_500/bpe.model --out-dir exp/icefall_zipformer
    asrkit import-icefall --checkpoint epoch-30.pt --tokens lang_char/tokens.txt --out-dir exp/aishell
    asrkit transcribe --exp-dir exp/icefall_zipformer audio.wav

The checkpoint holds ``{"model": state_dict}`` (icefall's pretrained.pt and epoch-N.pt) or a bare
state dict. ``--flags`` is a JSON object of the ``train.py`` flags the model was trained with, under
icefall's names and formats (``{"num_encoder_layers": "2,2,2,2,2,2", "use_ctc": true, ...}``); absent
flags take the defaults of icefall's egs/librispeech/ASR/zipformer/train.py, flags that do not shape
the model are ignored. An epoch-N.pt also stores the flags itself: they are used under FLAGS.json,
which may then be left out. ``--bpe-model`` is the recipe's sentencepiece model, ``--tokens`` its
``tokens.txt`` (character recipes such as AISHELL); token ids are kept exactly.

DIR gets ``config.yaml`` (as ``asrkit train`` writes it), ``model.pt`` and ``lang/``;
``asrkit.models.load_model(DIR)`` rebuilds the model. The encoder is imported with
``padding_invariant: false`` so that batched outputs equal icefall's (see asrkit/models/icefall.py).
"""

import json
import logging
import pathlib
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from asrkit.config import save_config
from asrkit.models.asr import AsrModel
from asrkit.models.icefall import (
    IcefallImportError,
    extract_state_dict,
    flags_to_config,
    infer_vocab_size,
    load_icefall_state_dict,
)
from asrkit.text.tokenizer import SPECIALS, BpeTokenizer, CharTokenizer, Tokenizer, load_tokenizer
from asrkit.training.checkpoint import save_checkpoint

log = logging.getLogger(__name__)

_DISAMBIG = re.compile(r"^#\d+$")  # k2 disambiguation symbols: in tokens.txt, not model outputs
_USER_SYMBOL = re.compile(r"^<[^<>\s]+>$")


def add_args(p):
    p.add_argument("--checkpoint", required=True, help="icefall pretrained.pt / epoch-N.pt")
    p.add_argument("--flags", help="JSON object of the train.py flags the model was trained with")
    tok = p.add_mutually_exclusive_group(required=True)
    tok.add_argument("--bpe-model", help="the recipe's sentencepiece model (data/lang_bpe_500/bpe.model)")
    tok.add_argument("--tokens", help="the recipe's tokens.txt ('symbol id' per line), for character recipes")
    p.add_argument("--out-dir", required=True, help="asrkit experiment dir to create")
    p.add_argument("--force", action="store_true", help="overwrite an existing model.pt in --out-dir")


def load_icefall_checkpoint(path: Path) -> Dict[str, Any]:
    """torch.load with weights_only=True; epoch-N.pt also holds pathlib paths (icefall's params), allowed here."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    paths = [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]
    try:
        if hasattr(torch.serialization, "safe_globals"):  # torch >= 2.5
            with torch.serialization.safe_globals(paths):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        unsafe = [ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln]
        why = unsafe[0] if unsafe else f"{type(e).__name__}: {first}"
        raise RuntimeError(
            f"cannot load {path} with torch.load(weights_only=True) ({why}); if it is a full training "
            "checkpoint, export the weights with icefall's export.py (pretrained.pt) and import that"
        ) from e


def read_flags(path: str, ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """The checkpoint's own stored flags (epoch-N.pt has them) overridden by FLAGS.json."""
    stored = {k: v for k, v in ckpt.items() if k != "model" and not isinstance(v, (dict, torch.Tensor))}
    if path is None:
        if "encoder_dim" not in stored:
            raise IcefallImportError("the checkpoint does not store its train.py flags (pretrained.pt does not): "
                                     "give them with --flags FLAGS.json")
        log.info("using the train.py flags stored in the checkpoint")
        return stored
    try:
        with open(path, encoding="utf-8") as f:
            flags = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"flags file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise IcefallImportError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(flags, dict):
        raise IcefallImportError(f"{path} must hold a JSON object of flags, got {type(flags).__name__}")
    return {**stored, **flags}


def read_icefall_tokens(path: Path) -> List[str]:
    """icefall's tokens.txt -> tokens by id (disambiguation symbols ``#N`` dropped); ids must be 0..n-1."""
    if not path.is_file():
        raise FileNotFoundError(f"tokens file not found: {path}")
    by_id: Dict[int, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"\d+", parts[1]):
            raise IcefallImportError(f"{path}:{n}: expected 'symbol id', got {line!r}")
        sym, idx = parts[0], int(parts[1])
        if _DISAMBIG.match(sym):
            continue
        if idx in by_id:
            raise IcefallImportError(f"{path}:{n}: id {idx} is used twice ({by_id[idx]!r} and {sym!r})")
        by_id[idx] = sym
    if not by_id:
        raise IcefallImportError(f"{path} holds no tokens")
    gaps = sorted(set(range(max(by_id) + 1)) - set(by_id))
    if gaps:
        raise IcefallImportError(f"{path}: token ids must run 0..{max(by_id)} without gaps; missing {gaps[:10]}")
    return [by_id[i] for i in range(len(by_id))]


def char_tokenizer_from_tokens(tokens: List[str], where: str) -> CharTokenizer:
    """A CharTokenizer with exactly these ids (icefall's char layout: <blk> <sos/eos> <unk> first)."""
    if tuple(tokens[:3]) != SPECIALS:
        raise IcefallImportError(
            f"{where}: the first tokens are {tokens[:3]}, asrkit needs {list(SPECIALS)} at ids 0, 1, 2")
    user = []
    for i, tok in enumerate(tokens[3:], 3):
        if len(tok) == 1:
            continue
        if _USER_SYMBOL.match(tok):
            user.append(tok)
            continue
        raise IcefallImportError(
            f"{where}: token {i} is {tok!r}, more than one character: this is a BPE table, not a character one; "
            "import with --bpe-model (the recipe's bpe.model) instead"
        )
    tok = CharTokenizer(tokens, user)
    if tok.tokens != tokens:  # CharTokenizer must keep the ids exactly
        raise IcefallImportError(f"{where}: the character tokenizer would renumber the tokens")
    return tok


def build_tokenizer(args) -> Tuple[Tokenizer, str]:
    if args.bpe_model:
        path = Path(args.bpe_model)
        tok = BpeTokenizer(path)
        tok.options = {"vocab_size": tok.vocab_size}
        return tok, str(path)
    path = Path(args.tokens)
    return char_tokenizer_from_tokens(read_icefall_tokens(path), str(path)), str(path)


def run(args):
    out_dir = Path(args.out_dir)
    if (out_dir / "model.pt").exists() and not args.force:
        raise FileExistsError(f"{out_dir / 'model.pt'} exists; pass --force to overwrite it")
    ckpt_path = Path(args.checkpoint)
    ckpt = load_icefall_checkpoint(ckpt_path)
    sd = extract_state_dict(ckpt)
    flags = read_flags(args.flags, ckpt if isinstance(ckpt, dict) and "model" in ckpt else {})
    cfg = flags_to_config(flags, vocab_size=infer_vocab_size(sd))
    tokenizer, tok_src = build_tokenizer(args)
    if tokenizer.vocab_size != cfg.vocab_size:
        raise IcefallImportError(f"{tok_src} has {tokenizer.vocab_size} tokens but the model outputs "
                                 f"{cfg.vocab_size}: is it the tokenizer this model was trained with?")

    model = AsrModel(cfg)
    load_icefall_state_dict(model, sd)

    from asrkit.bin.train import ExperimentConfig  # (heavy imports: only once the inputs are known good)

    lang_dir = out_dir / "lang"
    tokenizer.save(lang_dir)
    if load_tokenizer(lang_dir).tokens != tokenizer.tokens:
        raise RuntimeError(f"{lang_dir}: the saved tokenizer does not reload with the same ids")
    save_config(ExperimentConfig(exp_dir=str(out_dir), lang_dir=str(lang_dir), model=cfg), out_dir / "config.yaml")
    save_checkpoint(out_dir / "model.pt", {"model": model.state_dict()})
    heads = [name for name, w in (("transducer", cfg.transducer_weight), ("ctc", cfg.ctc_weight),
                                  ("attention", cfg.attention_weight)) if w > 0]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"imported {ckpt_path} ({n_params:,} parameters; heads: {', '.join(heads)}; vocab {cfg.vocab_size} "
          f"from {tok_src}) into {out_dir}")
    return 0
