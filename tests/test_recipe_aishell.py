"""``asrkit prepare aishell`` and the egs/aishell/ASR recipe, on a fake AISHELL-1 tree.

The tree has the real layout and transcript format (word-segmented, one line per utterance) and
synthetic Mandarin speech from espeak-ng; every stage of run.sh runs in a tiny configuration.
"""

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lhotse import CutSet

from asrkit.cli import main as asrkit_main
from asrkit.data.corpora import CorpusError, manifest_path, prepare_corpus
from asrkit.data.synth import synthesize_corpus
from asrkit.text.tokenizer import load_tokenizer
from fake_corpora import make_fake_aishell, pack_aishell_tarballs, tone_utts, utts_from_cuts

RECIPE = Path(__file__).resolve().parents[1] / "egs" / "aishell" / "ASR"
NUM_UTTS = {"train": 40, "dev": 8, "test": 8}
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


@pytest.fixture(scope="session")
def zh_cuts(tmp_path_factory):
    """Synthetic Mandarin speech, 4/2/2 speakers, synthesised once per test session."""
    return synthesize_corpus(tmp_path_factory.mktemp("synth-zh"), lang="zh", num_utts=NUM_UTTS,
                             num_speakers={"train": 4, "dev": 2, "test": 2}, max_words=6, seed=0, num_jobs=2)


@pytest.fixture
def tone_tree(tmp_path):
    """A small AISHELL-1 tree of tones (no espeak): enough for layout checks and errors."""
    utts = tone_utts(tmp_path / "tones", {"train": ["你好", "我们 走"], "dev": ["今天"], "test": ["明天"]})
    return make_fake_aishell(tmp_path / "aishell", utts, faults=False)


def _prepare_error(corpus_dir, out_dir, **kw) -> str:
    with pytest.raises(CorpusError) as e:
        prepare_corpus("aishell", corpus_dir, out_dir, **kw)
    return str(e.value)


@needs_espeak
def test_prepare_aishell_normalises_and_reports_skips(zh_cuts, tmp_path, caplog):
    fake = make_fake_aishell(tmp_path / "aishell", utts_from_cuts(zh_cuts))
    out = tmp_path / "manifests"
    with caplog.at_level(logging.INFO):
        cuts = prepare_corpus("aishell", fake.root, out)
    for split, n in NUM_UTTS.items():
        assert len(cuts[split]) == n
        on_disk = CutSet.from_file(manifest_path(out, "aishell", "cuts", split))
        assert [c.id for c in on_disk] == sorted(fake.texts[split])  # cut id = utterance id, sorted
        assert {c.id: c.supervisions[0].text for c in on_disk} == fake.texts[split]
        assert {c.supervisions[0].speaker for c in on_disk} == fake.speakers[split]
        assert manifest_path(out, "aishell", "recordings", split).is_file()
    assert not any(" " in t or "，" in t for t in fake.texts["dev"].values())
    # The transcript had spaces and full-width punctuation; the cuts have neither.
    raw = fake.transcript.read_text(encoding="utf-8")
    assert "，" in raw and " 。" in raw
    log = caplog.text
    assert f"empty after normalisation: {fake.empty_text[0]}" in log
    assert f"no wav file in any split: {fake.no_audio[0]}" in log
    assert f"no transcript line: {fake.no_transcript[0]}" in log
    assert "aishell train: 40 cuts" in log
    assert " has no transcript." not in log  # lhotse's per-file warnings are summarised, not repeated

    # Existing manifests are reused; data_aishell itself is accepted as --corpus-dir.
    again = prepare_corpus("aishell", fake.root / "data_aishell", out)
    assert [c.id for c in again["dev"]] == [c.id for c in cuts["dev"]]


def test_prepare_aishell_errors(tone_tree, tmp_path):
    out = tmp_path / "manifests"
    assert "does not exist" in _prepare_error(tmp_path / "nowhere", out)
    assert "no data_aishell/" in _prepare_error(tmp_path / "tones", out)

    wav_dir, transcript = tone_tree.wav_dir, tone_tree.transcript
    text = transcript.read_text(encoding="utf-8")
    transcript.write_text(text + "\n", encoding="utf-8")
    assert "line 5 is blank" in _prepare_error(tone_tree.root, out)
    transcript.unlink()
    assert "aishell_transcript_v0.8.txt is missing" in _prepare_error(tone_tree.root, out)
    transcript.write_text(text, encoding="utf-8")

    hidden = wav_dir.with_name("wav.hidden")
    wav_dir.rename(hidden)
    assert f"audio folder {wav_dir} is missing" in _prepare_error(tone_tree.root, out)
    hidden.rename(wav_dir)
    (wav_dir / "test").rename(tmp_path / "test")
    assert f"no wav files under {wav_dir / 'test'}" in _prepare_error(tone_tree.root, out)
    (tmp_path / "test").rename(wav_dir / "test")

    empty = next(wav_dir.rglob("*.wav"))
    saved = empty.read_bytes()
    empty.write_bytes(b"")
    assert "1 wav file(s) hold no audio" in _prepare_error(tone_tree.root, out)
    empty.write_bytes(saved)
    assert not list(out.glob("*.jsonl.gz"))  # nothing was written by a failed run


