"""Training and evaluation dataloaders over lhotse CutSets.

The pieces are lhotse's (DynamicBucketingSampler, PrecomputedFeatures / OnTheFlyFeatures /
AudioSamples, SpecAugment, speed perturbation); this module only wires them the way every asrkit
recipe wants them, filters unusable cuts with logged counts, and turns audio errors into messages
that name the file. ``data.feature_type: waveform`` feeds waveform encoders (WavLM) the 16 kHz
samples themselves, as ``(N, samples, 1)`` "features" with sample counts as lengths.

SpecAugment (``data.spec_augment``, on by default for filterbank inputs) masks both axes: lhotse's
defaults of 2 frequency (channel) masks of up to 27 bins and ``data.num_frame_masks`` (10) time masks of
up to 100 frames and at most 15% of the utterance (``data.features_mask_size``, ``data.num_feature_masks``,
``data.frames_mask_size``, ``data.max_frames_mask_fraction``), plus time warping (``data.time_warp_factor``,
0 turns it off). Fine-tuning a pretrained encoder uses the same keys (VietASR and icefall keep them).

Large corpora come as lhotse Shar (``data.train_shar``: one Shar dir or several, instead of
``data.train_cuts``): :func:`shar_train_dataloader` reads them sequentially, shards split over DDP ranks
and DataLoader workers (``split_for_dataloading``) and shuffled per epoch, see its docstring.
"""

import logging
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, IterableDatasetWrapper, SimpleCutSampler, SpecAugment
from lhotse.dataset.dataloading import make_worker_init_fn
from lhotse.dataset.input_strategies import AudioSamples, OnTheFlyFeatures, PrecomputedFeatures
from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets
from lhotse.shar import LazySharIterator

from asrkit.data.features import (FEATURE_ALIASES, NUM_MEL_BINS, SAMPLE_RATE, WAVEFORM, audio_sources,
                                  feature_extractor, first_line)
from asrkit.text.sot import serialize_sot

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    train_cuts: str = ""
    valid_cuts: str = ""
    train_shar: List[str] = ()  # lhotse Shar dir(s) to train on instead of train_cuts (shar_train_dataloader)
    shar_buffer_size: int = 4000  # Shar: cuts (with their data) held per worker for bucketing and for shuffling
    max_duration: float = 200.0  # seconds of audio per batch
    num_buckets: int = 10
    num_workers: int = 2
    on_the_fly_feats: bool = False  # compute features in the workers instead of reading lilcom
    feature_type: str = "fbank"  # or "whisper-fbank" (Whisper encoders), "waveform" (WavLM: audio, no features)
    num_mel_bins: int = NUM_MEL_BINS  # 80, or 128 for Whisper large-v3 / turbo
    speed_perturb: List[float] = ()  # e.g. [0.9, 1.1]; on-the-fly features or waveforms only
    spec_augment: bool = True  # never on waveforms
    time_warp_factor: int = 80  # 0: no time warping
    num_frame_masks: int = 10  # time masks
    frames_mask_size: int = 100  # longest time mask, in frames
    max_frames_mask_fraction: float = 0.15  # time masks cover at most this fraction of an utterance
    num_feature_masks: int = 2  # channel (frequency) masks
    features_mask_size: int = 27  # widest channel mask, in bins
    min_utt_duration: float = 0.3
    max_utt_duration: float = 30.0
    seed: int = 42


def cut_text(cut) -> str:
    """A cut's training target: its transcript, or, when several speakers talk in it (a mixture), the
    serialized-output-training text: speaker turns by start time joined with ``<sc>``."""
    sups = [s for s in cut.supervisions if s.text]
    if len({s.speaker for s in sups}) > 1:
        return serialize_sot(sups)
    return " ".join(s.text for s in sups)


class AsrDataset(torch.utils.data.Dataset):
    """Map a CutSet (one sampler batch) to padded features and transcripts.

    Returns ``{"feats": (N, T, C), "feat_lens": (N,), "texts": [str], "cut_ids": [str]}``
    sorted by decreasing length, as lhotse's collation does. ``feature_type`` and ``num_mel_bins``
    pick the on-the-fly front end; precomputed features are read as stored. ``feature_type="waveform"``
    always reads audio (``(N, samples, 1)``, see :class:`WaveformInputs`), whatever ``on_the_fly_feats`` says.
    """

    def __init__(self, on_the_fly_feats: bool = False, spec_augment: Optional[SpecAugment] = None,
                 feature_type: str = "fbank", num_mel_bins: int = NUM_MEL_BINS):
        super().__init__()
        if feature_type == WAVEFORM:
            if spec_augment is not None:
                raise ValueError("SpecAugment works on filterbank frames, not on waveforms")
            self.strategy = WaveformInputs()
        else:
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
        texts = [cut_text(c) for c in cuts]
        return {"feats": feats, "feat_lens": feat_lens, "texts": texts, "cut_ids": [c.id for c in cuts]}


