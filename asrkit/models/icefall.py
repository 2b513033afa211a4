"""icefall Zipformer checkpoints as asrkit models: training flags -> ``AsrModelConfig``, names -> ours.

Why this exists: icefall's pretrained Zipformers (``egs/*/ASR/zipformer``) are the strongest
public models our architecture can run. Their checkpoints hold weights only; the architecture lives
in the ``train.py`` flags they were trained with. This module turns those flags (names and formats
of icefall's ``train.py``: ``"num_encoder_layers": "2,2,3,4,3,2"``, ``"use_ctc": "True"``; absent
flags take its defaults) into an :class:`~asrkit.models.asr.AsrModelConfig`, and icefall's
parameter names into ours::

    cfg = flags_to_config(json.load(open("flags.json")), vocab_size=infer_vocab_size(sd))
    model = AsrModel(cfg)
    load_icefall_state_dict(model, extract_state_dict(torch.load("pretrained.pt", weights_only=True)))

``asrkit import-icefall`` (``asrkit/bin/import_icefall.py``) wraps this into an experiment dir.

Names: icefall ``encoder_embed.*`` -> ``encoder.encoder_embed.*``, ``encoder.*`` ->
``encoder.encoder.*``, ``decoder.*``/``joiner.*``/``simple_{am,lm}_proj.*`` -> ``transducer.*``,
``ctc_output.1.*`` -> ``ctc.proj.*``, ``attention_decoder.*`` -> ``attention.*``.

Padding: icefall's encoder output for an utterance depends on how much padding its batch adds
(the front end's ConvNeXt and each stack's downsampling read padded frames). An import therefore
sets ``padding_invariant: false``, so batched outputs equal icefall's exactly; set it to true in
``config.yaml`` for outputs that do not depend on the batch (same weights; they then equal icefall's
for unpadded utterances only).
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from asrkit.models.asr import AsrModelConfig, TransducerConfig
from asrkit.models.attention import AttentionDecoderConfig
from asrkit.models.zipformer.zipformer import ZipformerConfig

log = logging.getLogger(__name__)

# Model-relevant flags and their defaults in icefall's egs/librispeech/ASR/zipformer/train.py
# (add_model_arguments, get_parser, get_params) at commit 36e0420c7e3e.
INT_LIST_FLAGS: Dict[str, str] = {
    "num_encoder_layers": "2,2,3,4,3,2",
    "downsampling_factor": "1,2,4,8,4,2",
    "feedforward_dim": "512,768,1024,1536,1024,768",
    "num_heads": "4,4,4,8,4,4",
    "encoder_dim": "192,256,384,512,384,256",
    "query_head_dim": "32",
    "value_head_dim": "12",
    "pos_head_dim": "4",
    "encoder_unmasked_dim": "192,192,256,256,256,192",
    "cnn_module_kernel": "31,31,15,15,15,31",
    "chunk_size": "16,32,64,-1",  # streaming only (ignored by icefall unless causal)
    "left_context_frames": "64,128,256,-1",
}
INT_FLAGS: Dict[str, int] = {
    "pos_dim": 48,
    "decoder_dim": 512,
    "joiner_dim": 512,
    "context_size": 2,
    "prune_range": 5,
    "attention_decoder_dim": 512,
    "attention_decoder_num_layers": 6,
    "attention_decoder_attention_dim": 512,
    "attention_decoder_num_heads": 8,
    "attention_decoder_feedforward_dim": 2048,
    "feature_dim": 80,
    "subsampling_factor": 4,
    "warm_step": 2000,
    "blank_id": 0,
    "sos_id": 1,
    "eos_id": 1,
}
FLOAT_FLAGS: Dict[str, float] = {
    "lm_scale": 0.25,
    "am_scale": 0.0,
    "simple_loss_scale": 0.5,
    "ctc_loss_scale": 0.2,
    "attention_decoder_loss_scale": 0.8,
    "label_smoothing": 0.1,
}
BOOL_FLAGS: Dict[str, bool] = {
    "causal": False,
    "use_transducer": True,
    "use_ctc": False,
    "use_attention_decoder": False,
    "use_cr_ctc": False,  # a training-time regulariser: the model is a plain CTC model
}
# flags of the first Zipformer (pruned_transducer_stateless7 and friends), a different architecture
ZIPFORMER1_FLAGS = ("encoder_dims", "attention_dims", "zipformer_downsampling_factors", "encoder_unmasked_dims")

_TRUE = ("yes", "true", "t", "y", "1")  # icefall's str2bool
_FALSE = ("no", "false", "f", "n", "0")


class IcefallImportError(ValueError):
    """An icefall checkpoint or flag set that asrkit cannot represent (the message says how to fix it)."""


def _norm_key(key: str) -> str:
    """``--num-encoder-layers`` / ``num-encoder-layers`` / ``num_encoder_layers`` -> ``num_encoder_layers``."""
    return str(key).lstrip("-").replace("-", "_")


def _as_bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
        return v.strip().lower() in _TRUE
    raise IcefallImportError(f"flag {name!r}: expected a boolean (true/false, 1/0, yes/no), got {v!r}")


def _as_int(name: str, v: Any) -> int:
    if isinstance(v, bool):
        raise IcefallImportError(f"flag {name!r}: expected an integer, got {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            pass
    raise IcefallImportError(f"flag {name!r}: expected an integer, got {v!r}")


def _as_float(name: str, v: Any) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            pass
    raise IcefallImportError(f"flag {name!r}: expected a number, got {v!r}")


def _as_int_list(name: str, v: Any) -> Tuple[int, ...]:
    """icefall's "a,b,c" strings; also a JSON int or list."""
    if isinstance(v, str):
        parts = [p.strip() for p in v.split(",")]
        if not v.strip() or any(not p for p in parts):
            raise IcefallImportError(f"flag {name!r}: expected comma-separated integers like \"2,2,3\", got {v!r}")
        return tuple(_as_int(name, p) for p in parts)
    if isinstance(v, (list, tuple)):
        if not v:
            raise IcefallImportError(f"flag {name!r}: empty list")
        return tuple(_as_int(name, p) for p in v)
    return (_as_int(name, v),)


