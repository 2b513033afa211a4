"""WavLM (Hugging Face ``transformers``) behind asrkit's Encoder protocol: raw 16 kHz audio in.

    model:
      encoder: wavlm
      encoder_conf: {model_dir: /models/wavlm-base-plus, layer_weighting: true, unfreeze_last_n_layers: 4}
    data: {feature_type: waveform}     # cuts without precomputed features; audio is read on the fly

The self-supervised encoder LLM-SOT builds on. Inputs are waveforms as one-dim "features",
``feats (N, samples, 1)`` with sample counts as ``feat_lens``; outputs are ``hidden_size``-dim frames
at 50 Hz, as many as the conv front end gives (``_get_feat_extract_output_lengths``: 49 for 1 s).

What the checkpoints were trained with decides two input details, read from the model's config:

* attention mask: Base models (``feat_extract_norm: group``) were pretrained without one, and their
  first conv's GroupNorm normalises over the padded length anyway, so, as HF's
  ``Wav2Vec2FeatureExtractor`` advises, they get none: zero padding is part of the input and a
  batch's shorter utterances come out slightly different from alone. Large models
  (``feat_extract_norm: layer``) get a key-padding mask and are batch-invariant.
* normalisation (``do_normalize``): zero mean, unit variance per utterance over its valid samples,
  from ``preprocessor_config.json`` when ``model_dir`` has one, else on exactly for ``layer`` models
  (fairseq's ``normalize``: off for Base, on for Large).

Which layer comes out: ``output_layer`` indexes the ``num_hidden_layers + 1`` hidden states
(0: the projected conv features after the positional conv, k: layer k's output, -1: the last, i.e.
``last_hidden_state``, the only one with the final layer norm of Large models). Layers above it are
dropped at load, so they cost nothing. ``layer_weighting: true`` outputs a learned
softmax-weighted sum of hidden states 0..output_layer instead (SUPERB, LLM-SOT); the weights train
even when the encoder is frozen. The model's own time masking (``mask_time_prob`` in its config, on
while training, as in HF fine-tuning) plays SpecAugment's part: the data layer has none for waveforms.
"""

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from asrkit.models.encoder import register_encoder

try:
    from transformers import WavLMConfig, WavLMModel
