"""Tests for asrkit.data.vietnamese: VIVOS, GigaSpeech 2 (vi), Common Voice (vi) from fake trees; vi normalisation.

    OMP_NUM_THREADS=1 .venv/bin/pytest tests/test_vietnamese.py -q
"""

import logging
import shutil
import tarfile
import unicodedata

import pytest
from lhotse import CutSet

from asrkit.cli import main
from asrkit.data.corpora import CorpusError, manifest_path, prepare_corpus
from asrkit.data.vietnamese import stage_commonvoice
from asrkit.text.normalize import normalize
from fake_vietnamese import (CV_OLD_HEADER, SENTENCES, make_fake_commonvoice, make_fake_gigaspeech2,
                                   make_fake_vivos, speak_vi, tone_wav)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    return speak_vi(tmp_path_factory.mktemp("vi_audio"), [raw for raw, _ in SENTENCES])


def _check(cuts, texts, speakers=None):
    assert sorted(c.id for c in cuts) == sorted(texts)
    for c in cuts:
        sup = c.supervisions[0]
        assert sup.text == texts[c.id]
        assert sup.text == unicodedata.normalize("NFC", sup.text)
        assert c.duration > 0.5 and c.recording.id == c.id
        if speakers is not None:
            assert sup.speaker == speakers[c.id]


# ------------------------------------------------------------------------------------- normalisation

@pytest.mark.parametrize("raw, expected", [
    ("KHÁCH SẠN", "khách sạn"),
    (unicodedata.normalize("NFD", "TIẾNG VIỆT"), "tiếng việt"),
    ("\ufeffHÔM NAY, trời đẹp!", "hôm nay trời đẹp"),
    ("xin\u200bchào", "xin chào"),
    ("Ðại học Bách khoa", "đại học bách khoa"),  # U+00D0 (eth) typed for U+0110
    ("Giá 100% – “tốt”…", "giá 100 tốt"),
    ("ĐÀ NẴNG", "đà nẵng"),
])
def test_normalize_vi_examples(raw, expected):
    out = normalize(raw, "vi")
    assert out == expected
    assert out == unicodedata.normalize("NFC", out)
    assert len(out) == len(expected)  # one code point per accented letter


# -------------------------------------------------------------------------------------------- VIVOS

def test_prepare_vivos(wavs, tmp_path, caplog):
    fake = make_fake_vivos(tmp_path / "vivos", wavs)
    with caplog.at_level(logging.WARNING):
        cuts = prepare_corpus("vivos", fake.root, tmp_path / "out")
    assert set(cuts) == {"train", "test"}
    assert len(cuts["train"]) == 4 and len(cuts["test"]) == 2
    for split in cuts:
        _check(cuts[split], fake.texts[split], fake.speakers)
        assert manifest_path(tmp_path / "out", "vivos", "cuts", split).is_file()
    genders = {c.supervisions[0].speaker: c.supervisions[0].gender for c in cuts["train"]}
    assert genders == {"VIVOSSPK01": "m", "VIVOSSPK02": "f"}
    assert all(c.sampling_rate == 16000 for c in cuts["train"])
    log = caplog.text
    for ids in (fake.empty_text, fake.no_audio, fake.no_transcript):
        assert ids[0] in log
    back = CutSet.from_file(manifest_path(tmp_path / "out", "vivos", "cuts", "test"))
    assert back[0].load_audio().shape[1] == back[0].recording.num_samples


