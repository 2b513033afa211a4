"""Frame targets for HuBERT-style pretraining (VietASR, arXiv 2505.21527): frame features -> k-means -> labels.

    asrkit ssl kmeans --cuts data/fbank/x_cuts_unlab.jsonl.gz --source fbank --out exp/km0.npz --max-hours 100
    asrkit ssl kmeans --cuts data/fbank/x_cuts_unlab.jsonl.gz --source exp/transducer --out exp/km1.npz
    asrkit ssl label --cuts data/fbank/x_cuts_unlab.jsonl.gz --kmeans exp/km1.npz --out-dir data/ssl1 --shar

Frame features come from a :class:`FrameSource`: the cuts' own fbank (100 Hz; plain HuBERT's iteration 0)
or the encoder of an asrkit Zipformer ASR experiment at 50 Hz (VietASR: iteration 1 uses the supervised
model trained on the labelled set, later iterations the previous fine-tuned one). For ``T`` feature frames
the Zipformer front end gives ``(T - 7) // 2`` frames at 50 Hz (:func:`encoder_frames_50hz`), so an
utterance gets exactly one label per 50 Hz encoder frame.

k-means is scikit-learn's ``MiniBatchKMeans`` fed by ``partial_fit`` while the features stream past
(:class:`StreamingKMeans`), so memory stays flat in the number of frames. ``partial_fit`` has no
``n_init``: it initialises once, with k-means++ on its first batch. Here the first buffer of frames
does what ``fit(n_init=...)`` does: ``n_init`` k-means++ candidates, each drawn from ``init_size``
random frames, scored by inertia on another ``init_size`` random frames; the best becomes ``init``.
``fit``'s ``max_iter`` (passes over data held in memory) becomes ``passes`` over the stream.
Measured (``asrkit ssl kmeans-memory --frames 100000 400000 --dim 512 --n-init 1``, 500 clusters, batches
of 10,000): 166 MiB traced peak for 100k frames and 173 MiB for 400k, where holding the frames would
take 195 and 781 MiB; the peak is about twice the 40,000-frame buffer plus sklearn's per-batch work.

Labels are int16 ``TemporalArray`` s in lossless numpy storage (lilcom is a lossy float codec), attached
to each cut as the custom field ``ssl_targets`` (frame_shift 0.02 from an encoder, 0.01 from fbank: the
pretraining dataset takes every other 100 Hz label); ``--shar`` also writes lhotse Shar shards.
"""

import json
import logging
import math
import os
import resource
import time
import tracemalloc
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from lhotse import CutSet, NumpyFilesWriter
from lhotse.cut import Cut
from lhotse.utils import compute_num_frames
from lhotse.dataset import SimpleCutSampler
from tqdm import tqdm

from asrkit.data.datamodule import AsrDataset, DataConfig, check_feature_type, stored_feature_type

log = logging.getLogger(__name__)

FIELD = "ssl_targets"  # the custom cut field the pretraining dataset reads
FBANK = "fbank"
FBANK_SHIFT, ENCODER_SHIFT = 0.01, 0.02  # seconds per frame: fbank at 100 Hz, Zipformer at 50 Hz
MIN_ENCODER_FRAMES = 9  # feature frames the Zipformer needs for one output frame


