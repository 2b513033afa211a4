"""``asrkit prepare ami`` and egs/ami/SOT/run.sh on a fake AMI tree (NXT annotations, ihm-mix and sdm audio).

One meeting per split of lhotse's full-corpus-asr partition, built from espeak-ng utterances placed in
utterance groups of 1 to 3 overlapping speakers (tests/fake_corpora.py): the manifests must give back
those groups, their speakers and their SOT texts; the recipe runs every stage in a tiny configuration.

    .venv/bin/pytest tests/test_recipe_ami.py -q
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lhotse import CutSet

from asrkit.data.corpora import CorpusError, prepare_corpus
from asrkit.data.datamodule import cut_text
from asrkit.data.synth import synthesize_corpus
from asrkit.text.sot import SC, serialize_sot
from fake_corpora import make_fake_ami, utts_from_cuts

RECIPE = Path(__file__).resolve().parents[1] / "egs" / "ami" / "SOT"
NUM_UTTS = {"train": 12, "dev": 5, "test": 5}


@pytest.fixture(scope="module")
def ami(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    tmp = tmp_path_factory.mktemp("ami")
    cuts = synthesize_corpus(tmp / "synth", lang="en", num_utts=NUM_UTTS,
                             num_speakers={"train": 4, "dev": 3, "test": 3}, max_words=4, seed=1, num_jobs=2)
    return make_fake_ami(tmp / "ami", utts_from_cuts(cuts))


def test_prepare_ami_utterance_groups(ami, tmp_path):
    out = tmp_path / "manifests"
    cuts = prepare_corpus("ami", ami.root, out, mics=["ihm-mix", "sdm"])
    assert sorted(cuts) == sorted(f"{m}_{s}" for m in ("ihm-mix", "sdm") for s in ("train", "dev", "test"))
    for mic in ("ihm-mix", "sdm"):
        for split, groups in ami.groups.items():
            got = CutSet.from_file(out / f"ami-{mic}_cuts_{split}.jsonl.gz")
            meet = ami.meetings[split]
            # one cut per utterance group, its boundaries those of its segments, ids sortable
            assert [c.id for c in got] == [f"{meet}-{round(g.start * 100):07d}-{round(g.end * 100):07d}"
                                           for g in groups]
            for cut, group in zip(got, groups):
                assert cut.start == pytest.approx(group.start, abs=1e-3)
                assert cut.end == pytest.approx(group.end, abs=1e-3)
                assert cut.recording_id == meet
                assert sorted((round(cut.start + s.start, 2), s.speaker, s.text) for s in cut.supervisions) == \
                    sorted(group.segments)
                # lower-case words with full stops in the XML -> upper case, no punctuation; SOT by start time
                assert cut_text(cut) == serialize_sot(group.segments)
                assert cut_text(cut).count(SC) == len(group.segments) - 1
            assert max(len(g.segments) for g in groups) >= 2
        assert any(len(g.segments) == 3 for g in ami.groups["train"])
        sups = CutSet.from_file(out / f"ami-{mic}_cuts_train.jsonl.gz")
        assert sups[0].recording.sources[0].source.endswith(
            "Mix-Headset.wav" if mic == "ihm-mix" else "Array1-01.wav")
    assert (out / "ami-sdm_supervisions_dev.jsonl.gz").is_file() and (out / "ami-sdm_recordings_test.jsonl.gz").is_file()


def test_prepare_ami_errors(ami, tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        prepare_corpus("ami", tmp_path / "nowhere", tmp_path / "m")
    with pytest.raises(CorpusError, match="no ami_public_manual_1.6.2/"):
        prepare_corpus("ami", tmp_path, tmp_path / "m")
    tree = tmp_path / "ami"
    shutil.copytree(ami.root, tree)
    shutil.rmtree(tree / "amicorpus" / ami.meetings["dev"])
    with pytest.raises(CorpusError, match="no ihm-mix audio .* for any dev meeting"):
        prepare_corpus("ami", tree, tmp_path / "m")
    with pytest.raises(CorpusError, match="not supported"):
        prepare_corpus("ami", tree, tmp_path / "m", mics=["ihm"])


@pytest.mark.slow
def test_ami_sot_recipe_all_stages(ami, tmp_path):
    data, exp = tmp_path / "data", tmp_path / "exp"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1")
    cmd = ["bash", str(RECIPE / "run.sh"), "--corpus-dir", str(ami.root), "--data", str(data), "--exp", str(exp),
           "--nj", "2", "--config", "conf/tiny/aed_sot.yaml", "--vocab-size", "40", "--epochs", "1", "--avg", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    for mic in ("ihm-mix", "sdm"):
        for split in ("train", "dev", "test"):
            groups = CutSet.from_file(data / "fbank" / f"ami-{mic}_cuts_{split}.jsonl.gz")
            assert len(groups) == len(ami.groups[split]) and all(c.has_features for c in groups)
    assert re.search(r"epoch 1 done: loss [\d.]+, ctc [\d.]+, attention [\d.]+", proc.stderr), proc.stderr[-2000:]
    aed = exp / "aed_sot_ihm-mix"
    assert (aed / "epoch-1.pt").is_file() and (aed / "model.pt").is_file()
    results = (aed / "results.txt").read_text()
    for mic in ("ihm-mix", "sdm"):
        for split in ("dev", "test"):
            name = f"ami-{mic}_cuts_{split}-final-beam4"
            summary = (aed / "joint-ctc-attention" / "sot" / f"wer-summary-{name}.txt").read_text().splitlines()
            assert [line.split()[0] for line in summary] == ["%cpWER", "%concatWER", "%SpkCountAcc"]
            words = sum(len(t.split()) for g in ami.groups[split] for _, _, t in g.segments)
            assert re.search(rf"/ {words}, ", summary[0]), summary  # every reference word of every group
            assert summary[2].endswith(f"/ {len(ami.groups[split])} ]")
            assert summary[0] in results

    rerun = subprocess.run(cmd[:2] + cmd[4:], env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert rerun.stdout.count("skip:") == 5, rerun.stdout
