"""Attention-decoder head: a pre-norm transformer decoder over the encoder output (AED / hybrid).

It is the decoder of icefall's Zipformer recipes (``zipformer/attention_decoder.py``): the module
tree and parameter names are the same, so an icefall checkpoint's ``attention_decoder.*`` entries
load into ``AsrModel.attention.*`` with only the prefix changed, and in eval mode the outputs are
the same. Used three ways::

    loss = head.loss(enc, enc_lens, targets)            # training: label-smoothed CE, summed
    nll = head.nll(enc, enc_lens, hyps)                 # rescoring an n-best list, (N,)
    state = head.init_state(enc, enc_lens, beam)        # incremental decoding with a KV cache
    log_probs = head.step(state, tokens)                # (N, beam, V); see asrkit.decoding.attention

Attention runs through ``torch.nn.functional.scaled_dot_product_attention``, except when training
with gradients: there the scores are formed explicitly so that, like icefall, a tiny gradient
penalty keeps them within +-50 (``penalize_abs_values_gt``; the forward value is the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asrkit.models.zipformer.scaling import penalize_abs_values_gt

IGNORE_ID = -1  # target padding that the losses skip


@dataclass
class AttentionDecoderConfig:
    decoder_dim: int = 512  # icefall --attention-decoder-dim
    num_layers: int = 6  # --attention-decoder-num-layers
    attention_dim: int = 512  # --attention-decoder-attention-dim
    num_heads: int = 8  # --attention-decoder-num-heads
    feedforward_dim: int = 2048  # --attention-decoder-feedforward-dim
    dropout: float = 0.1  # residual, feed-forward and positional-encoding dropout (icefall: 0.1 for all)
    label_smoothing: float = 0.1


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections (keys and values may come from memory)."""

    def __init__(self, embed_dim: int, attention_dim: int, num_heads: int, memory_dim: Optional[int] = None):
        super().__init__()
        if attention_dim % num_heads:
            raise ValueError(f"attention_dim {attention_dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = attention_dim // num_heads
        kv_dim = embed_dim if memory_dim is None else memory_dim
        self.linear_q = nn.Linear(embed_dim, attention_dim)
        self.linear_k = nn.Linear(kv_dim, attention_dim)
        self.linear_v = nn.Linear(kv_dim, attention_dim)
        self.out_proj = nn.Linear(attention_dim, embed_dim)

    def _split(self, x: Tensor) -> Tensor:
        N, L, _ = x.shape
        return x.view(N, L, self.num_heads, self.head_dim).transpose(1, 2)  # (N, H, L, d)

    def project_kv(self, kv: Tensor) -> Tuple[Tensor, Tensor]:
        """(N, S, kv_dim) -> keys and values, each (N, H, S, d)."""
        return self._split(self.linear_k(kv)), self._split(self.linear_v(kv))

    def attend(self, query: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None,
               causal: bool = False) -> Tensor:
        """query (N, L, E) against k, v (N, H, S, d) -> (N, L, E).

        mask: bool, broadcastable to (N, H, L, S), True where a key may be attended; causal: key s is
        seen by query l only when s <= l (then ``mask`` must be None).
        """
        q = self._split(self.linear_q(query))  # (N, H, L, d)
        if self.training and torch.is_grad_enabled():
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (N, H, L, S)
            scores = penalize_abs_values_gt(scores, limit=50.0, penalty=1.0e-4)
            if causal:
                L, S = scores.shape[-2:]
                mask = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            out = scores.softmax(dim=-1) @ v  # (N, H, L, d)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)  # (N, H, L, d)
        N, H, L, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(N, L, H * d))  # (N, L, E)


