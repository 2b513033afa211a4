"""`asrkit results`: one table for every recipe, its columns picked by --columns."""

import json

import pytest

from asrkit.bin.results import parse_system, table
from asrkit.scoring import read_sot_summary, score_sot, sot_summary_lines
from asrkit.training.checkpoint import save_checkpoint
from asrkit.training.flops import update_flops_file

SETS = ["c_cuts_dev", "c_cuts_test"]


def _decoded(exp, method, rates, metric="WER"):
    (exp / method).mkdir(parents=True)
    for test_set, rate in zip(SETS, rates):
        (exp / method / f"wer-summary-{test_set}-final.txt").write_text(
            f"%{metric} {rate:.2f} [ 1 / 10, 0 ins, 0 del, 1 sub ]\n", encoding="utf-8")


def _trained(exp, step, flops):
    exp.mkdir(parents=True, exist_ok=True)
    update_flops_file(exp, step=step, epoch=1, flops=flops, epoch_finished=True, count_every=1)
    save_checkpoint(exp / "model.pt", {"model": {}, "step": step})


def _rows(text):
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]


def test_flops_are_summed_over_the_stages_behind_a_system(tmp_path):
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    _trained(s1, 10, 1e12)
    _trained(s2, 20, 3e12)
    _decoded(s1, "ctc-greedy", [7.5, 14.25], "CER")
    _decoded(s2, "llm-greedy", [8.0, 13.0], "CER")
    text = table([["enc", str(s1), "ctc-greedy"], ["llm", str(s2), "llm-greedy", f"compute={s1},{s2}"],
                  ["missing", str(tmp_path / "none"), "llm-greedy"]], SETS, title="T")
    assert text.startswith("# T\n")
    head, _, enc, llm, missing = _rows(text)
    assert head == ["system", "method", "train FLOPs", "CER dev", "CER test"]
    assert enc == ["enc", "ctc-greedy", "1e+12", "7.50", "14.25"]
    assert llm == ["llm", "llm-greedy", "4e+12", "8.00", "13.00"]
    assert missing == ["missing", "llm-greedy", "n/a", "n/a", "n/a"]


def test_ssl_columns_show_targets_and_steps(tmp_path):
    ft = tmp_path / "iter1" / "finetune"
    _trained(ft, 150, 1e12)
    _decoded(ft, "greedy-search", [50.0, 60.0])
    (tmp_path / "iter1" / "kmeans.json").write_text(json.dumps({"num_clusters": 100, "source": "exp/x/supervised"}))
    text = table([["sup", str(tmp_path / "sup"), "greedy-search"],
                  ["it1", str(ft), "greedy-search", f"kmeans={tmp_path / 'iter1' / 'kmeans.npz'}"]],
                 SETS, columns=["targets", "steps", "rate"])
    head, _, sup, it1 = _rows(text)
    assert head == ["system", "pretraining targets (clusters x frames)", "steps", "WER dev", "WER test"]
    assert sup == ["sup", "-", "n/a", "n/a", "n/a"]
    assert it1 == ["it1", "100 x x/supervised", "150", "50.00", "60.00"]


def test_sot_columns_read_the_sot_summaries(tmp_path):
    exp = tmp_path / "aed"
    stats = score_sot([("u1", "a b <sc> c d", "c d <sc> a x"), ("u2", "e f", "e f")])
    (exp / "beam" / "sot").mkdir(parents=True)
    (exp / "beam" / "sot" / f"wer-summary-{SETS[0]}-final.txt").write_text("\n".join(sot_summary_lines(stats)))
    figures = read_sot_summary(exp / "beam" / "sot" / f"wer-summary-{SETS[0]}-final.txt")
    # u1: cp 1 error ("x" for "b"), concatenated "a b c d" vs "c d a x" 4; u2 none; 6 reference words
    assert figures == {"cp": 16.67, "concat": 66.67, "count": 100.0, "unit": "WER"}
    head, _, row = _rows(table([["aed", str(exp), "beam"]], SETS, columns=["method", "sot"]))
    assert head == ["system", "method", "cpWER dev", "cpWER test", "concat. WER dev", "concat. WER test",
                    "spk-count acc. dev", "spk-count acc. test"]
    assert row == ["aed", "beam", "16.67", "n/a", "66.67", "n/a", "100.00", "n/a"]


def test_bad_system_words_are_errors(tmp_path):
    with pytest.raises(ValueError, match="NAME EXP_DIR METHOD"):
        parse_system(["only", "two"])
    with pytest.raises(ValueError, match="compute=...,"):
        parse_system(["a", "b", "c", "d,e"])  # the old positional COMPUTE_DIRS form
    with pytest.raises(ValueError, match="not an SOT summary"):
        (tmp_path / "s.txt").write_text("%WER 1.00 [ 1 / 100, 0 ins, 0 del, 1 sub ]\n")
        read_sot_summary(tmp_path / "s.txt")
