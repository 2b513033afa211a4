"""Tests for asrkit.data.mix: mixture audio, supervision offsets, levels, noise, sessions, determinism, CLI."""

import math

import numpy as np
import pytest
from lhotse import CutSet
from lhotse.cut import MixedCut
from lhotse.utils import fastcopy

from asrkit.data.mix import add_noise, render_audio, simulate_mixtures, simulate_sessions, sot_text, sot_texts
from asrkit.text.sot import parse_sot

SR = 16000


@pytest.fixture(scope="module")
def sources(tiny_asr_data):
    return CutSet.from_file(tiny_asr_data[0]).to_eager()  # 24 utterances, 3 speakers, with fbank


def _manual_mix(mix: MixedCut) -> np.ndarray:
    """Each track loaded alone, scaled to its level relative to the first track, placed at its offset."""
    audios = [t.cut.load_audio()[0].astype(np.float64) for t in mix.tracks]
    ref_energy = np.mean(audios[0] ** 2)
    total = max(round(t.offset * SR) + len(a) for t, a in zip(mix.tracks, audios))
    out = np.zeros(total)
    for t, a in zip(mix.tracks, audios):
        gain = 1.0 if t.snr is None else math.sqrt(ref_energy * 10 ** (-t.snr / 10) / np.mean(a ** 2))
        start = round(t.offset * SR)
        out[start:start + len(a)] += gain * a
    return out


@pytest.mark.parametrize("n", [2, 3])
def test_audio_is_sum_of_scaled_offset_tracks(sources, n):
    mixes = simulate_mixtures(sources, num_speakers=n, num_mixtures=3, min_offset=0.5, max_offset=1.0,
                              gain_db=(-6.0, 6.0), seed=1)
    for mix in mixes:
        assert isinstance(mix, MixedCut) and len(mix.tracks) == n
        got = mix.load_audio()[0]
        want = _manual_mix(mix)
        assert got.shape == want.shape == (round(mix.duration * SR),)
        np.testing.assert_allclose(got, want, atol=1e-5)
        # levels drawn from gain_db: track k is gain dB above (below) the first speaker
        assert mix.tracks[0].snr is None
        for t in mix.tracks[1:]:
            assert -6.0 <= -t.snr <= 6.0
        # each next speaker starts 0.5..1.0 s after the previous one, on the 10 ms grid
        starts = [t.offset for t in mix.tracks]
        assert starts[0] == 0.0
        for a, b in zip(starts, starts[1:]):
            assert 0.5 - 0.005 <= b - a <= 1.0 + 0.005
            assert abs(b * 100 - round(b * 100)) < 1e-6


def test_no_gain_sums_recordings_as_they_are(sources):
    mix = simulate_mixtures(sources, num_mixtures=1, gain_db=None, seed=3)[0]
    assert all(t.snr is None for t in mix.tracks)
    a, b = (t.cut.load_audio()[0] for t in mix.tracks)
    start = round(mix.tracks[1].offset * SR)
    want = np.zeros(max(len(a), start + len(b)))
    want[:len(a)] += a
    want[start:start + len(b)] += b
    np.testing.assert_allclose(mix.load_audio()[0], want, atol=1e-6)


def test_supervisions_speakers_and_sot_text(sources):
    by_id = {c.id: c for c in sources}
    mixes = simulate_mixtures(sources, num_speakers=[2, 3], seed=0)
    assert len(mixes) == len(sources)  # default: every source leads one mixture
    assert sorted(m.tracks[0].cut.id for m in mixes) == sorted(by_id)
    assert {len(m.tracks) for m in mixes} == {2, 3}
    for mix in mixes:
        speakers = [t.cut.supervisions[0].speaker for t in mix.tracks]
        assert len(set(speakers)) == len(speakers)  # distinct speakers
        assert not any(t.cut.has_features for t in mix.tracks)  # features come from the mixed audio
        sups = sorted(mix.supervisions, key=lambda s: s.start)
        assert len(sups) == len(mix.tracks)
        for sup, track in zip(sups, mix.tracks):
            src = by_id[track.cut.id].supervisions[0]
            assert sup.speaker == src.speaker and sup.text == src.text
            assert sup.start == pytest.approx(track.offset + src.start, abs=1e-9)
            assert sup.duration == pytest.approx(src.duration)
        # first-in-first-out: the track order is the start order
        assert parse_sot(sot_text(mix)) == [by_id[t.cut.id].supervisions[0].text for t in mix.tracks]
    assert sot_texts(mixes)[mixes[0].id] == sot_text(mixes[0])


def test_deterministic_by_seed(sources):
    def run(seed):
        return [c.to_dict() for c in simulate_mixtures(sources, num_speakers=[2, 3], num_mixtures=40, seed=seed)]

    assert run(5) == run(5)
    assert run(5) != run(6)
    ids = [d["id"] for d in run(5)]
    assert ids[0] == "mix000000" and len(set(ids)) == 40


