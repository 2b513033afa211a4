"""Training and evaluation dataloaders over lhotse CutSets.

The pieces are lhotse's (DynamicBucketingSampler, PrecomputedFeatures / OnTheFlyFeatures,
SpecAugment, speed perturbation); this module only wires them the way every asrkit recipe
wants them, filters unusable cuts with logged counts, and turns audio errors into messages
that name the file.
"""

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler, SpecAugment
from lhotse.dataset.input_strategies import OnTheFlyFeatures, PrecomputedFeatures

from asrkit.data.features import FEATURE_ALIASES, NUM_MEL_BINS, audio_sources, feature_extractor, first_line

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    train_cuts: str = ""
    valid_cuts: str = ""
    max_duration: float = 200.0  # seconds of audio per batch
    num_buckets: int = 10
    num_workers: int = 2
    on_the_fly_feats: bool = False  # compute features in the workers instead of reading lilcom
    feature_type: str = "fbank"  # or "whisper-fbank" (Whisper encoders); precomputed ones are checked against it
    num_mel_bins: int = NUM_MEL_BINS  # 80, or 128 for Whisper large-v3 / turbo
    speed_perturb: List[float] = ()  # e.g. [0.9, 1.1]; on-the-fly features only
    spec_augment: bool = True
    time_warp_factor: int = 80
    num_frame_masks: int = 10
    min_utt_duration: float = 0.3
    max_utt_duration: float = 30.0
    seed: int = 42


class AsrDataset(torch.utils.data.Dataset):
    """Map a CutSet (one sampler batch) to padded features and transcripts.

    Returns ``{"feats": (N, T, C), "feat_lens": (N,), "texts": [str], "cut_ids": [str]}``
    sorted by decreasing length, as lhotse's collation does. ``feature_type`` and ``num_mel_bins``
    pick the on-the-fly front end; precomputed features are read as stored.
    """

    def __init__(self, on_the_fly_feats: bool = False, spec_augment: Optional[SpecAugment] = None,
                 feature_type: str = "fbank", num_mel_bins: int = NUM_MEL_BINS):
        super().__init__()
        self.strategy = OnTheFlyFeatures(feature_extractor(feature_type, num_mel_bins)) if on_the_fly_feats \
            else PrecomputedFeatures()
        self.spec_augment = spec_augment

    def __getitem__(self, cuts: CutSet) -> Dict:
        cuts = cuts.sort_by_duration(ascending=False)
        try:
            feats, feat_lens = self.strategy(cuts)  # (N, T, C), (N,)
        except Exception as e:
            raise RuntimeError(_describe_load_failure(cuts, e)) from e
        if self.spec_augment is not None:
            feats = self.spec_augment(feats)
        texts = [" ".join(s.text for s in c.supervisions if s.text) for c in cuts]
        return {"feats": feats, "feat_lens": feat_lens, "texts": texts, "cut_ids": [c.id for c in cuts]}


def _describe_load_failure(cuts: CutSet, err: Exception) -> str:
    """Find which cut of a failed batch is unreadable, so the message names a file."""
    for cut in cuts:
        try:
            cut.load_features() if cut.has_features else cut.load_audio()
        except Exception as e:
            what = "features" if cut.has_features else "audio"
            where = cut.features.storage_path if cut.has_features else ", ".join(audio_sources(cut))
            return (f"cannot load {what} of cut {cut.id}: {where} ({type(e).__name__}: {first_line(e)}); "
                    "run `asrkit validate --cuts MANIFEST`")
    return f"cannot load a batch of {len(cuts)} cuts ({type(err).__name__}: {first_line(err)})"


