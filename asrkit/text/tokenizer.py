"""Tokenizers: text <-> token ids, one interface for sentencepiece pieces and characters.

Every head, decoder and data loader talks to a :class:`Tokenizer`; which kind it is lives in
``lang_dir/tokenizer.yaml``, so ``load_tokenizer(lang_dir)`` is all a recipe or an experiment dir
needs. The id layout follows icefall: ``<blk>`` = 0 (CTC/transducer blank), ``<sos/eos>`` = 1
(shared by the attention decoder), ``<unk>`` = 2, then user-defined symbols (e.g. ``<sc>`` for
speaker change in serialized output training), then the learned pieces or characters.

    from asrkit.text.tokenizer import BpeTokenizer, CharTokenizer, load_tokenizer
    tok = BpeTokenizer.train(texts, "data/lang_bpe_500", vocab_size=500)
    tok = CharTokenizer.build(texts, "data/lang_char")
    tok = load_tokenizer("data/lang_bpe_500")
    tok.decode(tok.encode("HELLO WORLD"))   # 'HELLO WORLD'

Files in ``lang_dir``: ``tokenizer.yaml`` (type and options), ``tokens.txt`` (``<token> <id>``
per line, as icefall), and ``bpe.model`` for sentencepiece.
"""

from __future__ import annotations

import logging
import re
import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from asrkit.text.sot import SC

logger = logging.getLogger(__name__)

BLANK = "<blk>"
SOS_EOS = "<sos/eos>"
UNK = "<unk>"
SPECIALS = (BLANK, SOS_EOS, UNK)
SPACE = "\u2581"  # '▁', sentencepiece's word-boundary marker, also the char tokenizer's space
CONFIG_NAME = "tokenizer.yaml"
TOKENS_NAME = "tokens.txt"
BPE_MODEL_NAME = "bpe.model"


