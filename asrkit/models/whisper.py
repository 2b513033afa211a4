"""Whisper's encoder (Hugging Face ``transformers``) behind asrkit's Encoder protocol.

    model:
      encoder: whisper
      encoder_conf: {model_dir: /models/whisper-small, freeze: true, unfreeze_last_n_layers: 2}
    data: {feature_type: whisper-fbank, num_mel_bins: 80}      # 128 for large-v3 and turbo

Inputs are Whisper log-mel frames at 100 Hz (``asrkit compute-fbank --feature-type whisper-fbank``),
outputs ``d_model``-dim frames at 50 Hz: ``out_lens = (feat_lens - 1) // 2 + 1``.

Whisper was trained on 30 s windows only. Two ways to run shorter inputs:

* ``pad_to_30s: false`` (default): the conv front end runs on the batch's own length and the
  positional embedding is cut to its first T' rows. A 5 s utterance costs a sixth of a 30 s window
  or less (attention: 1/36); the model meets lengths it never saw, which fine-tuning absorbs.
* ``pad_to_30s: true``: every utterance is padded to 3000 frames with the value Whisper's
  log-mel gives digital silence (its floor, see :func:`silence_floor`), as if the audio had been
  zero-padded like Whisper's own front end does; the output is cut back to the longest
  utterance's frames.

``use_padding_mask`` (default: on when trimming, off with ``pad_to_30s``) passes a key-padding
mask to the attention layers and zeroes padded frames before and between the two convolutions,
so each utterance's output is the one it gets alone in a batch of one. Without it, padded frames
hold silence and take part in attention, as in Whisper's training. With ``pad_to_30s`` every
utterance sees its own 30 s window whatever the batch, so both settings are batch-invariant there.
"""

import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from asrkit.models.encoder import register_encoder

try:
    from transformers import WhisperConfig, WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder
