"""Tests for asrkit.scoring.sot: cpWER, speaker-attributed cpWER, concatenated WER and speaker counting
against hand-computed examples, corpus-level sums, the files written, and AMI-style utterance groups."""

import pytest
from lhotse import Recording, SupervisionSegment
from lhotse.audio import AudioSource
from lhotse.utils import fastcopy

from asrkit.data.mix import sot_texts
from asrkit.scoring import (
    concat_error_rate,
    cp_error_stats,
    score_sot,
    sot_cp_error_rate,
    speaker_count_accuracy,
    speaker_cp_error_rate,
    speaker_streams,
    utterance_groups,
    write_sot_results,
)


def test_cpwer_hand_example():
    # streams [a b], [c d] vs [c d], [a x]: best assignment swaps them -> 1 substitution (b->x) over 4 words
    s = sot_cp_error_rate([("u", "a b <sc> c d", "c d <sc> a x")])
    assert (s.errors, s.ref_words, s.subs, s.ins, s.dels) == (1, 4, 1, 0, 0)
    assert s.rate == pytest.approx(25.0)
    stats, assignment = cp_error_stats(["a b", "c d"], ["c d", "a x"])
    assert stats.errors == 1 and sorted(assignment) == [(0, 1), (1, 0)]


def test_cpwer_missing_and_extra_speakers():
    # 3 reference speakers, 2 hypothesised: the unmatched stream is all deletions
    s = sot_cp_error_rate([("u", "a b <sc> c <sc> d e", "d e <sc> a b")])
    assert (s.errors, s.dels, s.ref_words) == (1, 1, 5)
    # an extra hypothesis turn is all insertions
    s = sot_cp_error_rate([("u", "a b", "a b <sc> x y")])
    assert (s.errors, s.ins) == (2, 2)


def test_concat_wer_is_order_sensitive():
    # the same hypothesis: concatenated "a b c d" vs "c d a x" -> 4 edits (cpWER 1)
    assert concat_error_rate([("u", "a b <sc> c d", "c d <sc> a x")]).errors == 4
    # swapped turns: cpWER 0, concatenated 4
    pairs = [("u", "a b <sc> c d", "c d <sc> a b")]
    assert sot_cp_error_rate(pairs).errors == 0 and concat_error_rate(pairs).errors == 4
    # a misplaced <sc>: concatenated 0 (it ignores <sc>), cpWER 2 (b is in the wrong turn)
    pairs = [("u", "a b <sc> c d", "a <sc> b c d")]
    assert concat_error_rate(pairs).errors == 0 and sot_cp_error_rate(pairs).errors == 2


def test_corpus_level_sums_errors_not_rates():
    pairs = [("u1", "a b <sc> c d", "c d <sc> a x"), ("u2", "z", "")]
    s = sot_cp_error_rate(pairs)
    assert (s.errors, s.ref_words, s.utts, s.sent_errors) == (2, 5, 2, 2)
    assert s.rate == pytest.approx(40.0)  # a mean of per-utterance rates would say 62.5


def test_speaker_count_accuracy():
    pairs = [("u1", "a <sc> b", "a <sc> b"), ("u2", "a <sc> b <sc> c", "a b <sc> c"), ("u3", "a", ""),
             ("u4", "a <sc> b", "a <sc> b <sc> c")]
    acc, confusion = speaker_count_accuracy(pairs)
    assert acc == pytest.approx(25.0)
    assert confusion == {(1, 0): 1, (2, 2): 1, (2, 3): 1, (3, 2): 1}
    acc, _ = speaker_count_accuracy(pairs, ref_counts={"u1": 3, "u2": 2, "u3": 0, "u4": 3})
    assert acc == pytest.approx(75.0)
    with pytest.raises(ValueError, match="no speaker count"):
        speaker_count_accuracy(pairs, ref_counts={"u1": 2})


def test_char_unit_for_mandarin():
    pairs = [("u", "你好 <sc> 再见", "再见<sc>你好")]
    stats = score_sot(pairs, unit="char")
    assert (stats.cp.errors, stats.cp.ref_words) == (0, 4)  # <sc> never becomes < s c >
    assert stats.concat.errors == 4 and stats.count_accuracy == 100.0
    assert sot_cp_error_rate([("u", "你好 <sc> 再见", "你好 <sc> 再")], unit="char").dels == 1
    with pytest.raises(ValueError, match="unit"):
        score_sot(pairs, unit="phone")