def test_bad_input(sources):
    two = sources.filter(lambda c: c.supervisions[0].speaker != "en-spk000").to_eager()
    with pytest.raises(ValueError, match="at least 3 speakers"):
        simulate_mixtures(two, num_speakers=3)
    with pytest.raises(ValueError, match="num_speakers"):
        simulate_mixtures(sources, num_speakers=1)
    with pytest.raises(ValueError, match="min <= max"):
        simulate_mixtures(sources, min_offset=2.0, max_offset=1.0)
    anon = CutSet.from_cuts([sources[0].map_supervisions(lambda s: fastcopy(s, speaker=None))])
    with pytest.raises(ValueError, match="speaker"):
        simulate_mixtures(anon)


def test_add_noise_keeps_speech_and_reaches_snr(sources, tiny_asr_data):
    noise = CutSet.from_file(tiny_asr_data[1]).to_eager()  # other audio as "noise"
    mixes = simulate_mixtures(sources, num_mixtures=4, seed=0)
    noisy = add_noise(mixes, noise, snr_db=(10.0, 10.0), seed=0)
    assert [c.id for c in noisy] == [c.id for c in mixes]
    assert add_noise(mixes, noise, snr_db=(10.0, 10.0), seed=0).to_eager()[0].to_dict() == noisy[0].to_dict()
    for clean, mix in zip(mixes, noisy):
        noise_tracks = [t for t in mix.tracks if t.tag == "noise"]
        assert noise_tracks and all(t.snr == pytest.approx(10.0) for t in noise_tracks)
        assert sot_text(mix) == sot_text(clean)  # noise adds no supervisions
        diff = mix.load_audio()[0] - clean.load_audio()[0]
        # the first noise cut alone is at 10 dB below the first speaker's energy
        first = noise_tracks[0]
        n0 = first.cut.load_audio()[0]
        seg = diff[round(first.offset * SR):round(first.offset * SR) + len(n0)]
        e_speech = np.mean(clean.tracks[0].cut.load_audio() ** 2)
        assert 10 * np.log10(e_speech / np.mean(seg ** 2)) == pytest.approx(10.0, abs=0.05)


def test_sessions(sources):
    sessions = simulate_sessions(sources, num_sessions=2, num_speakers=2, max_utterances_per_speaker=2, seed=0)
    again = simulate_sessions(sources, num_sessions=2, num_speakers=2, max_utterances_per_speaker=2, seed=0)
    assert [c.to_dict() for c in sessions] == [c.to_dict() for c in again]
    for s in sessions:
        assert s.id.startswith("session") and isinstance(s, MixedCut)
        sups = sorted(s.supervisions, key=lambda x: x.start)
        speakers = {x.speaker for x in sups}
        assert len(speakers) == 2 and len(s.tracks) == 2
        for spk in speakers:  # one speaker's turns never overlap
            mine = [x for x in sups if x.speaker == spk]
            assert all(a.end <= b.start + 1e-6 for a, b in zip(mine, mine[1:]))
        changes = sum(a.speaker != b.speaker for a, b in zip(sups, sups[1:]))
        assert len(parse_sot(sot_text(s))) == changes + 1
        assert s.load_audio().shape[1] == round(s.duration * SR)
    loud = simulate_sessions(sources, num_sessions=1, max_utterances_per_speaker=2, gain_db=(-3, 3), seed=0)[0]
    assert [t.offset for t in loud.tracks] == [t.offset for t in sessions[0].tracks]
    assert loud.tracks[0].snr is None and all(-3 <= -t.snr <= 3 for t in loud.tracks[1:])


def test_render_audio(sources, tmp_path):
    mix = simulate_mixtures(sources, num_mixtures=1, seed=2)
    out = render_audio(mix, tmp_path / "wav")
    want = mix[0].load_audio()[0]
    want = want * min(1.0, 0.99 / np.abs(want).max())
    got = out[0].load_audio()[0]
    np.testing.assert_allclose(got, want, atol=2 ** -14)  # 16-bit FLAC
    assert out[0].id == mix[0].id and sot_text(out[0]) == sot_text(mix[0])
    assert all(s.recording_id == out[0].recording_id for s in out[0].supervisions)


def test_cli(tiny_asr_data, tmp_path):
    from asrkit.cli import main

    out = tmp_path / "mix.jsonl.gz"
    assert main(["mix", "--cuts", str(tiny_asr_data[0]), "--out", str(out), "--num-speakers", "2", "3",
                 "--num-mixtures", "5", "--seed", "4", "--gain-db", "-3", "3"]) == 0
    cuts = CutSet.from_file(out).to_eager()
    assert len(cuts) == 5 and all(isinstance(c, MixedCut) for c in cuts)
    assert all(-3 <= -t.snr <= 3 for c in cuts for t in c.tracks[1:])
    expected = simulate_mixtures(CutSet.from_file(tiny_asr_data[0]), num_speakers=[2, 3], num_mixtures=5, seed=4,
                                 gain_db=(-3, 3))
    assert [sot_text(c) for c in cuts] == [sot_text(c) for c in expected]