class DecoderLayer(nn.Module):
    """Pre-norm self-attention, cross-attention over the encoder output, then a Swish feed-forward."""

    def __init__(self, d_model: int, attention_dim: int, num_heads: int, feedforward_dim: int, memory_dim: int,
                 dropout: float):
        super().__init__()
        self.norm_self_attn = nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, attention_dim, num_heads)
        self.norm_src_attn = nn.LayerNorm(d_model)
        self.src_attn = MultiHeadAttention(d_model, attention_dim, num_heads, memory_dim=memory_dim)
        self.norm_ff = nn.LayerNorm(d_model)
        # indices 0 and 3 hold the weights, as in icefall's state dicts (feed_forward.0.*, feed_forward.3.*)
        self.feed_forward = nn.Sequential(
            nn.Linear(d_model, feedforward_dim), nn.SiLU(), nn.Dropout(dropout), nn.Linear(feedforward_dim, d_model)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory_kv: Tuple[Tensor, Tensor], memory_mask: Tensor) -> Tensor:
        """x (N, L, E) with causal self-attention; memory_kv from ``src_attn.project_kv``; mask (N, 1, 1, S)."""
        h = self.norm_self_attn(x)
        x = x + self.dropout(self.self_attn.attend(h, *self.self_attn.project_kv(h), causal=True))
        x = x + self.dropout(self.src_attn.attend(self.norm_src_attn(x), *memory_kv, mask=memory_mask))
        return x + self.dropout(self.feed_forward(self.norm_ff(x)))

    def step(
        self, x: Tensor, past: Optional[Tuple[Tensor, Tensor]], memory_kv: Tuple[Tensor, Tensor], memory_mask: Tensor
    ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        """One new position for N*K hypotheses: x (N*K, 1, E), past keys/values (N*K, H, t, d) or None.

        memory_kv (N, H, S, d) is shared by the K hypotheses of an utterance: their queries attend
        to it together as K query positions. Returns (N*K, 1, E) and the keys/values up to t + 1.
        """
        h = self.norm_self_attn(x)
        k, v = self.self_attn.project_kv(h)  # (N*K, H, 1, d)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        x = x + self.dropout(self.self_attn.attend(h, k, v))  # attends to every past position
        N = memory_kv[0].shape[0]
        q = self.norm_src_attn(x).view(N, -1, x.shape[-1])  # (N, K, E)
        x = x + self.dropout(self.src_attn.attend(q, *memory_kv, mask=memory_mask).view(x.shape))
        return x + self.dropout(self.feed_forward(self.norm_ff(x))), (k, v)


class PositionalEncoding(nn.Module):
    """Scale the embeddings by sqrt(d_model) and add sinusoids (ESPnet's absolute encoding); no parameters."""

    def __init__(self, d_model: int, dropout: float):
        super().__init__()
        if d_model % 2:
            raise ValueError(f"decoder_dim must be even for the sinusoidal positions, got {d_model}")
        self.d_model = d_model
        self.xscale = math.sqrt(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """x (N, L, E) holds positions offset .. offset + L - 1."""
        position = torch.arange(offset, offset + x.shape[1], dtype=torch.float32, device=x.device)[:, None]
        div = torch.exp(torch.arange(0, self.d_model, 2, dtype=torch.float32, device=x.device)
                        * -(math.log(10000.0) / self.d_model))
        pe = torch.stack([torch.sin(position * div), torch.cos(position * div)], dim=-1).flatten(1)  # (L, E)
        return self.dropout(x * self.xscale + pe.to(x.dtype))


class TransformerDecoder(nn.Module):
    """Token embedding + positions, ``num_layers`` decoder layers, output projection (no final norm)."""

    def __init__(self, vocab_size: int, d_model: int, num_layers: int, attention_dim: int, num_heads: int,
                 feedforward_dim: int, memory_dim: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = PositionalEncoding(d_model, dropout)
        self.num_layers = num_layers
        self.layers = nn.ModuleList(
            [DecoderLayer(d_model, attention_dim, num_heads, feedforward_dim, memory_dim, dropout)
             for _ in range(num_layers)]
        )
        self.output_layer = nn.Linear(d_model, vocab_size)

    def forward(self, ys: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """ys (N, L) token ids, memory (N, S, M), memory_mask (N, 1, 1, S) -> logits (N, L, V)."""
        x = self.pos(self.embed(ys))  # (N, L, E)
        for layer in self.layers:
            x = layer(x, layer.src_attn.project_kv(memory), memory_mask)
        return self.output_layer(x)


@dataclass
class DecoderState:
    """KV cache of :meth:`AttentionDecoder.step` for K hypotheses of each of N utterances."""

    memory_kv: List[Tuple[Tensor, Tensor]]  # per layer: cross-attention keys, values (N, H, S, d)
    memory_mask: Tensor  # (N, 1, 1, S) True on valid frames
    hyps_per_utt: int  # K
    self_kv: List[Optional[Tuple[Tensor, Tensor]]]  # per layer: self-attention keys, values (N*K, H, t, d)
    length: int = 0  # t: tokens fed so far

    def select_hyps(self, rows: Tensor) -> None:
        """Keep, in order, the hypotheses ``rows`` (N*K,) of the flattened (N, K) layout (beam reordering)."""
        self.self_kv = [None if kv is None else (kv[0][rows], kv[1][rows]) for kv in self.self_kv]

    def select_utts(self, utts: Tensor) -> None:
        """Keep only the utterances ``utts`` (N',) with all their hypotheses."""
        K = self.hyps_per_utt
        self.memory_kv = [(k[utts], v[utts]) for k, v in self.memory_kv]
        self.memory_mask = self.memory_mask[utts]
        self.select_hyps((utts[:, None] * K + torch.arange(K, device=utts.device)).flatten())


class AttentionDecoder(nn.Module):
    """The attention-decoder head: ``decoder`` is the icefall-compatible :class:`TransformerDecoder`.

    ``sos_id`` starts every decoder input and ``eos_id`` ends every target (asrkit's tokenizers use
    the same id, 1, for both).
    """

    def __init__(self, cfg: AttentionDecoderConfig, encoder_dim: int, vocab_size: int, sos_id: int = 1,
                 eos_id: int = 1):
        super().__init__()
        for name, i in (("sos_id", sos_id), ("eos_id", eos_id)):
            if not 0 <= i < vocab_size:
                raise ValueError(f"{name} {i} is outside the vocabulary [0, {vocab_size})")
        if not 0.0 <= cfg.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {cfg.label_smoothing}")
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.sos_id = sos_id
        self.eos_id = eos_id
        self.decoder = TransformerDecoder(vocab_size, cfg.decoder_dim, cfg.num_layers, cfg.attention_dim,
                                          cfg.num_heads, cfg.feedforward_dim, encoder_dim, cfg.dropout)

    # ------------------------------------------------------------------ teacher forcing

    def forward(self, enc: Tensor, enc_lens: Tensor, ys_in: Tensor, ys_in_lens: Tensor) -> Tensor:
        """Logits (N, L, V) for decoder inputs ys_in (N, L) starting with sos; enc (N, T, D), enc_lens (N,).

        Position l sees ys_in[:, :l + 1] only; rows past ``ys_in_lens`` are unspecified padding.
        """
        memory_mask = self._memory_mask(enc, enc_lens)
        N = enc.shape[0]
        if ys_in.dim() != 2 or ys_in.shape[0] != N or ys_in_lens.shape != (N,):
            raise ValueError(f"ys_in must be (N, L) and ys_in_lens (N,) with N = {N}, got "
                             f"{tuple(ys_in.shape)} and {tuple(ys_in_lens.shape)}")
        if N and (int(ys_in_lens.min()) < 1 or int(ys_in_lens.max()) > ys_in.shape[1]):
            raise ValueError(f"ys_in_lens must lie in [1, {ys_in.shape[1]}], got {ys_in_lens.tolist()}")
        if ys_in.numel() and (int(ys_in.min()) < 0 or int(ys_in.max()) >= self.vocab_size):
            raise ValueError(f"ys_in holds ids outside the vocabulary [0, {self.vocab_size})")
        return self.decoder(ys_in.to(enc.device), enc, memory_mask)

    def loss(self, enc: Tensor, enc_lens: Tensor, targets: List[List[int]]) -> Tensor:
        """Label-smoothed cross-entropy of ``targets + [eos]`` given ``[sos] + targets``, summed over
        tokens and utterances (float32). Label smoothing 0 is plain cross-entropy."""
        logits, ys_out = self._teacher_forcing(enc, enc_lens, targets)
        with torch.autocast(device_type=enc.device.type, enabled=False):
            return F.cross_entropy(logits.float().flatten(0, 1), ys_out.flatten(), ignore_index=IGNORE_ID,
                                   label_smoothing=self.cfg.label_smoothing, reduction="sum")

    def nll(self, enc: Tensor, enc_lens: Tensor, token_lists: Sequence[Sequence[int]]) -> Tensor:
        """Negative log-likelihood (N,) of each ``token_lists[n] + [eos]`` (no smoothing; float32)."""
        logits, ys_out = self._teacher_forcing(enc, enc_lens, token_lists)
        with torch.autocast(device_type=enc.device.type, enabled=False):
            nll = F.cross_entropy(logits.float().transpose(1, 2), ys_out, ignore_index=IGNORE_ID, reduction="none")
        return nll.sum(dim=1)  # (N,)

    def _teacher_forcing(
        self, enc: Tensor, enc_lens: Tensor, targets: Sequence[Sequence[int]]
    ) -> Tuple[Tensor, Tensor]:
        """Logits (N, L, V) for ``[sos] + y`` and the targets (N, L) ``y + [eos]`` padded with IGNORE_ID."""
        N = enc.shape[0] if enc.dim() == 3 else -1
        if len(targets) != N:
            raise ValueError(f"batch mismatch: enc has shape {tuple(enc.shape)} (want (N, T, D)), "
                             f"{len(targets)} targets")
        for i, tgt in enumerate(targets):
            for t in tgt:
                if not 0 <= t < self.vocab_size or t in (self.sos_id, self.eos_id):
                    raise ValueError(f"target {i} contains token id {t}, which is outside [0, {self.vocab_size}) "
                                     f"or the sos/eos id ({self.sos_id}/{self.eos_id}); check the tokenizer "
                                     "against the model")
        L = 1 + max((len(t) for t in targets), default=0)
        ys_in = torch.full((N, L), self.eos_id, dtype=torch.long)  # icefall pads the input with eos
        ys_out = torch.full((N, L), IGNORE_ID, dtype=torch.long)
        for i, tgt in enumerate(targets):
            ys_in[i, 0] = self.sos_id
            ys_in[i, 1:len(tgt) + 1] = torch.tensor(tgt, dtype=torch.long)
            ys_out[i, :len(tgt)] = ys_in[i, 1:len(tgt) + 1]
            ys_out[i, len(tgt)] = self.eos_id
        ys_in_lens = torch.tensor([len(t) + 1 for t in targets], dtype=torch.long)
        logits = self.forward(enc, enc_lens, ys_in.to(enc.device), ys_in_lens)  # (N, L, V)
        return logits, ys_out.to(enc.device)

    def _memory_mask(self, enc: Tensor, enc_lens: Tensor) -> Tensor:
        if enc.dim() != 3:
            raise ValueError(f"enc must be (N, T, D), got shape {tuple(enc.shape)}")
        N, T, _ = enc.shape
        if enc_lens.shape != (N,):
            raise ValueError(f"enc_lens must be (N,) = ({N},), got shape {tuple(enc_lens.shape)}")
        lens = enc_lens.to(enc.device)
        if N and (int(lens.min()) < 1 or int(lens.max()) > T):
            raise ValueError(f"enc_lens must lie in [1, {T}], got min {int(lens.min())} max {int(lens.max())}")
        return (torch.arange(T, device=enc.device)[None, :] < lens[:, None])[:, None, None, :]  # (N, 1, 1, T)

    # ------------------------------------------------------------------ incremental decoding

    def init_state(self, enc: Tensor, enc_lens: Tensor, hyps_per_utt: int) -> DecoderState:
        """A cache for ``hyps_per_utt`` hypotheses per utterance; projects the encoder output once per layer."""
        if hyps_per_utt < 1:
            raise ValueError(f"hyps_per_utt must be >= 1, got {hyps_per_utt}")
        mask = self._memory_mask(enc, enc_lens)
        kv = [layer.src_attn.project_kv(enc) for layer in self.decoder.layers]
        return DecoderState(kv, mask, hyps_per_utt, [None] * len(kv))

    def step(self, state: DecoderState, tokens: Tensor) -> Tensor:
        """Feed tokens (N, K) at position ``state.length``; return float32 next-token log-probs (N, K, V).

        ``state`` is updated in place; reorder it with ``state.select_hyps`` when hypotheses move.
        """
        N, K = state.memory_mask.shape[0], state.hyps_per_utt
        if tokens.shape != (N, K):
            raise ValueError(f"tokens must be (N, K) = ({N}, {K}), got shape {tuple(tokens.shape)}")
        dec = self.decoder
        x = dec.pos(dec.embed(tokens.reshape(N * K, 1)), offset=state.length)  # (N*K, 1, E)
        for i, layer in enumerate(dec.layers):
            x, state.self_kv[i] = layer.step(x, state.self_kv[i], state.memory_kv[i], state.memory_mask)
        state.length += 1
        return dec.output_layer(x).float().log_softmax(dim=-1).view(N, K, -1)
