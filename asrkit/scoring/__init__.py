"""Scoring: WER/CER with a Kaldi-style breakdown (:mod:`.wer`) and multi-talker SOT metrics (:mod:`.sot`).

    from asrkit.scoring import join_refs_hyps, write_results          # single speaker
    from asrkit.scoring import score_sot, write_sot_results           # <sc>-serialized multi-talker
"""

from asrkit.scoring.sot import (
    SotStats,
    concat_error_rate,
    cp_error_stats,
    read_sot_summary,
    score_sot,
    sot_cp_error_rate,
    sot_summary_lines,
    speaker_count_accuracy,
    speaker_cp_error_rate,
    speaker_streams,
    utterance_groups,
    write_sot_results,
)
from asrkit.scoring.wer import (
    UNITS,
    ErrorStats,
    Triple,
    compute_error_rate,
    error_stats_by_utt,
    join_refs_hyps,
    summary_line,
    tokenize,
    write_results,
)

__all__ = [
    "UNITS", "ErrorStats", "Triple", "compute_error_rate", "error_stats_by_utt", "join_refs_hyps",
    "summary_line", "tokenize", "write_results",
    "SotStats", "concat_error_rate", "cp_error_stats", "read_sot_summary", "score_sot", "sot_cp_error_rate",
    "sot_summary_lines",
    "speaker_count_accuracy", "speaker_cp_error_rate", "speaker_streams", "utterance_groups", "write_sot_results",
]