def filter_cuts(
    cuts: CutSet,
    min_duration: float = 0.3,
    max_duration: float = 30.0,
    frames_needed: Optional[Callable[[str], int]] = None,
    subsampling_factor: int = 4,
    frame_shift: float = 0.01,
) -> CutSet:
    """Drop cuts too short, too long, without text, or with more tokens than output frames.

    Counts each reason (one pass over the manifest) and logs them, then returns the lazily filtered set.
    """
    counts: Counter = Counter()

    def reason(c) -> Optional[str]:
        if c.duration < min_duration:
            return "too short"
        if c.duration > max_duration:
            return "too long"
        text = " ".join(s.text or "" for s in c.supervisions).strip()
        if not text:
            return "empty transcript"
        if frames_needed is not None:
            # The Zipformer front end gives (T - 7) // 2 frames at 50 Hz, halved again at the output.
            out_frames = ((round(c.duration / frame_shift) - 7) // 2 + 1) // (subsampling_factor // 2)
            if frames_needed(text) > out_frames:
                return "more tokens than frames"
        return None

    for c in cuts:
        counts[reason(c) or "kept"] += 1
    dropped = {k: v for k, v in counts.items() if k != "kept"}
    if dropped:
        log.warning("filtered cuts: kept %d, dropped %s", counts["kept"], dropped)
    if counts["kept"] == 0:
        raise ValueError(f"no usable cuts left after filtering: {dict(counts)}")
    def keep(c) -> bool:
        return reason(c) is None

    return cuts.filter(keep)


def stored_feature_type(cut) -> Optional[tuple]:
    """``(type, dim)`` of a cut's precomputed features (a mixture's first track with features), or None.

    The type is one of :data:`FEATURE_TYPES` where lhotse's name is an alias of one (kaldifeat-fbank is fbank).
    """
    feats = getattr(cut, "features", None)
    for track in getattr(cut, "tracks", None) or ():
        feats = feats or getattr(track.cut, "features", None)
    return (FEATURE_ALIASES.get(feats.type, feats.type), feats.num_features) if feats is not None else None


def check_feature_type(cfg: DataConfig, cuts: CutSet) -> None:
    """Fail early when the manifest's stored features are not the ones ``cfg`` asks for.

    Kaldi fbank and Whisper log-mel can both have 80 bins, so a model's input-dim check alone
    would not notice one fed in place of the other. Looks at the first cut only.
    """
    first = next(iter(cuts), None)
    if first is None:
        return  # an empty manifest is the sampler's (or filter_cuts') to report
    found, want = stored_feature_type(first), (cfg.feature_type, cfg.num_mel_bins)
    if found is None:
        raise ValueError("the cuts have no precomputed features: run `asrkit compute-fbank` "
                         "or set data.on_the_fly_feats=true")
    if found != want:
        raise ValueError(f"the cuts hold {found[1]}-dim {found[0]} features but the config asks for {want[1]}-dim "
                         f"{want[0]}: recompute with `asrkit compute-fbank --feature-type {want[0]} --num-mel-bins "
                         f"{want[1]}` or set data.feature_type={found[0]} data.num_mel_bins={found[1]}")


def train_dataloader(
    cfg: DataConfig, cuts: CutSet, rank: int = 0, world_size: int = 1
) -> torch.utils.data.DataLoader:
    """Bucketed, shuffled, rank-sharded batches of ``cfg.max_duration`` seconds.

    Precomputed features are checked against ``cfg.feature_type`` / ``cfg.num_mel_bins`` first.
    """
    if not cfg.on_the_fly_feats:
        check_feature_type(cfg, cuts)
    if cfg.speed_perturb:
        if not cfg.on_the_fly_feats:
            raise ValueError("data.speed_perturb needs data.on_the_fly_feats=true; for precomputed "
                             "features perturb at extraction (asrkit compute-fbank --speed-perturb 0.9 1.1)")
        cuts = CutSet.mux(cuts, *[cuts.perturb_speed(f) for f in cfg.speed_perturb])
    sampler = DynamicBucketingSampler(
        cuts, max_duration=cfg.max_duration, num_buckets=cfg.num_buckets, shuffle=True,
        drop_last=True, seed=cfg.seed, rank=rank, world_size=world_size,
    )
    spec = SpecAugment(time_warp_factor=cfg.time_warp_factor, num_frame_masks=cfg.num_frame_masks) \
        if cfg.spec_augment else None
    return _loader(AsrDataset(cfg.on_the_fly_feats, spec, cfg.feature_type, cfg.num_mel_bins), sampler,
                   cfg.num_workers)


def eval_dataloader(cfg: DataConfig, cuts: CutSet, max_duration: Optional[float] = None) -> torch.utils.data.DataLoader:
    """Every cut once, in manifest order (no bucketing, no augmentation).

    Precomputed features are used as stored, unchecked: decoding reads whatever a test manifest holds.
    """
    sampler = SimpleCutSampler(cuts, max_duration=max_duration or cfg.max_duration, shuffle=False)
    return _loader(AsrDataset(cfg.on_the_fly_feats, None, cfg.feature_type, cfg.num_mel_bins), sampler,
                   cfg.num_workers)


def _loader(dataset, sampler, num_workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
        persistent_workers=False,
    )
