"""Zipformer2 encoder (Yao et al., arXiv 2310.11230), as icefall implements it, in pure PyTorch.

Why this exists: it is asrkit's main ASR encoder. ``Zipformer`` implements the Encoder protocol
(``asrkit.models.encoder``): fbank ``(N, T, 80)`` at 100 Hz -> ``(N, T', max(encoder_dim))`` at
25 Hz, with ``T' = ((T - 7) // 2 + 1) // 2``.

Structure (parameter names equal icefall's ``AsrModel`` so checkpoints map one to one):
  encoder_embed  Conv2dSubsampling, 100 Hz -> 50 Hz            (subsampling.py)
  encoder        Zipformer2: stacks at 50 Hz / downsampling_factor[i], each a
                 DownsampledStack(SimpleDownsample -> layers -> SimpleUpsample -> bypass),
                 the full-dim output gathered from the last stacks that have each channel,
                 then SimpleDownsample by 2 -> 25 Hz
Layers are in ``layer.py``; training helpers in ``scaling.py``.

Example::

    enc = Zipformer.from_preset("small")                       # 21,989,779 parameters
    out, out_lens = enc(feats, feat_lens)                      # (N, T', 256), (N,)
    x, x_lens = enc.embed(feats, feat_lens)                    # 50 Hz front-end output
    h50, h_lens = enc.encode(x, x_lens, downsample_output=False)  # 50 Hz, before the last 2x

Not implemented: causal / chunked streaming (``causal=True`` raises). The attention mask and
the ``attn_mask`` plumbing are in place; a chunk-causal depthwise conv would be the main addition.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from asrkit.models.encoder import register_encoder
from asrkit.models.zipformer.layer import BypassModule, Zipformer2EncoderLayer
from asrkit.models.zipformer.scaling import Dropout2, FloatLike, ScheduledFloat, convert_num_channels
from asrkit.models.zipformer.subsampling import Conv2dSubsampling

log = logging.getLogger(__name__)

IntTuple = Union[int, str, Sequence[int]]


class CompactRelPositionalEncoding(nn.Module):
    """Relative positional encoding that resolves small offsets finely and large ones coarsely.

    An offset x is compressed logarithmically beyond ~sqrt(dim), mapped through atan to a finite
    interval, and encoded by cos/sin at ``dim / 2`` integer frequencies; the last channel is a
    constant 1 (a bias for the projection). Returns ``(1, 2T - 1, dim)`` for offsets -(T-1)..T-1.
    """

    def __init__(self, embed_dim: int, dropout_rate: FloatLike, max_len: int = 2000, length_factor: float = 1.0):
        super().__init__()
        if embed_dim % 2 != 0 or length_factor < 1.0:
            raise ValueError(f"CompactRelPositionalEncoding: need even embed_dim and length_factor >= 1, got {embed_dim}, {length_factor}")
        self.embed_dim = embed_dim
        self.length_factor = length_factor
        self.dropout = Dropout2(dropout_rate)
        self.pe: Optional[Tensor] = None  # (2 * max_len - 1, dim), float32; not a buffer (not saved)
        self._extend(max_len, torch.device("cpu"))

    def _extend(self, t: int, device: torch.device) -> None:
        if self.pe is not None and self.pe.shape[0] >= 2 * t - 1:
            if self.pe.device != device:
                self.pe = self.pe.to(device)
            return
        x = torch.arange(-(t - 1), t, device=device).to(torch.float32).unsqueeze(1)  # (2T-1, 1)
        freqs = 1 + torch.arange(self.embed_dim // 2, device=device)
        # compressed offset: slope 1 at 0, logarithmic growth for |x| >> compression_length
        compression_length = self.embed_dim**0.5
        x_compressed = compression_length * x.sign() * ((x.abs() + compression_length).log() - math.log(compression_length))
        # length_factor 1: the Fourier basis exactly separates offsets near 0
        length_scale = self.length_factor * self.embed_dim / (2.0 * math.pi)
        x_atan = (x_compressed / length_scale).atan()
        pe = torch.zeros(x.shape[0], self.embed_dim, device=device)
        pe[:, 0::2] = (x_atan * freqs).cos()
        pe[:, 1::2] = (x_atan * freqs).sin()
        pe[:, -1] = 1.0
        self.pe = pe

    def forward(self, x: Tensor) -> Tensor:
        # x: (T, N, C) -> (1, 2T - 1, dim)
        t = x.shape[0]
        self._extend(t, x.device)
        center = self.pe.shape[0] // 2  # row of offset 0
        pos_emb = self.pe[center - t + 1 : center + t].to(x.dtype).unsqueeze(0)
        return self.dropout(pos_emb)


class Zipformer2Encoder(nn.Module):
    """A stack of identical-at-init layers sharing one positional encoding, run at one frame rate.

    Layer ``i`` is skipped per utterance (training only) with a rate that warms from 0.5 down to
    ``final_layerdrop_rate`` over its slice of [warmup_begin, warmup_end] batches.
    """

    def __init__(
        self,
        encoder_layer: nn.Module,
        num_layers: int,
        pos_dim: int,
        dropout: FloatLike,
        warmup_begin: float,
        warmup_end: float,
        initial_layerdrop_rate: float = 0.5,
        final_layerdrop_rate: float = 0.05,
    ):
        super().__init__()
        if not 0 <= warmup_begin <= warmup_end:
            raise ValueError(f"Zipformer2Encoder: need 0 <= warmup_begin <= warmup_end, got {warmup_begin}, {warmup_end}")
        self.encoder_pos = CompactRelPositionalEncoding(pos_dim, dropout_rate=0.15, length_factor=1.0)
        self.layers = nn.ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        delta = (warmup_end - warmup_begin) / num_layers
        for i, layer in enumerate(self.layers):
            begin = warmup_begin + i * delta
            layer.bypass.skip_rate = ScheduledFloat((begin, initial_layerdrop_rate), (begin + delta, final_layerdrop_rate), default=0.0)

    def forward(
        self,
        src: Tensor,
        feature_mask: Union[Tensor, float] = 1.0,
        attn_mask: Optional[Tensor] = None,
        src_key_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """src: (T, N, C); feature_mask: 1.0 or (1, N, C); src_key_padding_mask: (N, T). -> (T, N, C)."""
        pos_emb = self.encoder_pos(src)
        out = src * feature_mask
        for layer in self.layers:
            out = layer(out, pos_emb, attn_mask=attn_mask, src_key_padding_mask=src_key_padding_mask)
            out = out * feature_mask
        return out


class SimpleDownsample(nn.Module):
    """``(T, N, C) -> (ceil(T / ds), N, C)``: each output frame is a learned softmax-weighted sum
    of ``ds`` consecutive frames; the end is padded by repeating the last frame.

    With ``lengths`` (N,) given, frames past each utterance's length are first replaced by its
    last valid frame, so the result does not depend on the batch's padding (padding invariance).
    """

    def __init__(self, channels: int, downsample: int, dropout: FloatLike = 0.0, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.bias = nn.Parameter(torch.zeros(downsample))
        self.dropout = copy.deepcopy(dropout)  # unused (as in icefall); kept for schedule parity
        self.downsample = downsample

    def forward(self, src: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        t, n, c = src.shape
        ds = self.downsample
        if lengths is not None:  # (no host sync: where() with nothing to replace changes nothing)
            last = src[(lengths - 1).clamp(min=0), torch.arange(n, device=src.device)]  # (N, C)
            is_pad = torch.arange(t, device=src.device).unsqueeze(1) >= lengths.unsqueeze(0)  # (T, N)
            src = torch.where(is_pad.unsqueeze(-1), last.unsqueeze(0), src)
        d_t = (t + ds - 1) // ds
        pad = d_t * ds - t
        if pad > 0:
            src = torch.cat((src, src[-1:].expand(pad, n, c)), dim=0)
        weights = self.bias.softmax(dim=0).reshape(1, ds, 1, 1)
        return (src.reshape(d_t, ds, n, c) * weights).sum(dim=1)


class SimpleUpsample(nn.Module):
    """``(T, N, C) -> (T * upsample, N, C)`` by repeating each frame."""

    def __init__(self, num_channels: int, upsample: int):
        super().__init__()
        self.upsample = upsample

    def forward(self, src: Tensor) -> Tensor:
        t, n, c = src.shape
        return src.unsqueeze(1).expand(t, self.upsample, n, c).reshape(t * self.upsample, n, c)


class DownsampledZipformer2Encoder(nn.Module):
    """Run a stack at 1/ds of the input frame rate; upsample back and mix with the input via a
    learned bypass. Input and output (T, N, C)."""

    def __init__(self, encoder: Zipformer2Encoder, dim: int, downsample: int, dropout: FloatLike, causal: bool = False):
        super().__init__()
        self.downsample_factor = downsample
        self.downsample = SimpleDownsample(dim, downsample, dropout, causal)
        self.num_layers = encoder.num_layers
        self.encoder = encoder
        self.upsample = SimpleUpsample(dim, downsample)
        self.out_combiner = BypassModule(dim, straight_through_rate=0)

    def forward(
        self,
        src: Tensor,
        feature_mask: Union[Tensor, float] = 1.0,
        attn_mask: Optional[Tensor] = None,
        src_key_padding_mask: Optional[Tensor] = None,
        lengths: Optional[Tensor] = None,
    ) -> Tensor:
        """src_key_padding_mask: (N, T') at the stack's own rate; lengths: (N,) at the input rate
        (for padding-invariant downsampling)."""
        src_orig = src
        ds = self.downsample_factor
        src = self.downsample(src, lengths)
        if attn_mask is not None:
            attn_mask = attn_mask[::ds, ::ds]
        src = self.encoder(src, feature_mask=feature_mask, attn_mask=attn_mask, src_key_padding_mask=src_key_padding_mask)
        src = self.upsample(src)[: src_orig.shape[0]]
        return self.out_combiner(src_orig, src)


def _to_int_tuple(x: IntTuple, n: Optional[int], name: str) -> Tuple[int, ...]:
    """icefall's flag semantics: an int, a one-element or n-element sequence, or "a,b,c"."""
    if isinstance(x, str):
        x = [int(v) for v in x.split(",") if v.strip()]
    elif isinstance(x, int):
        x = [x]
    x = tuple(int(v) for v in x)
    if n is not None and len(x) == 1:
        x = x * n
    if n is not None and len(x) != n:
        raise ValueError(f"Zipformer config: {name}={x} has {len(x)} entries, expected 1 or {n} (per stack, or the 3 front-end conv widths)")
    return x


class Zipformer2(nn.Module):
    """The encoder stacks (icefall's ``Zipformer2``): ``(T, N, C0)`` at 50 Hz -> ``(T', N, max dim)``.

    All per-stack arguments are tuples of equal length (one entry per stack).
    """

    def __init__(
        self,
        output_downsampling_factor: int,
        downsampling_factor: Tuple[int, ...],
        encoder_dim: Tuple[int, ...],
        num_encoder_layers: Tuple[int, ...],
        encoder_unmasked_dim: Tuple[int, ...],
        query_head_dim: Tuple[int, ...],
        pos_head_dim: Tuple[int, ...],
        value_head_dim: Tuple[int, ...],
        num_heads: Tuple[int, ...],
        feedforward_dim: Tuple[int, ...],
        cnn_module_kernel: Tuple[int, ...],
        pos_dim: int,
        dropout: FloatLike,
        warmup_batches: float = 4000.0,
        causal: bool = False,
        padding_invariant: bool = True,
    ):
        super().__init__()
        if output_downsampling_factor not in (1, 2):
            raise ValueError(f"Zipformer2: output_downsampling_factor must be 1 or 2, got {output_downsampling_factor}")
        for u, d in zip(encoder_unmasked_dim, encoder_dim):
            if u > d:
                raise ValueError(f"Zipformer2: encoder_unmasked_dim {encoder_unmasked_dim} must not exceed encoder_dim {encoder_dim}")
        self.output_downsampling_factor = output_downsampling_factor
        self.downsampling_factor = downsampling_factor
        self.encoder_dim = encoder_dim
        self.encoder_unmasked_dim = encoder_unmasked_dim
        self.num_encoder_layers = num_encoder_layers
        self.causal = causal
        self.padding_invariant = padding_invariant

        n = len(downsampling_factor)
        encoders = []
        for i in range(n):
            layer = Zipformer2EncoderLayer(
                embed_dim=encoder_dim[i],
                pos_dim=pos_dim,
                num_heads=num_heads[i],
                query_head_dim=query_head_dim[i],
                pos_head_dim=pos_head_dim[i],
                value_head_dim=value_head_dim[i],
                feedforward_dim=feedforward_dim[i],
                dropout=dropout,
                cnn_module_kernel=cnn_module_kernel[i],
                causal=causal,
            )
            # the front end trains alone for a while, then each stack warms up in turn
            stack = Zipformer2Encoder(
                layer,
                num_encoder_layers[i],
                pos_dim=pos_dim,
                dropout=dropout,
                warmup_begin=warmup_batches * (i + 1) / (n + 1),
                warmup_end=warmup_batches * (i + 2) / (n + 1),
                final_layerdrop_rate=0.035 * (downsampling_factor[i] ** 0.5),
            )
            if downsampling_factor[i] != 1:
                stack = DownsampledZipformer2Encoder(stack, dim=encoder_dim[i], downsample=downsampling_factor[i], dropout=dropout, causal=causal)
            encoders.append(stack)
        self.encoders = nn.ModuleList(encoders)
        self.downsample_output = SimpleDownsample(max(encoder_dim), downsample=output_downsampling_factor, dropout=dropout, causal=causal)

    def get_feature_masks(self, x: Tensor) -> List[Union[Tensor, float]]:
        """Per-stack (1, N, C) masks (training only): on ~12.5% of utterances channels from
        ``encoder_unmasked_dim`` up to the midpoint are zeroed, on ~23% the upper half too.
        The same decision holds for all stacks. x: (T, N, C0)."""
        if not self.training:
            return [1.0] * len(self.encoder_dim)
        n = x.shape[1]
        p = 0.125
        keep1 = (torch.rand(1, n, 1, device=x.device) > p).to(x.dtype)
        keep2 = torch.logical_and(keep1, (torch.rand(1, n, 1, device=x.device) > p).to(x.dtype))
        masks = []
        for dim, unmasked in zip(self.encoder_dim, self.encoder_unmasked_dim):
            mask = torch.ones(1, n, dim, dtype=x.dtype, device=x.device)
            mid = unmasked + (dim - unmasked) // 2
            mask[:, :, unmasked:mid] *= keep1
            mask[:, :, mid:] *= keep2
            masks.append(mask)
        return masks

    def _get_full_dim_output(self, outputs: List[Tensor]) -> Tensor:
        # channels [0, d_last) from the last stack; each wider channel from the latest stack having it
        pieces = [outputs[-1]]
        cur = self.encoder_dim[-1]
        for i in range(len(outputs) - 2, -1, -1):
            d = self.encoder_dim[i]
            if d > cur:
                pieces.append(outputs[i][..., cur:d])
                cur = d
        return torch.cat(pieces, dim=-1)

    def forward(
        self,
        x: Tensor,
        x_lens: Tensor,
        src_key_padding_mask: Optional[Tensor] = None,
        downsample_output: bool = True,
    ) -> Tuple[Tensor, Tensor]:
        """x: (T, N, C0) at 50 Hz; x_lens: (N,); src_key_padding_mask: (N, T) True = padding.
        Returns (T', N, max(encoder_dim)) and lengths; T' = ceil(T / 2) unless
        ``downsample_output=False`` (then 50 Hz, lengths unchanged)."""
        feature_masks = self.get_feature_masks(x)
        lengths = x_lens if self.padding_invariant and src_key_padding_mask is not None else None
        outputs = []
        for i, module in enumerate(self.encoders):
            ds = self.downsampling_factor[i]
            x = convert_num_channels(x, self.encoder_dim[i])
            mask = None if src_key_padding_mask is None else src_key_padding_mask[..., ::ds]
            if isinstance(module, DownsampledZipformer2Encoder):
                x = module(x, feature_mask=feature_masks[i], src_key_padding_mask=mask, lengths=lengths)
            else:
                x = module(x, feature_mask=feature_masks[i], src_key_padding_mask=mask)
            outputs.append(x)
        x = self._get_full_dim_output(outputs)
        if not downsample_output:
            return x, x_lens
        x = self.downsample_output(x, lengths)
        f = self.output_downsampling_factor
        return x, torch.div(x_lens + f - 1, f, rounding_mode="floor")


@dataclass
class ZipformerConfig:
    """Zipformer hyper-parameters; defaults are icefall's LibriSpeech "medium" (train.py defaults).

    Per-stack fields take an int (same for all stacks), a sequence, or "a,b,c" as icefall's flags.
    """

    input_dim: int = 80
    num_encoder_layers: IntTuple = (2, 2, 3, 4, 3, 2)
    downsampling_factor: IntTuple = (1, 2, 4, 8, 4, 2)
    encoder_dim: IntTuple = (192, 256, 384, 512, 384, 256)
    feedforward_dim: IntTuple = (512, 768, 1024, 1536, 1024, 768)
    num_heads: IntTuple = (4, 4, 4, 8, 4, 4)
    encoder_unmasked_dim: IntTuple = (192, 192, 256, 256, 256, 192)
    cnn_module_kernel: IntTuple = (31, 31, 15, 15, 15, 31)
    query_head_dim: IntTuple = 32
    value_head_dim: IntTuple = 12
    pos_head_dim: IntTuple = 4
    pos_dim: int = 48
    output_downsampling_factor: int = 2
    dropout: Optional[float] = None  # None: icefall's schedule, 0.3 -> 0.1 over 20k batches
    warmup_batches: float = 4000.0
    causal: bool = False
    padding_invariant: bool = True  # False: reproduce icefall's dependence on batch padding
    embed_channels: IntTuple = (8, 32, 128)  # front-end conv widths (icefall's defaults); smaller = faster on CPU

    def normalized(self) -> "ZipformerConfig":
        """A copy with every per-stack field as a tuple of length num_stacks."""
        ds = _to_int_tuple(self.downsampling_factor, None, "downsampling_factor")
        per_stack = [
            "num_encoder_layers", "encoder_dim", "feedforward_dim", "num_heads", "encoder_unmasked_dim",
            "cnn_module_kernel", "query_head_dim", "value_head_dim", "pos_head_dim",
        ]  # fmt: skip
        values = {k: _to_int_tuple(getattr(self, k), len(ds), k) for k in per_stack}
        embed = _to_int_tuple(self.embed_channels, 3, "embed_channels")
        return dataclasses.replace(self, downsampling_factor=ds, embed_channels=embed, **values)


PRESETS: Dict[str, Dict[str, IntTuple]] = {
    # icefall egs/librispeech/ASR/RESULTS.md (zipformer, non-streaming); medium = train.py defaults
    "small": dict(
        num_encoder_layers=2,
        feedforward_dim=(512, 768, 768, 768, 768, 768),
        encoder_dim=(192, 256, 256, 256, 256, 256),
        encoder_unmasked_dim=192,
    ),
    "medium": dict(),
    "large": dict(
        num_encoder_layers=(2, 2, 4, 5, 4, 2),
        feedforward_dim=(512, 768, 1536, 2048, 1536, 768),
        encoder_dim=(192, 256, 512, 768, 512, 256),
        encoder_unmasked_dim=(192, 192, 256, 320, 256, 192),
    ),
}


def make_pad_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(N,) lengths -> (N, max_len) bool, True at padding."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) >= lengths.unsqueeze(1)


@register_encoder("zipformer")
class Zipformer(nn.Module):
    """Front end + Zipformer2 stacks behind the Encoder protocol (see module docstring).

    ``Zipformer(**dataclasses.asdict(cfg))``, ``Zipformer(cfg)`` or ``Zipformer.from_preset(name)``.
    """

    def __init__(self, config: Optional[ZipformerConfig] = None, **kwargs):
        super().__init__()
        if config is None:
            names = {f.name for f in dataclasses.fields(ZipformerConfig)}
            unknown = sorted(set(kwargs) - names)
            if unknown:
                raise TypeError(f"Zipformer: unknown config keys {unknown}; valid keys: {sorted(names)}")
            config = ZipformerConfig(**kwargs)
        elif kwargs:
            config = dataclasses.replace(config, **kwargs)
        if config.causal:
            raise NotImplementedError("Zipformer: causal/streaming mode is not implemented; use causal=False")
        cfg = config.normalized()
        self.config = cfg
        dropout = ScheduledFloat((0.0, 0.3), (20000.0, 0.1)) if cfg.dropout is None else cfg.dropout
        self.encoder_embed = Conv2dSubsampling(
            in_channels=cfg.input_dim,
            out_channels=cfg.encoder_dim[0],
            layer1_channels=cfg.embed_channels[0],
            layer2_channels=cfg.embed_channels[1],
            layer3_channels=cfg.embed_channels[2],
            dropout=copy.deepcopy(dropout),
            padding_invariant=cfg.padding_invariant,
        )
        self.encoder = Zipformer2(
            output_downsampling_factor=cfg.output_downsampling_factor,
            downsampling_factor=cfg.downsampling_factor,
            encoder_dim=cfg.encoder_dim,
            num_encoder_layers=cfg.num_encoder_layers,
            encoder_unmasked_dim=cfg.encoder_unmasked_dim,
            query_head_dim=cfg.query_head_dim,
            pos_head_dim=cfg.pos_head_dim,
            value_head_dim=cfg.value_head_dim,
            num_heads=cfg.num_heads,
            feedforward_dim=cfg.feedforward_dim,
            cnn_module_kernel=cfg.cnn_module_kernel,
            pos_dim=cfg.pos_dim,
            dropout=dropout,
            warmup_batches=cfg.warmup_batches,
            causal=cfg.causal,
            padding_invariant=cfg.padding_invariant,
        )
        self.output_dim = max(cfg.encoder_dim)
        self.embed_dim = cfg.encoder_dim[0]  # channels of the 50 Hz front-end output
        self.subsampling_factor = 2 * cfg.output_downsampling_factor

    @classmethod
    def from_preset(cls, name: str, input_dim: int = 80, **overrides) -> "Zipformer":
        """icefall's LibriSpeech "small" (22.0M), "medium" (64.0M) or "large" (146.8M) encoder."""
        if name not in PRESETS:
            raise ValueError(f"unknown Zipformer preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], "input_dim": input_dim, **overrides})

    def embed(self, feats: Tensor, feat_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """Front end: (N, T, F) at 100 Hz -> (N, (T - 7) // 2, encoder_dim[0]) at 50 Hz, lengths."""
        return self.encoder_embed(feats, feat_lens)

    def encode(self, x: Tensor, x_lens: Tensor, downsample_output: bool = True) -> Tuple[Tensor, Tensor]:
        """Stacks: (N, T, encoder_dim[0]) at 50 Hz -> (N, ceil(T / 2), output_dim), lengths;
        with ``downsample_output=False`` the 50 Hz full-dim output (N, T, output_dim)."""
        mask = make_pad_mask(x_lens, x.shape[1])
        out, out_lens = self.encoder(x.transpose(0, 1), x_lens, mask, downsample_output=downsample_output)
        return out.transpose(0, 1), out_lens

    def forward(
        self,
        feats: Tensor,
        feat_lens: Tensor,
        return_50hz: bool = False,
        embed_hook: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
    ) -> Tuple[Tensor, Tensor]:
        """feats (N, T, input_dim), feat_lens (N,) -> (N, T', output_dim), (N,).
        ``return_50hz=True`` skips the final 2x downsampling (output at 50 Hz).
        ``embed_hook(x, x_lens) -> x`` rewrites the 50 Hz front-end output (N, (T - 7) // 2, embed_dim)
        before the stacks: HuBERT-style masked pretraining (asrkit.models.ssl) swaps in its mask embedding there."""
        if feats.ndim != 3 or feats.shape[-1] != self.config.input_dim:
            raise ValueError(f"Zipformer: expected feats (N, T, {self.config.input_dim}), got {tuple(feats.shape)}")
        if bool(((feat_lens < 9) | (feat_lens > feats.shape[1])).any()):  # one host sync
            raise ValueError(
                f"Zipformer: feat_lens {feat_lens.tolist()} must lie in [9, {feats.shape[1]}] (the padded length); "
                "utterances shorter than 9 frames (90 ms) give no output: drop them"
            )
        x, x_lens = self.embed(feats, feat_lens)
        if embed_hook is not None:
            x = embed_hook(x, x_lens)
        return self.encode(x, x_lens, downsample_output=not return_50hz)


def icefall_to_asrkit_state_dict(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Map an icefall zipformer ``AsrModel`` state dict (``ckpt["model"]``) to ``Zipformer``'s.

    The module trees are the same, so this keeps the ``encoder_embed.*`` and ``encoder.*`` keys
    (dropping the decoder, joiner and CTC/attention heads) and strips a DDP ``module.`` prefix.
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module.") :]
        if key.startswith("encoder_embed.") or key.startswith("encoder."):
            out[key] = value
    if not out:
        raise ValueError("icefall_to_asrkit_state_dict: no 'encoder_embed.*' or 'encoder.*' keys; is this an icefall zipformer checkpoint?")
    log.debug(f"icefall_to_asrkit_state_dict: kept {len(out)} of {len(state_dict)} tensors")
    return out
