"""AsrModel: one encoder from the registry plus weighted heads.

The foundation has the CTC head; the transducer and attention-decoder heads plug in beside it
with their own weights, so a recipe switches between CTC, transducer and hybrid systems by
configuration alone.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from asrkit.models.ctc import CtcHead
from asrkit.models.encoder import build_encoder


@dataclass
class AsrModelConfig:
    encoder: str = "zipformer"
    encoder_conf: Dict[str, Any] = field(default_factory=dict)  # kwargs of the encoder, e.g. {preset: small}
    vocab_size: int = 0  # filled in from the tokenizer at training time
    blank_id: int = 0
    ctc_weight: float = 1.0
    head_dropout: float = 0.1


class AsrModel(nn.Module):
    def __init__(self, cfg: AsrModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set (the tokenizer's vocabulary size)")
        if cfg.ctc_weight <= 0:
            raise ValueError("no head has a positive weight: set model.ctc_weight > 0")
        self.cfg = cfg
        self.encoder = build_encoder(cfg.encoder, **cfg.encoder_conf)
        self.ctc = CtcHead(self.encoder.output_dim, cfg.vocab_size, cfg.blank_id, cfg.head_dropout)

    def forward(
        self, feats: torch.Tensor, feat_lens: torch.Tensor, targets: List[List[int]]
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """Return (weighted loss summed over the batch, per-head loss sums, encoder frames)."""
        enc, enc_lens = self.encoder(feats, feat_lens)  # (N, T', D), (N,)
        ctc_loss, frames = self.ctc.loss(enc, enc_lens, targets)
        loss = self.cfg.ctc_weight * ctc_loss
        return loss, {"ctc": ctc_loss.detach()}, frames

    @torch.no_grad()
    def ctc_log_probs(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        enc, enc_lens = self.encoder(feats, feat_lens)
        return self.ctc(enc), enc_lens  # (N, T', V), (N,)
