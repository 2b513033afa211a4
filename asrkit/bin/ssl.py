"""Frame targets for HuBERT-style pretraining: k-means on frame features, then one label per frame.

    asrkit ssl kmeans --cuts data/fbank/x_cuts_unlab.jsonl.gz --source fbank --out exp/km0.npz \\
        --num-clusters 500 --max-hours 100 --seed 0
    asrkit ssl kmeans --cuts data/fbank/x_cuts_unlab.jsonl.gz --source exp/transducer --out exp/km1.npz \\
        --device cuda
    asrkit ssl label --cuts data/fbank/x_cuts_unlab.jsonl.gz --kmeans exp/km1.npz --out-dir data/ssl1 --shar
    asrkit ssl kmeans-memory --frames 20000 80000 320000 --n-init 1   # peak memory vs frames

--source is ``fbank`` (the cuts' 100 Hz features; HuBERT's iteration 0) or an asrkit Zipformer experiment
dir (its encoder's 50 Hz output; VietASR's iterations; ``--layer i`` takes encoder stack i instead).
kmeans streams the frames through MiniBatchKMeans.partial_fit (see asrkit.data.ssl_targets), saves the
centroids as .npz plus a .json of what produced them, and prints the inertia and the peak memory.
--max-hours / --max-frames take the first frames of a shuffled pass over the cuts; a lazy manifest is
shuffled through a buffer of 10,000 cuts only, so for a representative subset of a large manifest
ordered by speaker or source, shuffle it once beforehand (e.g. ``lhotse`` ``CutSet.shuffle``).
label writes ``out-dir/<name>.jsonl.gz`` with an int16 ``ssl_targets`` field per cut (numpy storage),
and with --shar lhotse Shar shards under ``out-dir/shar`` (read them with ``CutSet.from_shar``).
"""

from pathlib import Path

import torch

ACTIONS = ("kmeans", "label", "kmeans-memory")


def add_args(p):
    p.add_argument("action", choices=ACTIONS, help="kmeans: fit centroids; label: per-frame labels; "
                                                   "kmeans-memory: peak memory vs frames on synthetic frames")
    p.add_argument("--cuts", nargs="+", help="cut manifests with precomputed features (label: one)")
    p.add_argument("--source", help="'fbank' or an asrkit experiment dir (label: default the k-means file's)")
    p.add_argument("--layer", type=int, default=None, help="encoder stack whose output to use (default: the "
                                                           "encoder's 50 Hz output)")
    p.add_argument("--checkpoint", default=None, help="weights file of --source (default: model.pt or newest epoch)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-duration", type=float, default=200.0, help="seconds of audio per encoder batch")
    p.add_argument("--num-workers", type=int, default=2, help="dataloader workers reading features")
    km = p.add_argument_group("kmeans")
    km.add_argument("--out", help="centroids file to write (.npz; meta also as .json beside it)")
    km.add_argument("--num-clusters", type=int, default=500)
    km.add_argument("--batch-size", type=int, default=10000, help="frames per partial_fit")
    km.add_argument("--n-init", type=int, default=20, help="k-means++ candidates tried on the first buffer")
    km.add_argument("--init-size", type=int, default=None, help="frames per candidate (default 3 * batch size)")
    km.add_argument("--passes", type=int, default=1, help="passes over the frames (fit's max_iter)")
    km.add_argument("--max-frames", type=int, default=None, help="fit on at most this many frames")
    km.add_argument("--max-hours", type=float, default=None, help="fit on at most this many hours of frames")
    km.add_argument("--seed", type=int, default=0)
    lab = p.add_argument_group("label")
    lab.add_argument("--kmeans", help="centroids written by `asrkit ssl kmeans`")
    lab.add_argument("--out-dir", help="where the labelled manifest, the label arrays and shar/ go")
    lab.add_argument("--name", default=None, help="manifest name (default: the input manifest's)")
    lab.add_argument("--shar", action="store_true", help="also write lhotse Shar shards to out-dir/shar")
    lab.add_argument("--shard-size", type=int, default=1000, help="cuts per Shar shard")
    mem = p.add_argument_group("kmeans-memory")
    mem.add_argument("--frames", type=int, nargs="+", default=[20000, 80000, 320000])
    mem.add_argument("--dim", type=int, default=256)


