"""SOT scoring in ``asrkit decode``: multi-talker references get cpWER, concatenated WER and speaker counts.

    .venv/bin/pytest tests/test_decode_sot.py -q
"""

import pytest

from asrkit.bin.decode import spaced_sc, write_scores

SOT = [("m1", "a b <sc> c d", "c d <sc> a x"),  # turns swapped, one substitution
       ("m2", "e f <sc> g", "e f g"),            # <sc> missed: one turn too few
       ("s1", "h i", "h i")]                     # a single speaker, right


def _summary(path):
    return path.read_text().splitlines()


def test_sot_references_get_sot_files_and_lines(tmp_path):
    lines = write_scores(tmp_path, "test-greedy", SOT, "word")
    # the plain files stay where they were, <sc> scored as a word
    assert lines[0] == _summary(tmp_path / "wer-summary-test-greedy.txt")[0]
    assert lines[0].startswith("%WER ")
    # the SOT files beside them, in sot/: cpWER forgives the swapped turns of m1 (1 sub); m2's turns
    # "e f g" vs "e f" + "g": e f -> e f g (1 ins) and g unmatched (1 del) = 2; 9 reference words
    sot = _summary(tmp_path / "sot" / "wer-summary-test-greedy.txt")
    assert lines[1:] == sot
    assert sot[0] == "%cpWER 33.33 [ 3 / 9, 1 ins, 1 del, 1 sub ]"
    # concatenated (order-sensitive): m1 "a b c d" vs "c d a x" costs 4, m2 nothing
    assert sot[1].startswith("%concatWER 44.44 [ 4 / 9,")
    assert sot[2] == "%SpkCountAcc 66.67 [ 2 / 3 ]"
    assert (tmp_path / "sot" / "errs-test-greedy.txt").is_file()
    assert (tmp_path / "sot" / "recogs-test-greedy.txt").read_text().count("['c d', 'a x']") == 1


def test_single_speaker_references_only_with_flag(tmp_path):
    plain = [("u1", "a b", "a b"), ("u2", "c d", "c")]
    assert len(write_scores(tmp_path / "plain", "t", plain, "word")) == 1
    assert not (tmp_path / "plain" / "sot").exists()
    lines = write_scores(tmp_path / "forced", "t", plain + [("u3", "e", "e <sc> f")], "word", sot=True)
    assert lines[1].startswith("%cpWER") and lines[3] == "%SpkCountAcc 66.67 [ 2 / 3 ]"


def test_char_unit_keeps_sc_one_token(tmp_path):
    # a character model emits <sc> glued to its neighbours; CER never sees <, s, c, >
    lines = write_scores(tmp_path, "t", [("m", "ab <sc> cd", "cd<sc>ab")], "char")
    assert lines[1] == "%cpCER 0.00 [ 0 / 4, 0 ins, 0 del, 0 sub ]"
    assert lines[2].startswith("%concatCER 100.00 [ 4 / 4,")
    assert lines[3] == "%SpkCountAcc 100.00 [ 1 / 1 ]"
    assert "hyp=['cd', 'ab']" in (tmp_path / "sot" / "recogs-t.txt").read_text()
    # the plain files take the SOT string as text: with --unit char <sc> is four characters there
    assert lines[0] == "%CER 50.00 [ 4 / 8, 0 ins, 0 del, 4 sub ]"


@pytest.mark.parametrize("text, expected", [("ab<sc>cd", "ab <sc> cd"), ("  a <sc>  b ", "a <sc> b"),
                                            ("<sc>a<sc><sc>", "<sc> a <sc> <sc>"), ("no change", "no change")])
def test_spaced_sc(text, expected):
    assert spaced_sc(text) == expected
