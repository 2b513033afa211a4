"""SpeechLLM: speech encoder -> frame stacking -> projector -> a ``transformers`` causal LM (+ LoRA).

The LLM-based ASR of EFIN (arXiv 2508.04096) and SLAM-ASR: the encoder output is shortened by
stacking ``k`` consecutive frames, mapped by a Linear-ReLU-Linear projector into the LLM's embedding
space and spliced into a chat prompt where the speech placeholder stands; the LLM (frozen, optionally
with LoRA adapters) is trained with cross-entropy on the transcript tokens only::

    model:
      encoder: zipformer
      encoder_conf: {preset: small}
      encoder_init: exp/zipformer_ctc        # EFIN stage 1 hand-over (exp dir or checkpoint file)
      downsample: 4
      projector_dim: 2048
      llm_dir: /models/Qwen2-0.5B-Instruct   # a local directory; nothing is downloaded
      lora: {enabled: true, r: 8, alpha: 16, target_modules: [q_proj, k_proj, v_proj, o_proj]}
      freeze_encoder: false
      freeze_llm: true
      extra_special_tokens: ["<sc>"]        # multi-talker SOT

    model = SpeechLLM(cfg)                                  # tokenizer: model.tokenizer (the LLM's own)
    loss, {"ce": ...}, num_tokens = model(feats, feat_lens, ["hello world", ...])
    hyps = model.generate(feats, feat_lens, max_new_tokens=200, num_beams=4)

Sequence layout per utterance, left-padded (every sequence ends at the same column, so generation
appends to all of them and training needs LM logits only for the last ``max(len(target))`` columns)::

    [pad ...] [prompt before <speech>] [speech frames ...] [prompt after <speech>] [transcript] [eos]
                                                                                   ^ labels here only

Checkpoints hold only what cannot be rebuilt from ``llm_dir``: :meth:`SpeechLLM.state_dict` returns the
encoder, the projector and the *trainable* LLM weights (LoRA adapters, new-token rows, or the whole
LLM when it is not frozen), and :meth:`SpeechLLM.load_state_dict` accepts a state without the frozen
LLM weights. The trainer, its running average and ``load_model`` therefore work unchanged and an
experiment dir stays small; it needs ``llm_dir`` (recorded in config.yaml) to be rebuilt.
"""

import inspect
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from asrkit.models.encoder import build_encoder

log = logging.getLogger(__name__)

__all__ = ["LoraConfig", "SpeechLLMConfig", "SpeechLLM", "stack_frames"]

IGNORE = -100  # label of positions that do not count in the loss (torch's cross_entropy default)
_SPEECH = -1  # placeholder id of speech positions in the id matrix before embedding
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class SpeechLLMConfig:
    encoder: str = "zipformer"
    encoder_conf: Dict[str, Any] = field(default_factory=dict)
    encoder_init: Optional[str] = None  # asrkit exp dir or checkpoint whose encoder.* weights initialise ours
    downsample: int = 4  # frames stacked into one (k); the encoder dim becomes k * D
    downsample_remainder: str = "pad"  # pad: ceil(T/k) frames, last zero-padded | drop: floor(T/k) (min 1)
    projector_dim: int = 2048
    llm_dir: str = ""  # local Hugging Face causal LM directory (model + tokenizer)
    llm_dtype: str = "float32"  # float32 | bfloat16 | float16 | auto (the checkpoint's own dtype)
    trust_remote_code: bool = False  # run Python code shipped in llm_dir: only for directories you trust
    lora: LoraConfig = field(default_factory=LoraConfig)
    freeze_encoder: bool = False
    freeze_projector: bool = False
    freeze_llm: bool = True  # the LLM's base weights; LoRA adapters train when lora.enabled
    train_new_tokens: bool = True  # rows of extra_special_tokens train even when the LLM is frozen
    system_prompt: Optional[str] = None  # None: the chat template's default (if any)
    prompt: str = "Transcribe the speech."  # user turn; the speech goes where speech_token stands, else first
    speech_token: str = "<speech>"  # placeholder text in the user turn; never reaches the tokenizer
    extra_special_tokens: List[str] = field(default_factory=list)  # e.g. ["<sc>"] for SOT
    gradient_checkpointing: bool = False  # LLM activations recomputed in backward (long prompts, big LLMs)


