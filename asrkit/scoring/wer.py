"""Word and character error rates with a full error breakdown, written the way icefall and Kaldi do.

Every decode ends here: ``(utt_id, ref, hyp)`` triples go in, an :class:`ErrorStats` (insertions,
deletions, substitutions, rate) and three files come out, so results from different recipes and
different toolkits can be compared line by line::

    from asrkit.scoring import join_refs_hyps, write_results
    pairs = join_refs_hyps(refs, hyps)           # dicts utt_id -> text
    stats = write_results("exp/decode", "test-greedy", pairs, unit="word")
    # exp/decode/recogs-test-greedy.txt, errs-test-greedy.txt, wer-summary-test-greedy.txt

Alignment is kaldialign's Levenshtein alignment (unit costs). ``unit="char"`` splits into characters
and drops whitespace: the CER convention for Mandarin.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import kaldialign

log = logging.getLogger(__name__)

UNITS = ("word", "char")
_EPS = ""  # never a token: word splitting and char splitting both drop empty strings
_EPS_SHOWN = "*"  # how an insertion/deletion is displayed in errs-*.txt

Triple = Tuple[str, str, str]  # (utt_id, ref, hyp)


@dataclass
class ErrorStats:
    """Totals over a test set. ``rate`` is in percent: ``100 * errors / ref_words``."""

    ref_words: int = 0  # reference units (words or characters)
    ins: int = 0
    dels: int = 0
    subs: int = 0
    errors: int = 0
    rate: float = 0.0
    utts: int = 0
    sent_errors: int = 0  # utterances with at least one error

    @property
    def sent_error_rate(self) -> float:
        return 100.0 * self.sent_errors / self.utts if self.utts else 0.0


@dataclass
class _Utt:
    utt_id: str
    ref: List[str]
    hyp: List[str]
    ali: List[Tuple[str, str]]  # (ref_token or _EPS, hyp_token or _EPS)


def tokenize(text: str, unit: str = "word") -> List[str]:
    """Split ``text`` into scoring units: whitespace-separated words, or characters without spaces."""
    if unit == "word":
        return text.split()
    if unit == "char":
        return [c for c in text if not c.isspace()]
    raise ValueError(f"unknown scoring unit {unit!r}; use one of {UNITS}")


def join_refs_hyps(refs: Mapping[str, str], hyps: Mapping[str, str], allow_missing: bool = False) -> List[Triple]:
    """Pair references and hypotheses by utterance id into ``(utt_id, ref, hyp)`` triples, sorted by id.

    A hypothesis for an utterance with no reference is always an error (wrong test set or wrong
    manifest). A reference without a hypothesis is an error unless ``allow_missing``, in which case
    it is scored as an empty hypothesis (all deletions) with a warning.
    """
    if not refs:
        raise ValueError("no reference transcripts: the reference set is empty; check the test manifest")
    unknown = sorted(set(hyps) - set(refs))
    if unknown:
        raise ValueError(
            f"{len(unknown)} hypotheses for utterances that have no reference, e.g. {unknown[:3]}; "
            "the hypotheses come from a different test set than the references"
        )
    missing = sorted(set(refs) - set(hyps))
    if missing:
        msg = f"{len(missing)} of {len(refs)} utterances have no hypothesis, e.g. {missing[:3]}"
        if not allow_missing:
            raise ValueError(msg + "; decode them, or pass allow_missing=True to score them as empty")
        log.warning("%s; scoring them as empty hypotheses (all deletions)", msg)
    return [(u, refs[u], hyps.get(u, "")) for u in sorted(refs)]


def _align_all(pairs: Sequence[Triple], unit: str) -> List[_Utt]:
    if unit not in UNITS:
        raise ValueError(f"unknown scoring unit {unit!r}; use one of {UNITS}")
    if len(pairs) == 0:
        raise ValueError("no (utt_id, ref, hyp) pairs to score: the reference set is empty")
    seen = set()
    utts = []
    for triple in pairs:
        if len(triple) != 3:
            raise ValueError(f"expected (utt_id, ref, hyp) triples, got {triple!r}")
        utt_id, ref_text, hyp_text = triple
        if utt_id in seen:
            raise ValueError(f"utterance {utt_id!r} appears twice in the pairs to score; ids must be unique")
        seen.add(utt_id)
        ref, hyp = tokenize(ref_text, unit), tokenize(hyp_text, unit)
        if not ref:
            log.warning(
                "utterance %r has an empty reference; its %d hyp %ss count as insertions", utt_id, len(hyp), unit
            )
        ali = kaldialign.align(ref, hyp, _EPS)
        utts.append(_Utt(utt_id, ref, hyp, ali))
    utts.sort(key=lambda u: u.utt_id)
    return utts


def _count(ali: Sequence[Tuple[str, str]]) -> Tuple[int, int, int]:
    """(insertions, deletions, substitutions) of one alignment."""
    ins = sum(1 for r, _ in ali if r == _EPS)
    dels = sum(1 for _, h in ali if h == _EPS)
    subs = sum(1 for r, h in ali if r != h and r != _EPS and h != _EPS)
    return ins, dels, subs


def _stats(utts: Sequence[_Utt]) -> ErrorStats:
    s = ErrorStats(utts=len(utts))
    for u in utts:
        s.ref_words += len(u.ref)
        ins, dels, subs = _count(u.ali)
        s.ins, s.dels, s.subs = s.ins + ins, s.dels + dels, s.subs + subs
        s.sent_errors += int(ins + dels + subs > 0)
    s.errors = s.ins + s.dels + s.subs
    if s.ref_words == 0:
        raise ValueError(
            f"all {s.utts} references are empty, so the error rate is undefined; check the reference transcripts"
        )
    s.rate = 100.0 * s.errors / s.ref_words
    return s


def compute_error_rate(pairs: Sequence[Triple], unit: str = "word") -> ErrorStats:
    """WER (``unit="word"``) or CER (``unit="char"``) over ``(utt_id, ref, hyp)`` triples."""
    return _stats(_align_all(pairs, unit))


def summary_line(stats: ErrorStats, unit: str = "word") -> str:
    """Kaldi's compute-wer line, e.g. ``%WER 3.21 [ 32 / 1000, 5 ins, 10 del, 17 sub ]``."""
    name = {"word": "WER", "char": "CER"}.get(unit)
    if name is None:
        raise ValueError(f"unknown scoring unit {unit!r}; use one of {UNITS}")
    return (
        f"%{name} {stats.rate:.2f} [ {stats.errors} / {stats.ref_words}, "
        f"{stats.ins} ins, {stats.dels} del, {stats.subs} sub ]"
    )


