"""One Zipformer2 encoder layer and its sub-modules (arXiv 2310.11230, Fig. 2).

Why this exists: the layer is the unit the stacks in ``zipformer.py`` repeat. Its order is
  ff1 -> nonlin-attention -> self-attention 1 -> conv 1 -> ff2 -> bypass_mid ->
  self-attention 2 -> conv 2 -> ff3 -> BiasNorm -> bypass
where a single ``RelPositionMultiheadAttentionWeights`` computes attention weights once per layer
and the two ``SelfAttention`` modules and ``NonlinAttention`` (head 0 only) reuse them.

Tensors are time-major inside the encoder: ``(T, N, C)``; attention weights ``(H, N, T, T)``.
Parameter names follow icefall's ``Zipformer2EncoderLayer`` so checkpoints map one to one.
"""

from __future__ import annotations

import copy
import logging
import random
from typing import Optional

import torch
from torch import Tensor, nn

from asrkit.models.zipformer.scaling import (
    ActivationDropoutAndLinear,
    Balancer,
    BiasNorm,
    FloatLike,
    ScaledLinear,
    ScheduledFloat,
    Whiten,
    limit_param_value,
    penalize_abs_values_gt,
    softmax,
)

log = logging.getLogger(__name__)


def _whitening_schedule(x: float, ratio: float = 2.0) -> ScheduledFloat:
    return ScheduledFloat((0.0, x), (20000.0, ratio * x), default=x)


class BypassModule(nn.Module):
    """``src_orig + (src - src_orig) * scale`` with a learned per-channel scale.

    In training the scale is kept in [scale_min, scale_max] (scale_min goes 0.9 -> 0.2 over 20k
    batches, forcing modules to contribute early on), and with probability ``skip_rate`` a whole
    utterance bypasses the module (scale 0): that is Zipformer's layer skipping.
    """

    def __init__(
        self,
        embed_dim: int,
        skip_rate: FloatLike = 0.0,
        straight_through_rate: FloatLike = 0.0,
        scale_min: Optional[FloatLike] = None,
        scale_max: FloatLike = 1.0,
    ):
        super().__init__()
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))
        self.skip_rate = copy.deepcopy(skip_rate)
        self.straight_through_rate = copy.deepcopy(straight_through_rate)
        self.scale_min = ScheduledFloat((0.0, 0.9), (20000.0, 0.2), default=0) if scale_min is None else copy.deepcopy(scale_min)
        self.scale_max = copy.deepcopy(scale_max)

    def _get_bypass_scale(self, batch_size: int) -> Tensor:
        # (C,) or (N, C): weight of the module's output; 0 means skip the module
        if not self.training:
            return self.bypass_scale
        scale = limit_param_value(self.bypass_scale, min=float(self.scale_min), max=float(self.scale_max))
        skip_rate = float(self.skip_rate)
        if skip_rate != 0.0:
            scale = scale * (torch.rand((batch_size, 1), device=scale.device) > skip_rate)
        straight_rate = float(self.straight_through_rate)
        if straight_rate != 0.0:
            straight = torch.rand((batch_size, 1), device=scale.device) < straight_rate
            scale = torch.maximum(scale, straight.to(scale.dtype))
        return scale

    def forward(self, src_orig: Tensor, src: Tensor) -> Tensor:
        # src_orig, src: (T, N, C)
        return src_orig + (src - src_orig) * self._get_bypass_scale(src.shape[1])


def _rel_to_abs(pos_scores: Tensor) -> Tensor:
    """(H, N, T, 2T-1) scores indexed by relative offset -> (H, N, T, T) indexed by key position.

    Column j of the input holds offset j - (T - 1); output [.., i, k] takes offset k - i.
    """
    h, n, t, _ = pos_scores.shape
    pos_scores = pos_scores.contiguous()
    s0, s1, s2, s3 = pos_scores.stride()
    return pos_scores.as_strided(
        (h, n, t, t), (s0, s1, s2 - s3, s3), storage_offset=pos_scores.storage_offset() + s3 * (t - 1)
    )


