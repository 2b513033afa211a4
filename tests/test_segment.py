"""Tests for asrkit.data.segment and ``asrkit segment``: Silero VAD on espeak-ng speech separated by silences.

    OMP_NUM_THREADS=1 .venv/bin/pytest tests/test_segment.py -q
"""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet

from asrkit.cli import main
from asrkit.data.segment import SegmentConfig, find_recordings, make_pieces, segment_audio_dir
from asrkit.data.synth import resample
from fake_vietnamese import SENTENCES, speak_vi

pytest.importorskip("silero_vad")
SR = 16000
TOL = 0.3  # s: how far a segment boundary may be from where the speech starts or ends


def _extent(x: np.ndarray) -> tuple:
    """(first, last) second where the clip is audibly not silent."""
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())
    return loud[0] / SR, (loud[-1] + 1) / SR


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory):
    """Two long recordings of speech between silences (faint noise floor), and where the speech is."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    root = tmp_path_factory.mktemp("segment")
    clips = [sf.read(p, dtype="float32")[0] for p in speak_vi(root / "clips", [SENTENCES[i][0] for i in (0, 5, 6, 8)])]
    rng = np.random.default_rng(0)

    def lay_out(parts):
        audio, truth, t = [], [], 0.0
        for part in parts:
            if isinstance(part, float):
                audio.append(np.zeros(int(part * SR), dtype=np.float32))
            else:
                s, e = _extent(part)
                truth.append((t + s, t + e))
                audio.append(part)
            t += len(audio[-1]) / SR
        x = np.concatenate(audio)
        return x + 1e-3 * rng.standard_normal(len(x)).astype(np.float32), truth

    audio_dir = root / "audio"
    (audio_dir / "sub").mkdir(parents=True)
    a, truth_a = lay_out([1.5, clips[0], 2.5, clips[1], 3.0, clips[2], 1.5])
    # 44.1 kHz stereo flac: the cuts resample to 16 kHz and take the first channel
    a44 = resample(a, SR, 44100)
    sf.write(audio_dir / "long_a.flac", np.stack([a44, 0.5 * a44], axis=1), 44100)
    b, truth_b = lay_out([1.0, clips[3], 1.0])
    sf.write(audio_dir / "sub" / "b c.wav", b, SR)
    (audio_dir / "notes.txt").write_text("not audio\n")
    return audio_dir, {"long_a": truth_a, "sub_b_c": truth_b}


def test_make_pieces_joins_splits_and_drops():
    cfg = SegmentConfig(min_dur=1.0, max_dur=20.0, max_gap=1.0)
    regions = [(0.0, 0.5), (0.8, 3.0), (10.0, 10.4), (20.0, 65.0), (66.5, 68.0)]
    assert make_pieces(regions, cfg) == [(0.0, 3.0), (20.0, 35.0), (35.0, 50.0), (50.0, 65.0), (66.5, 68.0)]
    assert make_pieces([(0.0, 5.0), (5.5, 19.0), (19.5, 21.0)], cfg) == [(0.0, 19.0), (19.5, 21.0)]
    with pytest.raises(ValueError, match="min_dur <= max_dur"):
        SegmentConfig(min_dur=5, max_dur=2)


def test_find_recordings(long_audio, tmp_path):
    audio_dir, _ = long_audio
    assert [r for r, _ in find_recordings(audio_dir)] == ["long_a", "sub_b_c"]
    with pytest.raises(FileNotFoundError, match="no audio file"):
        find_recordings(tmp_path)


def test_segment_finds_speech_and_writes_shar(long_audio, tmp_path):
    audio_dir, truth = long_audio
    out = tmp_path / "out"
    cuts = segment_audio_dir(audio_dir, out, SegmentConfig(), shar=True, shard_size=2)
    assert len(cuts) == 4
    for rec_id, regions in truth.items():
        found = sorted((c.start, c.end) for c in cuts if c.recording.id == rec_id)
        assert len(found) == len(regions), (rec_id, found, regions)
        for (s, e), (ts, te) in zip(found, regions):
            assert abs(s - ts) < TOL and abs(e - te) < TOL, (rec_id, (s, e), (ts, te))
    assert all(c.sampling_rate == SR and not c.supervisions for c in cuts)

    shards = sorted(p.name for p in (out / "shar").iterdir())
    assert shards == ["cuts.000000.jsonl.gz", "cuts.000001.jsonl.gz", "recording.000000.tar", "recording.000001.tar"]
    back = CutSet.from_shar(in_dir=out / "shar")
    by_id = {c.id: c for c in cuts}
    assert sorted(c.id for c in back) == sorted(by_id)
    for c in back:
        audio = c.load_audio()
        ref = by_id[c.id].load_audio()
        assert c.sampling_rate == SR and audio.shape == ref.shape == (1, c.num_samples)
        assert np.abs(audio - ref).max() < 1e-3  # flac at 16 bits
    assert list(CutSet.from_file(out / "cuts.jsonl.gz").ids) == list(cuts.ids)

    # resumes: nothing is redone; a new recording is the only one run through VAD
    stamp = (out / "shar" / "recording.000000.tar").stat().st_mtime_ns
    again = segment_audio_dir(audio_dir, out, SegmentConfig(), shar=True, shard_size=2)
    assert list(again.ids) == list(cuts.ids)
    assert (out / "shar" / "recording.000000.tar").stat().st_mtime_ns == stamp
    shutil.copyfile(audio_dir / "sub" / "b c.wav", tmp_path / "c.wav")
    extra = tmp_path / "audio2"
    shutil.copytree(audio_dir, extra)
    shutil.copyfile(tmp_path / "c.wav", extra / "zz.wav")
    (extra / "broken.wav").write_bytes(b"RIFF not really a wav file")  # logged and skipped, retried next run
    more = segment_audio_dir(extra, tmp_path / "out2", SegmentConfig())
    assert len(more) == 5 and not any(c.recording.id == "broken" for c in more)
    lines = (tmp_path / "out2" / "vad.jsonl").read_text().splitlines()
    shutil.copyfile(tmp_path / "c.wav", extra / "zz2.wav")
    segment_audio_dir(extra, tmp_path / "out2", SegmentConfig())
    new_lines = (tmp_path / "out2" / "vad.jsonl").read_text().splitlines()
    assert new_lines[:len(lines)] == lines and [json.loads(x)["id"] for x in new_lines[len(lines):]] == ["broken", "zz2"]

    with pytest.raises(ValueError, match="other settings"):
        segment_audio_dir(audio_dir, out, SegmentConfig(max_dur=10.0))


def test_segment_cli(long_audio, tmp_path, capsys):
    audio_dir, _ = long_audio
    out = tmp_path / "cli"
    args = ["segment", "--audio-dir", str(audio_dir), "--out-dir", str(out), "--min-dur", "1", "--max-dur", "20",
            "--shar", "--shard-size", "10"]
    assert main(args) == 0
    assert "4 segments" in capsys.readouterr().out
    assert len(CutSet.from_shar(in_dir=out / "shar")) == 4
    assert main(["segment", "--audio-dir", str(tmp_path / "missing"), "--out-dir", str(out)]) == 1