def test_prepare_aishell_tarballs(tone_tree, tmp_path, capsys):
    """As shipped (one tarball per speaker): a clear error, or --extract unpacks them in place."""
    out = tmp_path / "manifests"
    tarballs = pack_aishell_tarballs(tone_tree.wav_dir)
    assert len(tarballs) == 4 and not list(tone_tree.wav_dir.rglob("*.wav"))
    msg = _prepare_error(tone_tree.root, out)
    assert "4 speaker tarball(s)" in msg and "not extracted" in msg and "--extract" in msg and "tar xzf" in msg

    argv = ["prepare", "aishell", "--corpus-dir", str(tone_tree.root), "--out-dir", str(out)]
    assert asrkit_main(argv) == 1  # the CLI reports the same error and fails
    assert asrkit_main(argv + ["--extract", "--num-jobs", "2"]) == 0
    assert "aishell train: 2 cuts" in capsys.readouterr().out
    # Extracted in place, nothing left half-done beside the tarballs.
    expected = sorted([t.name for t in tarballs] + ["dev", "test", "train"])
    assert sorted(p.name for p in tone_tree.wav_dir.iterdir()) == expected
    cuts = CutSet.from_file(manifest_path(out, "aishell", "cuts", "train"))
    assert sorted(c.supervisions[0].text for c in cuts) == ["你好", "我们走"]


def _cer(line: str) -> tuple:
    """(rate, errors, reference characters) of a ``%CER 12.50 [ 5 / 40, 1 ins, 2 del, 2 sub ]`` line."""
    m = re.search(r"%CER ([\d.]+) \[ (\d+) / (\d+), (\d+) ins, (\d+) del, (\d+) sub \]", line)
    assert m, line
    rate, errors, ref, ins, dels, subs = float(m[1]), *map(int, m.groups()[1:])
    assert errors == ins + dels + subs and rate == pytest.approx(100 * errors / ref, abs=0.006), line
    return rate, errors, ref


@pytest.mark.slow
@needs_espeak
def test_aishell_recipe_all_stages(zh_cuts, tmp_path):
    fake = make_fake_aishell(tmp_path / "aishell", utts_from_cuts(zh_cuts))
    data, exp = tmp_path / "data", tmp_path / "exp"
    # One torch thread per process, as conftest sets for this one: a second only contends on a busy 2-core box.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1")
    # The recipe's defaults but a tiny transducer + CTC model, 1 epoch of a few steps.
    methods = ["greedy-search", "modified-beam-search", "ctc-greedy", "ctc-prefix-beam"]
    cmd = ["bash", str(RECIPE / "run.sh"), "--corpus-dir", str(fake.root), "--data", str(data), "--nj", "2",
           "--config", "conf/zipformer_transducer_tiny.yaml", "--exp-dir", str(exp), "--epochs", "1", "--avg", "1",
           "--overrides", "data.max_duration=120"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # Stage 0: manifests with the right counts and normalised text.
    for split, n in NUM_UTTS.items():
        cuts = CutSet.from_file(data / "manifests" / f"aishell_cuts_{split}.jsonl.gz")
        assert len(cuts) == n and {c.id: c.supervisions[0].text for c in cuts} == fake.texts[split]
    # Stage 1: features for every cut; dev/test unperturbed.
    for split in ("dev", "test"):
        cuts = CutSet.from_file(data / "fbank" / f"aishell_cuts_{split}.jsonl.gz")
        assert sorted(c.id for c in cuts) == sorted(fake.texts[split]) and all(c.has_features for c in cuts)
    train = CutSet.from_file(data / "fbank" / "aishell_cuts_train.jsonl.gz")
    assert all(c.has_features for c in train)
    assert train[0].load_features().shape[1] == 80
    # Stage 2: the character table covers every training character.
    tokenizer = load_tokenizer(data / "lang_char")
    chars = {ch for text in fake.texts["train"].values() for ch in text}
    assert all(len(tokenizer.encode(ch)) == 1 and tokenizer.decode(tokenizer.encode(ch)) == ch for ch in chars)
    assert tokenizer.vocab_size >= len(chars) + 1
    # Stage 3: a checkpoint of a model with both heads, trained on both losses.
    assert (exp / "epoch-1.pt").is_file() and (exp / "model.pt").is_file()
    losses = r"epoch 1 done: loss [\d.]+, simple [\d.]+, pruned [\d.]+, ctc [\d.]+"
    assert re.search(losses, proc.stderr), proc.stderr[-3000:]
    # Stage 4: CER summaries for dev and test, by every default method.
    results = (exp / f"results-epoch-1-avg-1-use-averaged-model-{'_'.join(methods)}.txt").read_text()
    for test_set in ("dev", "test"):
        num_chars = sum(len(t) for t in fake.texts[test_set].values())  # CER counts characters, spaces aside
        for method in methods:
            line = re.search(rf"^aishell_cuts_{test_set}\s+{method}\s+(%CER .*)$", results, re.M)
            assert line, results
            summary = next((exp / method).glob(f"wer-summary-aishell_cuts_{test_set}-*")).read_text()
            assert summary.strip() == line[1]
            assert _cer(summary)[2] == num_chars

    # Rerunning skips every finished stage (and needs no corpus).
    rerun = subprocess.run(cmd[:2] + cmd[4:], env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert rerun.stdout.count("skip:") == 5, rerun.stdout

    # Speed perturbation: the originals plus one 0.9x and one 1.1x copy of each, as icefall does.
    ids = sorted(fake.texts["train"])
    assert sorted(c.id for c in train) == sorted(ids + [f"{i}_sp0.9" for i in ids] + [f"{i}_sp1.1" for i in ids])