class RelPositionMultiheadAttentionWeights(nn.Module):
    """Attention weights (H, N, T, T) from query-key scores plus relative-position scores.

    Each head has a query/key of ``query_head_dim`` and a positional query of ``pos_head_dim``
    that is matched against a projection of the compact relative positional encoding. The
    ``head_dim ** -0.5`` scaling lives in the initial scale of ``in_proj`` (ScaledAdam keeps it).
    """

    def __init__(
        self,
        embed_dim: int,
        pos_dim: int,
        num_heads: int,
        query_head_dim: int,
        pos_head_dim: int,
        dropout: float = 0.0,
        pos_emb_skip_rate: Optional[FloatLike] = None,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.query_head_dim = query_head_dim
        self.pos_head_dim = pos_head_dim
        self.dropout = dropout
        self.pos_emb_skip_rate = ScheduledFloat((0.0, 0.5), (4000.0, 0.0)) if pos_emb_skip_rate is None else copy.deepcopy(pos_emb_skip_rate)
        self.name: Optional[str] = None
        in_proj_dim = (2 * query_head_dim + pos_head_dim) * num_heads
        self.in_proj = ScaledLinear(embed_dim, in_proj_dim, bias=True, initial_scale=query_head_dim**-0.25)
        self.whiten_keys = Whiten(num_groups=num_heads, whitening_limit=_whitening_schedule(3.0), prob=(0.025, 0.25), grad_scale=0.025)
        # keys: the weights ignore a constant offset, so keep the key means near zero (rarely)
        self.balance_keys = Balancer(
            query_head_dim * num_heads, channel_dim=-1, min_positive=0.4, max_positive=0.6, min_abs=0.0, max_abs=100.0, prob=0.025
        )
        self.linear_pos = ScaledLinear(pos_dim, num_heads * pos_head_dim, bias=False, initial_scale=0.05)

    def forward(
        self,
        x: Tensor,
        pos_emb: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """x: (T, N, C); pos_emb: (1, 2T-1, pos_dim); key_padding_mask: (N, T) True = padding;
        attn_mask: (T, T) or (N, T, T) True = not allowed. Returns (H, N, T, T)."""
        x = self.in_proj(x)
        t, n, _ = x.shape
        h, qd, pd = self.num_heads, self.query_head_dim, self.pos_head_dim
        q = x[..., : h * qd]
        k = self.whiten_keys(self.balance_keys(x[..., h * qd : 2 * h * qd]))
        p = x[..., 2 * h * qd :]
        q = q.reshape(t, n, h, qd).permute(2, 1, 0, 3)  # (H, N, T, qd)
        p = p.reshape(t, n, h, pd).permute(2, 1, 0, 3)  # (H, N, T, pd)
        k = k.reshape(t, n, h, qd).permute(2, 1, 3, 0)  # (H, N, qd, T)
        scores = torch.matmul(q, k)  # (H, N, T, T)

        if not self.training or random.random() >= float(self.pos_emb_skip_rate):
            pos = self.linear_pos(pos_emb)  # (1, 2T-1, H * pd)
            pos = pos.reshape(-1, 2 * t - 1, h, pd).permute(2, 0, 3, 1)  # (H, 1, pd, 2T-1)
            scores = scores + _rel_to_abs(torch.matmul(p, pos))

        if self.training and random.random() < 0.1:
            # failsafe: gradient penalty on implausibly large scores (|s| > 25)
            scores = penalize_abs_values_gt(scores, limit=25.0, penalty=1.0e-04, name=self.name)

        # -1000 (not -inf) avoids NaN on fully masked rows; exp(-1000) is exactly 0
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask, -1000)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask.unsqueeze(1), -1000)  # (N, 1, T)
        weights = softmax(scores, dim=-1)
        if random.random() < 0.001 and not self.training:  # occasional diagnostic, as in icefall
            self._log_entropy(weights)
        return nn.functional.dropout(weights, p=self.dropout, training=self.training)

    def _log_entropy(self, weights: Tensor) -> None:
        with torch.no_grad():
            w = weights.float()
            entropy = -((w + 1.0e-20).log() * w).sum(dim=-1).mean(dim=(1, 2))  # (H,)
            log.debug(f"{self.name}: attention entropy per head {entropy.tolist()}")


