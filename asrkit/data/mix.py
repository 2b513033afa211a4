"""Multi-talker mixtures from single-speaker cuts, for serialized output training (SOT).

Pure functions from CutSet to CutSet, lhotse style. A mixture is a lhotse ``MixedCut``: its audio is
mixed on the fly from the source recordings, and its supervisions are the sources' own (speaker
ids kept, start times moved by each track's offset), so :func:`sot_text` can serialize them::

    from asrkit.data.mix import simulate_mixtures, simulate_sessions, add_noise, sot_text
    mixes = simulate_mixtures(cuts, num_speakers=2, min_offset=1.0, max_offset=1.5, seed=0)
    mixes = add_noise(mixes, musan_cuts, snr_db=(10, 20), seed=0)
    sot_text(mixes[0])   # 'first speaker words <sc> second speaker words'

    asrkit mix --cuts data/fbank/librispeech_cuts_train.jsonl.gz --out data/mix/train_2spk.jsonl.gz \\
        --num-speakers 2 --seed 0

Utterance mixtures follow ESPnet's ``egs2/librimix/sot_asr1`` (LibriMix re-simulated for SOT):
each next speaker starts 1.0 to 1.5 s after the previous one. Levels: LibriMix draws each source's
loudness uniformly in [-33, -25] LUFS, so two speakers differ by up to 8 dB; here each later
speaker's level relative to the first is drawn uniformly from ``gain_db`` (energy over the whole
cut, as lhotse's SNR). Conversation-style sessions (several turns per speaker, pauses and overlaps)
come from lhotse's ``ConversationalMeetingSimulator``.
"""

from __future__ import annotations

import logging
import random
import uuid
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from lhotse import CutSet, SupervisionSet
from lhotse.cut import Cut, MixedCut, MixTrack
from lhotse.utils import fastcopy

from asrkit.text.sot import SC, serialize_sot

log = logging.getLogger(__name__)

__all__ = ["add_noise", "render_audio", "simulate_mixtures", "simulate_sessions", "sot_text", "sot_texts"]

Range = Tuple[float, float]
OFFSET_RESOLUTION = 0.01  # s: offsets on the 10 ms feature grid, so supervisions start on a frame


def _check_range(name: str, rng: Optional[Sequence[float]], low: float = -float("inf")) -> Optional[Range]:
    if rng is None:
        return None
    if isinstance(rng, (int, float)):
        rng = (float(rng), float(rng))
    if len(rng) != 2 or rng[0] > rng[1] or rng[0] < low:
        raise ValueError(f"{name} must be a (min, max) pair with min <= max (and min >= {low}), got {rng!r}")
    return float(rng[0]), float(rng[1])


def _speaker_of(cut: Cut) -> str:
    speakers = {s.speaker for s in cut.supervisions}
    if not cut.supervisions or None in speakers or len(speakers) != 1:
        raise ValueError(f"cut {cut.id}: a source cut needs supervisions of exactly one known speaker, got "
                         f"{sorted(map(str, speakers)) or 'no supervisions'}; mixtures need speaker ids to "
                         "keep speakers distinct (set SupervisionSegment.speaker in the manifest)")
    return speakers.pop()


def _source_cut(cut: Cut, keep_features: bool) -> Cut:
    # Features of a single track say nothing about the mixture: compute them from the mixed audio.
    return cut if keep_features or not cut.has_features else cut.drop_features()


def _by_speaker(cuts: CutSet, keep_features: bool) -> Dict[str, List[Cut]]:
    groups: Dict[str, List[Cut]] = {}
    for cut in cuts:
        groups.setdefault(_speaker_of(cut), []).append(_source_cut(cut, keep_features))
    return groups