def test_prepare_vivos_cli_and_parent_dir(wavs, tmp_path, capsys):
    fake = make_fake_vivos(tmp_path / "data" / "vivos", wavs)
    args = ["prepare", "vivos", "--corpus-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path / "out")]
    assert main(args) == 0
    assert "vivos train: 4 cuts" in capsys.readouterr().out
    shutil.rmtree(fake.root)  # manifests exist: the second run reads them back, the corpus is not needed
    assert main(args) == 0
    assert "vivos test: 2 cuts" in capsys.readouterr().out


def test_vivos_wrong_trees(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        prepare_corpus("vivos", tmp_path / "nope", tmp_path / "out")
    root = tmp_path / "vivos"
    (root / "train").mkdir(parents=True)
    with pytest.raises(CorpusError, match="no test folder"):
        prepare_corpus("vivos", root, tmp_path / "out")
    (root / "test").mkdir()
    with pytest.raises(CorpusError, match="prompts.txt is missing"):
        prepare_corpus("vivos", root, tmp_path / "out")
    for split in ("train", "test"):
        (root / split / "prompts.txt").write_text("VIVOSSPK01_R001 A\n", encoding="utf-8")
        (root / split / "waves").mkdir()
    with pytest.raises(CorpusError, match="no wav files"):
        prepare_corpus("vivos", root, tmp_path / "out")
    tone_wav(root / "train" / "waves" / "VIVOSSPK02" / "VIVOSSPK01_R001.wav")
    with pytest.raises(CorpusError, match="another speaker's folder"):
        prepare_corpus("vivos", root, tmp_path / "out")
    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / "vivos.tar.gz").write_bytes(b"")
    with pytest.raises(CorpusError, match="not extracted"):
        prepare_corpus("vivos", packed, tmp_path / "out")


# -------------------------------------------------------------------------------------- GigaSpeech 2

def test_prepare_gigaspeech2(wavs, tmp_path, caplog):
    fake = make_fake_gigaspeech2(tmp_path / "gigaspeech2", wavs)
    with caplog.at_level(logging.WARNING):
        cuts = prepare_corpus("gigaspeech2", fake.root, tmp_path / "out")
    assert {s: len(c) for s, c in cuts.items()} == {"train_raw": 3, "train_refined": 2, "dev": 2, "test": 1}
    for split in cuts:
        _check(cuts[split], fake.texts[split])
        assert manifest_path(tmp_path / "out", "gigaspeech2", "cuts", split).is_file()
    assert "0-1001-9" in caplog.text  # train_raw line without audio: logged, skipped
    # lhotse's own manifests went to a scratch folder, not next to ours
    assert not list((tmp_path / "out").glob("gigaspeech2-vi_*"))


def test_gigaspeech2_split_without_audio_and_wrong_trees(wavs, tmp_path, caplog):
    fake = make_fake_gigaspeech2(tmp_path / "gs2", wavs)
    lang = fake.root / "data" / "vi"
    shutil.rmtree(lang / "train")  # only dev/test archives downloaded
    with caplog.at_level(logging.WARNING):
        cuts = prepare_corpus("gigaspeech2", lang, tmp_path / "out")  # data/vi itself is accepted too
    assert len(cuts["train_raw"]) == 0 and len(cuts["train_refined"]) == 0 and len(cuts["dev"]) == 2
    assert "none of its 4 segments has audio" in caplog.text

    # test audio still packed as shipped: data/vi/test.tar.gz
    with tarfile.open(lang / "test.tar.gz", "w:gz") as tar:
        tar.add(lang / "test", arcname="test")
    shutil.rmtree(lang / "test")
    with pytest.raises(CorpusError, match="not extracted.*tar xzf"):
        prepare_corpus("gigaspeech2", fake.root, tmp_path / "out2")
    (lang / "dev.tsv").unlink()
    with pytest.raises(CorpusError, match="dev.tsv missing"):
        prepare_corpus("gigaspeech2", fake.root, tmp_path / "out2")
    with pytest.raises(CorpusError, match="no data/vi/"):
        prepare_corpus("gigaspeech2", tmp_path, tmp_path / "out2")


# -------------------------------------------------------------------------------------- Common Voice

def test_prepare_commonvoice(wavs, tmp_path, caplog):
    fake = make_fake_commonvoice(tmp_path / "cv", wavs)
    with caplog.at_level(logging.WARNING):
        cuts = prepare_corpus("commonvoice", fake.root, tmp_path / "out")
    assert {s: len(c) for s, c in cuts.items()} == {"train": 3, "dev": 1, "test": 1}
    for split in cuts:
        _check(cuts[split], fake.texts[split], fake.speakers)
    assert fake.no_audio[0] in caplog.text
    cut = CutSet.from_file(manifest_path(tmp_path / "out", "commonvoice", "cuts", "train"))[0]
    assert cut.sampling_rate == 32000 and cut.supervisions[0].gender in ("male_masculine", "female_feminine")
    # the manifest points at the user's clips (lhotse read them through a scratch folder that is gone)
    assert cut.recording.sources[0].source.startswith(str(fake.root / "vi" / "clips"))
    assert cut.load_audio().shape[1] > 0.5 * cut.sampling_rate


def test_commonvoice_old_release_and_wrong_trees(wavs, tmp_path):
    fake = make_fake_commonvoice(tmp_path / "cv", wavs[:6], release="cv-corpus-5.1-2020-06-22", header=CV_OLD_HEADER)
    stage = tmp_path / "stage"
    counts = stage_commonvoice(fake.root / "vi", stage)
    assert {s: n for s, (n, _) in counts.items()} == {"train": 4, "dev": 1, "test": 1}
    assert counts["train"][1] == ["common_voice_vi_39999999.mp3"]
    header = (stage / "vi" / "train.tsv").read_text(encoding="utf-8").splitlines()[0].split("\t")
    for col in ("client_id", "path", "sentence", "age", "gender", "accents", "variant"):
        assert col in header  # what lhotse indexes for every row
    assert (stage / "vi" / "clips").resolve() == (fake.root / "vi" / "clips").resolve()

    with pytest.raises(CorpusError, match="no vi/"):
        prepare_corpus("commonvoice", tmp_path, tmp_path / "out")
    (fake.root / "vi" / "test.tsv").unlink()
    with pytest.raises(CorpusError, match="test.tsv missing"):
        prepare_corpus("commonvoice", fake.root / "vi", tmp_path / "out")
    (fake.root / "vi" / "test.tsv").write_text("path\tsentence\nx.mp3\thi\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="no column client_id"):
        prepare_corpus("commonvoice", fake.root, tmp_path / "out")
