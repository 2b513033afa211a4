"""A tiny random causal LM + byte-level BPE tokenizer, saved like a downloaded Hugging Face model.

Speech-LLM recipes and tests need an ``llm_dir`` without downloading anything: this builds one from
the transcripts it will see, in seconds, so that ``SpeechLLMConfig.llm_dir`` loads it like a real
checkpoint (``AutoTokenizer`` / ``AutoModelForCausalLM`` with ``local_files_only=True``)::

    from asrkit.models.tiny_llm import make_tiny_llm
    make_tiny_llm("data/llm_tiny", texts, arch="qwen2", hidden_size=64, layers=2, heads=4, vocab_size=1000)

    asrkit llm make-tiny --cuts data/fbank/synth-zh_cuts_train.jsonl.gz --out-dir data/llm_tiny --hidden 64

The tokenizer is byte-level BPE (the ``tokenizers`` package, as GPT-2/Qwen2): every string, Mandarin
included, encodes and decodes losslessly whatever the merges learnt. It carries a ChatML template
(``<|im_start|>role\\n...<|im_end|>``, as Qwen2) so the speech-LLM's prompt is laid out as with a real
instruct model; ``<|im_end|>`` is eos and ``<|endoftext|>`` pad. The weights are random (seeded): the
LM knows nothing, which is what a pipeline check needs; real results need a real LLM (SmolLM2).
"""

import logging
from pathlib import Path
from typing import Iterable, Optional, Union

import torch

log = logging.getLogger(__name__)

__all__ = ["ARCHS", "CHAT_TEMPLATE", "make_tiny_llm"]

ARCHS = ("qwen2", "llama")
PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# ChatML as Qwen2 writes it, without a default system turn (a shorter prompt for a tiny model)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# words of the chat layout and the default speech-LLM prompt: the BPE learns them as whole tokens
PROMPT_TEXTS = ("system", "user", "assistant", "Transcribe the speech.", "You are a helpful assistant.")


def _train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A PreTrainedTokenizerFast: byte-level BPE learnt on ``texts`` + the prompt words, ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [PAD, IM_START, IM_END]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # sorted: the learnt merges then depend on the set of texts only, not on the manifest's order
    corpus = sorted(set(texts)) + list(PROMPT_TEXTS) * 2
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=PAD,
                                   additional_special_tokens=[IM_START], chat_template=CHAT_TEMPLATE,
                                   model_max_length=4096, clean_up_tokenization_spaces=False)


def make_tiny_llm(
    out_dir: Union[str, Path], texts: Iterable[str], arch: str = "qwen2", hidden_size: int = 64, layers: int = 2,
    heads: int = 4, vocab_size: int = 1000, kv_heads: Optional[int] = None, intermediate_size: Optional[int] = None,
    initializer_range: float = 0.2, seed: int = 0,
) -> Path:
    """Write tokenizer + randomly initialised ``arch`` causal LM into ``out_dir``; return it.

    ``vocab_size`` bounds the BPE vocabulary (256 bytes + 3 specials at least; fewer merges are learnt
    when the texts run out of pairs). ``initializer_range`` 0.2 (not the usual 0.02) gives a random LM
    logits sharp enough that a frozen one can still be steered through its input embeddings.
    """
    import transformers

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if hidden_size % heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by heads {heads}")
    kv_heads = kv_heads or heads
    if heads % kv_heads:
        raise ValueError(f"heads {heads} is not divisible by kv_heads {kv_heads}")
    min_vocab = 256 + 3
    if vocab_size < min_vocab:
        raise ValueError(f"vocab_size must be at least {min_vocab} (256 bytes + pad, <|im_start|>, <|im_end|>)")
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("make_tiny_llm needs at least one non-empty text to learn the tokenizer from")
    out_dir = Path(out_dir)
    tokenizer = _train_tokenizer(texts, vocab_size)
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden_size,
                  intermediate_size=intermediate_size or 2 * hidden_size, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads,
                  max_position_embeddings=4096, initializer_range=initializer_range, tie_word_embeddings=True,
                  bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if arch == "qwen2":
        config, cls = transformers.Qwen2Config(**common), transformers.Qwen2ForCausalLM
    else:
        config, cls = transformers.LlamaConfig(**common), transformers.LlamaForCausalLM
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = cls(config)
    finally:
        torch.random.set_rng_state(state)  # the caller's random stream is not ours to move
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    n = sum(p.numel() for p in model.parameters())
    log.info("tiny %s LM in %s: %s parameters, %d tokens (seed %d)", arch, out_dir, f"{n:,}", len(tokenizer), seed)
    return out_dir
