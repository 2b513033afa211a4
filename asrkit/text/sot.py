"""Serialized output training (SOT) text: the transcripts of overlapping speakers in one string.

A multi-talker model emits one token sequence for a whole mixture; SOT (Kanda et al. 2020, used by
LLM-SOT, arXiv 2408.17431) makes that sequence the speakers' transcripts in first-in-first-out order
of their start times, joined by a speaker-change token::

    from asrkit.text.sot import serialize_sot, parse_sot
    serialize_sot([(1.2, "B", "good morning"), (0.0, "A", "hello there")])  # 'hello there <sc> good morning'
    parse_sot("hello there <sc> good morning")                              # ['hello there', 'good morning']

Segments may be plain strings (already in order), ``(start, text)`` or ``(start, speaker, text)``
tuples, or anything with ``.start``, ``.speaker`` and ``.text`` (lhotse ``SupervisionSegment``),
so the same function serves mixtures, meetings and decoded output. Normalise each segment's text
*before* serializing: text normalisers drop ``<`` and ``>`` and would destroy the token.

``<sc>`` must be a single token for every tokenizer: a user-defined symbol of the sentencepiece model
and of the character table (``asrkit.text.tokenizer``), an added special token of a Hugging Face LLM
tokenizer (:func:`add_sot_token`, or ``SpeechLLMConfig.extra_special_tokens: ["<sc>"]``, which
also grows the LLM's embeddings).
"""

from __future__ import annotations

from typing import Any, Iterable, List, Optional, Tuple

SC = "<sc>"  # speaker change, as ESPnet's egs2/librimix/sot_asr1 and the SOT papers write it

__all__ = ["SC", "Segment", "add_sot_token", "as_segments", "parse_sot", "serialize_sot", "sot_speaker_count"]

Segment = Tuple[float, Optional[str], str]  # (start in seconds, speaker id or None, text)


def _check_sc(sc: str) -> str:
    if not sc or any(c.isspace() for c in sc):
        raise ValueError(f"speaker-change token {sc!r} must be non-empty and contain no whitespace")
    return sc


def as_segments(items: Iterable[Any]) -> List[Segment]:
    """Turn strings, ``(start, text)``, ``(start, speaker, text)`` or supervision-like objects into
    ``(start, speaker, text)`` triples. Plain strings get starts 0, 1, 2, ... (their given order)."""
    out: List[Segment] = []
    for n, item in enumerate(items):
        if isinstance(item, str):
            out.append((float(n), None, item))
        elif isinstance(item, (tuple, list)):
            if len(item) == 2:
                out.append((float(item[0]), None, item[1]))
            elif len(item) == 3:
                out.append((float(item[0]), item[1], item[2]))
            else:
                raise ValueError(f"segment {n}: expected (start, text) or (start, speaker, text), got {item!r}")
        elif hasattr(item, "start") and hasattr(item, "text"):
            out.append((float(item.start), getattr(item, "speaker", None), item.text))
        else:
            raise TypeError(f"segment {n}: expected a string, a tuple or a supervision, got {type(item).__name__}")
        if out[-1][2] is not None and not isinstance(out[-1][2], str):
            raise TypeError(f"segment {n}: text must be a string, got {type(out[-1][2]).__name__}")
    return out


def serialize_sot(segments: Iterable[Any], sc: str = SC, merge_same_speaker: bool = True) -> str:
    """One SOT string: segment texts sorted by start time, joined with `` <sc> ``.

    Ties in start time keep the order given (a stable sort), so a caller that wants another tie
    rule sorts first. Segments with empty text are skipped (they carry no words to recognise).
    ``merge_same_speaker``: consecutive segments of the same known speaker are joined by a space,
    not by ``<sc>``, because ``<sc>`` marks a change of speaker (meetings, where one person says
    several utterances in a row); segments without a speaker are never merged.
    """
    sc = _check_sc(sc)
    segs = [s for s in as_segments(segments) if s[2] and s[2].strip()]
    segs.sort(key=lambda s: s[0])
    parts: List[str] = []
    prev_speaker: Optional[str] = None
    for _, speaker, text in segs:
        text = " ".join(text.split())
        if sc in text:
            raise ValueError(f"segment text {text!r} already contains the speaker-change token {sc!r}")
        if merge_same_speaker and parts and speaker is not None and speaker == prev_speaker:
            parts[-1] = f"{parts[-1]} {text}"
        else:
            parts.append(text)
        prev_speaker = speaker
    return f" {sc} ".join(parts)


def parse_sot(text: str, sc: str = SC, keep_empty: bool = False) -> List[str]:
    """Split an SOT string into its speaker turns, whitespace normalised.

    The token is found anywhere, glued to words or not (a character model decodes ``hi<sc>yes``).
    Empty turns (``a <sc> <sc> b``, a leading ``<sc>``) are dropped unless ``keep_empty``;
    an empty string gives ``[]``.
    """
    sc = _check_sc(sc)
    turns = [" ".join(t.split()) for t in text.split(sc)]
    if keep_empty:
        return turns if text.strip() else []
    return [t for t in turns if t]


def sot_speaker_count(text: str, sc: str = SC) -> int:
    """Speakers (turns) an SOT string claims: the number of ``<sc>`` + 1, or 0 for an empty string."""
    sc = _check_sc(sc)
    return text.count(sc) + 1 if text.strip() else 0


def add_sot_token(tokenizer: Any, token: str = SC) -> int:
    """Make ``token`` one special token of a Hugging Face tokenizer; return its id.

    Does nothing but look the id up when the tokenizer has it already. The model's embedding
    matrix is not resized here: a speech-LLM gets the token through
    ``SpeechLLMConfig.extra_special_tokens``, which does both.
    """
    token = _check_sc(token)
    if token not in tokenizer.get_vocab():
        try:  # transformers >= 5
            tokenizer.add_special_tokens({"extra_special_tokens": [token]}, replace_extra_special_tokens=False)
        except TypeError:  # transformers 4
            tokenizer.add_special_tokens({"additional_special_tokens": [token]},
                                         replace_additional_special_tokens=False)
    idx = tokenizer.convert_tokens_to_ids(token)
    got = tokenizer(f"a {token} b", add_special_tokens=False)["input_ids"]
    if idx is None or got.count(idx) != 1 or tokenizer(token, add_special_tokens=False)["input_ids"] != [idx]:
        raise ValueError(f"{token!r} does not tokenize to its single id {idx} in {type(tokenizer).__name__}")
    return int(idx)