def encoder_frames_50hz(num_feature_frames: int) -> int:
    """Frames of the Zipformer's 50 Hz output for ``T`` 100 Hz feature frames: its front end gives (T - 7) // 2."""
    return max((num_feature_frames - 7) // 2, 0)


# ----------------------------------------------------------------------------------------------------------
# Frame features


class _CutsDataset(AsrDataset):
    """AsrDataset that also returns the batch's cuts (in sampler order), so labels can be attached to them."""

    def __getitem__(self, cuts: CutSet) -> Dict:
        batch = super().__getitem__(cuts)
        batch["cuts"] = list(cuts)
        return batch


class FrameSource:
    """Per-cut frame features: ``"fbank"`` (the cuts' features) or an ASR experiment dir.

    Precomputed features are read as stored; cuts without them get features computed on the fly
    from their audio (80-dim fbank, or the experiment's ``data.feature_type``), see :meth:`prepare`.

    For an experiment, the Zipformer encoder's 50 Hz output (``return_50hz=True``, ``output_dim``
    channels), or with ``layer=i`` the output of encoder stack ``i`` (upsampled back to 50 Hz by the
    stack itself, ``encoder_dim[i]`` channels), caught by a forward hook.
    """

    def __init__(self, spec: str, device: str = "cpu", layer: Optional[int] = None,
                 checkpoint: Optional[str] = None):
        self.spec, self.device, self.layer = spec, device, layer
        self.model = None
        self.data_cfg = DataConfig(num_workers=0)
        self.features: Optional[List] = None  # [type, dim] of the input features, set by prepare()
        self.on_the_fly = False
        if spec == FBANK:
            if layer is not None or checkpoint is not None:
                raise ValueError("--layer and --checkpoint need an experiment dir as --source, not fbank")
            self.frame_shift = FBANK_SHIFT
            return
        self.frame_shift = ENCODER_SHIFT
        self._load_encoder(Path(spec), checkpoint)

    def _load_encoder(self, exp_dir: Path, checkpoint: Optional[str]) -> None:
        import yaml

        from asrkit.models import load_model
        from asrkit.models.zipformer.zipformer import Zipformer

        if not exp_dir.is_dir():
            raise FileNotFoundError(f"--source {exp_dir}: not 'fbank' and not a directory (an asrkit experiment dir)")
        model = load_model(exp_dir, checkpoint=checkpoint, device=self.device)
        encoder = getattr(model, "encoder", None)
        if not isinstance(encoder, Zipformer):
            raise ValueError(f"--source {exp_dir}: frame features need a Zipformer encoder (its 50 Hz output), "
                             f"this experiment has {type(encoder).__name__}")
        stacks = encoder.encoder.encoders
        if self.layer is not None and not 0 <= self.layer < len(stacks):
            raise ValueError(f"--layer {self.layer}: the encoder has stacks 0..{len(stacks) - 1}")
        self.model = model
        data = (yaml.safe_load((exp_dir / "config.yaml").read_text(encoding="utf-8")) or {}).get("data", {})
        self.data_cfg = DataConfig(num_workers=0, feature_type=data.get("feature_type", "fbank"),
                                   num_mel_bins=data.get("num_mel_bins", 80))
        # a checksum of the weights: labelling with other weights than the k-means saw is an error
        self.fingerprint = float(sum(p.detach().double().abs().sum() for p in encoder.parameters()))

    @property
    def encoder(self):
        return None if self.model is None else self.model.encoder

    def num_frames(self, num_feature_frames: int) -> int:
        """Target frames of a cut with ``num_feature_frames`` 100 Hz feature frames."""
        return num_feature_frames if self.model is None else encoder_frames_50hz(num_feature_frames)

    def meta(self) -> Dict:
        """What the k-means file records so that labelling can check it uses the same features."""
        out = {"source": self.spec if self.model is None else str(Path(self.spec).resolve()),
               "layer": self.layer, "frame_shift": self.frame_shift, "features": self.features}
        if self.model is not None:
            out["encoder_fingerprint"] = self.fingerprint
        return out

    def prepare(self, cuts: CutSet) -> None:
        """Look at the first cut: read its precomputed features, or compute them on the fly from audio
        when it has none (the experiment's front end, or 80-dim fbank); fail on features other than the
        model was trained on."""
        first = next(iter(cuts), None)
        if first is None:
            raise ValueError("no cuts to take frames from")
        found = stored_feature_type(first)
        self.on_the_fly = found is None
        if found is None:
            log.info("the cuts have no precomputed features: computing %s on the fly", self.data_cfg.feature_type)
            found = (self.data_cfg.feature_type, self.data_cfg.num_mel_bins)
        elif self.model is not None:
            check_feature_type(self.data_cfg, cuts)
        self.features = list(found)

    def usable(self, cut: Cut) -> bool:
        """The Zipformer gives no output for cuts under 9 feature frames (90 ms); fbank takes any cut."""
        if self.model is None:
            return True
        frames = cut.num_frames if cut.has_features else compute_num_frames(cut.duration, FBANK_SHIFT,
                                                                             cut.sampling_rate)
        return frames >= MIN_ENCODER_FRAMES

    def batches(self, cuts: CutSet, max_duration: float = 200.0, shuffle: bool = False, seed: int = 0,
                epoch: int = 0, num_workers: int = 0) -> Iterator[List[Tuple[Cut, torch.Tensor]]]:
        """Yield lists of ``(cut, frames (T, D) float32 on CPU)`` over ``cuts`` (usable ones only),
        in manifest order or, with ``shuffle``, in an order fixed by ``seed`` and ``epoch``."""
        if self.features is None:
            self.prepare(cuts)
        sampler = SimpleCutSampler(cuts.filter(self.usable), max_duration=max_duration, shuffle=shuffle, seed=seed)
        sampler.set_epoch(epoch)
        dataset = _CutsDataset(self.on_the_fly, None, self.data_cfg.feature_type, self.data_cfg.num_mel_bins)
        loader = torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=num_workers)
        for batch in loader:
            frames, lens = self._features(batch["feats"], batch["feat_lens"])
            by_id = {cid: (f[:n], int(fl)) for cid, f, n, fl in zip(batch["cut_ids"], frames, lens.tolist(),
                                                                    batch["feat_lens"])}
            out = []
            for cut in batch["cuts"]:
                f, feat_len = by_id[cut.id]
                if f.shape[0] != self.num_frames(feat_len):  # the alignment every label relies on
                    raise RuntimeError(f"cut {cut.id}: {f.shape[0]} frames from {feat_len} feature frames, "
                                       f"expected {self.num_frames(feat_len)}")
                out.append((cut, f))
            yield out

    @torch.inference_mode()
    def _features(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N, T, C) 100 Hz features -> (N, T', D) frames on CPU and their lengths (N,)."""
        if self.model is None:
            return feats.float(), feat_lens
        feats, feat_lens = feats.to(self.device), feat_lens.to(self.device)
        if self.layer is None:
            out, out_lens = self.encoder(feats, feat_lens, return_50hz=True)  # (N, T', D)
        else:
            caught = []
            hook = self.encoder.encoder.encoders[self.layer].register_forward_hook(
                lambda _m, _i, o: caught.append(o))
            try:
                _, out_lens = self.encoder(feats, feat_lens, return_50hz=True)
            finally:
                hook.remove()
            out = caught[0].transpose(0, 1)  # (T', N, C_i) -> (N, T', C_i)
        return out.float().cpu(), out_lens.cpu()


# ----------------------------------------------------------------------------------------------------------
# k-means


@dataclass
class KMeansConfig:
    num_clusters: int = 500
    batch_size: int = 10000  # frames per partial_fit
    n_init: int = 20  # k-means++ candidates tried on the first buffer; the lowest inertia wins
    init_size: Optional[int] = None  # frames per candidate and for scoring them; default 3 * batch_size (sklearn's)
    buffer_batches: int = 4  # frames are shuffled within a buffer of this many batches before partial_fit
    passes: int = 1  # passes over the frame stream (what fit's max_iter counts)
    max_frames: Optional[int] = None  # stop each pass after this many frames (the subset fitted on)
    seed: int = 0

    def check(self) -> None:
        if self.num_clusters < 2 or self.num_clusters > np.iinfo(np.int16).max:
            raise ValueError(f"num_clusters must be in [2, {np.iinfo(np.int16).max}] (labels are int16), "
                             f"got {self.num_clusters}")
        for name in ("batch_size", "n_init", "buffer_batches", "passes"):
            if getattr(self, name) < 1:
                raise ValueError(f"k-means {name} must be >= 1, got {getattr(self, name)}")
        if self.max_frames is not None and self.max_frames < self.num_clusters:
            raise ValueError(f"max_frames={self.max_frames} is fewer than num_clusters={self.num_clusters}")

    @property
    def init_frames(self) -> int:
        return self.init_size or max(3 * self.batch_size, self.num_clusters)


@dataclass
class KMeansResult:
    centroids: np.ndarray  # (K, D) float32
    frames: int  # frames fitted per pass
    inertia: List[float] = field(default_factory=list)  # mean squared distance per frame, per pass
    init_inertia: float = 0.0  # the chosen k-means++ candidate's, per frame, on the scoring frames
    seconds: float = 0.0


def assign(frames: torch.Tensor, centroids: torch.Tensor, chunk: int = 16384) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each frame: (T, D), (K, D) -> labels (T,) int64, squared distances (T,).

    Chunks of ``chunk`` frames keep the (chunk, K) distance matrix small.
    """
    labels, dists = [], []
    for start in range(0, frames.shape[0], chunk):
        d = torch.cdist(frames[start:start + chunk], centroids)  # (t, K)
        best, idx = d.min(dim=1)
        labels.append(idx)
        dists.append(best.square())
    if not labels:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0)
    return torch.cat(labels), torch.cat(dists)


def _inertia(frames: np.ndarray, centroids: np.ndarray) -> float:
    return float(assign(torch.from_numpy(frames), torch.from_numpy(centroids))[1].double().sum())


_WARM = []


def _take_all(chunks: List[np.ndarray]) -> np.ndarray:
    """Concatenate and empty ``chunks`` (so that only the result stays alive)."""
    if not chunks:
        return np.zeros((0, 1), np.float32)
    out = np.concatenate(chunks)
    chunks.clear()
    return out


def _warm_up() -> None:
    """Run sklearn's k-means code once on 8 frames, so that its lazy imports and one-time set-up
    (~60 MiB traced) fall outside any memory measurement of the real fit."""
    if _WARM:
        return
    from sklearn.cluster import MiniBatchKMeans, kmeans_plusplus

    x = np.random.default_rng(0).standard_normal((8, 2)).astype(np.float32)
    init, _ = kmeans_plusplus(x, 2, random_state=0)
    MiniBatchKMeans(n_clusters=2, init=init, n_init=1, batch_size=8).partial_fit(x)
    _WARM.append(True)


class StreamingKMeans:
    """MiniBatchKMeans over a stream of frame chunks, with ``fit``'s n_init done on the first buffer.

    Frames are collected into a buffer of ``buffer_batches * batch_size`` frames (at least ``init_size``),
    shuffled there (neighbouring frames of one utterance are alike; minibatches should not be), and
    fed to ``partial_fit`` ``batch_size`` at a time; the remainder waits for the next buffer. Memory is
    the buffer plus sklearn's per-batch work, whatever the number of frames.
    """

    def __init__(self, cfg: KMeansConfig):
        _warm_up()
        cfg.check()
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.km = None
        self.init_inertia = 0.0

    def fit(self, stream: Callable[[int], Iterable[np.ndarray]], progress: bool = False) -> KMeansResult:
        """``stream(pass_index)`` yields (n, D) arrays; returns the centroids after ``cfg.passes`` passes."""
        cfg, start = self.cfg, time.time()
        buffer_frames = max(cfg.buffer_batches * cfg.batch_size, cfg.init_frames)
        result = KMeansResult(centroids=np.zeros(0, np.float32), frames=0)
        for p in range(cfg.passes):
            buf: List[np.ndarray] = []
            held = seen = 0
            stats = [0.0, 0]  # inertia sum, frames fitted
            bar = tqdm(total=cfg.max_frames, unit="frame", unit_scale=True, disable=not progress,
                       desc=f"k-means pass {p + 1}/{cfg.passes}")
            for chunk in stream(p):
                chunk = np.ascontiguousarray(chunk, dtype=np.float32)
                if cfg.max_frames is not None:
                    chunk = chunk[:cfg.max_frames - seen]
                buf.append(chunk)
                held, seen = held + len(chunk), seen + len(chunk)
                bar.update(len(chunk))
                if held >= buffer_frames:
                    frames = _take_all(buf)  # the chunks are freed as the buffer forms
                    rest = self._consume(frames, stats, final=False)
                    del frames
                    buf, held = [rest], len(rest)
                if cfg.max_frames is not None and seen >= cfg.max_frames:
                    break
            bar.close()
            if seen < cfg.num_clusters and self.km is None:
                raise ValueError(f"only {seen} frames for {cfg.num_clusters} clusters: "
                                 "give more cuts or fewer clusters")
            self._consume(_take_all(buf), stats, final=True)
            result.frames = seen
            result.inertia.append(stats[0] / max(stats[1], 1))
            log.info("k-means pass %d/%d: %d frames, inertia %.4g per frame", p + 1, cfg.passes, seen,
                     result.inertia[-1])
        result.centroids = self.km.cluster_centers_.astype(np.float32)
        result.init_inertia, result.seconds = self.init_inertia, time.time() - start
        return result

    def _consume(self, frames: np.ndarray, stats: list, final: bool) -> np.ndarray:
        """partial_fit on full batches of the shuffled ``frames`` (all of them if ``final``); return the rest."""
        bs = self.cfg.batch_size
        if len(frames) == 0:
            return frames
        self.rng.shuffle(frames)  # rows, in place
        if self.km is None:
            self._initialise(frames)
        end = len(frames) if final else len(frames) // bs * bs
        for start in range(0, end, bs):
            batch = frames[start:min(start + bs, end)]
            self.km.partial_fit(batch)
            stats[0] += float(self.km.inertia_)
            stats[1] += len(batch)
        return frames[end:].copy()  # a copy: a view would keep the whole buffer alive

    def _initialise(self, frames: np.ndarray) -> None:
        """fit(n_init=...)'s initialisation on the first buffer: keep the best of n_init k-means++ runs."""
        from sklearn.cluster import MiniBatchKMeans, kmeans_plusplus

        cfg = self.cfg
        # the rows are shuffled, so any window of n rows is a random sample: views, not copies
        n = min(cfg.init_frames, len(frames))

        def window() -> np.ndarray:
            start = int(self.rng.integers(0, len(frames) - n + 1))
            return frames[start:start + n]

        valid = window()
        best, best_inertia = None, math.inf
        for _ in range(cfg.n_init):
            sample = window()
            centres, _ = kmeans_plusplus(sample, cfg.num_clusters, random_state=int(self.rng.integers(2**31)))
            inertia = _inertia(valid, centres)
            if inertia < best_inertia:
                best, best_inertia = centres, inertia
        self.init_inertia = best_inertia / n
        log.info("k-means init: best of %d k-means++ candidates on %d frames, inertia %.4g per frame",
                 cfg.n_init, n, self.init_inertia)
        self.km = MiniBatchKMeans(n_clusters=cfg.num_clusters, init=best, n_init=1, batch_size=cfg.batch_size,
                                  random_state=cfg.seed)


@contextmanager
def peak_memory():
    """Measure a block's peak memory: ``tracemalloc`` (numpy buffers and sklearn's work arrays; torch
    tensors are not traced) and the growth of the process's peak RSS (``ru_maxrss``; 0 when the block
    stays under an earlier peak). Yields a dict filled in on exit with ``traced_mib`` and ``rss_growth_mib``."""
    out: Dict[str, float] = {}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield out
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        if not was_tracing:
            tracemalloc.stop()
        out["traced_mib"] = (peak - base) / 2**20
        out["rss_growth_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024  # KiB on Linux


def source_stream(source: FrameSource, cuts: CutSet, max_duration: float, seed: int,
                  num_workers: int = 0) -> Callable[[int], Iterator[np.ndarray]]:
    """A ``stream(pass_index)`` for :meth:`StreamingKMeans.fit`: the cuts' frames, shuffled by cut per pass."""

    def stream(p: int) -> Iterator[np.ndarray]:
        for batch in source.batches(cuts, max_duration, shuffle=True, seed=seed, epoch=p, num_workers=num_workers):
            yield torch.cat([f for _, f in batch]).numpy()

    return stream


def save_centroids(path: Union[str, Path], centroids: np.ndarray, meta: Dict) -> Path:
    """Write ``centroids`` (K, D) and ``meta`` to ``path`` (.npz, no pickle) and ``meta`` also to ``path``.json."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"--out {path}: k-means centroids are saved as .npz (numpy, loadable without pickle)")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "num_clusters": int(centroids.shape[0]), "dim": int(centroids.shape[1])}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, centroids=centroids.astype(np.float32), meta=np.array(json.dumps(meta)))
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path


def load_centroids(path: Union[str, Path]) -> Tuple[np.ndarray, Dict]:
    """``(centroids (K, D) float32, meta)`` from :func:`save_centroids`' file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"k-means file not found: {path}; run `asrkit ssl kmeans` first")
    with np.load(path, allow_pickle=False) as z:
        if "centroids" not in z or "meta" not in z:
            raise ValueError(f"{path} is not an `asrkit ssl kmeans` file (needs 'centroids' and 'meta')")
        return z["centroids"].astype(np.float32), json.loads(str(z["meta"]))


# ----------------------------------------------------------------------------------------------------------
# Labels


def check_source_matches(source: FrameSource, meta: Dict, dim: int) -> None:
    """Refuse to label with other features than the k-means was fitted on."""
    mine = source.meta()
    if mine["frame_shift"] != meta["frame_shift"] or mine["layer"] != meta.get("layer"):
        raise ValueError(f"--source {source.spec} (layer {mine['layer']}, {mine['frame_shift']} s frames) is not "
                         f"what the k-means was fitted on: {meta['source']} (layer {meta.get('layer')})")
    want = meta.get("encoder_fingerprint")
    if want is not None and not math.isclose(mine["encoder_fingerprint"], want, rel_tol=1e-9):
        raise ValueError(f"--source {source.spec}: its encoder weights differ from those the k-means was "
                         f"fitted on ({meta['source']}); label with the same checkpoint")
    if meta.get("features") and mine["features"] != meta["features"]:
        raise ValueError(f"the cuts give {mine['features']} features, the k-means was fitted on frames from "
                         f"{meta['features']} features")
    if mine["source"] != meta["source"]:
        log.warning("labelling with %s; the k-means was fitted on %s (same weights)", mine["source"], meta["source"])
    if meta.get("dim") != dim:
        raise ValueError(f"k-means centroids are {meta.get('dim')}-dim, the source gives {dim}-dim frames")


def write_labels(cuts: CutSet, source: FrameSource, centroids: np.ndarray, out_dir: Union[str, Path], name: str,
                 max_duration: float = 200.0, num_workers: int = 0, progress: bool = False) -> Tuple[Path, Dict]:
    """Label every frame with its nearest centroid; write ``out_dir/name.jsonl.gz`` (cuts with an int16
    ``ssl_targets`` TemporalArray) and the arrays under ``out_dir/name_ssl_targets/``.

    Returns the manifest path and counts: cuts, skipped (too short for the encoder), frames, clusters used.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cents = torch.from_numpy(centroids).to(source.device)
    counts = np.zeros(len(centroids), dtype=np.int64)
    stats = {"cuts": 0, "skipped": 0, "frames": 0}
    total = sum(1 for _ in cuts)
    path = out_dir / f"{name}.jsonl.gz"
    bar = tqdm(total=total, unit="cut", disable=not progress, desc="labels")
    with CutSet.open_writer(path) as cut_writer, NumpyFilesWriter(out_dir / f"{name}_{FIELD}") as writer:
        for batch in source.batches(cuts, max_duration, shuffle=False, num_workers=num_workers):
            for cut, frames in batch:
                if frames.shape[1] != cents.shape[1]:
                    raise ValueError(f"cut {cut.id}: {frames.shape[1]}-dim frames, {cents.shape[1]}-dim centroids")
                labels = assign(frames.to(source.device), cents)[0].cpu().numpy().astype(np.int16)
                counts += np.bincount(labels, minlength=len(centroids))
                array = writer.store_array(cut.id, labels, frame_shift=source.frame_shift, temporal_dim=0,
                                           start=cut.start)
                cut_writer.write(cut.with_custom(FIELD, array))
                stats["cuts"] += 1
                stats["frames"] += len(labels)
            bar.update(len(batch))
    bar.close()
    stats["skipped"] = total - stats["cuts"]
    if stats["skipped"]:
        log.warning("skipped %d cut(s) under %d feature frames (no encoder output)", stats["skipped"],
                    MIN_ENCODER_FRAMES)
    p = counts[counts > 0] / max(counts.sum(), 1)
    stats["clusters_used"] = int((counts > 0).sum())
    stats["entropy_bits"] = float(-(p * np.log2(p)).sum())
    return path, stats


def export_shar(manifest: Union[str, Path], shar_dir: Union[str, Path], shard_size: int = 1000) -> Dict[str, List[str]]:
    """Write the labelled cuts as lhotse Shar: audio as flac, features as lilcom (numpy for Whisper's
    log-mel), ``ssl_targets`` as numpy (each only where the cuts have it), ``shard_size`` cuts per shard;
    then check that the first shard's labels read back from Shar equal the stored ones."""
    cuts = CutSet.from_file(manifest)
    first = next(iter(cuts), None)
    if first is None:
        raise ValueError(f"{manifest} has no cuts to write as Shar")
    fields = {FIELD: "numpy"}
    if first.has_recording:
        fields["recording"] = "flac"
    if first.has_features:  # Shar's lilcom step (2^-5) suits Kaldi fbank only: see features.feature_writer
        fields["features"] = "lilcom" if stored_feature_type(first)[0] == "fbank" else "numpy"
    shar_dir = Path(shar_dir)
    shar_dir.mkdir(parents=True, exist_ok=True)
    written = cuts.to_shar(shar_dir, fields=fields, shard_size=shard_size)
    check_shar_labels(written, cuts)
    return written


def check_shar_labels(written: Dict[str, List[str]], cuts: CutSet) -> int:
    """Read the first Shar shard's cuts and labels back; raise unless every label array is bit-exact."""
    back = list(CutSet.from_shar(fields={"cuts": written["cuts"][:1], FIELD: written[FIELD][:1]}))
    ids = {c.id for c in back}
    stored = {}
    for c in cuts:  # the first shard holds the manifest's first cuts: stop once all are found
        if c.id in ids:
            stored[c.id] = c
            if len(stored) == len(ids):
                break
    checked = 0
    for cut in back:
        if cut.id not in stored:
            raise RuntimeError(f"Shar check: cut {cut.id} of the first shard is not in the manifest")
        want, got = stored[cut.id].load_custom(FIELD), cut.load_custom(FIELD)
        if got.dtype != want.dtype or not np.array_equal(got, want):
            raise RuntimeError(f"Shar check: labels of cut {cut.id} differ after the round trip")
        checked += 1
    log.info("Shar check: labels of %d cut(s) in the first shard read back bit-exact", checked)
    return checked


def kmeans_meta(source: FrameSource, cfg: KMeansConfig, result: KMeansResult, cuts_paths: List[str],
                memory: Dict[str, float]) -> Dict:
    """The json meta saved beside the centroids."""
    import sklearn

    return {**source.meta(), "cuts": cuts_paths, "frames": result.frames, "inertia": result.inertia,
            "init_inertia": result.init_inertia, "config": asdict(cfg), "sklearn": sklearn.__version__,
            "peak_memory_mib": memory, "seconds": round(result.seconds, 2)}


def blob_stream(num_frames: int, dim: int, num_blobs: int, seed: int = 0, chunk: int = 4096,
                spread: float = 10.0) -> Tuple[Callable[[int], Iterator[np.ndarray]], np.ndarray]:
    """Synthetic frames: Gaussian blobs (unit variance) around ``num_blobs`` centres drawn with ``spread``,
    generated ``chunk`` frames at a time (never all at once). Returns ``(stream, centres)``; every pass
    of ``stream`` yields the same frames. The blob of frame ``i`` is ``i % num_blobs``."""
    centres = np.random.default_rng(seed).normal(scale=spread, size=(num_blobs, dim)).astype(np.float32)

    def stream(_pass: int) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(seed + 1)
        for start in range(0, num_frames, chunk):
            idx = np.arange(start, min(start + chunk, num_frames)) % num_blobs
            yield centres[idx] + rng.standard_normal((len(idx), dim), dtype=np.float32)

    return stream, centres


def kmeans_memory_table(frame_counts: List[int], dim: int = 256, **cfg) -> List[Dict]:
    """Peak traced memory of :class:`StreamingKMeans` on synthetic frames, per number of frames: it should
    stay flat while holding all the frames (``all_frames_mib``) grows linearly."""
    rows = []
    for n in frame_counts:
        chunk = min(4096, cfg.get("batch_size", 10000))  # the stream's chunks are part of the memory too
        stream, _ = blob_stream(n, dim, cfg.get("num_clusters", 500), seed=cfg.get("seed", 0), chunk=chunk)
        fitter = StreamingKMeans(KMeansConfig(**cfg))
        with peak_memory() as mem:
            result = fitter.fit(stream)
        rows.append({"frames": n, "dim": dim, "traced_mib": mem["traced_mib"], "all_frames_mib": n * dim * 4 / 2**20,
                     "seconds": result.seconds, "inertia": result.inertia[-1]})
    return rows