except ImportError as e:  # build_encoder re-raises this (the module exists, a dependency does not)
    raise ModuleNotFoundError("the Whisper encoder needs transformers: pip install -e '.[llm]'",
                              name="transformers") from e

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def silence_floor(feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(N, 1, 1) value of digital silence in each utterance's Whisper log-mel.

    Whisper's front end floors power at 1e-10, then log10 power at (utterance max - 8), and maps
    x -> (x + 4) / 4, so zeros in the audio come out as max(-1.5, normalised max - 2).
    ``valid`` (N, T) marks real frames.
    """
    peak = feats.masked_fill(~valid[..., None], float("-inf")).amax(dim=(1, 2), keepdim=True)  # (N, 1, 1)
    return (peak - 2.0).clamp(min=-1.5)


def load_hf_encoder(model_dir: str, overrides: Dict[str, Any], dtype: torch.dtype,
                    attn_implementation: str) -> HFWhisperEncoder:
    """The encoder of a local Hugging Face Whisper directory (``WhisperModel`` or
    ``WhisperForConditionalGeneration`` weights); the decoder is dropped. Never downloads."""
    d = Path(model_dir).expanduser()
    if not d.is_dir():
        raise FileNotFoundError(f"Whisper model_dir not found: {d} (give a local Hugging Face Whisper "
                                f"directory with config.json and {WEIGHT_FILES[0]})")
    missing = [] if (d / "config.json").is_file() else ["config.json"]
    if not any((d / w).is_file() for w in WEIGHT_FILES):
        missing.append(f"weights (one of {', '.join(WEIGHT_FILES)})")
    if missing:
        raise FileNotFoundError(f"{d} is not a Hugging Face Whisper directory: missing {' and '.join(missing)}")
    model_type = json.loads((d / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type != "whisper":
        raise ValueError(f"{d}/config.json has model_type {model_type!r}, not 'whisper'")
    model = WhisperModel.from_pretrained(d, local_files_only=True, dtype=dtype,
                                         attn_implementation=attn_implementation, **overrides)
    return model.encoder


@register_encoder("whisper")
class WhisperEncoder(nn.Module):
    """Whisper's conv front end + transformer layers; forward written here to allow T < 3000.

    Config keys: ``model_dir`` (local HF directory) and/or ``config`` (WhisperConfig kwargs: the
    architecture of a randomly initialised encoder without ``model_dir``, overrides such as
    ``{dropout: 0.1}`` with it); ``pad_to_30s``; ``use_padding_mask`` (None: ``not pad_to_30s``);
    ``freeze`` (no parameter trains); ``unfreeze_last_n_layers`` (n > 0: only the top n layers and
    the final layer norm train, the rest frozen, whatever ``freeze`` says); ``dtype``;
    ``attn_implementation`` ("sdpa" or "eager"). The positional embedding never trains: it is
    Whisper's fixed sinusoid.
    """

    feature_type = "whisper-fbank"
    subsampling_factor = 2

    def __init__(
        self,
        model_dir: str = "",
        config: Optional[Dict[str, Any]] = None,
        pad_to_30s: bool = False,
        use_padding_mask: Optional[bool] = None,
        freeze: bool = False,
        unfreeze_last_n_layers: int = 0,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
    ):
        super().__init__()
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
            raise ValueError(f"Whisper encoder: dtype must be a torch float type name like 'float32', got {dtype!r}")
        if model_dir:
            self.whisper = load_hf_encoder(model_dir, dict(config or {}), torch_dtype, attn_implementation)
        elif config is not None:
            hf_config = WhisperConfig(**config)
            self.whisper = HFWhisperEncoder._from_config(hf_config, attn_implementation=attn_implementation,
                                                         dtype=torch_dtype)
        else:
            raise ValueError("Whisper encoder: set encoder_conf.model_dir (a local Hugging Face Whisper directory) "
                             "or encoder_conf.config (WhisperConfig keys for a randomly initialised encoder)")
        cfg = self.whisper.config
        self.num_mel_bins: int = cfg.num_mel_bins
        self.output_dim: int = cfg.d_model
        self.max_frames: int = 2 * cfg.max_source_positions  # 3000: 30 s at 100 Hz
        self.pad_to_30s = pad_to_30s
        self.use_padding_mask = (not pad_to_30s) if use_padding_mask is None else use_padding_mask
        self.whisper.embed_positions.weight.requires_grad_(False)
        self.set_trainable(freeze, unfreeze_last_n_layers)

    @property
    def num_layers(self) -> int:
        return len(self.whisper.layers)

    def set_trainable(self, freeze: bool, unfreeze_last_n_layers: int = 0) -> None:
        """Freeze the encoder (``freeze``), or all but its top ``unfreeze_last_n_layers`` layers and final norm."""
        n = unfreeze_last_n_layers
        if not 0 <= n <= self.num_layers:
            raise ValueError(f"unfreeze_last_n_layers must be in 0..{self.num_layers} (the encoder's layers), got {n}")
        if not freeze and n == 0:
            return
        self.whisper.requires_grad_(False)
        if n > 0:
            for layer in self.whisper.layers[-n:]:
                layer.requires_grad_(True)
            self.whisper.layer_norm.requires_grad_(True)

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """feats (N, T, num_mel_bins) Whisper log-mel, feat_lens (N,) -> (N, T', d_model), (N,)."""
        if feats.ndim != 3 or feats.shape[-1] != self.num_mel_bins:
            got = feats.shape[-1] if feats.ndim == 3 else f"shape {tuple(feats.shape)}"
            raise ValueError(f"Whisper encoder expects (N, T, {self.num_mel_bins}) features, got {got} mel bins: "
                             f"compute features with --feature-type whisper-fbank --num-mel-bins {self.num_mel_bins} "
                             f"(data.feature_type=whisper-fbank data.num_mel_bins={self.num_mel_bins})")
        if feat_lens.shape != feats.shape[:1] or int(feat_lens.min()) < 1 or int(feat_lens.max()) > feats.shape[1]:
            raise ValueError(f"Whisper encoder: feat_lens {feat_lens.tolist()} do not fit feats {tuple(feats.shape)}")
        longest = int(feat_lens.max())
        if longest > self.max_frames:
            raise ValueError(f"Whisper encoder: an input of {longest} frames ({longest / 100:.2f} s) is longer than "
                             f"Whisper's {self.max_frames}-frame ({self.max_frames // 100} s) window; drop such cuts "
                             "(data.max_utt_duration=30) or cut recordings into windows of at most 30 s")
        enc = self.whisper
        feats = feats[:, :longest].to(enc.conv1.weight.dtype)  # (N, T, C)
        feat_lens = feat_lens.to(feats.device)
        valid = torch.arange(longest, device=feats.device) < feat_lens[:, None]  # (N, T)
        if self.use_padding_mask and not self.pad_to_30s:
            x = feats.masked_fill(~valid[..., None], 0.0)  # what the conv's own zero padding gives a batch of one
        else:
            x = torch.where(valid[..., None], feats, silence_floor(feats, valid))
            if self.pad_to_30s:
                x = torch.cat([x, silence_floor(feats, valid).expand(-1, self.max_frames - longest, x.shape[2])], 1)

        h = F.gelu(enc.conv1(x.transpose(1, 2)))  # (N, D, T)
        if self.use_padding_mask and not self.pad_to_30s:
            h = h.masked_fill(~valid[:, None, :], 0.0)  # conv2 must not see padding past an odd length
        h = F.gelu(enc.conv2(h)).transpose(1, 2)  # (N, T', D), T' = (T - 1) // 2 + 1
        h = h + enc.embed_positions.weight[: h.shape[1]]
        h = F.dropout(h, p=enc.dropout, training=self.training)

        out_lens = (feat_lens - 1) // 2 + 1
        mask = self._attention_mask(out_lens, h.shape[1], h.dtype) if self.use_padding_mask else None
        for layer in enc.layers:
            if self.training and enc.layerdrop > 0 and float(torch.rand([])) < enc.layerdrop:
                continue  # LayerDrop, as transformers does
            h = layer(h, mask)
        h = enc.layer_norm(h)
        return h[:, : int(out_lens.max())], out_lens

    @staticmethod
    def _attention_mask(out_lens: torch.Tensor, frames: int, dtype: torch.dtype) -> torch.Tensor:
        """(N, 1, T', T') additive key-padding mask: 0 for real frames, dtype's min for padding."""
        pad = torch.arange(frames, device=out_lens.device) >= out_lens[:, None]  # (N, T')
        mask = torch.zeros(pad.shape, dtype=dtype, device=out_lens.device).masked_fill(pad, torch.finfo(dtype).min)
        return mask[:, None, None, :].expand(-1, 1, frames, frames)
