"""Tests for asrkit.text.tokenizer: sentencepiece and character tokenizers behind one interface.

Training text is drawn from the synthetic-corpus vocabularies (no audio needed).

    .venv/bin/pytest tests/test_tokenizer.py -q
"""

import unicodedata
from pathlib import Path

import numpy as np
import pytest

from asrkit.data.synth import load_vocab, make_sentence
from asrkit.text.tokenizer import (
    SPACE,
    BpeTokenizer,
    CharTokenizer,
    Tokenizer,
    load_tokenizer,
)


def sentences(lang: str, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    vocab = load_vocab(lang)
    out = []
    for _ in range(n):
        words = [vocab[i] for i in rng.integers(0, len(vocab), size=int(rng.integers(3, 12)))]
        out.append(make_sentence(words, lang)[0])
    return out


@pytest.fixture(scope="module")
def texts():
    return {lang: sentences(lang, 400, seed=0) for lang in ("en", "vi", "zh")}


@pytest.fixture(scope="module")
def heldout():
    return {lang: sentences(lang, 20, seed=1) for lang in ("en", "vi", "zh")}


@pytest.fixture(scope="module")
def bpe_en(texts, tmp_path_factory):
    lang_dir = tmp_path_factory.mktemp("lang_bpe_en")
    return BpeTokenizer.train(texts["en"], lang_dir, vocab_size=200, user_defined_symbols=["<sc>"])


def check_specials(tok: Tokenizer):
    assert (tok.blank_id, tok.sos_id, tok.eos_id, tok.unk_id) == (0, 1, 1, 2)
    assert [tok.id_to_token(i) for i in range(3)] == ["<blk>", "<sos/eos>", "<unk>"]
    assert tok.token_to_id("<blk>") == 0 and tok.token_to_id("<sos/eos>") == 1


def check_tokens_txt(tok: Tokenizer, lang_dir: Path):
    lines = (lang_dir / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == tok.vocab_size
    assert lines[0] == "<blk> 0" and lines[1] == "<sos/eos> 1" and lines[2] == "<unk> 2"
    for i, line in enumerate(lines):
        token, idx = line.rsplit(" ", 1)
        assert int(idx) == i and token == tok.id_to_token(i)


def test_bpe_en_specials_and_files(bpe_en):
    lang_dir = bpe_en.model_path.parent
    check_specials(bpe_en)
    assert bpe_en.vocab_size == 200
    assert bpe_en.id_to_token(3) == "<sc>"
    assert (lang_dir / "bpe.model").is_file() and (lang_dir / "tokenizer.yaml").is_file()
    check_tokens_txt(bpe_en, lang_dir)


def test_bpe_en_round_trip(bpe_en, heldout):
    for text in heldout["en"]:
        ids = bpe_en.encode(text)
        assert ids and all(3 <= i < bpe_en.vocab_size for i in ids), ids  # no blank/sos/unk
        assert bpe_en.decode(ids) == text
    # Words are longer than one piece on average: the model learned multi-character pieces.
    n_chars = sum(len(t.replace(" ", "")) for t in heldout["en"])
    assert sum(len(bpe_en.encode(t)) for t in heldout["en"]) < 0.8 * n_chars


def test_bpe_sc_is_one_token(bpe_en):
    sc = bpe_en.token_to_id("<sc>")
    ids = bpe_en.encode("HELLO WORLD <sc> GOOD MORNING <sc> YES")
    assert ids.count(sc) == 2
    assert all(bpe_en.id_to_token(i) != "<" for i in ids)
    assert bpe_en.decode(ids) == "HELLO WORLD <sc> GOOD MORNING <sc> YES"


def test_decode_skips_blank_and_sos(bpe_en):
    ids = bpe_en.encode("GOOD MORNING")
    noisy = [0, 1] + [x for i in ids for x in (i, 0)] + [1]
    assert bpe_en.decode(noisy) == "GOOD MORNING"


def test_bpe_unknown_character_maps_to_unk(bpe_en):
    assert bpe_en.unk_id in bpe_en.encode("HELLO ☃")


@pytest.mark.parametrize("lang, vocab_size", [("vi", 300), ("zh", 500)])
def test_bpe_round_trip_vi_zh(lang, vocab_size, texts, heldout, tmp_path):
    tok = BpeTokenizer.train(texts[lang], tmp_path / lang, vocab_size=vocab_size)
    check_specials(tok)
    for text in heldout[lang]:
        ids = tok.encode(text)
        assert tok.unk_id not in ids
        out = tok.decode(ids)
        assert out == text
        assert out == unicodedata.normalize("NFC", out)  # diacritics stay composed


def test_bpe_model_type_bpe_and_determinism(texts, tmp_path):
    a = BpeTokenizer.train(texts["en"], tmp_path / "a", vocab_size=120, model_type="bpe")
    b = BpeTokenizer.train(texts["en"], tmp_path / "b", vocab_size=120, model_type="bpe")
    assert a.tokens == b.tokens
    text = texts["en"][0]
    assert a.decode(a.encode(text)) == text
    assert load_tokenizer(tmp_path / "a").options["model_type"] == "bpe"


def test_bpe_save_load_equal(bpe_en, heldout, tmp_path):
    loaded = load_tokenizer(bpe_en.model_path.parent)
    assert isinstance(loaded, BpeTokenizer) and loaded == bpe_en
    bpe_en.save(tmp_path / "exp" / "lang")  # e.g. copied into an experiment dir
    copy = load_tokenizer(tmp_path / "exp" / "lang")
    assert copy == bpe_en
    for text in heldout["en"][:5]:
        assert copy.encode(text) == bpe_en.encode(text)


def test_char_en_and_vi(texts, heldout, tmp_path):
    for lang in ("en", "vi"):
        tok = CharTokenizer.build(texts[lang], tmp_path / lang)
        check_specials(tok)
        check_tokens_txt(tok, tmp_path / lang)
        assert SPACE in tok.tokens
        for text in heldout[lang]:
            ids = tok.encode(text)
            assert ids.count(tok.token_to_id(SPACE)) == text.count(" ")
            assert tok.decode(ids) == text
    vi = load_tokenizer(tmp_path / "vi")
    assert "ệ" in vi.tokens or "ư" in vi.tokens  # precomposed letters are single tokens
    assert len(vi.encode("việt")) == 4


def test_char_zh_has_no_space_token(texts, heldout, tmp_path):
    tok = CharTokenizer.build(texts["zh"], tmp_path / "zh")
    assert SPACE not in tok.tokens
    for text in heldout["zh"]:
        ids = tok.encode(text)
        assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok.encode("我 们") == tok.encode("我们")  # spaces carry nothing in zh


def test_char_sc_symbol_unk_and_save_load(texts, tmp_path):
    tok = CharTokenizer.build(texts["en"] + ["YES <sc> NO"], tmp_path / "c", user_defined_symbols=["<sc>"])
    assert tok.id_to_token(3) == "<sc>"
    ids = tok.encode("YES <sc> NO")
    assert ids.count(3) == 1 and tok.decode(ids) == "YES <sc> NO"
    assert tok.encode("€") == [tok.unk_id]
    loaded = load_tokenizer(tmp_path / "c")
    assert isinstance(loaded, CharTokenizer) and loaded == tok
    assert loaded.encode("YES <sc> NO") == ids


def test_errors(tmp_path, texts):
    with pytest.raises(ValueError, match="no training text"):
        BpeTokenizer.train([], tmp_path / "x", vocab_size=10)
    with pytest.raises(ValueError, match="no training text"):
        CharTokenizer.build(["", "  "], tmp_path / "y")
    with pytest.raises(ValueError, match="Lower vocab_size"):
        BpeTokenizer.train(["A B C"], tmp_path / "z", vocab_size=5000)
    with pytest.raises(ValueError, match="reserved"):
        CharTokenizer.build(["A"], tmp_path / "w", user_defined_symbols=["<blk>"])
    with pytest.raises(FileNotFoundError, match="tokenizer dir not found"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="tokenizer.yaml"):
        load_tokenizer(tmp_path / "empty")
