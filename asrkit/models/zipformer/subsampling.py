"""Zipformer2's convolutional front end (icefall's ``encoder_embed``): 100 Hz fbank -> ~50 Hz.

Why this exists: the encoder stacks need a per-frame embedding at half the feature rate.
``Conv2dSubsampling`` runs three 3x3 convolutions (time stride 2 in the second, frequency
stride 2 in the last two), one ConvNeXt block, a linear projection and BiasNorm:
``(N, T, F) -> (N, (T - 7) // 2, C)``. Needs T >= 9 frames and F >= 7 features.

``padding_invariant=True`` zeroes the frames past each utterance's length before the ConvNeXt
block (whose 7-frame time kernel would otherwise read values computed from the batch's padding),
so an utterance gives the same output alone or in any padded batch. With False it matches
icefall exactly, padding dependence included; both agree on unpadded input.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from asrkit.models.zipformer.scaling import (
    Balancer,
    BiasNorm,
    Dropout3,
    FloatLike,
    ScaledConv2d,
    ScaleGrad,
    ScheduledFloat,
    SwooshL,
    SwooshR,
    Whiten,
)


class ConvNeXt(nn.Module):
    """Residual block: depthwise 7x7 conv -> 1x1 conv (x3 channels) -> SwooshL -> 1x1 conv.
    In training, the whole residual branch is dropped per utterance with ``layerdrop_rate``."""

    def __init__(
        self,
        channels: int,
        hidden_ratio: int = 3,
        kernel_size: Tuple[int, int] = (7, 7),
        layerdrop_rate: Optional[FloatLike] = None,
    ):
        super().__init__()
        self.padding = ((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2)
        hidden = channels * hidden_ratio
        self.layerdrop_rate = ScheduledFloat((0.0, 0.2), (20000.0, 0.015)) if layerdrop_rate is None else layerdrop_rate
        self.depthwise_conv = nn.Conv2d(channels, channels, kernel_size, groups=channels, padding=self.padding)
        self.pointwise_conv1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.hidden_balancer = Balancer(hidden, channel_dim=1, min_positive=0.3, max_positive=1.0, min_abs=0.75, max_abs=5.0)
        self.activation = SwooshL()
        self.pointwise_conv2 = ScaledConv2d(hidden, channels, kernel_size=1, initial_scale=0.01)
        self.out_balancer = Balancer(channels, channel_dim=1, min_positive=0.4, max_positive=0.6, min_abs=1.0, max_abs=6.0)
        self.out_whiten = Whiten(num_groups=1, whitening_limit=5.0, prob=(0.025, 0.25), grad_scale=0.01)

    def forward(self, x: Tensor) -> Tensor:
        # x: (N, C, T, F)
        skip_mask = None
        if self.training:
            rate = float(self.layerdrop_rate)
            if rate != 0.0:
                skip_mask = torch.rand((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device) > rate
        y = self.depthwise_conv(x)
        y = self.pointwise_conv1(y)
        y = self.hidden_balancer(y)
        y = self.activation(y)
        y = self.pointwise_conv2(y)
        if skip_mask is not None:
            y = y * skip_mask
        x = self.out_balancer(x + y)
        if self.training and x.requires_grad:
            x = self.out_whiten(x.transpose(1, 3)).transpose(1, 3)  # whiten over channels
        return x


class Conv2dSubsampling(nn.Module):
    """``(N, T, in_channels) -> (N, (T - 7) // 2, out_channels)``, lengths ``(x_lens - 7) // 2``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        layer1_channels: int = 8,
        layer2_channels: int = 32,
        layer3_channels: int = 128,
        dropout: FloatLike = 0.1,
        padding_invariant: bool = True,
    ):
        super().__init__()
        if in_channels < 7:
            raise ValueError(f"Conv2dSubsampling needs at least 7 input features, got {in_channels}")
        self.padding_invariant = padding_invariant
        # Indices matter: they are the parameter names (conv.0, conv.4, conv.7) shared with icefall.
        self.conv = nn.Sequential(
            nn.Conv2d(1, layer1_channels, kernel_size=3, padding=(0, 1)),  # (time, freq) padding
            ScaleGrad(0.2),  # keeps this conv's weight gradient inside fp16 range
            Balancer(layer1_channels, channel_dim=1, max_abs=1.0),
            SwooshR(),
            nn.Conv2d(layer1_channels, layer2_channels, kernel_size=3, stride=2),
            Balancer(layer2_channels, channel_dim=1, max_abs=4.0),
            SwooshR(),
            nn.Conv2d(layer2_channels, layer3_channels, kernel_size=3, stride=(1, 2)),
            Balancer(layer3_channels, channel_dim=1, max_abs=4.0),
            SwooshR(),
        )
        self.convnext = ConvNeXt(layer3_channels, kernel_size=(7, 7))
        self.out_width = (((in_channels - 1) // 2) - 1) // 2
        self.layer3_channels = layer3_channels
        self.out = nn.Linear(self.out_width * layer3_channels, out_channels)
        self.out_whiten = Whiten(
            num_groups=1,
            whitening_limit=ScheduledFloat((0.0, 4.0), (20000.0, 8.0), default=4.0),
            prob=(0.025, 0.25),
            grad_scale=0.02,
        )
        self.out_norm = BiasNorm(out_channels)
        self.dropout = Dropout3(dropout, shared_dim=1)

    @staticmethod
    def output_lengths(x_lens: Tensor) -> Tensor:
        return torch.div(x_lens - 7, 2, rounding_mode="floor")

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """x: (N, T, F), x_lens: (N,) <= T -> (N, (T - 7) // 2, C), ((x_lens - 7) // 2).
        (icefall insists on T == max(x_lens); here extra padding is allowed.)"""
        if x.shape[1] < 9:
            raise ValueError(f"Conv2dSubsampling: need at least 9 frames, got input of shape {tuple(x.shape)}")
        out_lens = self.output_lengths(x_lens)
        x = self.conv(x.unsqueeze(1))  # (N, C3, T', F')
        if self.padding_invariant:  # (no host sync: multiplying by ones changes nothing)
            valid = torch.arange(x.shape[2], device=x.device) < out_lens.unsqueeze(1)  # (N, T')
            x = x * valid[:, None, :, None].to(x.dtype)
        x = self.convnext(x)
        n, c, t, f = x.shape
        x = x.transpose(1, 2).reshape(n, t, c * f)  # (N, T', C3 * F')
        x = self.out(x)
        x = self.out_whiten(x)
        x = self.out_norm(x)
        x = self.dropout(x)
        return x, out_lens