class SelfAttention(nn.Module):
    """Values ``(T, N, H * value_head_dim)`` mixed by precomputed attention weights, projected back."""

    def __init__(self, embed_dim: int, num_heads: int, value_head_dim: int):
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, num_heads * value_head_dim, bias=True)
        self.out_proj = ScaledLinear(num_heads * value_head_dim, embed_dim, bias=True, initial_scale=0.05)
        self.whiten = Whiten(num_groups=1, whitening_limit=_whitening_schedule(7.5, ratio=3.0), prob=(0.025, 0.25), grad_scale=0.01)

    def forward(self, x: Tensor, attn_weights: Tensor) -> Tensor:
        # x: (T, N, C); attn_weights: (H, N, T, T)
        t, n, _ = x.shape
        h = attn_weights.shape[0]
        v = self.in_proj(x).reshape(t, n, h, -1).permute(2, 1, 0, 3)  # (H, N, T, vd)
        v = torch.matmul(attn_weights, v)  # (H, N, T, vd)
        v = v.permute(2, 1, 0, 3).reshape(t, n, -1)  # (T, N, H * vd)
        return self.whiten(self.out_proj(v))


class FeedforwardModule(nn.Module):
    """Linear -> SwooshL -> dropout (mask shared over time) -> linear."""

    def __init__(self, embed_dim: int, feedforward_dim: int, dropout: FloatLike):
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, feedforward_dim)
        self.hidden_balancer = Balancer(feedforward_dim, channel_dim=-1, min_positive=0.3, max_positive=1.0, min_abs=0.75, max_abs=5.0)
        self.out_proj = ActivationDropoutAndLinear(
            feedforward_dim, embed_dim, activation="SwooshL", dropout_p=dropout, dropout_shared_dim=0, bias=True, initial_scale=0.1
        )
        self.out_whiten = Whiten(num_groups=1, whitening_limit=_whitening_schedule(7.5), prob=(0.025, 0.25), grad_scale=0.01)

    def forward(self, x: Tensor) -> Tensor:
        # x: (T, N, C)
        x = self.hidden_balancer(self.in_proj(x))
        return self.out_whiten(self.out_proj(x))


class NonlinAttention(nn.Module):
    """Like a convolution module with attention (head 0 of the shared weights) in place of the
    convolution: ``out_proj((attn @ (x * tanh(s))) * y)`` with s, x, y from one projection."""

    def __init__(self, channels: int, hidden_channels: int):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.in_proj = nn.Linear(channels, hidden_channels * 3, bias=True)
        # large min_abs: well-trained instances have |s| around 3 before the tanh
        self.balancer = Balancer(
            hidden_channels,
            channel_dim=-1,
            min_positive=ScheduledFloat((0.0, 0.25), (20000.0, 0.05)),
            max_positive=ScheduledFloat((0.0, 0.75), (20000.0, 0.95)),
            min_abs=0.5,
            max_abs=5.0,
        )
        self.tanh = nn.Tanh()
        self.out_proj = ScaledLinear(hidden_channels, channels, bias=True, initial_scale=0.05)
        self.whiten1 = Whiten(num_groups=1, whitening_limit=_whitening_schedule(5.0), prob=(0.025, 0.25), grad_scale=0.01)
        self.whiten2 = Whiten(num_groups=1, whitening_limit=_whitening_schedule(5.0, ratio=3.0), prob=(0.025, 0.25), grad_scale=0.01)

    def forward(self, x: Tensor, attn_weights: Tensor) -> Tensor:
        # x: (T, N, C); attn_weights: (H', N, T, T), H' = 1 here
        t, n, _ = x.shape
        s, x, y = self.in_proj(x).chunk(3, dim=2)  # each (T, N, hidden)
        s = self.tanh(self.balancer(s))
        x = self.whiten1(x) * s
        h = attn_weights.shape[0]
        x = x.reshape(t, n, h, -1).permute(2, 1, 0, 3)  # (H', N, T, hidden / H')
        x = torch.matmul(attn_weights, x)
        x = x.permute(2, 1, 0, 3).reshape(t, n, -1)  # (T, N, hidden)
        return self.whiten2(self.out_proj(x * y))