def simulate_mixtures(
    cuts: CutSet,
    num_speakers: Union[int, Sequence[int]] = 2,
    num_mixtures: Optional[int] = None,
    min_offset: float = 1.0,
    max_offset: float = 1.5,
    gain_db: Optional[Sequence[float]] = (-5.0, 5.0),
    seed: int = 0,
    id_prefix: str = "mix",
    keep_features: bool = False,
) -> CutSet:
    """Mix utterances of 2 or 3 (``num_speakers``; a list draws one count per mixture) distinct speakers.

    Every source cut leads (speaks first in) one mixture, in a seeded random order, until
    ``num_mixtures`` (default: one per source cut) are made; the other speakers are drawn at random
    among the other speakers, one random utterance each. Speaker ``k`` starts ``U(min_offset,
    max_offset)`` seconds after speaker ``k-1`` (rounded to 10 ms), and is mixed at a level of
    ``U(*gain_db)`` dB relative to the first speaker (lhotse ``MixTrack.snr = -gain``); ``gain_db=None``
    sums the recordings as they are. Mixture ids are ``{id_prefix}{index:06d}``.
    """
    counts = [num_speakers] if isinstance(num_speakers, int) else list(num_speakers)
    if not counts or any(not isinstance(n, int) or n < 2 for n in counts):
        raise ValueError(f"num_speakers must be an int >= 2 or a list of them, got {num_speakers!r}")
    offsets = _check_range("min_offset/max_offset", (min_offset, max_offset), low=0.0)
    gains = _check_range("gain_db", gain_db)
    groups = _by_speaker(cuts, keep_features)
    if len(groups) < max(counts):
        raise ValueError(f"{max(counts)}-speaker mixtures need at least {max(counts)} speakers; "
                         f"the source cuts have {len(groups)}: {sorted(groups)[:5]}")
    speakers = sorted(groups)
    leads = [(spk, cut) for spk in speakers for cut in groups[spk]]
    num_mixtures = len(leads) if num_mixtures is None else num_mixtures
    if num_mixtures < 1:
        raise ValueError(f"num_mixtures must be >= 1, got {num_mixtures}")
    rng = random.Random(seed)
    order: List[int] = []
    mixtures = []
    for i in range(num_mixtures):
        if not order:  # one pass over the sources in a new order each time
            order = list(range(len(leads)))
            rng.shuffle(order)
        lead_spk, lead = leads[order.pop()]
        n = rng.choice(counts)
        others = rng.sample([s for s in speakers if s != lead_spk], n - 1)
        tracks = [MixTrack(cut=lead)]
        start = 0.0
        for spk in others:
            start = round((start + rng.uniform(*offsets)) / OFFSET_RESOLUTION) * OFFSET_RESOLUTION
            start = round(start, 6)
            snr = None if gains is None else -rng.uniform(*gains)
            tracks.append(MixTrack(cut=rng.choice(groups[spk]), offset=start, snr=snr))
        mixtures.append(MixedCut(id=f"{id_prefix}{i:06d}", tracks=tracks))
    log.info("simulated %d mixtures of %s speakers from %d cuts of %d speakers",
             len(mixtures), "/".join(map(str, counts)), len(leads), len(speakers))
    return CutSet.from_cuts(mixtures)


@contextmanager
def _global_seed(seed: int) -> Iterator[None]:
    """lhotse's meeting simulator and noise mixer draw from the global ``random`` and NumPy generators
    and name new cuts with ``lhotse.utils.uuid4``: seed all three for the call (as lhotse's
    ``fix_random_seed`` does for good), then give the caller its own streams back."""
    import lhotse.utils

    py_state, np_state, uuid_fn = random.getstate(), np.random.get_state(), lhotse.utils._lhotse_uuid
    random.seed(seed)
    np.random.seed(seed)
    ids = random.Random(seed)
    lhotse.utils._lhotse_uuid = lambda: uuid.UUID(int=ids.getrandbits(128))
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        lhotse.utils._lhotse_uuid = uuid_fn


