"""Tests for asrkit.text.sot: FIFO serialization, parsing back, and <sc> as one token in every tokenizer."""

import pytest
from lhotse import SupervisionSegment

from asrkit.text.sot import SC, add_sot_token, parse_sot, serialize_sot, sot_speaker_count
from asrkit.text.tokenizer import BpeTokenizer, CharTokenizer, load_tokenizer

WORDS = "HELLO WORLD GOOD MORNING YES NO THANK YOU VERY MUCH SEE LATER".split()


def test_round_trip_plain_list():
    turns = ["hello world", "good morning", "yes"]
    text = serialize_sot(turns)
    assert text == "hello world <sc> good morning <sc> yes"
    assert parse_sot(text) == turns


def test_fifo_order_by_start_three_speakers():
    segs = [(2.5, "C", "see you"), (0.0, "A", "hello there"), (1.2, "B", "good  morning ")]
    assert serialize_sot(segs) == "hello there <sc> good morning <sc> see you"
    assert serialize_sot([(s, t) for s, _, t in segs]) == "hello there <sc> good morning <sc> see you"


def test_ties_keep_given_order():
    assert serialize_sot([(1.0, "B", "b"), (0.0, "A", "a"), (1.0, "C", "c")]) == "a <sc> b <sc> c"
    assert serialize_sot([(1.0, "C", "c"), (0.0, "A", "a"), (1.0, "B", "b")]) == "a <sc> c <sc> b"


def test_from_lhotse_supervisions_and_same_speaker_merge():
    sups = [SupervisionSegment(f"s{i}", "rec", start, 1.0, text=text, speaker=spk)
            for i, (start, spk, text) in enumerate([(3.0, "A", "again"), (0.0, "A", "hi"), (1.0, "B", "yes"),
                                                    (4.5, "A", "and again"), (5.0, "B", "")])]
    # empty text is skipped; A's turns at 3.0 and 4.5 are consecutive: no speaker change between them
    assert serialize_sot(sups) == "hi <sc> yes <sc> again and again"
    assert serialize_sot(sups, merge_same_speaker=False) == "hi <sc> yes <sc> again <sc> and again"
    # unknown speakers are never merged
    assert serialize_sot([(0, "a"), (1, "b")]) == "a <sc> b"


def test_custom_token_and_bad_input():
    assert serialize_sot(["a", "b"], sc="<spk>") == "a <spk> b"
    assert parse_sot("a <spk> b", sc="<spk>") == ["a", "b"]
    with pytest.raises(ValueError, match="whitespace"):
        serialize_sot(["a"], sc="< sc>")
    with pytest.raises(ValueError, match="already contains"):
        serialize_sot(["a <sc> b", "c"])
    with pytest.raises(ValueError, match="expected"):
        serialize_sot([(1.0, "A", "x", "extra")])
    with pytest.raises(TypeError):
        serialize_sot([3.5])


def test_parse_glued_and_empty_turns():
    assert parse_sot("hi<sc>yes  there") == ["hi", "yes there"]
    assert parse_sot("<sc> a <sc> <sc> b <sc>") == ["a", "b"]
    assert parse_sot("a <sc> <sc> b", keep_empty=True) == ["a", "", "b"]
    assert parse_sot("") == [] and parse_sot("   ") == []


def test_speaker_count():
    assert sot_speaker_count("a b <sc> c <sc> d") == 3
    assert sot_speaker_count("a b") == 1
    assert sot_speaker_count("") == 0


@pytest.fixture(scope="module")
def sot_texts():
    texts = []
    for i in range(60):
        a = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3))
        b = " ".join(WORDS[(2 * i + k) % len(WORDS)] for k in range(2))
        texts.append(f"{a} {SC} {b}")
    return texts


@pytest.mark.parametrize("declare", [True, False])
def test_bpe_sc_one_token(tmp_path, sot_texts, declare):
    symbols = [SC] if declare else []  # undeclared: found in the text and added by train()
    tok = BpeTokenizer.train(sot_texts, tmp_path / "bpe", vocab_size=30, user_defined_symbols=symbols)
    sc = tok.token_to_id(SC)
    assert sc == 3 and tok.id_to_token(sc) == SC
    ids = tok.encode("GOOD MORNING <sc> SEE LATER <sc> YES")
    assert ids.count(sc) == 2
    assert not any("<" in tok.id_to_token(i) or ">" in tok.id_to_token(i) for i in ids if i != sc)
    assert tok.decode(ids) == "GOOD MORNING <sc> SEE LATER <sc> YES"
    assert load_tokenizer(tmp_path / "bpe").encode("YES <sc> NO") == tok.encode("YES <sc> NO")


@pytest.mark.parametrize("declare", [True, False])
def test_char_sc_one_token(tmp_path, sot_texts, declare):
    tok = CharTokenizer.build(sot_texts, tmp_path / "char", user_defined_symbols=[SC] if declare else [])
    assert "<" not in tok.tokens and ">" not in tok.tokens
    sc = tok.token_to_id(SC)
    assert sc == 3
    ids = tok.encode("YES <sc> NO")
    assert ids.count(sc) == 1 and len(ids) == 3 + 1 + 2 + 2  # Y E S ▁ <sc> ▁ N O
    assert tok.decode(ids) == "YES <sc> NO"
    loaded = load_tokenizer(tmp_path / "char")
    assert loaded.encode("YES<sc>NO") == [i for i in ids if loaded.id_to_token(i) != "\u2581"]


def test_hf_tokenizer_sc_one_token(tmp_path, sot_texts):
    import transformers

    from asrkit.models.speech_llm import add_special_tokens
    from asrkit.models.tiny_llm import make_tiny_llm

    plain = [t.replace(SC, "").lower() for t in sot_texts]
    llm_dir = make_tiny_llm(tmp_path / "llm", plain, hidden_size=16, layers=1, heads=2, vocab_size=300)
    tok = transformers.AutoTokenizer.from_pretrained(llm_dir, local_files_only=True)
    before = len(tok)
    assert len(tok("<sc>", add_special_tokens=False)["input_ids"]) > 1  # split into pieces before we add it
    sc = add_sot_token(tok)
    assert sc == before and len(tok) == before + 1
    ids = tok("good morning <sc> see later", add_special_tokens=False)["input_ids"]
    assert ids.count(sc) == 1
    assert parse_sot(tok.decode(ids)) == ["good morning", "see later"]
    assert add_sot_token(tok) == sc and len(tok) == before + 1  # idempotent
    # the speech-LLM path (SpeechLLMConfig.extra_special_tokens) gives <sc> the same id and grows the LM
    tok2 = transformers.AutoTokenizer.from_pretrained(llm_dir, local_files_only=True)
    llm = transformers.AutoModelForCausalLM.from_pretrained(llm_dir, local_files_only=True)
    assert add_special_tokens(tok2, llm, [SC]) == [sc]
    assert llm.get_input_embeddings().weight.shape[0] == before + 1