def parse_flags(flags: Mapping[str, Any]) -> Dict[str, Any]:
    """icefall flags (any of its spellings, string or JSON values) -> typed values, defaults filled in.

    Flags that do not describe the model (learning rate, paths, ...) are ignored with a debug log.
    """
    given = {}
    for key, value in flags.items():
        name = _norm_key(key)
        if name in given:
            raise IcefallImportError(f"flag {name!r} is given twice (as {key!r} and another spelling)")
        given[name] = value
    old = [k for k in ZIPFORMER1_FLAGS if k in given]
    if old:
        raise IcefallImportError(
            f"flags {old} belong to the first Zipformer (icefall pruned_transducer_stateless7/8); asrkit imports "
            "Zipformer2 models trained with egs/*/ASR/zipformer/train.py (flags encoder_dim, downsampling_factor, "
            "...)"
        )
    out: Dict[str, Any] = {}
    tables = ((INT_LIST_FLAGS, _as_int_list), (INT_FLAGS, _as_int), (FLOAT_FLAGS, _as_float), (BOOL_FLAGS, _as_bool))
    for table, conv in tables:
        for name, default in table.items():
            out[name] = conv(name, given.pop(name, default))
    vocab = given.pop("vocab_size", None)
    out["vocab_size"] = None if vocab is None else _as_int("vocab_size", vocab)
    if given:
        log.debug("icefall flags not used by the model (ignored): %s", ", ".join(sorted(given)))
    return out