class WaveformInputs:
    """Input strategy for waveform encoders: each cut's audio at 16 kHz (resampled where needed, mixed
    down to mono), zero-padded: ``(N, samples, 1)`` and ``(N,)`` sample counts."""

    def __init__(self):
        self.audio = AudioSamples(mono_downmix=True)

    def __call__(self, cuts: CutSet):
        cuts = CutSet.from_cuts(c if c.sampling_rate == SAMPLE_RATE else c.resample(SAMPLE_RATE) for c in cuts)
        audio, lens = self.audio(cuts)  # (N, S), (N,)
        return audio.unsqueeze(-1), lens


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


def cut_problem(
    c,
    min_duration: float = 0.3,
    max_duration: float = 30.0,
    frames_needed: Optional[Callable[[str], int]] = None,
    subsampling_factor: int = 4,
    frame_shift: float = 0.01,
    require_text: bool = True,
    feature_type: str = "fbank",
) -> Optional[str]:
    """Why :func:`filter_cuts` drops cut ``c`` ("too short", ...), or None when it is usable."""
    if c.duration < min_duration:
        return "too short"
    if c.duration > max_duration:
        return "too long"
    text = cut_text(c).strip()
    if not text and require_text:
        return "empty transcript"
    if frames_needed is not None and feature_type == WAVEFORM:
        # a wav2vec2/WavLM conv stack: one frame per subsampling_factor (320) samples, one fewer at most
        # for its receptive field (400 samples)
        out_frames = round(c.duration * SAMPLE_RATE) // subsampling_factor - 1
        if frames_needed(text) > out_frames:
            return "more tokens than frames"
    elif frames_needed is not None:
        # The Zipformer front end gives (T - 7) // 2 frames at 50 Hz, halved again at the output.
        out_frames = ((round(c.duration / frame_shift) - 7) // 2 + 1) // (subsampling_factor // 2)
        if frames_needed(text) > out_frames:
            return "more tokens than frames"
    return None


def filter_cuts(
    cuts: CutSet,
    min_duration: float = 0.3,
    max_duration: float = 30.0,
    frames_needed: Optional[Callable[[str], int]] = None,
    subsampling_factor: int = 4,
    frame_shift: float = 0.01,
    require_text: bool = True,
    feature_type: str = "fbank",
    count_on: Optional[CutSet] = None,
) -> CutSet:
    """Drop cuts too short, too long, without text (unless ``require_text=False``: SSL pretraining), or
    with more tokens than output frames (of a Zipformer-like front end on frames, or for
    ``feature_type="waveform"`` a wav2vec2-like conv stack on samples): :func:`cut_problem`.

    Counts each reason (one pass over ``count_on``, default ``cuts``: for Shar the cut manifests alone,
    so that the count reads no audio or features) and logs them, then returns the lazily filtered set.
    """
    kw = dict(min_duration=min_duration, max_duration=max_duration, frames_needed=frames_needed,
              subsampling_factor=subsampling_factor, frame_shift=frame_shift, require_text=require_text,
              feature_type=feature_type)
    counts: Counter = Counter()
    for c in cuts if count_on is None else count_on:
        counts[cut_problem(c, **kw) or "kept"] += 1
    dropped = {k: v for k, v in counts.items() if k != "kept"}
    if dropped:
        log.warning("filtered cuts: kept %d, dropped %s", counts["kept"], dropped)
    if counts["kept"] == 0:
        raise ValueError(f"no usable cuts left after filtering: {dict(counts)}")

    def keep(c) -> bool:
        return cut_problem(c, **kw) is None

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
    would not notice one fed in place of the other. Waveforms want cuts without features: stored
    ones would be silently ignored. Looks at the first cut only.
    """
    first = next(iter(cuts), None)
    if first is None:
        return  # an empty manifest is the sampler's (or filter_cuts') to report
    found, want = stored_feature_type(first), (cfg.feature_type, cfg.num_mel_bins)
    if cfg.feature_type == WAVEFORM:
        if found is not None:
            raise ValueError(f"the cuts hold {found[1]}-dim {found[0]} features but data.feature_type=waveform reads "
                             "the audio itself: give the cut manifest without features (the one `asrkit compute-fbank` "
                             f"read), or set data.feature_type={found[0]} data.num_mel_bins={found[1]} for a "
                             "filterbank encoder")
        return
    if found is None:
        raise ValueError("the cuts have no precomputed features: run `asrkit compute-fbank` "
                         "or set data.on_the_fly_feats=true")
    if found != want:
        raise ValueError(f"the cuts hold {found[1]}-dim {found[0]} features but the config asks for {want[1]}-dim "
                         f"{want[0]}: recompute with `asrkit compute-fbank --feature-type {want[0]} --num-mel-bins "
                         f"{want[1]}` or set data.feature_type={found[0]} data.num_mel_bins={found[1]}")


def check_encoder_inputs(cfg: DataConfig, encoder, name: str) -> None:
    """Fail early when ``data.feature_type`` is not what encoder ``name`` takes: its ``feature_type``
    attribute (Whisper: whisper-fbank of ``num_mel_bins``, WavLM: waveform); encoders without one
    (Zipformer) take filterbank frames."""
    want = getattr(encoder, "feature_type", None)
    if WAVEFORM in (want, cfg.feature_type):
        if want != cfg.feature_type:
            hint = ("set data.feature_type=waveform and give cuts without precomputed features" if want == WAVEFORM
                    else f"set data.feature_type={want or 'fbank'}")
            raise ValueError(f"model.encoder={name} takes {'waveforms' if want == WAVEFORM else 'filterbank features'}"
                             f" but data.feature_type={cfg.feature_type}: {hint}")
    elif want and (cfg.feature_type, cfg.num_mel_bins) != (want, encoder.num_mel_bins):
        raise ValueError(f"model.encoder={name} takes {encoder.num_mel_bins}-dim {want} features: "
                         f"set data.feature_type={want} data.num_mel_bins={encoder.num_mel_bins}")


def train_dataloader(
    cfg: DataConfig, cuts: CutSet, rank: int = 0, world_size: int = 1, dataset_cls: type = AsrDataset
) -> torch.utils.data.DataLoader:
    """Bucketed, shuffled, rank-sharded batches of ``cfg.max_duration`` seconds.

    Precomputed features are checked against ``cfg.feature_type`` / ``cfg.num_mel_bins`` first.
    ``dataset_cls`` takes AsrDataset's arguments (e.g. ``asrkit.data.ssl_dataset.SslDataset``).
    Waveforms (``feature_type: waveform``) get speed perturbation but no SpecAugment.
    """
    waveform = cfg.feature_type == WAVEFORM
    if waveform or not cfg.on_the_fly_feats:
        check_feature_type(cfg, cuts)
    if cfg.speed_perturb:
        if not (cfg.on_the_fly_feats or waveform):
            raise ValueError("data.speed_perturb needs data.on_the_fly_feats=true; for precomputed "
                             "features perturb at extraction (asrkit compute-fbank --speed-perturb 0.9 1.1)")
        cuts = CutSet.mux(cuts, *[cuts.perturb_speed(f) for f in cfg.speed_perturb])
    sampler = DynamicBucketingSampler(
        cuts, max_duration=cfg.max_duration, num_buckets=cfg.num_buckets, shuffle=True,
        drop_last=True, seed=cfg.seed, rank=rank, world_size=world_size,
    )
    if cfg.spec_augment and waveform:
        log.info("data.spec_augment is off for waveforms (a waveform encoder masks its own frames, e.g. "
                 "WavLM's mask_time_prob)")
    return _loader(dataset_cls(cfg.on_the_fly_feats, _spec_augment(cfg), cfg.feature_type, cfg.num_mel_bins),
                   sampler, cfg.num_workers)


def _spec_augment(cfg: DataConfig) -> Optional[SpecAugment]:
    if not cfg.spec_augment or cfg.feature_type == WAVEFORM:
        return None
    return SpecAugment(time_warp_factor=cfg.time_warp_factor, num_frame_masks=cfg.num_frame_masks,
                       frames_mask_size=cfg.frames_mask_size, max_frames_mask_fraction=cfg.max_frames_mask_fraction,
                       num_feature_masks=cfg.num_feature_masks, features_mask_size=cfg.features_mask_size)


def eval_dataloader(cfg: DataConfig, cuts: CutSet, max_duration: Optional[float] = None,
                    dataset_cls: type = AsrDataset) -> torch.utils.data.DataLoader:
    """Every cut once, in manifest order (no bucketing, no augmentation).

    Precomputed features are used as stored, unchecked: decoding reads whatever a test manifest holds.
    """
    sampler = SimpleCutSampler(cuts, max_duration=max_duration or cfg.max_duration, shuffle=False)
    return _loader(dataset_cls(cfg.on_the_fly_feats, None, cfg.feature_type, cfg.num_mel_bins), sampler,
                   cfg.num_workers)


def _loader(dataset, sampler, num_workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
        persistent_workers=False,
    )


# ---------------------------------------------------------------------------------------------- Shar

SHAR_AUDIO, SHAR_FEATURES = "recording", "features"


def shar_fields(dirs: Sequence[str], cfg: DataConfig) -> Dict[str, List[str]]:
    """``{field: [shard paths]}`` over every Shar dir in ``dirs``, for ``CutSet.from_shar(fields=...)``.

    Reads the cut manifests, the custom fields the dirs have (e.g. ``ssl_targets``) and one of
    ``features`` (precomputed, lilcom) or ``recording`` (``data.on_the_fly_feats`` or waveform inputs):
    the other is never opened. Every dir must have the fields read, one shard of each per cut shard.
    """
    if isinstance(dirs, (str, Path)):
        dirs = [dirs]
    if not dirs:
        raise ValueError("no Shar dir given (set data.train_shar)")
    skip = SHAR_FEATURES if (cfg.on_the_fly_feats or cfg.feature_type == WAVEFORM) else SHAR_AUDIO
    per_dir = []
    for d in map(Path, dirs):
        if not d.is_dir():
            raise FileNotFoundError(f"data.train_shar: {d} is not a directory (a lhotse Shar dir: cuts.000000.jsonl.gz, "
                                    "...; `asrkit ssl label --shar` or `asrkit segment --shar` write them)")
        found: Dict[str, List[str]] = {}
        for p in sorted(d.iterdir()):
            name = p.name.split(".")[0]
            if name == "cuts" and ".jsonl" in p.name or name != "cuts" and ".tar" in p.name:
                found.setdefault(name, []).append(str(p))
        if not found.get("cuts"):
            raise ValueError(f"data.train_shar: {d} has no cuts.*.jsonl.gz shards")
        for name, paths in found.items():
            if len(paths) != len(found["cuts"]):
                raise ValueError(f"data.train_shar: {d} has {len(paths)} {name} shard(s) for {len(found['cuts'])} "
                                 "cut shard(s); was it written completely?")
        per_dir.append((d, {k: v for k, v in found.items() if k != skip}))
    want = SHAR_AUDIO if skip == SHAR_FEATURES else SHAR_FEATURES
    names = set(per_dir[0][1])
    for d, found in per_dir:
        if want not in found:
            hint = ("set data.on_the_fly_feats=true to compute features from its audio" if want == SHAR_FEATURES
                    else "it holds features only: set data.on_the_fly_feats=false")
            raise ValueError(f"data.train_shar: {d} has no {want} shards; {hint}")
        if set(found) != names:
            raise ValueError(f"data.train_shar: {d} has fields {sorted(found)}, {per_dir[0][0]} has {sorted(names)}: "
                             "every Shar dir must have the same fields")
    return {name: [p for _, found in per_dir for p in found[name]] for name in sorted(names)}


class SharEpochDataset(IterableDatasetWrapper):
    """lhotse's IterableDatasetWrapper whose ``set_epoch`` also reaches the Shar reader.

    Why: DataLoader workers get a fresh copy of the reader each epoch, so the epoch counter that
    ``stateful_shuffle`` advances inside a worker is lost; setting it here, before the DataLoader
    iterator (and its workers) is created, gives every epoch its own shard order (seed + epoch).
    """

    def __init__(self, dataset, sampler, shar: LazySharIterator):
        super().__init__(dataset, sampler)
        self.shar = shar

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.shar.epoch = epoch
        self._sampler_iter = None  # without workers, an epoch ended early (RankSyncedLoader) must not continue


class RankSyncedLoader(torch.utils.data.DataLoader):
    """A DataLoader whose epoch ends on every DDP rank as soon as one rank runs out of batches.

    Why: with Shar each rank reads its own shards, so ranks may have different numbers of batches and a
    rank that finished early would leave the others waiting in DDP's gradient all-reduce forever. One
    tiny all-reduce per batch agrees on whether all ranks still have one (the longer ranks drop their
    last batches: at most a shard's worth, a different tail each epoch as the shard order changes).
    """

    def __iter__(self):
        it = super().__iter__()
        synced = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        device = torch.device("cuda", torch.cuda.current_device()) if synced and dist.get_backend() == "nccl" \
            else torch.device("cpu")
        while True:
            batch = next(it, None)
            if synced:
                flag = torch.tensor([0 if batch is None else 1], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
                if int(flag) == 0:
                    if batch is not None:
                        log.info("rank %d: another rank has no batches left; ending the epoch here", dist.get_rank())
                    return
            if batch is None:
                return
            yield batch


def shar_train_dataloader(
    cfg: DataConfig,
    frames_needed: Optional[Callable[[str], int]] = None,
    subsampling_factor: int = 4,
    require_text: bool = True,
    rank: int = 0,
    world_size: int = 1,
    dataset_cls: type = AsrDataset,
) -> RankSyncedLoader:
    """Training batches from the Shar dirs ``cfg.train_shar``, as lhotse documents Shar training::

        cuts = CutSet.from_shar(fields=..., split_for_dataloading=True, shuffle_shards=True,
                                stateful_shuffle=True, seed=cfg.seed)
        DataLoader(IterableDatasetWrapper(dataset, DynamicBucketingSampler(cuts, ...)), batch_size=None,
                   num_workers=..., worker_init_fn=make_worker_init_fn(rank=rank, world_size=world_size, ...))

    ``split_for_dataloading`` gives DDP rank ``r`` of ``R`` and worker ``w`` of ``W`` the shards
    ``r::R`` and then ``w::W`` of them, after a shuffle of the shard list by ``seed + epoch`` that is
    the same on every rank: each epoch every cut is read once, by one worker of one rank (keep at least
    ``R x W`` shards, or some get none). The sampler then buckets and shuffles cuts within a buffer of
    ``cfg.shar_buffer_size`` cuts, with rank 0 of 1 (the sharding is done). Duration bins are estimated
    from the cut manifests alone and the filter counts (:func:`filter_cuts`) read them alone too, so
    neither opens a tar file. The trainer calls ``train_dl.dataset.set_epoch(epoch)`` (:class:`SharEpochDataset`).
    Fields: ``features`` (lilcom) or, with ``data.on_the_fly_feats`` / waveform inputs, ``recording``,
    plus custom ones such as ``ssl_targets``. Speed perturbation is not supported here.
    """
    if cfg.speed_perturb:
        raise ValueError("data.speed_perturb is not supported with data.train_shar (it would read every shard once "
                         "per factor); perturb when writing the Shar, or train from data.train_cuts")
    fields = shar_fields(cfg.train_shar, cfg)
    meta = CutSet.from_shar(fields={"cuts": fields["cuts"]})  # the manifests only: cheap to scan
    shar = LazySharIterator(fields=fields, split_for_dataloading=True, shuffle_shards=True, stateful_shuffle=True,
                            seed=cfg.seed)
    cuts = CutSet(shar)
    if cfg.feature_type == WAVEFORM or not cfg.on_the_fly_feats:
        check_feature_type(cfg, cuts)
    kw = dict(min_duration=cfg.min_utt_duration, max_duration=cfg.max_utt_duration, frames_needed=frames_needed,
              subsampling_factor=subsampling_factor, require_text=require_text, feature_type=cfg.feature_type)
    cuts = filter_cuts(cuts, count_on=meta, **kw)
    usable = (c for c in meta if cut_problem(c, **kw) is None)
    bins = estimate_duration_buckets(islice(usable, 10000), num_buckets=cfg.num_buckets)
    num_shards = len(fields["cuts"])
    readers = world_size * max(cfg.num_workers, 1)
    if num_shards < readers:
        raise ValueError(f"data.train_shar has {num_shards} shard(s) for {world_size} rank(s) x "
                         f"{max(cfg.num_workers, 1)} worker(s): some would read nothing; write smaller shards "
                         "(--shard-size) or use fewer data.num_workers")
    sampler = DynamicBucketingSampler(cuts, max_duration=cfg.max_duration, duration_bins=bins, shuffle=True,
                                      drop_last=False, seed=cfg.seed, buffer_size=cfg.shar_buffer_size,
                                      shuffle_buffer_size=cfg.shar_buffer_size, rank=0, world_size=1)
    dataset = SharEpochDataset(dataset_cls(cfg.on_the_fly_feats, _spec_augment(cfg), cfg.feature_type,
                                           cfg.num_mel_bins), sampler, shar)
    return RankSyncedLoader(dataset, batch_size=None, num_workers=cfg.num_workers, persistent_workers=False,
                            worker_init_fn=make_worker_init_fn(rank=rank, world_size=world_size,
                                                               set_different_node_and_worker_seeds=False))
