"""Zipformer2 encoder (arXiv 2310.11230) in pure PyTorch, parameter-compatible with icefall.

Why this exists: the package entry point; importing it registers ``"zipformer"`` with
``asrkit.models.encoder.build_encoder``.

    from asrkit.models.zipformer import Zipformer, ZipformerConfig, set_batch_count
    enc = Zipformer.from_preset("medium")        # or Zipformer(**dataclasses.asdict(cfg))
    out, out_lens = enc(feats, feat_lens)         # (N, T, 80) 100 Hz -> (N, T', 512) 25 Hz
    set_batch_count(enc, batch_idx)               # in the training loop, drives the schedules
"""

from asrkit.models.zipformer.scaling import ScheduledFloat, set_batch_count
from asrkit.models.zipformer.zipformer import (
    PRESETS,
    Zipformer,
    ZipformerConfig,
    icefall_to_asrkit_state_dict,
    make_pad_mask,
)

__all__ = [
    "PRESETS",
    "ScheduledFloat",
    "Zipformer",
    "ZipformerConfig",
    "icefall_to_asrkit_state_dict",
    "make_pad_mask",
    "set_batch_count",
]
