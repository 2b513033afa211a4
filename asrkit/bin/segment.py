"""Cut a folder of long unlabelled recordings into 1-20 s speech segments (Silero VAD): a CutSet and lhotse Shar.

    asrkit segment --audio-dir /data/vi_podcasts --out-dir data/unlabelled --shar
    asrkit segment --audio-dir /data/vi_podcasts --out-dir data/unlabelled --min-dur 1 --max-dur 20 \\
        --max-gap 1.0 --shard-size 1000 --shar --num-jobs 4

Writes ``<out-dir>/cuts.jsonl.gz`` (16 kHz cuts of the original files, no transcripts), with ``--shar``
``<out-dir>/shar/{cuts,recording}.<n>.*`` (flac) for ``CutSet.from_shar(in_dir=...)``, and
``<out-dir>/vad.jsonl``, the per-recording log that lets a rerun skip what is done. Needs the
``silero-vad`` package (its model ships inside it; nothing is downloaded).
"""

import argparse
import logging

from asrkit.data.segment import SegmentConfig, segment_audio_dir

log = logging.getLogger(__name__)


def add_args(p: argparse.ArgumentParser) -> None:
    d = SegmentConfig()
    p.add_argument("--audio-dir", required=True, help="folder searched recursively for audio files")
    p.add_argument("--out-dir", required=True, help="where cuts.jsonl.gz, vad.jsonl and shar/ go")
    p.add_argument("--min-dur", type=float, default=d.min_dur, help="drop pieces shorter than this (s)")
    p.add_argument("--max-dur", type=float, default=d.max_dur, help="no piece is longer than this (s)")
    p.add_argument("--max-gap", type=float, default=d.max_gap, help="join speech across pauses up to this (s)")
    p.add_argument("--threshold", type=float, default=d.threshold, help="Silero speech probability threshold")
    p.add_argument("--shar", action="store_true", help="also write lhotse Shar shards (flac) to <out-dir>/shar")
    p.add_argument("--shard-size", type=int, default=1000, help="cuts per Shar shard")
    p.add_argument("--num-jobs", type=int, default=1, help="recordings run through VAD in parallel")


def run(args: argparse.Namespace) -> int:
    if args.shard_size < 1 or args.num_jobs < 1:
        raise SystemExit("asrkit segment: --shard-size and --num-jobs must be >= 1")
    try:
        cfg = SegmentConfig(min_dur=args.min_dur, max_dur=args.max_dur, max_gap=args.max_gap,
                            threshold=args.threshold)
        cuts = segment_audio_dir(args.audio_dir, args.out_dir, cfg, shar=args.shar, shard_size=args.shard_size,
                                 num_jobs=args.num_jobs)
    except (FileNotFoundError, ValueError, ImportError) as e:
        log.error("%s", e)
        return 1
    hours = sum(c.duration for c in cuts) / 3600
    print(f"{len(cuts)} segments ({hours:.2f} h) in {args.out_dir}/cuts.jsonl.gz" +
          (f" and {args.out_dir}/shar" if args.shar else ""))
    return 0
