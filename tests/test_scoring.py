"""Tests for asrkit.scoring: counts on hand-aligned examples, the Kaldi summary format, files written."""

import logging

import pytest

from asrkit.scoring import (
    ErrorStats,
    compute_error_rate,
    error_stats_by_utt,
    join_refs_hyps,
    summary_line,
    write_results,
)


@pytest.fixture
def pairs():
    # u1: "the cat sat on the mat" vs "the bat sat on mat": 1 sub (cat->bat), 1 del (the)
    # u2: "hello world" vs "hello big world": 1 ins (big)
    # u3: perfect
    return [
        ("u2", "hello world", "hello big world"),
        ("u1", "the cat sat on the mat", "the bat sat on mat"),
        ("u3", "good morning", "good morning"),
    ]


def test_counts_on_hand_aligned_example(pairs):
    s = compute_error_rate(pairs)
    assert (s.ref_words, s.ins, s.dels, s.subs, s.errors) == (10, 1, 1, 1, 3)
    assert s.rate == pytest.approx(30.0)
    assert (s.utts, s.sent_errors) == (3, 2)


def test_summary_line_format_exact():
    stats = ErrorStats(ref_words=1000, ins=5, dels=10, subs=17, errors=32, rate=3.2, utts=10, sent_errors=3)
    assert summary_line(stats) == "%WER 3.20 [ 32 / 1000, 5 ins, 10 del, 17 sub ]"
    assert summary_line(stats, "char") == "%CER 3.20 [ 32 / 1000, 5 ins, 10 del, 17 sub ]"
    stats.rate = 100 * 2 / 3
    assert summary_line(stats).startswith("%WER 66.67 [")


def test_cer_for_chinese_ignores_spaces():
    # 今天 天气 很好 vs 今天天汽好: sub 气->汽, del 很 over 6 characters
    s = compute_error_rate([("c1", "今天 天气 很好", "今天天汽好")], unit="char")
    assert (s.ref_words, s.subs, s.dels, s.ins) == (6, 1, 1, 0)
    assert summary_line(s, "char") == "%CER 33.33 [ 2 / 6, 0 ins, 1 del, 1 sub ]"
    # the same strings as words: one token each side of the whitespace
    w = compute_error_rate([("c1", "今天 天气 很好", "今天天汽好")], unit="word")
    assert w.ref_words == 3 and w.errors == 3


def test_zero_errors():
    s = compute_error_rate([("a", "x y z", "x y z"), ("b", "w", "w")])
    assert (s.errors, s.rate, s.sent_errors) == (0, 0.0, 0)
    assert summary_line(s) == "%WER 0.00 [ 0 / 4, 0 ins, 0 del, 0 sub ]"


def test_all_deletions_is_100_percent():
    s = compute_error_rate([("a", "one two three", ""), ("b", "four", "")])
    assert (s.dels, s.ins, s.subs, s.rate) == (4, 0, 0, 100.0)


def test_empty_reference_in_one_utterance_counts_insertions_and_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="asrkit.scoring"):
        s = compute_error_rate([("a", "", "uh um"), ("b", "yes", "yes")])
    assert (s.ins, s.ref_words, s.rate) == (2, 1, 200.0)
    assert "empty reference" in caplog.text and "'a'" in caplog.text
    assert error_stats_by_utt([("a", "", "uh um")])["a"].rate == float("inf")


def test_clear_errors():
    with pytest.raises(ValueError, match="reference set is empty"):
        compute_error_rate([])
    with pytest.raises(ValueError, match="all 1 references are empty"):
        compute_error_rate([("a", "", "x")])
    with pytest.raises(ValueError, match="appears twice"):
        compute_error_rate([("a", "x", "x"), ("a", "y", "y")])
    with pytest.raises(ValueError, match="unknown scoring unit"):
        compute_error_rate([("a", "x", "x")], unit="phone")
    with pytest.raises(ValueError, match="no reference.*different test set"):
        join_refs_hyps({"a": "x"}, {"a": "x", "zz": "y"})
    with pytest.raises(ValueError, match="reference set is empty"):
        join_refs_hyps({}, {})
    with pytest.raises(ValueError, match="have no hypothesis"):
        join_refs_hyps({"a": "x", "b": "y"}, {"a": "x"})
    assert join_refs_hyps({"b": "y", "a": "x"}, {"a": "x"}, allow_missing=True) == [("a", "x", "x"), ("b", "y", "")]


def test_write_results_files(tmp_path, pairs):
    stats = write_results(tmp_path / "dec", "test-greedy", pairs)
    assert stats.errors == 3
    d = tmp_path / "dec"
    assert (d / "wer-summary-test-greedy.txt").read_text() == "%WER 30.00 [ 3 / 10, 1 ins, 1 del, 1 sub ]\n"
    recogs = (d / "recogs-test-greedy.txt").read_text().splitlines()
    assert recogs[:2] == [
        "u1:\tref=['the', 'cat', 'sat', 'on', 'the', 'mat']",
        "u1:\thyp=['the', 'bat', 'sat', 'on', 'mat']",
    ]
    assert [line.split(":")[0] for line in recogs] == ["u1", "u1", "u2", "u2", "u3", "u3"]
    errs = (d / "errs-test-greedy.txt").read_text()
    lines = errs.splitlines()
    assert lines[0] == "%WER 30.00 [ 3 / 10, 1 ins, 1 del, 1 sub ]"
    assert "u1:\tthe (cat->bat) sat on (the->*) mat" in lines
    assert "u2:\thello (*->big) world" in lines
    assert "u3:\tgood morning" in lines
    sub_at = lines.index("SUBSTITUTIONS: count ref -> hyp")
    assert lines[sub_at + 1] == "1   cat -> bat"
    assert lines[lines.index("DELETIONS: count ref") + 1] == "1   the"
    assert lines[lines.index("INSERTIONS: count hyp") + 1] == "1   big"


def test_write_results_sorted_by_frequency_and_deterministic(tmp_path):
    pairs = [
        ("b", "a a b", "x x b"),  # a->x twice
        ("a", "c d", "e d"),  # c->e once
        ("c", "b c", "b c f"),  # insertion f
    ]
    write_results(tmp_path / "one", "n", pairs)
    write_results(tmp_path / "two", "n", list(reversed(pairs)))
    for f in ("recogs-n.txt", "errs-n.txt", "wer-summary-n.txt"):
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes()
    lines = (tmp_path / "one" / "errs-n.txt").read_text().splitlines()
    at = lines.index("SUBSTITUTIONS: count ref -> hyp")
    assert lines[at + 1 : at + 3] == ["2   a -> x", "1   c -> e"]


def test_write_results_chinese_cer(tmp_path):
    stats = write_results(tmp_path, "zh", [("c1", "今天 天气 很好", "今天天汽好")], unit="char")
    assert stats.rate == pytest.approx(100 * 2 / 6)
    errs = (tmp_path / "errs-zh.txt").read_text(encoding="utf-8")
    assert errs.startswith("%CER 33.33 [ 2 / 6, 0 ins, 1 del, 1 sub ]\n")
    assert "c1:\t今 天 天 (气->汽) (很->*) 好" in errs
    assert (tmp_path / "wer-summary-zh.txt").read_text(encoding="utf-8").startswith("%CER 33.33")