class ConvolutionModule(nn.Module):
    """GLU -> depthwise conv over time (padding frames zeroed first) -> SwooshR -> linear."""

    def __init__(self, channels: int, kernel_size: int, causal: bool = False):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ConvolutionModule: kernel size must be odd, got {kernel_size}")
        if causal:
            raise NotImplementedError("causal (chunked) Zipformer convolution is not implemented yet")
        self.causal = causal
        self.in_proj = nn.Linear(channels, 2 * channels)
        self.balancer1 = Balancer(
            channels,
            channel_dim=-1,
            min_positive=ScheduledFloat((0.0, 0.05), (8000.0, 0.025)),
            max_positive=1.0,
            min_abs=1.5,
            max_abs=ScheduledFloat((0.0, 5.0), (8000.0, 10.0), default=1.0),
        )
        self.sigmoid = nn.Sigmoid()
        self.depthwise_conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, padding=kernel_size // 2)
        self.balancer2 = Balancer(
            channels,
            channel_dim=1,
            min_positive=ScheduledFloat((0.0, 0.1), (8000.0, 0.05)),
            max_positive=1.0,
            min_abs=ScheduledFloat((0.0, 0.2), (20000.0, 0.5)),
            max_abs=10.0,
        )
        self.whiten = Whiten(num_groups=1, whitening_limit=_whitening_schedule(7.5), prob=(0.025, 0.25), grad_scale=0.01)
        self.out_proj = ActivationDropoutAndLinear(channels, channels, activation="SwooshR", dropout_p=0.0, initial_scale=0.05)

    def forward(self, x: Tensor, src_key_padding_mask: Optional[Tensor] = None) -> Tensor:
        # x: (T, N, C); src_key_padding_mask: (N, T), True = padding
        x, s = self.in_proj(x).chunk(2, dim=2)
        x = x * self.sigmoid(self.balancer1(s))
        x = x.permute(1, 2, 0)  # (N, C, T)
        if src_key_padding_mask is not None:
            x = x.masked_fill(src_key_padding_mask.unsqueeze(1), 0.0)
        x = self.balancer2(self.depthwise_conv(x))
        x = x.permute(2, 0, 1)  # (T, N, C)
        return self.out_proj(self.whiten(x))


