"""AsrModel: one encoder from the registry plus any of the CTC, transducer and attention heads.

Each head has a loss weight (0 leaves the head out), so a recipe switches between CTC,
transducer, AED and hybrid systems by configuration alone::

    model:
      encoder: zipformer
      encoder_conf: {preset: small}
      transducer_weight: 1.0     # pruned RNN-T (simple + pruned losses, icefall's warm-up)
      ctc_weight: 0.2            # icefall's ctc-loss-scale beside a transducer
      attention_weight: 0.0

All losses are sums over the batch; :meth:`AsrModel.forward` also returns the encoder frame
count, which the training loop divides by.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from asrkit.models.attention import AttentionDecoder, AttentionDecoderConfig
from asrkit.models.ctc import CtcHead
from asrkit.models.encoder import build_encoder
from asrkit.models.transducer import TransducerHead, warmup_loss_scales


@dataclass
class TransducerConfig:
    decoder_dim: int = 512
    joiner_dim: int = 512
    context_size: int = 2  # tokens the stateless decoder sees (icefall uses 1 for Chinese characters)
    prune_range: int = 5  # symbols kept per frame by the pruned loss
    lm_scale: float = 0.25  # smoothing of the simple loss (k2's lm_only_scale)
    am_scale: float = 0.0  # k2's am_only_scale
    simple_loss_scale: float = 0.5  # weight of the simple loss after warm-up (the pruned one has 1)
    warm_step: int = 2000  # optimiser steps of the simple -> pruned warm-up


@dataclass
class AsrModelConfig:
    encoder: str = "zipformer"
    encoder_conf: Dict[str, Any] = field(default_factory=dict)  # kwargs of the encoder, e.g. {preset: small}
    vocab_size: int = 0  # filled in from the tokenizer at training time
    blank_id: int = 0
    sos_id: int = 1  # the attention decoder's start and end symbol (the tokenizer's <sos/eos>)
    ctc_weight: float = 1.0
    transducer_weight: float = 0.0
    attention_weight: float = 0.0
    head_dropout: float = 0.1
    transducer: TransducerConfig = field(default_factory=TransducerConfig)
    attention: AttentionDecoderConfig = field(default_factory=AttentionDecoderConfig)


class AsrModel(nn.Module):
    def __init__(self, cfg: AsrModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set (the tokenizer's vocabulary size)")
        weights = {"ctc_weight": cfg.ctc_weight, "transducer_weight": cfg.transducer_weight,
                   "attention_weight": cfg.attention_weight}
        if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise ValueError(f"head weights must be >= 0 with at least one > 0, got {weights}")
        self.cfg = cfg
        self.step = 0  # optimiser steps taken; drives the transducer warm-up (see set_step)
        self.encoder = build_encoder(cfg.encoder, **cfg.encoder_conf)
        dim = self.encoder.output_dim
        self.ctc: Optional[CtcHead] = None
        self.transducer: Optional[TransducerHead] = None
        self.attention: Optional[AttentionDecoder] = None
        if cfg.ctc_weight > 0:
            self.ctc = CtcHead(dim, cfg.vocab_size, cfg.blank_id, cfg.head_dropout)
        if cfg.transducer_weight > 0:
            t = cfg.transducer
            self.transducer = TransducerHead(dim, cfg.vocab_size, cfg.blank_id, t.decoder_dim, t.joiner_dim,
                                             t.context_size, t.prune_range, t.lm_scale, t.am_scale)
        if cfg.attention_weight > 0:
            self.attention = AttentionDecoder(cfg.attention, dim, cfg.vocab_size, sos_id=cfg.sos_id, eos_id=cfg.sos_id)

    def set_step(self, step: int) -> None:
        """Tell the model how many optimiser steps have been taken (the trainer's ``on_step``)."""
        self.step = step

    def forward(
        self, feats: torch.Tensor, feat_lens: torch.Tensor, targets: List[List[int]]
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """Return (weighted loss summed over the batch, per-head loss sums, encoder frames)."""
        enc, enc_lens = self.encoder(feats, feat_lens)  # (N, T', D), (N,)
        frames = enc_lens.sum().float()
        loss = enc.new_zeros((), dtype=torch.float32)
        parts: Dict[str, torch.Tensor] = {}
        cfg = self.cfg
        if self.transducer is not None:
            simple, pruned = self.transducer.loss(enc, enc_lens, targets)
            s_scale, p_scale = warmup_loss_scales(self.step, cfg.transducer.warm_step, cfg.transducer.simple_loss_scale)
            loss = loss + cfg.transducer_weight * (s_scale * simple + p_scale * pruned)
            parts["simple"], parts["pruned"] = simple.detach(), pruned.detach()
        if self.ctc is not None:
            ctc_loss, ctc_frames = self.ctc.loss(enc, enc_lens, targets)
            if self.transducer is None and self.attention is None:
                frames = ctc_frames  # CTC alone: count only the utterances it kept
            loss = loss + cfg.ctc_weight * ctc_loss
            parts["ctc"] = ctc_loss.detach()
        if self.attention is not None:
            att_loss = self.attention.loss(enc, enc_lens, targets)
            loss = loss + cfg.attention_weight * att_loss
            parts["attention"] = att_loss.detach()
        return loss, parts, frames

    def forward_encoder(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(feats, feat_lens)

    @torch.no_grad()
    def ctc_log_probs(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.ctc is None:
            raise ValueError("this model has no CTC head (model.ctc_weight is 0)")
        enc, enc_lens = self.encoder(feats, feat_lens)
        return self.ctc(enc), enc_lens  # (N, T', V), (N,)