def test_speaker_attributed_cpwer():
    # A speaks twice: reference streams are A = "a b d", B = "c"
    refs = {"u": [(0.0, "A", "a b"), (1.0, "B", "c"), (2.0, "A", "d")]}
    assert speaker_streams(refs["u"]) == {"A": "a b d", "B": "c"}
    # an SOT hypothesis has one stream per turn: "d" is a deletion from A and an insertion elsewhere
    s = speaker_cp_error_rate(refs, {"u": "a b <sc> c <sc> d"})
    assert (s.errors, s.ins, s.dels, s.ref_words) == (2, 1, 1, 4)
    # the same words with hypothesised speaker labels: no error
    s = speaker_cp_error_rate(refs, {"u": [(0.0, "X", "a b"), (1.0, "Y", "c"), (2.0, "X", "d")]})
    assert s.errors == 0
    # the plain SOT cpWER of that utterance counts turns, not speakers, and is 0
    assert sot_cp_error_rate([("u", "a b <sc> c <sc> d", "a b <sc> c <sc> d")]).errors == 0
    # supervisions work as references
    sups = [SupervisionSegment(f"s{i}", "r", st, 1.0, text=t, speaker=spk) for i, (st, spk, t) in enumerate(refs["u"])]
    assert speaker_cp_error_rate({"u": sups}, {"u": "c <sc> a b d"}).errors == 0
    with pytest.raises(ValueError, match="differ"):
        speaker_cp_error_rate(refs, {"v": "a"})
    with pytest.raises(ValueError, match="no speaker"):
        speaker_streams([(0.0, "a")])


def test_bad_pairs():
    with pytest.raises(ValueError, match="empty"):
        score_sot([])
    with pytest.raises(ValueError, match="twice"):
        score_sot([("u", "a", "a"), ("u", "b", "b")])
    with pytest.raises(ValueError, match="references are empty"):
        sot_cp_error_rate([("u", "", "a")])


def test_write_sot_results(tmp_path):
    pairs = [("u2", "z", ""), ("u1", "a b <sc> c d", "c d <sc> a x")]
    stats = write_sot_results(tmp_path, "test", pairs)
    summary = (tmp_path / "wer-summary-test.txt").read_text().splitlines()
    assert summary == ["%cpWER 40.00 [ 2 / 5, 0 ins, 1 del, 1 sub ]",
                       "%concatWER 100.00 [ 5 / 5, 2 ins, 3 del, 0 sub ]",
                       "%SpkCountAcc 50.00 [ 1 / 2 ]"]
    assert stats.cp.errors == 2 and stats.concat.errors == 5
    errs = (tmp_path / "errs-test.txt").read_text()
    assert "u1:\t1 / 4 (0 ins, 0 del, 1 sub)" in errs and "1   1 -> 0" in errs and "%concatWER" in errs
    recogs = (tmp_path / "recogs-test.txt").read_text().splitlines()
    assert recogs[0] == "u1:\tref=['a b', 'c d']" and recogs[1] == "u1:\thyp=['c d', 'a x']"
    # same files for the same pairs in another order
    write_sot_results(tmp_path / "again", "test", pairs[::-1])
    for f in ("errs-test.txt", "recogs-test.txt", "wer-summary-test.txt"):
        assert (tmp_path / "again" / f).read_text() == (tmp_path / f).read_text()
    chars = write_sot_results(tmp_path, "cer", [("u", "你好 <sc> 再见", "再见 <sc> 你好")], unit="char")
    assert chars.cp.errors == 0
    assert (tmp_path / "wer-summary-cer.txt").read_text().startswith("%cpCER 0.00 [ 0 / 4")


def test_utterance_groups():
    rec = Recording(id="meeting", sources=[AudioSource(type="file", channels=[0], source="/nonexistent.wav")],
                    sampling_rate=16000, num_samples=160000, duration=10.0)
    segs = [("A", 0.0, 2.0, "hello there"), ("B", 1.5, 1.5, "hi"), ("A", 5.0, 1.0, "so"), ("B", 6.2, 0.8, "yes")]
    sups = [SupervisionSegment(f"s{i}", "meeting", start, dur, text=text, speaker=spk)
            for i, (spk, start, dur, text) in enumerate(segs)]
    cuts = fastcopy(rec.to_cut(), supervisions=sups)
    from lhotse import CutSet

    cuts = CutSet.from_cuts([cuts])
    groups = sorted(utterance_groups(cuts, max_pause=0.0), key=lambda c: c.start)
    assert [(round(c.start, 3), round(c.duration, 3)) for c in groups] == [(0.0, 3.0), (5.0, 1.0), (6.2, 0.8)]
    assert list(sot_texts(groups[:1]).values()) == ["hello there <sc> hi"]
    groups = sorted(utterance_groups(cuts, max_pause=0.5), key=lambda c: c.start)
    assert len(groups) == 2 and list(sot_texts(groups[1:]).values()) == ["so <sc> yes"]
    assert [s.start for s in groups[1].supervisions] == pytest.approx([0.0, 1.2])
    with pytest.raises(ValueError, match="max_pause"):
        utterance_groups(cuts, max_pause=-1)