class Zipformer2EncoderLayer(nn.Module):
    """One Zipformer2 layer (see module docstring). Input and output (T, N, C)."""

    def __init__(
        self,
        embed_dim: int,
        pos_dim: int,
        num_heads: int,
        query_head_dim: int,
        pos_head_dim: int,
        value_head_dim: int,
        feedforward_dim: int,
        dropout: FloatLike = 0.1,
        cnn_module_kernel: int = 31,
        causal: bool = False,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        # Per-utterance skip rates of the sub-modules (training only); bypass.skip_rate is
        # overwritten by the stack with its layer-drop warm-up schedule.
        self.bypass = BypassModule(embed_dim, skip_rate=ScheduledFloat((0.0, 0.5), (4000.0, 0.02), default=0))
        self.bypass_mid = BypassModule(embed_dim)
        self.attention_skip_rate = ScheduledFloat((0.0, 0.2), (4000.0, 0.05), (16000, 0.0), default=0)
        self.conv_skip_rate = ScheduledFloat((0.0, 0.2), (4000.0, 0.05), (16000, 0.0), default=0)
        self.ff2_skip_rate = ScheduledFloat((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0))
        self.ff3_skip_rate = ScheduledFloat((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0))
        self.const_attention_rate = ScheduledFloat((0.0, 0.25), (4000.0, 0.025), default=0)

        self.self_attn_weights = RelPositionMultiheadAttentionWeights(
            embed_dim, pos_dim=pos_dim, num_heads=num_heads, query_head_dim=query_head_dim, pos_head_dim=pos_head_dim, dropout=0.0
        )
        self.self_attn1 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.self_attn2 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.feed_forward1 = FeedforwardModule(embed_dim, (feedforward_dim * 3) // 4, dropout)
        self.feed_forward2 = FeedforwardModule(embed_dim, feedforward_dim, dropout)
        self.feed_forward3 = FeedforwardModule(embed_dim, (feedforward_dim * 5) // 4, dropout)
        self.nonlin_attention = NonlinAttention(embed_dim, hidden_channels=3 * embed_dim // 4)
        self.conv_module1 = ConvolutionModule(embed_dim, cnn_module_kernel, causal=causal)
        self.conv_module2 = ConvolutionModule(embed_dim, cnn_module_kernel, causal=causal)
        # Unused by the computation; icefall keeps it ("TODO: remove it"), so do we, for
        # identical parameter counts and checkpoint keys. (Its grad stays None.)
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))
        self.norm = BiasNorm(embed_dim)

        self.balancer1 = Balancer(embed_dim, channel_dim=-1, min_positive=0.45, max_positive=0.55, min_abs=0.2, max_abs=4.0)
        self.balancer_na = Balancer(
            embed_dim, channel_dim=-1, min_positive=0.3, max_positive=0.7, min_abs=ScheduledFloat((0.0, 0.004), (4000.0, 0.02)), prob=0.05
        )
        self.balancer_ff2 = Balancer(
            embed_dim,
            channel_dim=-1,
            min_positive=0.3,
            max_positive=0.7,
            min_abs=ScheduledFloat((0.0, 0.0), (4000.0, 0.1), default=0.0),
            max_abs=2.0,
            prob=0.05,
        )
        self.balancer_ff3 = Balancer(
            embed_dim,
            channel_dim=-1,
            min_positive=0.3,
            max_positive=0.7,
            min_abs=ScheduledFloat((0.0, 0.0), (4000.0, 0.2), default=0.0),
            max_abs=4.0,
            prob=0.05,
        )
        self.whiten = Whiten(num_groups=1, whitening_limit=_whitening_schedule(4.0, ratio=3.0), prob=(0.025, 0.25), grad_scale=0.01)
        self.balancer2 = Balancer(embed_dim, channel_dim=-1, min_positive=0.45, max_positive=0.55, min_abs=0.1, max_abs=4.0)

    def _rate(self, rate: FloatLike) -> float:
        return float(rate) if self.training else 0.0

    def _utterance_mask(self, x: Tensor, rate: float) -> Optional[Tensor]:
        # (N, 1) keep-mask: drops a module's output for whole utterances with probability `rate`
        if rate == 0.0 or not self.training:
            return None
        return (torch.rand(x.shape[1], 1, device=x.device) > rate).to(x.dtype)

    @staticmethod
    def _masked(x: Tensor, mask: Optional[Tensor]) -> Tensor:
        return x if mask is None else x * mask

    def _sequence_dropout(self, x: Tensor, rate: float) -> Tensor:
        # drop a module's (already computed) output per utterance; rate read before the module
        # runs and mask drawn after it, in icefall's order of random draws
        return self._masked(x, self._utterance_mask(x, rate))

    def forward(
        self,
        src: Tensor,
        pos_emb: Tensor,
        attn_mask: Optional[Tensor] = None,
        src_key_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """src: (T, N, C); pos_emb: (1, 2T-1, pos_dim); src_key_padding_mask: (N, T) True = padding."""
        src_orig = src
        attention_skip_rate = self._rate(self.attention_skip_rate)
        attn_weights = self.self_attn_weights(src, pos_emb=pos_emb, attn_mask=attn_mask, key_padding_mask=src_key_padding_mask)

        src = src + self.feed_forward1(src)

        attn_keep = self._utterance_mask(src, attention_skip_rate)
        na_weights = attn_weights[0:1]
        if self.training and random.random() < float(self.const_attention_rate):
            # uniform weights over the unmasked keys: pushes the module toward averaging over time
            na_weights = (na_weights > 0.0).to(na_weights.dtype)
            na_weights = na_weights * (1.0 / na_weights.sum(dim=-1, keepdim=True))
        src = src + self._masked(self.balancer_na(self.nonlin_attention(src, na_weights)), attn_keep)
        src = src + self._masked(self.self_attn1(src, attn_weights), attn_keep)
        rate = self._rate(self.conv_skip_rate)
        src = src + self._sequence_dropout(self.conv_module1(src, src_key_padding_mask=src_key_padding_mask), rate)
        rate = self._rate(self.ff2_skip_rate)
        src = src + self._sequence_dropout(self.balancer_ff2(self.feed_forward2(src)), rate)

        src = self.bypass_mid(src_orig, src)

        src = src + self._masked(self.self_attn2(src, attn_weights), attn_keep)
        rate = self._rate(self.conv_skip_rate)
        src = src + self._sequence_dropout(self.conv_module2(src, src_key_padding_mask=src_key_padding_mask), rate)
        rate = self._rate(self.ff3_skip_rate)
        src = src + self._sequence_dropout(self.balancer_ff3(self.feed_forward3(src)), rate)

        src = self.norm(self.balancer1(src))
        src = self.bypass(src_orig, src)
        return self.whiten(self.balancer2(src))