def _sorted_counts(counter: Counter) -> List[Tuple[object, int]]:
    # most frequent first; ties broken by the key's text so the file is deterministic
    return sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))


def _errs_text(utts: Sequence[_Utt], stats: ErrorStats, unit: str) -> str:
    subs: Counter = Counter()
    dels: Counter = Counter()
    ins: Counter = Counter()
    lines = [
        summary_line(stats, unit),
        f"%SER {stats.sent_error_rate:.2f} [ {stats.sent_errors} / {stats.utts} ]",
        f"Errors: {stats.ins} insertions, {stats.dels} deletions, {stats.subs} substitutions, "
        f"over {stats.ref_words} reference {unit}s ({stats.ref_words - stats.dels - stats.subs} correct)",
        "Search below for sections starting with PER-UTT DETAILS:, SUBSTITUTIONS:, DELETIONS:, INSERTIONS:",
        "",
        "PER-UTT DETAILS: corr or (ref->hyp)",
    ]
    for u in utts:
        shown = []
        for r, h in u.ali:
            if r == h:
                shown.append(r)
                continue
            shown.append(f"({r or _EPS_SHOWN}->{h or _EPS_SHOWN})")
            if r == _EPS:
                ins[h] += 1
            elif h == _EPS:
                dels[r] += 1
            else:
                subs[(r, h)] += 1
        lines.append(f"{u.utt_id}:\t" + " ".join(shown))
    lines += ["", "SUBSTITUTIONS: count ref -> hyp"]
    lines += [f"{n}   {r} -> {h}" for (r, h), n in _sorted_counts(subs)]
    lines += ["", "DELETIONS: count ref"]
    lines += [f"{n}   {r}" for r, n in _sorted_counts(dels)]
    lines += ["", "INSERTIONS: count hyp"]
    lines += [f"{n}   {h}" for h, n in _sorted_counts(ins)]
    return "\n".join(lines) + "\n"


def write_results(out_dir, name: str, pairs: Sequence[Triple], unit: str = "word") -> ErrorStats:
    """Score ``pairs`` and write ``recogs-<name>.txt``, ``errs-<name>.txt`` and ``wer-summary-<name>.txt``.

    Utterances are sorted by id, so the files are identical for identical inputs in any order.
    Returns the totals; the summary line is also logged.
    """
    utts = _align_all(pairs, unit)
    stats = _stats(utts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recogs = []
    for u in utts:
        recogs.append(f"{u.utt_id}:\tref={u.ref!r}")
        recogs.append(f"{u.utt_id}:\thyp={u.hyp!r}")
    (out / f"recogs-{name}.txt").write_text("\n".join(recogs) + "\n", encoding="utf-8")
    (out / f"errs-{name}.txt").write_text(_errs_text(utts, stats, unit), encoding="utf-8")
    line = summary_line(stats, unit)
    (out / f"wer-summary-{name}.txt").write_text(line + "\n", encoding="utf-8")
    log.info("%s %s (%d utterances) -> %s", name, line, stats.utts, out)
    return stats


def error_stats_by_utt(pairs: Sequence[Triple], unit: str = "word") -> Dict[str, ErrorStats]:
    """Per-utterance stats, handy for finding the worst utterances.

    An empty reference gets rate ``inf`` when the hypothesis is not empty (and 0 when it is).
    """
    result = {}
    for u in _align_all(pairs, unit):
        ins, dels, subs = _count(u.ali)
        err = ins + dels + subs
        rate = 100.0 * err / len(u.ref) if u.ref else (float("inf") if err else 0.0)
        result[u.utt_id] = ErrorStats(len(u.ref), ins, dels, subs, err, rate, 1, int(err > 0))
    return result