def simulate_sessions(
    cuts: CutSet,
    num_sessions: int,
    num_speakers: Union[int, Sequence[int]] = 2,
    max_utterances_per_speaker: int = 3,
    max_duration_per_speaker: float = 20.0,
    same_spk_pause: float = 1.0,
    diff_spk_pause: float = 1.0,
    diff_spk_overlap: float = 2.0,
    prob_diff_spk_overlap: float = 0.5,
    fit_on: Optional[SupervisionSet] = None,
    allow_3fold_overlap: bool = False,
    gain_db: Optional[Sequence[float]] = None,
    seed: int = 0,
    id_prefix: str = "session",
    keep_features: bool = False,
) -> CutSet:
    """Conversation-style sessions from lhotse's ``ConversationalMeetingSimulator`` (arXiv 2204.00890).

    Each session has ``num_speakers`` speakers with up to ``max_utterances_per_speaker`` turns each;
    pauses and overlaps between turns are drawn from shifted Gamma distributions (the ``*_pause``,
    ``*_overlap`` means), or from histograms learnt on a real meeting corpus's supervisions
    (``fit_on``, e.g. AMI). One track per speaker; ``gain_db`` as in :func:`simulate_mixtures`
    (None: the recordings' own levels, as lhotse). Deterministic by ``seed``; ids
    ``{id_prefix}{index:06d}``.
    """
    from lhotse.workflows.meeting_simulation import ConversationalMeetingSimulator

    counts = [num_speakers] if isinstance(num_speakers, int) else list(num_speakers)
    if not counts or any(n < 2 for n in counts):
        raise ValueError(f"num_speakers must be an int >= 2 or a list of them, got {num_speakers!r}")
    if num_sessions < 1:
        raise ValueError(f"num_sessions must be >= 1, got {num_sessions}")
    gains = _check_range("gain_db", gain_db)
    groups = _by_speaker(cuts, keep_features)
    if len(groups) < max(counts):
        raise ValueError(f"{max(counts)}-speaker sessions need at least {max(counts)} speakers; "
                         f"the source cuts have {len(groups)}")
    sources = CutSet.from_cuts(c for spk in sorted(groups) for c in groups[spk])
    sim = ConversationalMeetingSimulator(same_spk_pause=same_spk_pause, diff_spk_pause=diff_spk_pause,
                                         diff_spk_overlap=diff_spk_overlap,
                                         prob_diff_spk_overlap=prob_diff_spk_overlap)
    with _global_seed(seed):
        sim.fit(fit_on)
        sessions = sim.simulate(sources, num_meetings=num_sessions, num_speakers_per_meeting=counts,
                                max_utterances_per_speaker=max_utterances_per_speaker,
                                max_duration_per_speaker=max_duration_per_speaker,
                                allow_3fold_overlap=allow_3fold_overlap, seed=seed)
    rng = random.Random(seed)
    out = []
    for i, cut in enumerate(sessions):
        tracks = list(cut.tracks)
        if gains is not None:
            tracks = [tracks[0]] + [replace(t, snr=-rng.uniform(*gains)) for t in tracks[1:]]
        out.append(MixedCut(id=f"{id_prefix}{i:06d}", tracks=tracks))
    return CutSet.from_cuts(out)


def add_noise(
    cuts: CutSet,
    noise_cuts: CutSet,
    snr_db: Union[float, Sequence[float]] = (10.0, 20.0),
    prob: float = 1.0,
    seed: int = 0,
) -> CutSet:
    """Add noise cuts (e.g. MUSAN noise) to each cut with probability ``prob``, at an SNR drawn from
    ``snr_db`` relative to the cut's first track (the first speaker of a mixture).

    lhotse's ``CutSet.mix``: a noise cut is cut to length at a random offset, or several are
    chained to cover the whole mixture. Noise supervisions and features are dropped; ids are kept.
    """
    snr = _check_range("snr_db", snr_db)
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    noise = [_source_cut(c, False).drop_supervisions() for c in noise_cuts]
    if not noise:
        raise ValueError("add_noise: the noise CutSet is empty")
    with _global_seed(seed):  # names of cut-to-length noise cuts
        return cuts.mix(CutSet.from_cuts(noise), snr=list(snr), mix_prob=prob, seed=seed, preserve_id="left",
                        random_mix_offset=True, tag="noise").to_eager()


def sot_text(cut: Cut, sc: str = SC, merge_same_speaker: bool = True) -> str:
    """The SOT transcript of a cut: its supervisions' texts by start time, joined by ``<sc>``
    (:func:`asrkit.text.sot.serialize_sot`)."""
    return serialize_sot(cut.supervisions, sc=sc, merge_same_speaker=merge_same_speaker)


def sot_texts(cuts: CutSet, sc: str = SC, merge_same_speaker: bool = True) -> Dict[str, str]:
    """``cut id -> SOT transcript`` for a whole set (references for scoring)."""
    return {c.id: sot_text(c, sc, merge_same_speaker) for c in cuts}


def render_audio(cuts: CutSet, out_dir: Union[str, Path], format: str = "flac", peak: float = 0.99) -> CutSet:
    """Write each (mixed) cut's audio into ``out_dir`` and return cuts that read those files.

    A mixture louder than ``peak`` is scaled down as a whole so that 16-bit FLAC does not clip.
    Supervisions keep their times and speakers and point at the new recordings.
    """
    def limit(samples: np.ndarray, sampling_rate: int) -> np.ndarray:
        top = float(np.abs(samples).max()) if samples.size else 0.0
        return samples * (peak / top) if top > peak else samples

    rendered = cuts.save_audios(Path(out_dir), format=format, augment_fn=limit, progress_bar=False)
    return CutSet.from_cuts(
        fastcopy(c, supervisions=[fastcopy(s, recording_id=c.recording_id, channel=0) for s in c.supervisions])
        for c in rendered)