def stack_frames(
    x: torch.Tensor, lens: torch.Tensor, k: int, remainder: str = "pad"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Concatenate ``k`` consecutive frames: (N, T, D) -> (N, T', k*D) with new lengths (N,).

    Frames past each utterance's length are zeroed first, so padding never leaks into its last
    stacked frame. ``remainder="pad"`` keeps the last ``T % k`` frames (zero-padded group, length
    ``ceil(len / k)``); ``"drop"`` discards them (length ``len // k``, but at least 1 so that every
    utterance keeps some speech).
    """
    if k < 1:
        raise ValueError(f"downsample must be >= 1, got {k}")
    if remainder not in ("pad", "drop"):
        raise ValueError(f"downsample_remainder must be 'pad' or 'drop', got {remainder!r}")
    n, t, d = x.shape
    valid = torch.arange(t, device=x.device)[None, :] < lens[:, None]  # (N, T)
    x = x * valid.unsqueeze(-1).to(x.dtype)
    if remainder == "pad":
        t_out, out_lens = math.ceil(t / k), torch.div(lens + k - 1, k, rounding_mode="floor")
    else:
        t_out, out_lens = max(t // k, 1), torch.div(lens, k, rounding_mode="floor").clamp(min=1)
    if t_out * k > t:
        x = F.pad(x, (0, 0, 0, t_out * k - t))
    return x[:, : t_out * k].reshape(n, t_out, k * d), out_lens


class Projector(nn.Module):
    """Linear-ReLU-Linear from stacked encoder frames to the LLM's embedding size."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(in_dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.relu(self.linear1(x)))


class SpeechLLM(nn.Module):
    """See the module docstring; ``init_encoder=False`` skips ``encoder_init`` (weights come from a checkpoint)."""

    def __init__(self, cfg: SpeechLLMConfig, init_encoder: bool = True):
        super().__init__()
        if not cfg.llm_dir:
            raise ValueError("model.llm_dir must name a local Hugging Face causal LM directory")
        if cfg.lora.enabled and not cfg.freeze_llm:
            raise ValueError("lora.enabled with freeze_llm=false would train the full LLM and the adapters; "
                             "set freeze_llm=true (LoRA) or lora.enabled=false (full fine-tuning)")
        self.cfg = cfg
        self.encoder = build_encoder(cfg.encoder, **cfg.encoder_conf)
        if init_encoder and cfg.encoder_init:
            load_encoder_weights(self.encoder, cfg.encoder_init)
        self.tokenizer, llm = load_llm(cfg)
        new_ids = add_special_tokens(self.tokenizer, llm, cfg.extra_special_tokens)
        for p in llm.parameters():
            p.requires_grad_(not cfg.freeze_llm)
        self.llm = wrap_peft(llm, cfg, new_ids if cfg.freeze_llm and cfg.train_new_tokens else [])
        if cfg.gradient_checkpointing:
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        hidden = self.llm.get_input_embeddings().weight.shape[1]
        self.projector = Projector(cfg.downsample * self.encoder.output_dim, cfg.projector_dim, hidden)
        if cfg.freeze_encoder:  # else the encoder's own choice stands (Whisper: fixed positions, partial unfreezing)
            self.encoder.requires_grad_(False)
        for p in self.projector.parameters():
            p.requires_grad_(not cfg.freeze_projector)
        if cfg.freeze_encoder:
            self.encoder.eval()
        self.eos_id = self.tokenizer.eos_token_id
        if self.eos_id is None:
            raise ValueError(f"the tokenizer in {cfg.llm_dir} has no eos_token; the transcript needs an end")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        # decoded text keeps our own special tokens (<sc>) but drops the LLM's (<|im_end|>, pads); the
        # assistant turn ends at eos or at any other of the LLM's control tokens (a new <|im_start|> turn),
        # as chat models' generation configs list several end ids
        keep = {self.tokenizer.convert_tokens_to_ids(t) for t in cfg.extra_special_tokens}
        control = {i for i, t in self.tokenizer.added_tokens_decoder.items() if t.special}  # <|im_start|> too
        self._drop_ids = (set(self.tokenizer.all_special_ids) | control) - keep
        self._stop_ids = [self.eos_id] + sorted(self._drop_ids - {self.eos_id})
        self._prompt_cache: Dict[str, Tuple[List[int], List[int]]] = {}
        self.register_load_state_dict_post_hook(SpeechLLM._allow_frozen_missing)
        # the public register_load_state_dict_pre_hook needs torch >= 2.5; this one is in 2.4 too
        self._register_load_state_dict_pre_hook(SpeechLLM._match_token_rows, with_module=True)
        self._accepts_logits_to_keep = "logits_to_keep" in inspect.signature(
            self.llm.get_base_model().forward if hasattr(self.llm, "get_base_model") else self.llm.forward).parameters

    # ------------------------------------------------------------------------------ inputs

    def train(self, mode: bool = True) -> "SpeechLLM":
        """As nn.Module.train, but a frozen encoder stays in eval mode (no dropout or layer skipping)."""
        super().train(mode)
        if self.cfg.freeze_encoder:
            self.encoder.eval()
        return self

    def prompt_ids(self, prompt: Optional[str] = None) -> Tuple[List[int], List[int]]:
        """Token ids before and after the speech in the prompt (system + user turn + assistant header)."""
        prompt = self.cfg.prompt if prompt is None else prompt
        if prompt not in self._prompt_cache:
            before, after = render_prompt(self.tokenizer, self.cfg, prompt)
            enc = lambda s: self.tokenizer(s, add_special_tokens=False)["input_ids"] if s else []  # noqa: E731
            bos_id = self.tokenizer.bos_token_id  # chat templates write their own bos; the plain layout needs one
            bos = [bos_id] if self.tokenizer.chat_template is None and bos_id is not None else []
            self._prompt_cache[prompt] = (bos + enc(before), enc(after))
        return self._prompt_cache[prompt]

    def target_ids(self, text: str) -> List[int]:
        """The assistant turn the loss is computed on: transcript tokens + eos."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos_id]

    def encode_speech(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N, T, C) features -> (N, S, H) speech embeddings in the LLM's space and their lengths (N,)."""
        if self.cfg.freeze_encoder:
            with torch.no_grad():
                enc, enc_lens = self.encoder(feats, feat_lens)  # (N, T', D)
        else:
            enc, enc_lens = self.encoder(feats, feat_lens)
        stacked, lens = stack_frames(enc, enc_lens, self.cfg.downsample, self.cfg.downsample_remainder)
        return self.projector(stacked), lens  # (N, S, H), (N,)

    def build_inputs(
        self, speech: torch.Tensor, speech_lens: torch.Tensor, texts: Optional[Sequence[str]] = None,
        prompts: Optional[Sequence[Optional[str]]] = None,
    ) -> Dict[str, torch.Tensor]:
        """Left-padded LLM inputs: ``inputs_embeds`` (N, L, H), ``attention_mask``, ``position_ids``,
        ``speech_mask`` (True where a speech frame was spliced in) and, with ``texts``, ``labels``."""
        n = speech.shape[0]
        if texts is not None and len(texts) != n:
            raise ValueError(f"{len(texts)} transcripts for a batch of {n} utterances")
        if prompts is not None and len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for a batch of {n} utterances")
        rows, label_rows = [], []
        for i in range(n):
            before, after = self.prompt_ids(prompts[i] if prompts is not None else None)
            row = before + [_SPEECH] * int(speech_lens[i]) + after
            target = self.target_ids(texts[i]) if texts is not None else []
            rows.append(row + target)
            label_rows.append([IGNORE] * len(row) + target)
        width = max(len(r) for r in rows)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, (row, lab) in enumerate(zip(rows, label_rows)):
            ids[i, width - len(row):] = torch.tensor(row)
            labels[i, width - len(row):] = torch.tensor(lab)
            mask[i, width - len(row):] = 1
        device = speech.device
        ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
        speech_mask = ids == _SPEECH  # (N, L)
        embed = self.llm.get_input_embeddings()
        embeds = embed(ids.clamp(min=0))  # (N, L, H)
        frames = torch.arange(speech.shape[1], device=device)[None, :] < speech_lens[:, None]  # (N, S)
        embeds = embeds.masked_scatter(speech_mask.unsqueeze(-1), speech[frames].to(embeds.dtype))
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate() derives them from the mask
        out = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": position_ids,
               "speech_mask": speech_mask}
        if texts is not None:
            out["labels"] = labels
        return out

    # ------------------------------------------------------------------------------ training

    def forward(
        self, feats: torch.Tensor, feat_lens: torch.Tensor, texts: Sequence[str],
        prompts: Optional[Sequence[Optional[str]]] = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """Return (cross-entropy summed over transcript tokens + eos, {"ce": same, detached}, token count)."""
        speech, speech_lens = self.encode_speech(feats, feat_lens)
        inputs = self.build_inputs(speech, speech_lens, texts, prompts)
        labels = inputs["labels"]
        # left padding puts every target in the last columns: only those need LM logits
        keep = int((labels != IGNORE).sum(-1).max()) + 1
        extra = {"logits_to_keep": keep} if self._accepts_logits_to_keep else {}
        out = self.llm(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
                       position_ids=inputs["position_ids"], use_cache=False, **extra)
        logits = out.logits[:, -keep:-1] if keep <= out.logits.shape[1] else out.logits[:, :-1]
        targets = labels[:, -logits.shape[1]:]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=IGNORE, reduction="sum")
        num_tokens = (labels != IGNORE).sum().float()
        return loss, {"ce": loss.detach()}, num_tokens

    # ------------------------------------------------------------------------------ decoding

    @torch.no_grad()
    def generate(
        self, feats: torch.Tensor, feat_lens: torch.Tensor, max_new_tokens: int = 200, num_beams: int = 1,
        prompts: Optional[Sequence[Optional[str]]] = None, **generate_kwargs: Any,
    ) -> List[str]:
        """Batched greedy (``num_beams=1``) or beam search through ``llm.generate``; one string per utterance."""
        was_training = self.training
        self.eval()
        try:
            speech, speech_lens = self.encode_speech(feats, feat_lens)
            inputs = self.build_inputs(speech, speech_lens, None, prompts)
            kwargs = dict(do_sample=False, num_beams=num_beams, max_new_tokens=max_new_tokens,
                          eos_token_id=self._stop_ids, pad_token_id=self.pad_id, num_return_sequences=1)
            kwargs.update(generate_kwargs)
            out = self.llm.generate(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
                                    **kwargs)
        finally:
            self.train(was_training)
        return [self.decode(row.tolist()) for row in out]

    def decode(self, ids: List[int]) -> str:
        """Text of generated ids up to the first eos or other LLM control token; ours (<sc>) kept."""
        end = next((k for k, i in enumerate(ids) if i in self._drop_ids), len(ids))
        ids = ids[:end]
        return self.tokenizer.decode(ids, skip_special_tokens=False).strip()

    # ------------------------------------------------------------------------------ weights

    def _saved_keys(self) -> set:
        """State keys a checkpoint must hold: encoder, projector, and the LLM weights that train."""
        keys = {k for k in super().state_dict(keep_vars=True) if not k.startswith("llm.")}
        keys |= {f"llm.{n}" for n, p in self.llm.named_parameters() if p.requires_grad}
        return keys

    def trainable_state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        """Encoder + projector + trainable LLM weights (the frozen LLM comes back from ``llm_dir``)."""
        keys = self._saved_keys()
        return OrderedDict((k, v) for k, v in super().state_dict().items() if k in keys)

    def state_dict(self, *, destination=None, prefix: str = "", keep_vars: bool = False):
        """:meth:`trainable_state_dict`, so that checkpoints and the trainer's running average skip the frozen LLM."""
        keys = self._saved_keys()
        out = OrderedDict() if destination is None else destination
        for k, v in super().state_dict(prefix=prefix, keep_vars=keep_vars).items():
            if k[len(prefix):] in keys:
                out[k] = v
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a full or trainable-only state; only the frozen LLM weights may be missing."""
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as e:
            raise RuntimeError(f"SpeechLLM checkpoint does not fit this model (same lora, llm_dir and "
                               f"extra_special_tokens as when it was saved?): {e}") from e

    @staticmethod
    def _match_token_rows(module: "SpeechLLM", state_dict, prefix: str, *args) -> None:
        """Load pre-hook: peft keeps the trained rows of new tokens (``<sc>``) at
        ``embed_tokens.trainable_tokens_delta`` without LoRA and at ``embed_tokens.token_adapter.
        trainable_tokens_delta`` with it; rename them so that a stage which adds LoRA (``init_from`` a
        stage without) starts from the trained rows instead of dropping them as unexpected keys."""
        own = set(nn.Module.state_dict(module, keep_vars=True))
        plain, wrapped = ".trainable_tokens_delta.", ".token_adapter.trainable_tokens_delta."
        for key in [k for k in state_dict if k.startswith(prefix) and plain in k]:
            name = key[len(prefix):]
            if name in own:
                continue
            other = name.replace(wrapped, plain) if wrapped in name else name.replace(plain, wrapped)
            if other in own:
                state_dict[prefix + other] = state_dict.pop(key)

    @staticmethod
    def _allow_frozen_missing(module: "SpeechLLM", incompatible) -> None:
        """Load post-hook: frozen LLM weights are rebuilt from llm_dir, so a checkpoint may lack them.

        A hook rather than logic in load_state_dict, so that loading through a wrapper (DDP) works too.
        """
        frozen = set(nn.Module.state_dict(module, keep_vars=True)) - module._saved_keys()
        kept = []
        for k in incompatible.missing_keys:
            parts = k.split(".")
            if not any(".".join(parts[i:]) in frozen for i in range(len(parts))):
                kept.append(k)
        incompatible.missing_keys[:] = kept

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def load_encoder_weights(encoder: nn.Module, source: str) -> None:
    """Copy ``encoder.*`` weights from an asrkit exp dir (the file ``load_model`` reads) or a checkpoint file."""
    from asrkit.models import experiment_weights
    from asrkit.training.checkpoint import load_checkpoint

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"model.encoder_init={source}: no such experiment dir or checkpoint file")
    state = load_checkpoint(experiment_weights(path) if path.is_dir() else path)
    state = state.get("model", state)
    enc = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if not enc:
        raise ValueError(f"model.encoder_init={source} holds no encoder.* weights")
    try:
        encoder.load_state_dict(enc)
    except RuntimeError as e:
        raise RuntimeError(f"model.encoder_init={source} does not fit model.encoder/encoder_conf: {e}") from e
    log.info("encoder initialised from %s (%d tensors)", source, len(enc))


# ---------------------------------------------------------------------------------- Hugging Face glue


def load_llm(cfg: SpeechLLMConfig) -> Tuple[Any, nn.Module]:
    """(tokenizer, causal LM) from the local ``cfg.llm_dir``; never downloads, remote code only if asked."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(cfg.llm_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model.llm_dir={cfg.llm_dir} is not a local Hugging Face model directory "
                                "(no config.json); download it first, e.g. `hf download <repo> --local-dir DIR`")
    if cfg.llm_dtype != "auto" and cfg.llm_dtype not in _DTYPES:
        raise ValueError(f"model.llm_dtype must be auto or one of {sorted(_DTYPES)}, got {cfg.llm_dtype!r}")
    dtype = "auto" if cfg.llm_dtype == "auto" else _DTYPES[cfg.llm_dtype]
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=cfg.trust_remote_code)
    llm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, trust_remote_code=cfg.trust_remote_code,
                                               dtype=dtype)
    return tokenizer, llm