except ImportError as e:  # build_encoder re-raises this (the module exists, a dependency does not)
    raise ModuleNotFoundError("the WavLM encoder needs transformers: pip install -e '.[llm]'",
                              name="transformers") from e

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def load_hf_wavlm(model_dir: str, overrides: Dict[str, Any]) -> WavLMModel:
    """The ``WavLMModel`` of a local Hugging Face directory (a ``WavLMModel`` or a ``WavLMFor*``
    checkpoint; heads are dropped). Never downloads, never runs remote code."""
    d = Path(model_dir).expanduser()
    if not d.is_dir():
        raise FileNotFoundError(f"WavLM model_dir not found: {d} (give a local Hugging Face WavLM directory "
                                f"with config.json and {WEIGHT_FILES[0]})")
    missing = [] if (d / "config.json").is_file() else ["config.json"]
    if not any((d / w).is_file() for w in WEIGHT_FILES):
        missing.append(f"weights (one of {', '.join(WEIGHT_FILES)})")
    if missing:
        raise FileNotFoundError(f"{d} is not a Hugging Face WavLM directory: missing {' and '.join(missing)}")
    model_type = json.loads((d / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type != "wavlm":
        raise ValueError(f"{d}/config.json has model_type {model_type!r}, not 'wavlm'")
    return WavLMModel.from_pretrained(d, local_files_only=True, **overrides)


def preprocessor_normalize(model_dir: str) -> Optional[bool]:
    """``do_normalize`` of ``model_dir/preprocessor_config.json`` (the checkpoint's own input recipe), or None."""
    path = Path(model_dir).expanduser() / "preprocessor_config.json" if model_dir else None
    if path is None or not path.is_file():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get("do_normalize")
    return None if value is None else bool(value)


@register_encoder("wavlm")
class WavLMEncoder(nn.Module):
    """WavLM's conv front end + transformer layers; the forward is written here to pick hidden layers.

    Config keys: ``model_dir`` (local HF directory) and/or ``config`` (WavLMConfig kwargs: the
    architecture of a randomly initialised encoder without ``model_dir``, overrides such as
    ``{layerdrop: 0.0, mask_time_prob: 0.0}`` with it); ``output_layer``; ``layer_weighting``;
    ``freeze`` (nothing of WavLM trains); ``unfreeze_last_n_layers`` (n > 0: only the top n kept layers,
    plus the final layer norm of Large models, train); ``freeze_feature_encoder`` (the conv front end,
    frozen by default as in fine-tuning practice); ``use_attention_mask`` and ``do_normalize``
    (None: from the checkpoint, see the module docstring).
    """

    feature_type = "waveform"

    def __init__(
        self,
        model_dir: str = "",
        config: Optional[Dict[str, Any]] = None,
        output_layer: int = -1,
        layer_weighting: bool = False,
        freeze: bool = False,
        unfreeze_last_n_layers: int = 0,
        freeze_feature_encoder: bool = True,
        use_attention_mask: Optional[bool] = None,
        do_normalize: Optional[bool] = None,
    ):
        super().__init__()
        if model_dir:
            self.wavlm = load_hf_wavlm(model_dir, dict(config or {}))
        elif config is not None:
            self.wavlm = WavLMModel(WavLMConfig(**config))
        else:
            raise ValueError("WavLM encoder: set encoder_conf.model_dir (a local Hugging Face WavLM directory) "
                             "or encoder_conf.config (WavLMConfig keys for a randomly initialised encoder)")
        cfg = self.wavlm.config
        if cfg.add_adapter:
            raise ValueError("WavLM encoder: config.add_adapter=true (HF's extra downsampling adapter) is not "
                             "supported; set config: {add_adapter: false}")
        self.stable_layer_norm: bool = cfg.do_stable_layer_norm  # Large: pre-LN layers, a final layer norm
        self.use_attention_mask = cfg.feat_extract_norm == "layer" if use_attention_mask is None \
            else use_attention_mask
        if do_normalize is None:
            do_normalize = preprocessor_normalize(model_dir)
        self.do_normalize = cfg.feat_extract_norm == "layer" if do_normalize is None else do_normalize

        total = cfg.num_hidden_layers
        if not -(total + 1) <= output_layer <= total:
            raise ValueError(f"output_layer must be in -{total + 1}..{total} (hidden states 0..{total} of this "
                             f"{total}-layer WavLM; -1 is the last), got {output_layer}")
        self.output_layer = output_layer % (total + 1)
        del self.wavlm.encoder.layers[self.output_layer:]  # never run, never trained
        self.layer_weights = nn.Parameter(torch.zeros(self.output_layer + 1)) if layer_weighting else None

        self.output_dim: int = cfg.hidden_size
        self.subsampling_factor: int = int(torch.tensor(cfg.conv_stride).prod())  # 320 samples: 20 ms at 16 kHz
        self.min_samples: int = self._receptive_field(cfg.conv_kernel, cfg.conv_stride)  # 400: 25 ms
        self.set_trainable(freeze, unfreeze_last_n_layers, freeze_feature_encoder)

    @staticmethod
    def _receptive_field(kernels: List[int], strides: List[int]) -> int:
        """Fewest input samples that give one output frame."""
        need = 1
        for k, s in zip(reversed(kernels), reversed(strides)):
            need = (need - 1) * s + k
        return need

    @property
    def num_layers(self) -> int:
        """Transformer layers kept (those up to ``output_layer``)."""
        return len(self.wavlm.encoder.layers)

    def set_trainable(self, freeze: bool, unfreeze_last_n_layers: int = 0, freeze_feature_encoder: bool = True) -> None:
        """Freeze WavLM (``freeze``), all but its top ``unfreeze_last_n_layers`` layers, and/or its conv front end.

        The layer weights of ``layer_weighting`` are not WavLM's and always train.
        """
        n = unfreeze_last_n_layers
        if not 0 <= n <= self.num_layers:
            raise ValueError(f"unfreeze_last_n_layers must be in 0..{self.num_layers} (the layers kept up to "
                             f"output_layer={self.output_layer}), got {n}")
        if freeze or n > 0:
            self.wavlm.requires_grad_(False)
            if n > 0:
                self.wavlm.encoder.layers[-n:].requires_grad_(True)
            if n > 0 and self.stable_layer_norm and self.output_layer == self.wavlm.config.num_hidden_layers:
                self.wavlm.encoder.layer_norm.requires_grad_(True)  # the Large models' final norm, on top
        if freeze or n > 0 or freeze_feature_encoder:
            self.wavlm.freeze_feature_encoder()  # also stops it asking for input gradients

    def output_lengths(self, sample_lens: torch.Tensor) -> torch.Tensor:
        """(N,) frames the conv front end gives for (N,) sample counts."""
        return self.wavlm._get_feat_extract_output_lengths(sample_lens, add_adapter=False)

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """feats (N, S, 1) 16 kHz samples, feat_lens (N,) sample counts -> (N, T', hidden_size), (N,)."""
        if feats.ndim != 3 or feats.shape[-1] != 1:
            raise ValueError(f"WavLM encoder takes raw waveforms (N, samples, 1), got shape {tuple(feats.shape)}: "
                             "set data.feature_type=waveform and give cuts without precomputed features")
        if feat_lens.shape != feats.shape[:1] or int(feat_lens.max()) > feats.shape[1]:
            raise ValueError(f"WavLM encoder: feat_lens {feat_lens.tolist()} do not fit feats {tuple(feats.shape)}")
        if int(feat_lens.min()) < self.min_samples:
            raise ValueError(f"WavLM encoder: an input of {int(feat_lens.min())} samples is shorter than the conv "
                             f"front end's {self.min_samples} ({self.min_samples / 16:.0f} ms at 16 kHz); drop such "
                             "cuts (data.min_utt_duration)")
        m = self.wavlm
        longest = int(feat_lens.max())
        feat_lens = feat_lens.to(feats.device)
        x = feats[:, :longest, 0].to(m.feature_projection.projection.weight.dtype)  # (N, S)
        valid = torch.arange(longest, device=x.device) < feat_lens[:, None]  # (N, S)
        x = x.masked_fill(~valid, 0.0)  # zero padding whatever the loader padded with
        if self.do_normalize:
            x = self._normalize(x, valid, feat_lens)

        h = m.feature_extractor(x).transpose(1, 2)  # (N, T', C)
        out_lens = self.output_lengths(feat_lens)
        mask = torch.arange(h.shape[1], device=h.device) < out_lens[:, None] if self.use_attention_mask else None
        h, _ = m.feature_projection(h)  # (N, T', D)
        h = m._mask_hidden_states(h, attention_mask=mask)  # HF's time masking, training only

        hidden = self._run_layers(h, mask)
        if self.layer_weights is None:
            out = hidden[-1]
        else:
            w = self.layer_weights.softmax(0).to(h.dtype)
            out = (torch.stack(hidden, 0) * w[:, None, None, None]).sum(0)  # (N, T', D)
        return out[:, : int(out_lens.max())], out_lens

    @staticmethod
    def _normalize(x: torch.Tensor, valid: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """Zero mean, unit variance per utterance over its valid samples (HF's ``zero_mean_unit_var_norm``)."""
        n = lens[:, None].to(x.dtype)
        mean = x.sum(1, keepdim=True) / n  # padding is zero
        var = ((x - mean).masked_fill(~valid, 0.0) ** 2).sum(1, keepdim=True) / n
        return ((x - mean) / torch.sqrt(var + 1e-7)).masked_fill(~valid, 0.0)

    def _run_layers(self, h: torch.Tensor, mask: Optional[torch.Tensor]) -> List[torch.Tensor]:
        """Hidden states 0..output_layer, as transformers' ``output_hidden_states`` numbers them."""
        enc = self.wavlm.encoder
        if mask is not None:
            h = h.masked_fill(~mask[..., None], 0.0)  # the positional conv sees padding as zeros, as alone
        h = h + enc.pos_conv_embed(h)
        if not self.stable_layer_norm:
            h = enc.layer_norm(h)
        h = enc.dropout(h)
        hidden, position_bias = [h], None
        drop = enc.config.layerdrop if self.training else 0.0
        for i, layer in enumerate(enc.layers):
            # LayerDrop as transformers does; the first layer makes the relative position bias, so it always runs
            if i == 0 or drop == 0.0 or float(torch.rand([])) >= drop:
                h, position_bias = layer(h, attention_mask=mask, position_bias=position_bias)[:2]
            hidden.append(h)
        if self.stable_layer_norm and self.output_layer == enc.config.num_hidden_layers:
            hidden[-1] = enc.layer_norm(hidden[-1])
        return hidden
