"""Transcript normalisation per language, so references and hypotheses are compared like for like.

Every corpus writes its supervisions through :func:`normalize` before a tokenizer is trained, and
scoring applies it to both sides. The conventions follow the public recipes:

- ``en``: LibriSpeech style: upper case, apostrophes kept (``DON'T``), other punctuation and
  symbols dropped, whitespace collapsed. Hyphens split words (``WELL-KNOWN`` -> ``WELL KNOWN``).
- ``vi``: Unicode NFC (one code point per accented letter, so diacritics survive tokenisation),
  lower case, punctuation dropped, diacritics kept. Invisible format characters that web text
  carries (byte-order mark, soft hyphen, zero-width joiners; a zero-width space counts as a space)
  are removed, and the Icelandic eth ``Ð``/``ð``, a common look-alike typed for ``Đ``, becomes ``đ``.
- ``zh``: AISHELL/WenetSpeech style: full-width ASCII mapped to half-width, punctuation and spaces
  removed, Latin letters kept in upper case. A single space is kept between two Latin/digit words
  (``HELLO WORLD``) so that code-switched English stays readable.

    >>> normalize("Don't stop, it's well-known!", "en")
    "DON'T STOP IT'S WELL KNOWN"
"""

from __future__ import annotations

import re
import unicodedata

SUPPORTED_LANGS = ("en", "vi", "zh")

_SPACES = re.compile(r"\s+")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
# A space survives in zh only between two ASCII letters/digits.
_ZH_SPACE = re.compile(r"(?<=[A-Za-z0-9]) +(?=[A-Za-z0-9])")


def _is_punct_or_symbol(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat[0] in ("P", "S")


def _strip_punct(text: str, keep: str = "") -> str:
    """Replace punctuation and symbols (Unicode P* and S*) except ``keep`` by spaces."""
    return "".join(" " if (_is_punct_or_symbol(c) and c not in keep) else c for c in text)


def _collapse(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def full_width_to_half_width(text: str) -> str:
    """Map full-width ASCII (U+FF01..U+FF5E) and the ideographic space (U+3000) to ASCII."""
    out = []
    for c in text:
        code = ord(c)
        if 0xFF01 <= code <= 0xFF5E:
            out.append(chr(code - 0xFEE0))
        elif code == 0x3000:
            out.append(" ")
        else:
            out.append(c)
    return "".join(out)


def normalize_en(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    text = _strip_punct(text, keep="'").upper()
    # Drop tokens that are only apostrophes (stray quotes), keep them inside/around words.
    words = [w for w in _collapse(text).split(" ") if w.strip("'")]
    return " ".join(words)


# U+00D0/U+00F0 (eth) look exactly like U+0110/U+0111 (Vietnamese d with stroke) in most fonts.
_VI_LOOKALIKES = str.maketrans({"\u00d0": "\u0111", "\u00f0": "\u0111", "\u200b": " "})


def _drop_format_chars(text: str) -> str:
    """Remove Unicode format characters (category Cf: BOM, soft hyphen, ZWJ/ZWNJ, direction marks)."""
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


def normalize_vi(text: str) -> str:
    text = unicodedata.normalize("NFC", text).translate(_VI_LOOKALIKES)
    text = _strip_punct(_drop_format_chars(text)).lower()
    # Re-compose in case lower() produced a decomposed sequence.
    return unicodedata.normalize("NFC", _collapse(text))


def normalize_zh(text: str) -> str:
    text = full_width_to_half_width(unicodedata.normalize("NFC", text))
    text = _collapse(_strip_punct(text)).upper()
    # Keep one space between two Latin/digit words, remove every other space.
    text = _ZH_SPACE.sub("\x00", text).replace(" ", "").replace("\x00", " ")
    return text


_NORMALIZERS = {"en": normalize_en, "vi": normalize_vi, "zh": normalize_zh}


def normalize(text: str, lang: str) -> str:
    """Normalise ``text`` for language ``lang`` (one of ``en``, ``vi``, ``zh``)."""
    try:
        fn = _NORMALIZERS[lang]
    except KeyError:
        raise ValueError(
            f"normalize: unknown language {lang!r}; supported: {', '.join(SUPPORTED_LANGS)} "
            f"(add a normalize_<lang> function in asrkit/text/normalize.py for a new one)"
        ) from None
    return fn(text)