def _kmeans(args) -> int:
    from functools import reduce
    from operator import add

    from asrkit.data.features import load_cuts
    from asrkit.data.ssl_targets import (FrameSource, KMeansConfig, StreamingKMeans, kmeans_meta, peak_memory,
                                         save_centroids, source_stream)

    if not args.cuts or not args.source or not args.out:
        raise SystemExit("asrkit ssl kmeans: needs --cuts MANIFEST [...], --source fbank|EXP_DIR and --out KM.npz")
    if not args.out.endswith(".npz"):
        raise SystemExit(f"asrkit ssl kmeans: --out {args.out} must end in .npz (centroids are saved without pickle)")
    source = FrameSource(args.source, args.device, args.layer, args.checkpoint)
    cuts = reduce(add, [load_cuts(p) for p in args.cuts])  # lazily chained
    source.prepare(cuts)
    max_frames = args.max_frames
    if args.max_hours is not None:
        by_hours = int(args.max_hours * 3600 / source.frame_shift)
        max_frames = by_hours if max_frames is None else min(max_frames, by_hours)
    cfg = KMeansConfig(num_clusters=args.num_clusters, batch_size=args.batch_size, n_init=args.n_init,
                       init_size=args.init_size, passes=args.passes, max_frames=max_frames, seed=args.seed)
    fitter = StreamingKMeans(cfg)
    with peak_memory() as mem:
        result = fitter.fit(source_stream(source, cuts, args.max_duration, args.seed, args.num_workers),
                            progress=True)
    meta = kmeans_meta(source, cfg, result, [str(p) for p in args.cuts], mem)
    path = save_centroids(args.out, result.centroids, meta)
    k, d = result.centroids.shape
    print(f"k-means: {k} clusters of {d}-dim {args.source} frames (layer {args.layer}) fitted on {result.frames:,} "
          f"frames ({result.frames * source.frame_shift / 3600:.2f} h) in {result.seconds:.1f} s; inertia per frame "
          f"{' -> '.join(f'{x:.4g}' for x in result.inertia)} (init {result.init_inertia:.4g}); wrote {path}")
    print(f"peak memory for {result.frames:,} frames: {mem['traced_mib']:.1f} MiB traced (numpy + sklearn), "
          f"process peak RSS grew {mem['rss_growth_mib']:.1f} MiB; holding them all would take "
          f"{result.frames * d * 4 / 2**20:.1f} MiB")
    return 0


def _label(args) -> int:
    from asrkit.data.features import load_cuts
    from asrkit.data.ssl_targets import FrameSource, check_source_matches, export_shar, load_centroids, write_labels

    if not args.cuts or len(args.cuts) != 1 or not args.kmeans or not args.out_dir:
        raise SystemExit("asrkit ssl label: needs --cuts MANIFEST (one), --kmeans KM.npz and --out-dir DIR")
    centroids, meta = load_centroids(args.kmeans)
    spec = args.source or meta["source"]
    layer = args.layer if args.source else meta.get("layer")
    source = FrameSource(spec, args.device, layer, args.checkpoint)
    cuts = load_cuts(args.cuts[0])
    source.prepare(cuts)
    check_source_matches(source, meta, centroids.shape[1])
    name = args.name or Path(args.cuts[0]).name.removesuffix(".jsonl.gz").removesuffix(".jsonl")
    path, stats = write_labels(cuts, source, centroids, args.out_dir, name, args.max_duration, args.num_workers,
                               progress=True)
    print(f"labelled {stats['cuts']} cuts ({stats['frames']:,} frames at {1 / source.frame_shift:.0f} Hz, "
          f"{stats['skipped']} too short skipped): {stats['clusters_used']}/{len(centroids)} clusters used, "
          f"label entropy {stats['entropy_bits']:.2f} bits; wrote {path}")
    if args.shar:
        written = export_shar(path, Path(args.out_dir) / "shar", args.shard_size)
        print(f"wrote {len(written['cuts'])} Shar shard(s) with fields {sorted(written)} to "
              f"{Path(args.out_dir) / 'shar'}; first shard's labels read back bit-exact")
    return 0


def _kmeans_memory(args) -> int:
    from asrkit.data.ssl_targets import kmeans_memory_table

    cfg_kw = dict(num_clusters=args.num_clusters, batch_size=args.batch_size, n_init=args.n_init,
                  init_size=args.init_size, seed=args.seed)
    print(f"{'frames':>10} {'dim':>5} {'traced MiB':>11} {'all frames MiB':>15} {'seconds':>8}")
    for row in kmeans_memory_table(args.frames, args.dim, **cfg_kw):
        print(f"{row['frames']:>10,} {row['dim']:>5} {row['traced_mib']:>11.1f} {row['all_frames_mib']:>15.1f} "
              f"{row['seconds']:>8.1f}")
    return 0


def run(args):
    return {"kmeans": _kmeans, "label": _label, "kmeans-memory": _kmeans_memory}[args.action](args)