def flags_to_config(flags: Mapping[str, Any], vocab_size: Optional[int] = None) -> AsrModelConfig:
    """The :class:`AsrModelConfig` of the icefall Zipformer trained with ``flags``.

    ``vocab_size`` (e.g. from :func:`infer_vocab_size`) must agree with a ``vocab_size`` flag if both
    are given. Loss weights: the transducer gets 1 (icefall's pruned + simple losses, the simple one
    scaled by ``simple_loss_scale``), CTC ``ctc_loss_scale``, the attention decoder
    ``attention_decoder_loss_scale``; a head that icefall's ``use_*`` flag leaves out gets 0.
    """
    p = parse_flags(flags)
    if p["causal"]:
        raise IcefallImportError(
            "flag causal=True: this is a streaming (chunked, causal) Zipformer, which asrkit does not implement; "
            "only non-streaming models (causal=False) can be imported"
        )
    if p["subsampling_factor"] != 4:
        raise IcefallImportError(
            f"flag subsampling_factor={p['subsampling_factor']}: icefall's Zipformer2 recipe fixes it at 4")
    if p["blank_id"] != 0 or p["sos_id"] != 1 or p["eos_id"] != 1:
        raise IcefallImportError(
            f"flags blank_id={p['blank_id']}, sos_id={p['sos_id']}, eos_id={p['eos_id']}: asrkit's tokenizers need "
            "<blk>=0 and <sos/eos>=1 (icefall's own layout)"
        )
    if not (p["use_transducer"] or p["use_ctc"]):
        raise IcefallImportError(
            "flags use_transducer and use_ctc are both false; icefall needs one of them (check FLAGS.json)")
    for use, scale in (("use_ctc", "ctc_loss_scale"), ("use_attention_decoder", "attention_decoder_loss_scale")):
        if p[use] and p[scale] <= 0:
            raise IcefallImportError(
                f"flags {use}=True with {scale}={p[scale]}: asrkit builds a head only for a positive loss weight; "
                f"set {scale} > 0 in FLAGS.json (it matters only for further training)")
    if p["vocab_size"] is not None and vocab_size is not None and p["vocab_size"] != vocab_size:
        raise IcefallImportError(
            f"flag vocab_size={p['vocab_size']} but the checkpoint's output layers have {vocab_size} rows")
    vocab = p["vocab_size"] if vocab_size is None else vocab_size
    if vocab is None or vocab <= 0:
        raise IcefallImportError("vocab_size unknown: give it in the flags or pass the checkpoint's vocab_size")

    try:
        enc = ZipformerConfig(
            input_dim=p["feature_dim"],
            **{k: p[k] for k in ("num_encoder_layers", "downsampling_factor", "encoder_dim", "feedforward_dim",
                                 "num_heads", "encoder_unmasked_dim", "cnn_module_kernel", "query_head_dim",
                                 "value_head_dim", "pos_head_dim", "pos_dim")},
            output_downsampling_factor=2,
            causal=False,
            padding_invariant=False,  # icefall's batched outputs exactly (see the module docstring)
        ).normalized()
    except ValueError as e:
        raise IcefallImportError(f"inconsistent Zipformer flags: {e}") from e
    for u, d in zip(enc.encoder_unmasked_dim, enc.encoder_dim):
        if u > d:
            raise IcefallImportError(
                f"flag encoder_unmasked_dim={enc.encoder_unmasked_dim} exceeds encoder_dim={enc.encoder_dim}")
    encoder_conf = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(enc).items()}

    return AsrModelConfig(
        encoder="zipformer",
        encoder_conf=encoder_conf,
        vocab_size=vocab,
        blank_id=0,
        sos_id=1,
        transducer_weight=1.0 if p["use_transducer"] else 0.0,
        ctc_weight=p["ctc_loss_scale"] if p["use_ctc"] else 0.0,
        attention_weight=p["attention_decoder_loss_scale"] if p["use_attention_decoder"] else 0.0,
        head_dropout=0.1,  # icefall's ctc_output Dropout(p=0.1)
        transducer=TransducerConfig(
            decoder_dim=p["decoder_dim"], joiner_dim=p["joiner_dim"], context_size=p["context_size"],
            prune_range=p["prune_range"], lm_scale=p["lm_scale"], am_scale=p["am_scale"],
            simple_loss_scale=p["simple_loss_scale"], warm_step=p["warm_step"],
        ),
        attention=AttentionDecoderConfig(
            decoder_dim=p["attention_decoder_dim"], num_layers=p["attention_decoder_num_layers"],
            attention_dim=p["attention_decoder_attention_dim"], num_heads=p["attention_decoder_num_heads"],
            feedforward_dim=p["attention_decoder_feedforward_dim"], dropout=0.1, label_smoothing=p["label_smoothing"],
        ),
    )