def add_special_tokens(tokenizer: Any, llm: nn.Module, tokens: Sequence[str]) -> List[int]:
    """Add ``tokens`` as special tokens (one id each) and grow the embeddings if needed; return their ids.

    Rows added by the resize start at the mean of the old rows, not at random, so that rebuilding the
    model from ``llm_dir`` gives the same start the trained deltas in a checkpoint were added to.
    """
    if not tokens:
        return []
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"model.extra_special_tokens has duplicates: {list(tokens)}")
    tokenizer.add_special_tokens({"extra_special_tokens": list(tokens)}, replace_extra_special_tokens=False)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    for t, i in zip(tokens, ids):
        if tokenizer(t, add_special_tokens=False)["input_ids"] != [i]:
            raise ValueError(f"special token {t!r} does not tokenize to its single id {i}")
    old = llm.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old:
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            for emb in (llm.get_input_embeddings(), llm.get_output_embeddings()):
                if emb is not None and emb.weight.shape[0] > old:
                    emb.weight[old:] = emb.weight[:old].mean(0, keepdim=True)
    return ids


def wrap_peft(llm: nn.Module, cfg: SpeechLLMConfig, token_ids: List[int]) -> nn.Module:
    """Add LoRA adapters on ``cfg.lora.target_modules`` and trainable rows for ``token_ids`` (peft)."""
    if not cfg.lora.enabled and not token_ids:
        return llm
    import peft

    token_targets = {}
    if token_ids:
        names = {m: n for n, m in llm.named_modules()}
        inp, out = llm.get_input_embeddings(), llm.get_output_embeddings()
        token_targets[names[inp].split(".")[-1]] = list(token_ids)
        if out is not None and out.weight is not inp.weight:  # untied output layer: its rows train too
            token_targets[names[out].split(".")[-1]] = list(token_ids)
    if cfg.lora.enabled:
        conf = peft.LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                               target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM",
                               trainable_token_indices=token_targets or None)
    else:
        conf = peft.TrainableTokensConfig(target_modules=list(token_targets), token_indices=list(token_ids))
    try:
        return peft.get_peft_model(llm, conf)
    except ValueError as e:
        raise ValueError(f"cannot add LoRA to {cfg.llm_dir} with lora.target_modules="
                         f"{list(cfg.lora.target_modules)}: {e}") from e


def render_prompt(tokenizer: Any, cfg: SpeechLLMConfig, prompt: str) -> Tuple[str, str]:
    """Prompt text before and after the speech: the chat template (if any) up to the assistant's turn."""
    if prompt.count(cfg.speech_token) > 1:
        raise ValueError(f"the prompt {prompt!r} has {cfg.speech_token!r} more than once")
    user = prompt if cfg.speech_token in prompt else cfg.speech_token + prompt
    if tokenizer.chat_template:
        messages = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt is not None else []
        messages.append({"role": "user", "content": user})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:  # a base LM without a chat template: a plain two-turn layout
        system = f"{cfg.system_prompt}\n" if cfg.system_prompt else ""
        text = f"{system}USER: {user}\nASSISTANT: "
    if text.count(cfg.speech_token) != 1:
        raise ValueError(f"the rendered prompt holds speech_token {cfg.speech_token!r} "
                         f"{text.count(cfg.speech_token)} times (the chat template or system prompt has it too?)")
    before, after = text.split(cfg.speech_token)
    return before, after
