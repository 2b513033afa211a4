"""``asrkit prepare librispeech|librimix`` and egs/librimix/SOT/run.sh on fake LibriSpeech + WHAM! + LibriMix trees.

The trees have the real layouts (LibriSpeech flac + trans.txt, stereo WHAM! wavs, LibriMix's metadata CSVs
with their real columns) and espeak-ng speech; the recipe runs every stage in a tiny configuration
(conf/tiny): manifests, offset mixtures, fbank, BPE with <sc>, a few AED-SOT steps, decoding with SOT
scores, and LLM-SOT stage A with a tiny random LLM.

    .venv/bin/pytest tests/test_recipe_librimix.py -q
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
from lhotse.cut import MixedCut

from asrkit.data.corpora import CorpusError, manifest_path, prepare_corpus
from asrkit.data.datamodule import cut_text
from asrkit.data.synth import synthesize_corpus
from asrkit.text.sot import SC, parse_sot
from asrkit.text.tokenizer import load_tokenizer
from fake_corpora import make_fake_librimix_metadata, make_fake_librispeech, make_fake_wham, utts_from_cuts

RECIPE = Path(__file__).resolve().parents[1] / "egs" / "librimix" / "SOT"
PARTS = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
NUM_UTTS = {"train": 12, "dev": 4, "test": 4}
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """LibriSpeech/, wham_noise/ and LibriMix/metadata/ side by side, as the recipe's --corpus-dir expects."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    tmp = tmp_path_factory.mktemp("librimix")
    cuts = synthesize_corpus(tmp / "synth", lang="en", num_utts=NUM_UTTS,
                             num_speakers={"train": 4, "dev": 2, "test": 2}, max_words=4, seed=0, num_jobs=2)
    utts = utts_from_cuts(cuts)
    root = tmp / "corpus"
    speech = make_fake_librispeech(root, {PARTS[s]: utts[s] for s in PARTS})
    wham = make_fake_wham(root / "wham_noise")
    meta = make_fake_librimix_metadata(root / "LibriMix" / "metadata", speech, wham)
    return root, speech, wham, meta


def test_prepare_librispeech_normalises_and_reports(trees, tmp_path, caplog):
    root, speech, _, _ = trees
    out = tmp_path / "manifests"
    with caplog.at_level(logging.INFO):
        cuts = prepare_corpus("librispeech", root / "LibriSpeech", out, parts=["dev-clean", "train-clean-100"])
    assert sorted(cuts) == ["dev-clean", "train-clean-100"]
    for part in cuts:
        on_disk = CutSet.from_file(manifest_path(out, "librispeech", "cuts", part))
        assert [c.id for c in on_disk] == sorted(speech.texts[part])  # cut id = utterance id
        assert {c.id: c.supervisions[0].text for c in on_disk} == speech.texts[part]  # "Remember, bring" -> upper
        assert {c.id: c.supervisions[0].speaker for c in on_disk} == speech.speakers[part]
    assert f"no flac file: {speech.no_audio[0]}" in caplog.text
    assert f"no transcript line: {speech.no_transcript[0]}" in caplog.text
    assert "No such file" not in caplog.text  # lhotse's per-file warning is summarised
    # The parent folder works too; an existing part is read back, a missing one is an error.
    again = prepare_corpus("librispeech", root, out, parts=["dev-clean"])
    assert [c.id for c in again["dev-clean"]] == [c.id for c in cuts["dev-clean"]]
    with pytest.raises(CorpusError, match="train-clean-360 not in"):
        prepare_corpus("librispeech", root, out, parts=["train-clean-360"])
    with pytest.raises(CorpusError, match="no LibriSpeech part"):
        prepare_corpus("librispeech", tmp_path, out)


def test_prepare_librimix_mixed_cuts_keep_transcripts(trees, tmp_path, caplog):
    root, speech, wham, meta = trees
    out = tmp_path / "manifests"
    with caplog.at_level(logging.WARNING):
        cuts = prepare_corpus("librimix", root, out, num_jobs=2)
    assert sorted(cuts) == sorted(f"{p}_{k}" for p in PARTS.values() for k in ("clean", "noisy"))
    texts = {u: t for part in speech.texts.values() for u, t in part.items()}
    for part, rows in meta.rows.items():
        for kind in ("clean", "noisy"):
            mixes = CutSet.from_file(out / f"libri2mix_cuts_{part}_{kind}.jsonl.gz")
            assert [c.id for c in mixes] == sorted(r["mixture_ID"] for r in rows)  # the broken row dropped
            for mix, row in zip(mixes, sorted(rows, key=lambda r: r["mixture_ID"])):
                assert isinstance(mix, MixedCut) and len(mix.tracks) == (2 if kind == "clean" else 3)
                sources = row["mixture_ID"].split("_")
                # fully overlapped (all start at 0); SOT keeps the metadata's source order
                assert [s.start for s in mix.supervisions] == [0.0, 0.0]
                assert parse_sot(cut_text(mix)) == [texts[s] for s in sources]
                assert [s.speaker for s in mix.supervisions] == [s.split("-")[0] for s in sources]
                assert mix.duration == pytest.approx(max(mix.tracks[i].cut.duration for i in range(2)), abs=0.01)
                assert mix.load_audio().shape[-1] == mix.num_samples
    assert sum("skipped 1 of 3 mixture(s)" in r.getMessage() for r in caplog.records) == 3
    for broken in meta.broken:
        assert broken in caplog.text
    # The noisy train mixture with a 0.8x speed-perturbed noise (LibriMix's augmented train noise) is there.
    assert any(r["noise_path"].endswith("sp08.wav") for r in meta.rows["train-clean-100"])
    with pytest.raises(CorpusError, match="no libri3mix_<part>.csv"):
        prepare_corpus("librimix", root, tmp_path / "m3", n_src=3)
    with pytest.raises(CorpusError, match="wham: no wav files"):
        prepare_corpus("librimix", root, tmp_path / "m4", wham_dir=str(tmp_path))


