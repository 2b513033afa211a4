"""The tiny random LLM maker: a local HF dir that loads like a download, deterministic, lossless on Mandarin.

    .venv/bin/pytest tests/test_tiny_llm.py -q
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from asrkit.models.speech_llm import SpeechLLM, SpeechLLMConfig  # noqa: E402
from asrkit.models.tiny_llm import make_tiny_llm  # noqa: E402

TEXTS = ["哥哥你姐姐工人", "窗户桌子妹妹", "今天我们去学校", "妹妹喝水"]


def _load(path):
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    return tok, model


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_round_trip_through_auto_classes(tmp_path, arch):
    out = make_tiny_llm(tmp_path / arch, TEXTS, arch=arch, hidden_size=32, layers=2, heads=4, vocab_size=300)
    tok, model = _load(out)
    assert model.config.model_type == arch and model.config.hidden_size == 32
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tok) <= 300
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert model.config.eos_token_id == tok.eos_token_id
    # ChatML prompt with the special tokens as single ids
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 2 and ids.count(tok.eos_token_id) == 1
    logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok)) and torch.isfinite(logits).all()


def test_mandarin_is_lossless_and_merges_are_learnt(tmp_path):
    tok, _ = _load(make_tiny_llm(tmp_path / "m", TEXTS, vocab_size=400))
    for s in TEXTS + ["没见过的字和 English 123", "  两个空格 "]:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == s
    # a training word is learnt: fewer tokens than its 3 UTF-8 bytes per character
    assert len(tok("哥哥", add_special_tokens=False)["input_ids"]) < 6
    assert len(tok("Transcribe the speech.", add_special_tokens=False)["input_ids"]) <= 4  # the prompt's words


def test_deterministic_by_seed(tmp_path):
    a = make_tiny_llm(tmp_path / "a", TEXTS, hidden_size=32, heads=4, vocab_size=300, seed=3)
    b = make_tiny_llm(tmp_path / "b", list(reversed(TEXTS)), hidden_size=32, heads=4, vocab_size=300, seed=3)
    c = make_tiny_llm(tmp_path / "c", TEXTS, hidden_size=32, heads=4, vocab_size=300, seed=4)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    (_, ma), (_, mb), (_, mc) = _load(a), _load(b), _load(c)
    sa, sb, sc = ma.state_dict(), mb.state_dict(), mc.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="arch"):
        make_tiny_llm(tmp_path / "x", TEXTS, arch="gpt9")
    with pytest.raises(ValueError, match="vocab_size"):
        make_tiny_llm(tmp_path / "x", TEXTS, vocab_size=100)
    with pytest.raises(ValueError, match="non-empty text"):
        make_tiny_llm(tmp_path / "x", ["", "  "])


def test_speech_llm_loads_it(tmp_path):
    from conftest import TINY_ENCODER

    out = make_tiny_llm(tmp_path / "llm", TEXTS, hidden_size=32, heads=4, vocab_size=300)
    model = SpeechLLM(SpeechLLMConfig(encoder_conf=dict(TINY_ENCODER, input_dim=20), downsample=2, projector_dim=32,
                                      llm_dir=str(out))).eval()
    feats, lens = torch.randn(2, 40, 20), torch.tensor([40, 30])
    loss, _, tokens = model(feats, lens, TEXTS[:2])
    assert torch.isfinite(loss) and tokens == sum(len(model.target_ids(t)) for t in TEXTS[:2])
    assert len(model.generate(feats, lens, max_new_tokens=3)) == 2


def test_cli_make_tiny(tmp_path):
    from lhotse import CutSet, MonoCut, SupervisionSegment

    from asrkit.cli import main

    cuts = CutSet.from_cuts(MonoCut(id=f"c{i}", start=0, duration=1.0, channel=0,
                                    supervisions=[SupervisionSegment(f"s{i}", f"r{i}", 0, 1.0, text=t)])
                            for i, t in enumerate(TEXTS))
    path = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(path)
    assert main(["llm", "make-tiny", "--cuts", str(path), "--out-dir", str(tmp_path / "llm"), "--hidden", "32",
                 "--vocab-size", "300"]) == 0
    tok, model = _load(tmp_path / "llm")
    assert model.config.hidden_size == 32
    assert tok.decode(tok(TEXTS[2], add_special_tokens=False)["input_ids"]) == TEXTS[2]
