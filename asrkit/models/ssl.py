"""HuBERT-style masked prediction of frame targets on the Zipformer (VietASR's pretraining).

Why this exists: VietASR (arXiv 2505.21527) pretrains the Zipformer on unlabelled speech by predicting
k-means cluster ids of masked frames (HuBERT, arXiv 2106.07447), then fine-tunes it as an ASR encoder.
The encoder is built from the same ``encoder`` / ``encoder_conf`` as an ASR config, so its weights keep
the ``encoder.*`` names of :class:`asrkit.models.asr.AsrModel` and a fine-tuning run starts from them with
``init_from=<ssl exp dir>`` (``asrkit train``); the SSL-only tensors (``mask_emb``, ``final_proj.*``,
``label_embs``) are left unused there. Pretrain with::

    asrkit train --config egs/.../conf/ssl.yaml exp_dir=exp/ssl      # a config with ``task: ssl``

    task: ssl
    data: {train_cuts: data/ssl/cuts_train.jsonl.gz, spec_augment: false}   # cuts carry ``ssl_targets``
    model:
      encoder: zipformer
      encoder_conf: {preset: small}        # the ASR config's encoder_conf, unchanged
      num_classes: 500

Pipeline (shapes for fbank at 100 Hz)::

    feats (N, T, 80) -> encoder_embed -> x (N, T50, C0), T50 = (T - 7) // 2       50 Hz
    x[mask] = mask_emb                    span masks, fairseq's compute_mask_indices (below)
    -> Zipformer stacks, no final 2x downsample (return_50hz) -> (N, T50, D)      50 Hz
    -> final_proj (N, T50, final_dim); logits = cos(h, label_embs[c]) / logit_temp
    loss = CE(masked frames) + unmasked_weight * CE(unmasked frames)

Frame alignment: targets are at 50 Hz and target ``i`` belongs to front-end frame ``i`` (VietASR's
``feat2tar_ratio = label_rate * 2 / sample_rate = 1``; labels taken from an encoder's 50 Hz output are
exactly its frames ``0 .. (T - 7) // 2 - 1``). 100 Hz labels (k-means on fbank, HuBERT's iteration 0) are
read at HuBERT's ``floor(i * 2)``, i.e. every other label (:mod:`asrkit.data.ssl_dataset` does that).
Lengths rarely agree exactly ((T - 7) // 2 frames against ceil(T / 2) labels from 100 Hz fbank): HuBERT
cuts the *features* to the label count; we keep every frame (the encoder still sees them as context) and
cut the targets to the frame count or pad them with ``IGNORE_INDEX``, so a frame without a target costs
nothing and counts nowhere (:func:`align_targets`). The front end's receptive field of frame ``i`` spans
fbank frames ``2i .. 2i + 8`` (plus the ConvNeXt's +-3), so the fbank label read for frame ``i`` (fbank
frame ``2i``) lies ~40 ms before the centre of what the frame sees: small beside a 200 ms masked span,
and the same for every frame.

Masks follow fairseq's ``compute_mask_indices`` (static span lengths, overlap allowed), per utterance of
``sz`` valid frames: ``num = max(min_masks, floor(mask_prob * sz / mask_length + U(0, 1)))`` distinct span
starts drawn uniformly from ``[0, sz - mask_length)`` (from ``[0, num + 1)`` when that range holds no more
than ``num`` starts), each masking ``mask_length`` frames clipped to the utterance. ``mask_prob`` is thus
the expected fraction of frames *before* overlaps (0.8 with spans of 10 masks ~57% of the frames of a
long utterance). Differences, all where fairseq's batches differ from ours: fairseq crops a batch to its
shortest utterance and then equalises the masked count over the batch (``require_same_masks``); we pad
instead, so we do not equalise (it would drop random frames, not spans, from longer utterances); fairseq
raises when a tiny utterance (< ~0.35 s) ends up masked whole, we let it be (its frames then only teach
the label prior); for ``sz <= num`` the start range is clipped to the utterance. Masks are drawn in eval
mode too, as fairseq's validation loss does (``mask=False`` turns them off).
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asrkit.models.encoder import build_encoder

IGNORE_INDEX = -100  # target of a frame without a label (padding, or past the end of a cut's labels)


@dataclass
class SslConfig:
    encoder: str = "zipformer"
    encoder_conf: Dict[str, Any] = field(default_factory=dict)  # the ASR config's, so fine-tuning loads it
    num_classes: int = 500  # k-means clusters of the targets
    final_dim: int = 256  # projection of the 50 Hz encoder output compared with the class embeddings
    mask_prob: float = 0.8  # span starts per frame x mask_length (fairseq's mask_prob)
    mask_length: int = 10  # frames per span at 50 Hz (200 ms)
    min_masks: int = 2  # spans per utterance at least (HuBERT's apply_mask)
    logit_temp: float = 0.1  # cosine similarities are divided by this
    unmasked_weight: float = 0.0  # weight of the CE on unmasked frames (HuBERT's pred_nomask_weight)

    def __post_init__(self):
        if self.num_classes < 2 or self.final_dim < 1:
            raise ValueError(f"model.num_classes must be >= 2 and model.final_dim >= 1, got {self.num_classes}, "
                             f"{self.final_dim}")
        if not 0.0 <= self.mask_prob <= 1.0 or self.mask_length < 1 or self.min_masks < 0:
            raise ValueError(f"model.mask_prob must lie in [0, 1], mask_length >= 1, min_masks >= 0; got "
                             f"{self.mask_prob}, {self.mask_length}, {self.min_masks}")
        if self.logit_temp <= 0 or self.unmasked_weight < 0:
            raise ValueError(f"model.logit_temp must be > 0 and unmasked_weight >= 0, got {self.logit_temp}, "
                             f"{self.unmasked_weight}")


def compute_span_mask(
    lengths: Tensor,
    max_len: int,
    mask_prob: float = 0.8,
    mask_length: int = 10,
    min_masks: int = 2,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """(N,) valid lengths -> (N, max_len) bool, True = masked; fairseq's span masks (module docstring).

    Vectorised over the batch (no host sync): span starts are the ``num`` smallest of iid uniform scores
    over the allowed start positions, which is uniform sampling without replacement.
    """
    n, device = lengths.shape[0], lengths.device
    if mask_prob <= 0 or max_len == 0:
        return torch.zeros(n, max_len, dtype=torch.bool, device=device)
    sz = lengths.long()
    u = torch.rand(n, generator=generator, device=device)
    num = torch.floor(mask_prob * sz / mask_length + u).long().clamp(min=min_masks)
    starts_range = torch.where(sz - mask_length > num, sz - mask_length, num + 1)
    starts_range = torch.minimum(starts_range, sz)
    num = torch.minimum(num, starts_range)
    pos = torch.arange(max_len, device=device)
    scores = torch.rand(n, max_len, generator=generator, device=device)
    scores = scores.masked_fill(pos >= starts_range.unsqueeze(1), 2.0)  # never chosen before a valid start
    rank = scores.argsort(dim=1).argsort(dim=1)
    starts = (rank < num.unsqueeze(1)).long()  # (N, max_len), num ones per row
    # frame j is masked if a span starts in [j - mask_length + 1, j]
    count = starts.cumsum(dim=1)
    before = F.pad(count, (mask_length, 0))[:, :max_len]  # count[j - mask_length], 0 before the start
    return ((count - before) > 0) & (pos < sz.unsqueeze(1))


def align_targets(targets: Tensor, num_frames: int) -> Tensor:
    """Cut (N, S) 50 Hz targets to ``num_frames`` columns or pad them with IGNORE_INDEX (module docstring)."""
    s = targets.shape[1]
    if s >= num_frames:
        return targets[:, :num_frames]
    return F.pad(targets, (0, num_frames - s), value=IGNORE_INDEX)


class MaskedPredictionModel(nn.Module):
    """Encoder + mask embedding + projection + class embeddings; ``forward`` gives the masked CE."""

    def __init__(self, cfg: SslConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = build_encoder(cfg.encoder, **cfg.encoder_conf)
        embed_dim = getattr(self.encoder, "embed_dim", None)
        if embed_dim is None:
            raise ValueError(f"model.encoder={cfg.encoder!r}: masked prediction needs an encoder with a 50 Hz front "
                             "end it can mask (embed_dim, forward(..., return_50hz, embed_hook)): use zipformer")
        self.mask_emb = nn.Parameter(torch.empty(embed_dim).uniform_())  # fairseq's U(0, 1) init
        self.final_proj = nn.Linear(self.encoder.output_dim, cfg.final_dim)
        # normal, not fairseq's U(0, 1): U(0, 1) puts every class in one orthant, all cosines start near 0.75
        self.label_embs = nn.Parameter(torch.randn(cfg.num_classes, cfg.final_dim))

    def forward(
        self, feats: Tensor, feat_lens: Tensor, targets: Tensor, mask: bool = True
    ) -> Tuple[Tensor, Dict[str, Tensor], Tensor]:
        """feats (N, T, C), feat_lens (N,), targets (N, S) int at 50 Hz with IGNORE_INDEX padding.

        Returns ``(loss, parts, frames)`` as :meth:`AsrModel.forward`: ``loss`` is the CE summed over the
        masked frames plus ``unmasked_weight`` x that over the unmasked ones; ``frames`` counts the frames
        it sums over (masked ones, plus unmasked ones when their weight is > 0). ``parts`` (masked_ce,
        unmasked_ce, masked_acc) are scaled to give their own per-frame means when divided by ``frames``,
        as the trainer does with every stat.
        """
        cfg = self.cfg
        if targets.ndim != 2 or targets.shape[0] != feats.shape[0]:
            raise ValueError(f"targets must be (N, S) with N={feats.shape[0]}, got {tuple(targets.shape)}")
        bad = ((targets < 0) & (targets != IGNORE_INDEX)) | (targets >= cfg.num_classes)
        if bool(bad.any()):
            raise ValueError(f"targets must lie in [0, {cfg.num_classes}) or be {IGNORE_INDEX} (padding), got values "
                             f"{targets[bad].unique()[:5].tolist()}: do model.num_classes and the k-means model agree?")
        masks = []

        def apply_mask(x: Tensor, x_lens: Tensor) -> Tensor:  # x: (N, T50, C0) front-end output
            m = compute_span_mask(x_lens, x.shape[1], cfg.mask_prob, cfg.mask_length, cfg.min_masks) if mask \
                else torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
            masks.append(m)
            return torch.where(m.unsqueeze(-1), self.mask_emb.to(x.dtype), x)

        enc, enc_lens = self.encoder(feats, feat_lens, return_50hz=True, embed_hook=apply_mask)  # (N, T50, D)
        m = masks[0]
        t = enc.shape[1]
        targets = align_targets(targets.long(), t)
        valid = (torch.arange(t, device=enc.device) < enc_lens.unsqueeze(1)) & (targets != IGNORE_INDEX)
        h = F.normalize(self.final_proj(enc[valid]).float(), dim=-1)  # (V, final_dim), V valid frames
        logits = h @ F.normalize(self.label_embs.float(), dim=-1).t() / cfg.logit_temp  # (V, num_classes)
        y = targets[valid]
        ce = F.cross_entropy(logits, y, reduction="none")
        is_masked = m[valid]
        n_m = is_masked.sum()
        n_u = is_masked.numel() - n_m
        ce_m = (ce * is_masked).sum()
        ce_u = (ce * ~is_masked).sum()
        loss = ce_m + cfg.unmasked_weight * ce_u if cfg.unmasked_weight > 0 else ce_m
        frames = (n_m + n_u if cfg.unmasked_weight > 0 else n_m).float()
        correct_m = ((logits.argmax(dim=-1) == y) & is_masked).sum()
        scale_m = frames / n_m.clamp(min=1)
        parts = {
            "masked_ce": ce_m.detach() * scale_m,
            "unmasked_ce": ce_u.detach() * frames / n_u.clamp(min=1),
            "masked_acc": correct_m.float() * scale_m,
        }
        return loss, parts, frames