@pytest.mark.slow
@needs_espeak
def test_librimix_sot_recipe_all_stages(trees, tmp_path):
    from asrkit.models.tiny_llm import make_tiny_llm

    root, speech, _, meta = trees
    llm = make_tiny_llm(tmp_path / "llm", [t for p in speech.texts.values() for t in p.values()], hidden_size=32,
                        layers=1, heads=4, vocab_size=300, seed=0)
    data, exp = tmp_path / "data", tmp_path / "exp"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1")
    cmd = ["bash", str(RECIPE / "run.sh"), "--corpus-dir", str(root), "--data", str(data), "--exp", str(exp),
           "--nj", "2", "--conf-dir", "conf/tiny", "--train-parts", "train-clean-100", "--vocab-size", "40",
           "--epochs", "1", "--avg", "1", "--llm-dir", str(llm), "--stage-a-steps", "1", "--max-new-tokens", "12",
           "--stop-stage", "6"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # Stage 1: offset mixtures of distinct speakers; SOT text by start time.
    for split, part in PARTS.items():
        mixes = CutSet.from_file(data / "mix" / f"sim2mix_cuts_{split}.jsonl.gz")
        assert len(mixes) == NUM_UTTS[split]  # one mixture led by each source utterance
        for mix in mixes:
            sups = sorted(mix.supervisions, key=lambda s: s.start)
            assert len({s.speaker for s in sups}) == 2 and 1.0 <= sups[1].start - sups[0].start <= 1.5 + 1e-6
            assert cut_text(mix) == f"{sups[0].text} {SC} {sups[1].text}"
            assert {s.text for s in sups} <= set(speech.texts[part].values())
    # Stage 2: fbank of the mixed audio; LibriMix test-clean too.
    test = CutSet.from_file(data / "fbank" / "sim2mix_cuts_test.jsonl.gz")
    assert all(c.has_features for c in test) and test[0].load_features().shape[1] == 80
    assert len(CutSet.from_file(data / "fbank" / "libri2mix_cuts_test-clean_clean.jsonl.gz")) == 2
    # Stage 3: <sc> is one piece.
    tok = load_tokenizer(data / "lang_bpe_40")
    ids = tok.encode(f"HELLO {SC} WORLD")
    assert sum(tok.decode([i]).strip() == SC for i in ids) == 1  # one token, never < s c >
    assert tok.decode(ids).split() == ["HELLO", SC, "WORLD"]
    # Stage 4/5: an AED-SOT checkpoint, decoded and SOT-scored on both test sets.
    assert (exp / "aed_sot" / "epoch-1.pt").is_file() and (exp / "aed_sot" / "model.pt").is_file()
    assert re.search(r"epoch 1 done: loss [\d.]+, ctc [\d.]+, attention [\d.]+", proc.stderr), proc.stderr[-2000:]
    method = exp / "aed_sot" / "joint-ctc-attention"
    for test_set, n in (("sim2mix_cuts_test", 4), ("libri2mix_cuts_test-clean_clean", 2)):
        summary = (method / "sot" / f"wer-summary-{test_set}-final-beam4.txt").read_text().splitlines()
        assert [line.split()[0] for line in summary] == ["%cpWER", "%concatWER", "%SpkCountAcc"]
        assert summary[2].endswith(f"/ {n} ]")
        results = (exp / "aed_sot" / "results.txt").read_text()
        assert f"{test_set}" in results and summary[0] in results
        recogs = (method / "sot" / f"recogs-{test_set}-final-beam4.txt").read_text()
        assert recogs.count("ref=[") == n and all(len(eval(r.split("ref=", 1)[1])) == 2
                                                   for r in recogs.splitlines() if "ref=" in r)
    # Stage 6: LLM-SOT stage A with <sc> a new LLM token, the AED-SOT encoder handed over.
    assert (exp / "llm_sot_a" / "model.pt").is_file()
    assert "encoder initialised from" in proc.stderr
    cfg = (exp / "llm_sot_a" / "config.yaml").read_text()
    assert "<sc>" in cfg and "freeze_encoder: true" in cfg

    # Rerunning skips every finished stage.
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert rerun.stdout.count("skip:") == 7, rerun.stdout