class Tokenizer(ABC):
    """Text <-> ids. ``blank_id`` 0, ``sos_id == eos_id`` 1, ``unk_id`` 2 for every implementation."""

    blank_id: int = 0
    sos_id: int = 1
    eos_id: int = 1
    unk_id: int = 2

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, specials included (the output dimension of a head)."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` (already normalised); never contains blank or sos/eos."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; blank and sos/eos ids are skipped."""

    @abstractmethod
    def id_to_token(self, idx: int) -> str: ...

    @abstractmethod
    def token_to_id(self, token: str) -> int:
        """Id of ``token``, ``unk_id`` if it is not in the vocabulary."""

    @abstractmethod
    def save(self, lang_dir: str | Path) -> None:
        """Write everything :func:`load_tokenizer` needs into ``lang_dir``."""

    @property
    def tokens(self) -> list[str]:
        return [self.id_to_token(i) for i in range(self.vocab_size)]

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def _write_tokens_txt(self, lang_dir: Path) -> None:
        with open(lang_dir / TOKENS_NAME, "w", encoding="utf-8") as f:
            for i, tok in enumerate(self.tokens):
                f.write(f"{tok} {i}\n")

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.tokens == other.tokens  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def _write_config(lang_dir: Path, kind: str, options: dict[str, Any]) -> None:
    with open(lang_dir / CONFIG_NAME, "w", encoding="utf-8") as f:
        yaml.safe_dump({"type": kind, "options": options}, f, allow_unicode=True, sort_keys=True)


def _read_texts(texts: Iterable[str], where: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{where}: texts must be an iterable of strings, not one string")
    lines = [" ".join(t.split()) for t in texts]
    lines = [t for t in lines if t]
    if not lines:
        raise ValueError(f"{where}: no training text (empty iterable or only blank lines); "
                         f"pass the normalised transcripts of the training set")
    return lines


def _check_user_symbols(symbols: Sequence[str]) -> list[str]:
    out = []
    for s in symbols:
        if not s or any(c.isspace() for c in s):
            raise ValueError(f"user-defined symbol {s!r} must be non-empty and contain no whitespace")
        if s in SPECIALS:
            raise ValueError(f"user-defined symbol {s!r} is reserved ({', '.join(SPECIALS)})")
        if s not in out:
            out.append(s)
    return out


def _with_sot_symbol(lines: Sequence[str], extra: list[str], where: str) -> list[str]:
    """Add ``<sc>`` to the user-defined symbols when the training text has SOT transcripts.

    Undeclared, sentencepiece would learn pieces like ``<s`` and ``c>`` (merged with neighbouring
    letters) and the char table would split it into four characters: a speaker change must be one
    token for the model to emit it.
    """
    if SC in extra or not any(SC in line for line in lines):
        return extra
    logger.info("%s: the training text has speaker changes %s (SOT); adding it as a user-defined symbol",
                where, SC)
    return [*extra, SC]


class BpeTokenizer(Tokenizer):
    """sentencepiece model (unigram by default, as icefall; or bpe) with the icefall id layout."""

    def __init__(self, model_path: str | Path, options: dict[str, Any] | None = None):
        import sentencepiece as spm

        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"sentencepiece model not found: {self.model_path}; "
                                    f"train one with BpeTokenizer.train(texts, lang_dir, vocab_size)")
        self.sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        self.options = dict(options or {})
        expect = {self.blank_id: BLANK, self.sos_id: SOS_EOS, self.unk_id: UNK}
        got = {i: self.sp.id_to_piece(i) for i in expect}
        if got != expect:
            raise ValueError(f"{self.model_path}: special pieces {got} differ from the layout "
                             f"{expect}; retrain it with BpeTokenizer.train")

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        lang_dir: str | Path,
        vocab_size: int,
        user_defined_symbols: Sequence[str] = (),
        model_type: str = "unigram",
        character_coverage: float = 1.0,
        input_sentence_size: int = 100_000_000,
        num_threads: int = 1,
        seed: int = 0,
    ) -> "BpeTokenizer":
        """Train on ``texts`` (normalised transcripts) and save into ``lang_dir``.

        Writes ``bpe.model``, ``tokens.txt``, ``tokenizer.yaml`` and the training text
        ``bpe_train.txt``. Symbols in ``user_defined_symbols`` (e.g. ``<sc>``) always come out
        as one token; ``<sc>`` is added by itself when the texts contain it (SOT transcripts).
        """
        import sentencepiece as spm

        if model_type not in ("unigram", "bpe"):
            raise ValueError(f"BpeTokenizer.train: model_type must be 'unigram' or 'bpe', got {model_type!r}")
        lines = _read_texts(texts, "BpeTokenizer.train")
        extra = _with_sot_symbol(lines, _check_user_symbols(user_defined_symbols), "BpeTokenizer.train")
        lang_dir = Path(lang_dir)
        lang_dir.mkdir(parents=True, exist_ok=True)
        train_txt = lang_dir / "bpe_train.txt"
        train_txt.write_text("\n".join(lines) + "\n", encoding="utf-8")
        prefix = lang_dir / "bpe"
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                input=str(train_txt),
                model_prefix=str(prefix),
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=character_coverage,
                input_sentence_size=input_sentence_size,
                shuffle_input_sentence=True,
                seed_sentencepiece_size=1_000_000,
                user_defined_symbols=[BLANK, SOS_EOS, *extra],
                unk_id=2,
                bos_id=-1,
                eos_id=-1,
                normalization_rule_name="identity",  # asrkit.text.normalize did it already
                num_threads=num_threads,  # 1: same pieces on every run
                minloglevel=2,
            )
        except RuntimeError as e:
            hint = " Lower vocab_size or give more text." if "too high" in str(e) else ""
            raise ValueError(f"BpeTokenizer.train: sentencepiece failed for {lang_dir} with "
                             f"vocab_size={vocab_size}: {e}{hint}") from e
        (lang_dir / "bpe.vocab").unlink(missing_ok=True)
        options = {"model_type": model_type, "vocab_size": vocab_size,
                   "user_defined_symbols": extra, "character_coverage": character_coverage}
        tok = cls(lang_dir / BPE_MODEL_NAME, options)
        tok._write_tokens_txt(lang_dir)
        _write_config(lang_dir, "bpe", options)
        logger.info("trained %s sentencepiece model (%d pieces) in %s", model_type, tok.vocab_size, lang_dir)
        return tok

    @classmethod
    def load(cls, lang_dir: str | Path, options: dict[str, Any] | None = None) -> "BpeTokenizer":
        return cls(Path(lang_dir) / BPE_MODEL_NAME, options)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids if i != self.blank_id and i != self.sos_id]
        return self.sp.decode(ids)

    def id_to_token(self, idx: int) -> str:
        return self.sp.id_to_piece(int(idx))

    def token_to_id(self, token: str) -> int:
        return self.sp.piece_to_id(token)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, BpeTokenizer)
                and self.sp.serialized_model_proto() == other.sp.serialized_model_proto())

    def save(self, lang_dir: str | Path) -> None:
        lang_dir = Path(lang_dir)
        lang_dir.mkdir(parents=True, exist_ok=True)
        dst = lang_dir / BPE_MODEL_NAME
        if dst.resolve() != self.model_path.resolve():
            shutil.copyfile(self.model_path, dst)
        self._write_tokens_txt(lang_dir)
        _write_config(lang_dir, "bpe", self.options)


class CharTokenizer(Tokenizer):
    """One token per character; a space becomes ``▁`` where the language separates words."""

    def __init__(self, tokens: Sequence[str], user_defined_symbols: Sequence[str] = ()):
        tokens = list(tokens)
        if tuple(tokens[:3]) != SPECIALS:
            raise ValueError(f"CharTokenizer: the first tokens must be {SPECIALS}, got {tokens[:3]}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("CharTokenizer: duplicate tokens")
        self._tokens = tokens
        self._ids = {t: i for i, t in enumerate(tokens)}
        self.user_defined_symbols = list(user_defined_symbols)
        self.use_space = SPACE in self._ids

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        lang_dir: str | Path,
        user_defined_symbols: Sequence[str] = (),
        use_space: bool | None = None,
    ) -> "CharTokenizer":
        """Collect the characters of ``texts`` and save the tokenizer into ``lang_dir``.

        ``use_space``: emit ``▁`` for spaces; by default, when any text contains a space
        (en, vi), not for text without spaces (zh). ``<sc>`` in the texts becomes a user-defined
        symbol (one token, never ``<``, ``s``, ``c``, ``>``) even if not listed.
        """
        lines = _read_texts(texts, "CharTokenizer.build")
        extra = _with_sot_symbol(lines, _check_user_symbols(user_defined_symbols), "CharTokenizer.build")
        if use_space is None:
            use_space = any(" " in t for t in lines)
        chars: set[str] = set()
        for line in lines:
            for piece in _split_symbols(line, extra):
                if piece not in extra:
                    chars.update(c for c in piece if not c.isspace())
        chars -= set(SPECIALS) | {SPACE}
        tokens = [*SPECIALS, *extra] + ([SPACE] if use_space else []) + sorted(chars)
        tok = cls(tokens, extra)
        tok.save(lang_dir)
        logger.info("built char tokenizer (%d tokens) in %s", tok.vocab_size, lang_dir)
        return tok

    @classmethod
    def load(cls, lang_dir: str | Path, options: dict[str, Any] | None = None) -> "CharTokenizer":
        path = Path(lang_dir) / TOKENS_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; build it with CharTokenizer.build(texts, lang_dir)")
        tokens = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            tok, idx = line.rsplit(" ", 1)
            if int(idx) != n:
                raise ValueError(f"{path}:{n + 1}: expected id {n}, got {idx}")
            tokens.append(tok)
        return cls(tokens, (options or {}).get("user_defined_symbols", ()))

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in _split_symbols(" ".join(text.split()), self.user_defined_symbols):
            if piece in self.user_defined_symbols:
                ids.append(self._ids[piece])
                continue
            for c in piece:
                if c == " ":
                    if self.use_space:
                        ids.append(self._ids[SPACE])
                else:
                    ids.append(self._ids.get(c, self.unk_id))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == self.blank_id or i == self.sos_id:
                continue
            tok = self._tokens[i]
            out.append(" " if tok == SPACE else tok)
        return " ".join("".join(out).split())

    def id_to_token(self, idx: int) -> str:
        return self._tokens[int(idx)]

    def token_to_id(self, token: str) -> int:
        return self._ids.get(token, self.unk_id)

    def save(self, lang_dir: str | Path) -> None:
        lang_dir = Path(lang_dir)
        lang_dir.mkdir(parents=True, exist_ok=True)
        self._write_tokens_txt(lang_dir)
        _write_config(lang_dir, "char", {"user_defined_symbols": self.user_defined_symbols,
                                          "use_space": self.use_space})


def _split_symbols(text: str, symbols: Sequence[str]) -> list[str]:
    """Split ``text`` into user-defined symbols and the text between them."""
    if not symbols:
        return [text]
    pattern = "(" + "|".join(re.escape(s) for s in sorted(symbols, key=len, reverse=True)) + ")"
    return [p for p in re.split(pattern, text) if p]


_TYPES: dict[str, type[Tokenizer]] = {"bpe": BpeTokenizer, "char": CharTokenizer}


def load_tokenizer(lang_dir: str | Path) -> Tokenizer:
    """Load the tokenizer saved in ``lang_dir`` (reads ``lang_dir/tokenizer.yaml``)."""
    lang_dir = Path(lang_dir)
    if not lang_dir.is_dir():
        raise FileNotFoundError(f"tokenizer dir not found: {lang_dir}; create it with "
                                f"BpeTokenizer.train or CharTokenizer.build (asrkit prepare)")
    cfg_path = lang_dir / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: {lang_dir} was not written by asrkit; "
                                f"rebuild it, or write 'type: bpe' (with bpe.model) or 'type: char' "
                                f"(with tokens.txt) into {cfg_path}")
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    kind = cfg.get("type")
    if kind not in _TYPES:
        raise ValueError(f"{cfg_path}: unknown tokenizer type {kind!r}; expected one of {sorted(_TYPES)}")
    return _TYPES[kind].load(lang_dir, cfg.get("options") or {})  # type: ignore[attr-defined]
