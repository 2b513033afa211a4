"""Tests for asrkit.text.normalize: per-language transcript conventions.

    .venv/bin/pytest tests/test_normalize.py -q
"""

import unicodedata

import pytest

from asrkit.text.normalize import full_width_to_half_width, normalize


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello, world!", "HELLO WORLD"),
        ("Don't stop -- it's   well-known.", "DON'T STOP IT'S WELL KNOWN"),
        ("“Quoted” text; (brackets) & symbols?", "QUOTED TEXT BRACKETS SYMBOLS"),
        ("It\u2019s the students' books", "IT'S THE STUDENTS' BOOKS"),
        ("  ' stray quote '  ", "STRAY QUOTE"),
        ("Café naïve", "CAFÉ NAÏVE"),
        ("\tTabs\nand newlines ", "TABS AND NEWLINES"),
    ],
)
def test_en(text, expected):
    assert normalize(text, "en") == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hôm nay, TRỜI đẹp QUÁ!!  Tôi đi học.", "hôm nay trời đẹp quá tôi đi học"),
        ("Việt Nam: đất nước tươi đẹp?", "việt nam đất nước tươi đẹp"),
        ("“Xin chào” - ông ĐỨC", "xin chào ông đức"),
    ],
)
def test_vi(text, expected):
    assert normalize(text, "vi") == expected


def test_vi_composes_decomposed_input_to_nfc():
    decomposed = unicodedata.normalize("NFD", "Tiếng Việt")
    assert decomposed != "Tiếng Việt"
    out = normalize(decomposed, "vi")
    assert out == "tiếng việt"
    assert out == unicodedata.normalize("NFC", out)
    assert len(out) == len("tiếng việt")  # one code point per accented letter


@pytest.mark.parametrize(
    "text, expected",
    [
        ("你好，世界！", "你好世界"),
        ("我 爱 北京 天安门。", "我爱北京天安门"),
        ("我爱ＡＩ模型，５个ｇｐｕ", "我爱AI模型5个GPU"),
        ("hello world 你好", "HELLO WORLD你好"),
        ("《红楼梦》、“三国”……", "红楼梦三国"),
        ("全角\u3000空格", "全角空格"),
    ],
)
def test_zh(text, expected):
    assert normalize(text, "zh") == expected


def test_full_width_to_half_width():
    assert full_width_to_half_width("ＡＢＣ１２３！　") == "ABC123! "
    assert full_width_to_half_width("中文") == "中文"


@pytest.mark.parametrize("lang, text", [("en", "It's a well-known fact, isn't it?"),
                                        ("vi", "Chào BẠN, khỏe không?"),
                                        ("zh", "你好，ＡＢＣ world！")])
def test_idempotent(lang, text):
    once = normalize(text, lang)
    assert normalize(once, lang) == once


def test_unknown_language_raises():
    with pytest.raises(ValueError, match="unknown language 'fr'.*en, vi, zh"):
        normalize("bonjour", "fr")
