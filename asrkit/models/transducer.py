"""The transducer head: stateless decoder + joiner, trained with the pruned RNN-T loss.

Why stateless: a decoder that sees only the last ``context_size`` tokens (an embedding and a
grouped 1-D convolution, arXiv 2109.07513 with icefall's convolution) is as accurate as an LSTM
prediction network on large data, has a finite state that makes beam search cheap (hypotheses with
the same last tokens share one decoder output), and carries no recurrence to unroll in training.

Training uses the pruned loss of arXiv 2206.13236 (``asrkit.losses.rnnt``): a "simple" loss on
``am + lm`` (linear projections, no joiner) gives the posteriors of each (frame, symbol) cell; from
them each frame keeps ``prune_range`` symbols, and only those cells go through the joiner. Module
and parameter names follow icefall's ``decoder.py``/``joiner.py``/``model.py``, so its checkpoints
map onto ours key for key (``asrkit import-icefall``).
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from asrkit.losses.rnnt import do_rnnt_pruning, get_rnnt_prune_ranges, rnnt_loss_pruned, rnnt_loss_smoothed
from asrkit.models.zipformer.scaling import Balancer, ScaledLinear


class Decoder(nn.Module):
    """Stateless prediction network: ``y (N, U)`` token ids -> ``(N, U, decoder_dim)``.

    Output ``u`` depends on tokens ``u - context_size + 1 .. u``. Negative ids stand for "before
    the utterance start" and embed to zero (beam search pads histories with -1).
    """

    def __init__(self, vocab_size: int, decoder_dim: int, blank_id: int, context_size: int = 2):
        super().__init__()
        if context_size < 1:
            raise ValueError(f"context_size must be >= 1, got {context_size}")
        if context_size > 1 and decoder_dim % 4:
            raise ValueError(f"decoder_dim must be a multiple of 4 (groups of 4 channels), got {decoder_dim}")
        self.vocab_size = vocab_size
        self.blank_id = blank_id
        self.context_size = context_size
        self.embedding = nn.Embedding(vocab_size, decoder_dim)
        # balancers keep the embedding magnitude from drifting, which would hurt model averaging
        self.balancer = Balancer(decoder_dim, channel_dim=-1, min_positive=0.0, max_positive=1.0,
                                 min_abs=0.5, max_abs=1.0, prob=0.05)
        if context_size > 1:
            self.conv = nn.Conv1d(decoder_dim, decoder_dim, kernel_size=context_size,
                                  groups=decoder_dim // 4, bias=False)
            self.balancer2 = Balancer(decoder_dim, channel_dim=-1, min_positive=0.0, max_positive=1.0,
                                      min_abs=0.5, max_abs=1.0, prob=0.05)
        else:
            self.conv = nn.Identity()
            self.balancer2 = nn.Identity()

    def forward(self, y: torch.Tensor, need_pad: bool = True) -> torch.Tensor:
        """``need_pad=True`` (training) left-pads so every position gets an output; ``False``
        (search) expects exactly ``context_size`` tokens per row and returns one output each."""
        y = y.long()
        emb = self.embedding(y.clamp(min=0)) * (y >= 0).unsqueeze(-1)  # (N, U, D)
        emb = self.balancer(emb)
        if self.context_size == 1:
            return emb
        x = emb.permute(0, 2, 1)  # (N, D, U)
        if need_pad:
            x = F.pad(x, (self.context_size - 1, 0))
        elif x.shape[-1] != self.context_size:
            raise ValueError(f"need_pad=False expects {self.context_size} tokens per row, got {x.shape[-1]}")
        x = F.relu(self.conv(x).permute(0, 2, 1))  # (N, U, D)
        return self.balancer2(x)


class Joiner(nn.Module):
    """``tanh(encoder_proj(enc) + decoder_proj(dec))`` -> logits over the vocabulary."""

    def __init__(self, encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int):
        super().__init__()
        self.encoder_proj = ScaledLinear(encoder_dim, joiner_dim, initial_scale=0.25)
        self.decoder_proj = ScaledLinear(decoder_dim, joiner_dim, initial_scale=0.25)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)

    def forward(self, encoder_out: torch.Tensor, decoder_out: torch.Tensor, project_input: bool = True) -> torch.Tensor:
        """Inputs broadcast against each other, e.g. ``(N, T, s_range, C)`` or ``(N, T, 1, C)`` and
        ``(N, 1, U, C)``; with ``project_input=False`` they are already projected to ``joiner_dim``."""
        if project_input:
            encoder_out, decoder_out = self.encoder_proj(encoder_out), self.decoder_proj(decoder_out)
        return self.output_linear(torch.tanh(encoder_out + decoder_out))


class TransducerHead(nn.Module):
    """Decoder, joiner and the two linear "simple" projections of the pruned loss."""

    def __init__(
        self,
        encoder_dim: int,
        vocab_size: int,
        blank_id: int = 0,
        decoder_dim: int = 512,
        joiner_dim: int = 512,
        context_size: int = 2,
        prune_range: int = 5,
        lm_scale: float = 0.25,
        am_scale: float = 0.0,
    ):
        super().__init__()
        self.blank_id = blank_id
        self.prune_range = prune_range
        self.lm_scale = lm_scale
        self.am_scale = am_scale
        self.decoder = Decoder(vocab_size, decoder_dim, blank_id, context_size)
        self.joiner = Joiner(encoder_dim, decoder_dim, joiner_dim, vocab_size)
        self.simple_am_proj = ScaledLinear(encoder_dim, vocab_size, initial_scale=0.25)
        self.simple_lm_proj = ScaledLinear(decoder_dim, vocab_size, initial_scale=0.25)

    def loss(
        self, enc_out: torch.Tensor, enc_lens: torch.Tensor, targets: List[List[int]]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Summed (simple, pruned) losses over the batch.

        enc_out (N, T, D), enc_lens (N,), targets: N token-id lists without blanks. An utterance with
        more tokens than frames is fine for the regular transducer (it may emit several per frame).
        """
        N, T, _ = enc_out.shape
        if len(targets) != N:
            raise ValueError(f"batch mismatch: enc_out has {N} utterances, {len(targets)} targets")
        device = enc_out.device
        vocab = self.decoder.vocab_size
        for i, tgt in enumerate(targets):
            if any(t == self.blank_id or not 0 <= t < vocab for t in tgt):
                raise ValueError(f"target {i} has the blank ({self.blank_id}) or an id outside [0, {vocab}): {tgt}")
        y_lens = torch.tensor([len(t) for t in targets], dtype=torch.long, device=device)
        S = int(y_lens.max()) if N else 0
        y = torch.zeros(N, S, dtype=torch.long)
        for i, tgt in enumerate(targets):
            y[i, : len(tgt)] = torch.tensor(tgt, dtype=torch.long)
        y = y.to(device)
        sos_y = F.pad(y, (1, 0), value=self.blank_id)  # (N, S + 1): blank is the start symbol
        decoder_out = self.decoder(sos_y)  # (N, S + 1, decoder_dim)

        boundary = torch.zeros(N, 4, dtype=torch.long, device=device)
        boundary[:, 2] = y_lens
        boundary[:, 3] = enc_lens.long()

        lm = self.simple_lm_proj(decoder_out)
        am = self.simple_am_proj(enc_out)
        with torch.autocast(device_type=device.type, enabled=False):
            simple_loss, (px_grad, py_grad) = rnnt_loss_smoothed(
                lm=lm.float(), am=am.float(), symbols=y, termination_symbol=self.blank_id,
                lm_only_scale=self.lm_scale, am_only_scale=self.am_scale, boundary=boundary,
                reduction="sum", return_grad=True,
            )
        ranges = get_rnnt_prune_ranges(px_grad=px_grad, py_grad=py_grad, boundary=boundary, s_range=self.prune_range)
        am_pruned, lm_pruned = do_rnnt_pruning(
            am=self.joiner.encoder_proj(enc_out), lm=self.joiner.decoder_proj(decoder_out), ranges=ranges
        )  # (N, T, prune_range, joiner_dim) each
        logits = self.joiner(am_pruned, lm_pruned, project_input=False)
        with torch.autocast(device_type=device.type, enabled=False):
            pruned_loss = rnnt_loss_pruned(
                logits=logits.float(), symbols=y, ranges=ranges, termination_symbol=self.blank_id,
                boundary=boundary, reduction="sum",
            )
        return simple_loss, pruned_loss


def warmup_loss_scales(step: int, warm_step: int, simple_loss_scale: float) -> Tuple[float, float]:
    """icefall's warm-up: the simple loss dominates at first (scale 1 -> ``simple_loss_scale``) while
    the pruned loss, whose ranges come from the still-random simple loss, fades in (0.1 -> 1)."""
    if warm_step <= 0 or step >= warm_step:
        return simple_loss_scale, 1.0
    frac = step / warm_step
    return 1.0 - frac * (1.0 - simple_loss_scale), 0.1 + 0.9 * frac
