"""Multi-talker metrics for serialized output training (SOT): cpWER, concatenated WER, speaker counting.

A SOT hypothesis is one string, the speakers' transcripts joined by ``<sc>`` (``asrkit.text.sot``).
Three figures say how good it is, all summed over the test set (errors / reference words, never a
mean of per-utterance rates)::

    from asrkit.scoring import join_refs_hyps, score_sot, write_sot_results
    pairs = join_refs_hyps(refs, hyps)   # utt_id -> 'a b <sc> c d'
    stats = write_sot_results("exp/decode", "test-greedy", pairs, unit="word")
    # %cpWER 25.00 [ 1 / 4, 0 ins, 0 del, 1 sub ]  (and %concatWER, %SpkCountAcc)

- **cpWER** (concatenated minimum-permutation WER, CHiME-6; meeteval's ``cp_word_error_rate``):
  reference and hypothesis are split at ``<sc>`` into streams, each hypothesis stream is matched to
  at most one reference stream by the assignment with fewest errors, unmatched streams count as all
  deletions or insertions. It forgives the order of the turns, not words put in the wrong turn.
  ``ref "a b <sc> c d"``, ``hyp "c d <sc> a x"`` -> 1 error / 4 words.
- **Speaker-attributed cpWER**, when the reference speakers are known: the reference streams are the
  speakers (all turns of one speaker, in time order), the hypothesis streams its speakers when it
  has labels, else its turns. For mixtures with one utterance per speaker it equals the SOT cpWER.
- **Concatenated WER** (order-sensitive): both strings with every ``<sc>`` deleted, then plain WER.
  It charges turns recognised in another order than the reference's first-in-first-out order (a
  swap of two turns can cost all their words) and ignores where ``<sc>`` falls, so it measures what
  cpWER does not: ``ref "a b <sc> c d"``, ``hyp "c d <sc> a b"`` -> 4 errors (cpWER 0);
  ``hyp "a <sc> b c d"`` -> 0 errors (cpWER 2).
- **Speaker-count accuracy**: share of utterances whose hypothesis has as many turns
  (``<sc>`` count + 1, 0 when empty) as the reference has speakers (its turns, unless counts given).

``unit="char"``: every stream is split into characters, whitespace dropped (Mandarin CER); the
``<sc>`` token is taken out first, so it never becomes ``<``, ``s``, ``c``, ``>``. For real meetings
(AMI), :func:`utterance_groups` cuts recordings into groups of overlapping or adjacent turns, each
scored as one SOT utterance.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from asrkit.scoring.wer import UNITS, ErrorStats, Triple, _align_all, _errs_text, _stats, tokenize
from asrkit.text.sot import SC, as_segments, parse_sot, sot_speaker_count

log = logging.getLogger(__name__)

Streams = Union[Sequence[str], Mapping[Any, str]]
Assignment = Tuple[Tuple[Any, Any], ...]  # (ref stream, hyp stream) pairs; None where unmatched


@dataclass
class SotStats:
    """All SOT figures of a test set; ``cp`` and ``concat`` rates are in percent."""

    cp: ErrorStats
    concat: ErrorStats
    utts: int = 0
    count_correct: int = 0
    count_confusion: Dict[Tuple[int, int], int] = field(default_factory=dict)  # (ref, hyp) -> utterances

    @property
    def count_accuracy(self) -> float:
        return 100.0 * self.count_correct / self.utts if self.utts else 0.0


def _check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise ValueError(f"unknown scoring unit {unit!r}; use one of {UNITS}")


def _stream_text(text: str, unit: str) -> str:
    return " ".join(tokenize(text, unit))


def cp_error_stats(ref_streams: Streams, hyp_streams: Streams, unit: str = "word") -> Tuple[ErrorStats, Assignment]:
    """cpWER of one utterance (meeteval) over its reference and hypothesis streams.

    Streams are lists (anonymous) or dicts (speaker -> text). Returns the counts (``rate`` in
    percent; ``inf`` for an empty reference with insertions) and the stream assignment.
    """
    from meeteval.wer import cp_word_error_rate

    _check_unit(unit)
    ref, hyp = (
        {k: _stream_text(v, unit) for k, v in (s.items() if isinstance(s, Mapping) else enumerate(s))}
        for s in (ref_streams, hyp_streams))
    r = cp_word_error_rate(ref, hyp, reference_sort=False, hypothesis_sort=False)
    errors = r.insertions + r.deletions + r.substitutions
    rate = 100.0 * errors / r.length if r.length else (float("inf") if errors else 0.0)
    stats = ErrorStats(ref_words=r.length, ins=r.insertions, dels=r.deletions, subs=r.substitutions,
                       errors=errors, rate=rate, utts=1, sent_errors=int(errors > 0))
    return stats, tuple(r.assignment)


def _check_pairs(pairs: Sequence[Triple]) -> List[Triple]:
    if len(pairs) == 0:
        raise ValueError("no (utt_id, ref, hyp) pairs to score: the reference set is empty")
    seen = set()
    for triple in pairs:
        if len(triple) != 3:
            raise ValueError(f"expected (utt_id, ref, hyp) triples, got {triple!r}")
        if triple[0] in seen:
            raise ValueError(f"utterance {triple[0]!r} appears twice in the pairs to score; ids must be unique")
        seen.add(triple[0])
    return sorted(pairs, key=lambda t: t[0])


def _total(per_utt: Iterable[ErrorStats], what: str) -> ErrorStats:
    s = ErrorStats()
    for u in per_utt:
        s.ref_words, s.ins, s.dels, s.subs = s.ref_words + u.ref_words, s.ins + u.ins, s.dels + u.dels, s.subs + u.subs
        s.utts, s.sent_errors = s.utts + u.utts, s.sent_errors + u.sent_errors
    s.errors = s.ins + s.dels + s.subs
    if s.ref_words == 0:
        raise ValueError(f"all {s.utts} references are empty, so the {what} is undefined; check the references")
    s.rate = 100.0 * s.errors / s.ref_words
    return s


def _sot_cp_per_utt(pairs: Sequence[Triple], unit: str, sc: str) -> List[Tuple[str, ErrorStats, Assignment]]:
    out = []
    for utt_id, ref, hyp in _check_pairs(pairs):
        stats, assignment = cp_error_stats(parse_sot(ref, sc), parse_sot(hyp, sc), unit)
        out.append((utt_id, stats, assignment))
    return out


def sot_cp_error_rate(pairs: Sequence[Triple], unit: str = "word", sc: str = SC) -> ErrorStats:
    """Permutation-invariant SOT error rate: cpWER over the ``<sc>``-separated turns, summed over utterances."""
    return _total((s for _, s, _ in _sot_cp_per_utt(pairs, unit, sc)), "cpWER")


def speaker_streams(segments: Iterable[Any]) -> Dict[str, str]:
    """``speaker -> all their words in time order`` from ``(start, speaker, text)`` triples or supervisions."""
    segs = sorted(as_segments(segments), key=lambda s: s[0])
    streams: Dict[str, List[str]] = {}
    for n, (_, speaker, text) in enumerate(segs):
        if speaker is None:
            raise ValueError(f"segment {n} ({text!r}) has no speaker; speaker-attributed scoring needs one each")
        streams.setdefault(str(speaker), []).append(text or "")
    return {spk: " ".join(" ".join(t).split()) for spk, t in streams.items()}


def speaker_cp_error_rate(
    refs: Mapping[str, Iterable[Any]],
    hyps: Mapping[str, Union[str, Iterable[Any]]],
    unit: str = "word",
    sc: str = SC,
) -> ErrorStats:
    """Speaker-attributed cpWER: reference streams are the reference speakers (:func:`speaker_streams`).

    ``refs``: utt_id -> segments with speakers (supervisions, or ``(start, speaker, text)``).
    ``hyps``: utt_id -> an SOT string (each turn one stream: a speaker who speaks twice and is
    recognised in two turns costs insertions and deletions), or segments with hypothesised speakers.
    """
    missing, unknown = sorted(set(refs) - set(hyps)), sorted(set(hyps) - set(refs))
    if missing or unknown:
        raise ValueError(f"references and hypotheses differ: {len(missing)} utterances without hypothesis "
                         f"(e.g. {missing[:3]}), {len(unknown)} without reference (e.g. {unknown[:3]})")
    if not refs:
        raise ValueError("no references to score")
    per_utt = []
    for utt_id in sorted(refs):
        hyp = hyps[utt_id]
        hyp_streams = parse_sot(hyp, sc) if isinstance(hyp, str) else speaker_streams(hyp)
        per_utt.append(cp_error_stats(speaker_streams(refs[utt_id]), hyp_streams, unit)[0])
    return _total(per_utt, "speaker-attributed cpWER")


def _without_sc(text: str, sc: str) -> str:
    return " ".join(text.replace(sc, " ").split())


def concat_error_rate(pairs: Sequence[Triple], unit: str = "word", sc: str = SC) -> ErrorStats:
    """Order-sensitive concatenated WER: ``<sc>`` deleted from both strings, then plain WER/CER."""
    _check_unit(unit)
    pairs = _check_pairs(pairs)
    return _stats(_align_all([(u, _without_sc(r, sc), _without_sc(h, sc)) for u, r, h in pairs], unit))


def speaker_count_accuracy(
    pairs: Sequence[Triple], sc: str = SC, ref_counts: Optional[Mapping[str, int]] = None,
) -> Tuple[float, Dict[Tuple[int, int], int]]:
    """(accuracy in percent, ``{(ref count, hyp count): utterances}``) of the number of speakers.

    A hypothesis claims ``<sc>`` count + 1 speakers (0 if empty); the reference has
    ``ref_counts[utt_id]`` when given, else its own ``<sc>`` count + 1.
    """
    pairs = _check_pairs(pairs)
    confusion: Counter = Counter()
    for utt_id, ref, hyp in pairs:
        if ref_counts is not None and utt_id not in ref_counts:
            raise ValueError(f"ref_counts has no speaker count for utterance {utt_id!r}")
        n_ref = ref_counts[utt_id] if ref_counts is not None else sot_speaker_count(ref, sc)
        confusion[(int(n_ref), sot_speaker_count(hyp, sc))] += 1
    correct = sum(n for (r, h), n in confusion.items() if r == h)
    return 100.0 * correct / len(pairs), dict(sorted(confusion.items()))


def score_sot(pairs: Sequence[Triple], unit: str = "word", sc: str = SC) -> SotStats:
    """cpWER, concatenated WER and speaker-count accuracy of ``(utt_id, ref, hyp)`` SOT triples."""
    return _score(pairs, unit, sc)[0]


def _score(pairs: Sequence[Triple], unit: str, sc: str):
    per_utt = _sot_cp_per_utt(pairs, unit, sc)
    cp = _total((s for _, s, _ in per_utt), "cpWER")
    concat = concat_error_rate(pairs, unit, sc)
    _, confusion = speaker_count_accuracy(pairs, sc)
    correct = sum(n for (r, h), n in confusion.items() if r == h)
    return SotStats(cp, concat, len(per_utt), correct, confusion), per_utt


def _label(stats: ErrorStats, name: str) -> str:
    return (f"%{name} {stats.rate:.2f} [ {stats.errors} / {stats.ref_words}, "
            f"{stats.ins} ins, {stats.dels} del, {stats.subs} sub ]")


def sot_summary_lines(stats: SotStats, unit: str = "word") -> List[str]:
    """``%cpWER ...``, ``%concatWER ...`` and ``%SpkCountAcc ...`` lines (CER for ``unit="char"``)."""
    _check_unit(unit)
    er = {"word": "WER", "char": "CER"}[unit]
    return [_label(stats.cp, f"cp{er}"), _label(stats.concat, f"concat{er}"),
            f"%SpkCountAcc {stats.count_accuracy:.2f} [ {stats.count_correct} / {stats.utts} ]"]


_SUMMARY_LINE = re.compile(r"^%(cp|concat)(WER|CER)\s+([0-9.]+|nan|inf)\s|^%SpkCountAcc\s+([0-9.]+|nan)\s")


def read_sot_summary(path) -> Dict[str, Any]:
    """``{"cp": rate, "concat": rate, "count": accuracy, "unit": "WER"|"CER"}`` from the
    ``wer-summary-*.txt`` that :func:`write_sot_results` writes."""
    out: Dict[str, Any] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = _SUMMARY_LINE.match(line)
        if m and m.group(1):
            out[m.group(1)], out["unit"] = float(m.group(3)), m.group(2)
        elif m:
            out["count"] = float(m.group(4))
    if not {"cp", "concat", "count"} <= set(out):
        raise ValueError(f"{path}: not an SOT summary (%cpWER, %concatWER and %SpkCountAcc lines); "
                         f"found {sorted(k for k in out if k != 'unit')}")
    return out


def write_sot_results(out_dir, name: str, pairs: Sequence[Triple], unit: str = "word", sc: str = SC) -> SotStats:
    """Score SOT ``pairs`` and write ``recogs-<name>.txt``, ``errs-<name>.txt``, ``wer-summary-<name>.txt``.

    The summary holds the three lines of :func:`sot_summary_lines`; ``errs`` adds per-utterance
    cpWER with its stream assignment, the speaker-count confusion, and the concatenated WER's
    alignment in the layout of :func:`asrkit.scoring.write_results`.
    """
    stats, per_utt = _score(pairs, unit, sc)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recogs = []
    for utt_id, ref, hyp in _check_pairs(pairs):
        recogs.append(f"{utt_id}:\tref={parse_sot(ref, sc)!r}")
        recogs.append(f"{utt_id}:\thyp={parse_sot(hyp, sc)!r}")
    (out / f"recogs-{name}.txt").write_text("\n".join(recogs) + "\n", encoding="utf-8")
    summary = sot_summary_lines(stats, unit)
    lines = summary + ["", "PER-UTT cpWER: errors / ref units (ins, del, sub), stream assignment (ref turn, hyp turn)"]
    for utt_id, s, assignment in per_utt:
        lines.append(f"{utt_id}:\t{s.errors} / {s.ref_words} ({s.ins} ins, {s.dels} del, {s.subs} sub) "
                     f"{list(assignment)}")
    lines += ["", "SPEAKER COUNT: utterances ref-count -> hyp-count"]
    lines += [f"{n}   {r} -> {h}" for (r, h), n in stats.count_confusion.items()]
    concat_pairs = [(u, _without_sc(r, sc), _without_sc(h, sc)) for u, r, h in _check_pairs(pairs)]
    lines += ["", f"CONCATENATED ({sc} removed, order-sensitive):", ""]
    (out / f"errs-{name}.txt").write_text(
        "\n".join(lines) + "\n" + _errs_text(_align_all(concat_pairs, unit), stats.concat, unit), encoding="utf-8")
    (out / f"wer-summary-{name}.txt").write_text("\n".join(summary) + "\n", encoding="utf-8")
    log.info("%s %s (%d utterances) -> %s", name, "; ".join(summary), stats.utts, out)
    return stats


def utterance_groups(cuts, max_pause: float = 0.0, num_jobs: int = 1):
    """Cut each recording of a meeting CutSet (AMI) into utterance groups: runs of supervisions that
    overlap or are at most ``max_pause`` seconds apart (lhotse ``trim_to_supervision_groups``).

    Each group is one SOT utterance: ``asrkit.data.mix.sot_texts(groups)`` gives its references.
    """
    if max_pause < 0:
        raise ValueError(f"max_pause must be >= 0 seconds, got {max_pause}")
    return cuts.trim_to_supervision_groups(max_pause=max_pause, num_jobs=num_jobs)