def extract_state_dict(ckpt: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """The model weights of an icefall checkpoint: ``ckpt["model"]`` (pretrained.pt, epoch-N.pt) or a
    bare state dict; a DDP ``module.`` prefix is stripped."""
    if not isinstance(ckpt, Mapping):
        raise IcefallImportError(
            f"checkpoint holds a {type(ckpt).__name__}, expected a dict with a 'model' state dict")
    sd = ckpt["model"] if "model" in ckpt else ckpt
    if not isinstance(sd, Mapping):
        raise IcefallImportError(f"checkpoint['model'] is a {type(sd).__name__}, expected a state dict")
    out = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise IcefallImportError(
                f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor: is this a state dict? "
                "(icefall's pretrained.pt holds {'model': state_dict})"
            )
        out[key[len("module."):] if key.startswith("module.") else key] = value
    return out


# icefall prefix -> ours, first match wins
_RENAMES: List[Tuple[str, str]] = [
    ("encoder_embed.", "encoder.encoder_embed."),
    ("encoder.", "encoder.encoder."),
    ("decoder.", "transducer.decoder."),
    ("joiner.", "transducer.joiner."),
    ("simple_am_proj.", "transducer.simple_am_proj."),
    ("simple_lm_proj.", "transducer.simple_lm_proj."),
    ("ctc_output.1.", "ctc.proj."),
    ("attention_decoder.", "attention."),
]
# which flag creates the head a key belongs to (for hints in error messages)
_HEAD_FLAGS = [
    (re.compile(r"^(transducer\.|decoder\.|joiner\.|simple_)"), "use_transducer"),
    (re.compile(r"^(ctc\.|ctc_output\.)"), "use_ctc"),
    (re.compile(r"^(attention\.|attention_decoder\.)"), "use_attention_decoder"),
]


def icefall_to_asrkit_key(key: str) -> Optional[str]:
    """Our name for icefall parameter ``key`` (no ``module.`` prefix), or None if no rule maps it."""
    for src, dst in _RENAMES:
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def infer_vocab_size(sd: Mapping[str, torch.Tensor]) -> Optional[int]:
    """Rows of the checkpoint's output layers (all must agree), or None if it has none of them."""
    found = {}
    for key in ("joiner.output_linear.weight", "ctc_output.1.weight", "simple_am_proj.weight",
                "decoder.embedding.weight", "attention_decoder.decoder.output_layer.weight"):
        if key in sd:
            found[key] = int(sd[key].shape[0])
    if len(set(found.values())) > 1:
        raise IcefallImportError(f"the checkpoint's output layers disagree on the vocabulary size: {found}")
    return next(iter(found.values()), None)


def _list(keys: List[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _hints(keys: List[str], present: bool) -> List[str]:
    out = []
    for pattern, flag in _HEAD_FLAGS:
        if any(pattern.match(k) for k in keys):
            out.append(f"{flag}={'true' if present else 'false'}")
    return out


def load_icefall_state_dict(model: nn.Module, icefall_sd: Mapping[str, torch.Tensor]) -> None:
    """Load an icefall state dict into our ``AsrModel`` (strictly: every icefall key consumed, every
    asrkit key filled, shapes equal), or raise :class:`IcefallImportError` listing each mismatch."""
    ours = model.state_dict()
    mapped: Dict[str, torch.Tensor] = {}
    origin: Dict[str, str] = {}
    unconsumed: List[str] = []
    for key, value in icefall_sd.items():
        key = key[len("module."):] if key.startswith("module.") else key
        new = icefall_to_asrkit_key(key)
        if new is None or new not in ours:
            unconsumed.append(key)
            continue
        mapped[new], origin[new] = value, key
    missing = [k for k in ours if k not in mapped]
    shapes = [f"{origin[k]} {tuple(v.shape)} -> {k} {tuple(ours[k].shape)}" for k, v in mapped.items()
              if tuple(v.shape) != tuple(ours[k].shape)]
    if unconsumed or missing or shapes:
        parts = []
        if unconsumed:
            parts.append(f"{len(unconsumed)} icefall keys have no place in the asrkit model: {_list(unconsumed)}")
        if missing:
            parts.append(f"{len(missing)} asrkit keys are not in the checkpoint: {_list(missing)}")
        if shapes:
            parts.append(f"{len(shapes)} shapes differ (icefall -> asrkit): {_list(shapes, 10)}")
        fix = _hints(unconsumed, True) + _hints(missing, False)
        hint = (f"; the checkpoint suggests {', '.join(sorted(set(fix)))} in FLAGS.json" if fix else
                "; check the architecture flags (encoder_dim, num_encoder_layers, ...) against the ones it was "
                "trained with")
        raise IcefallImportError("checkpoint does not fit the model built from the flags: " + "; ".join(parts) + hint)
    model.load_state_dict(mapped, strict=True)
