"""`mera-eval sample-data DIR`: write the synthetic MERA Multi snapshot (hub parquet layout)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from evaluator.checks import check_output_dir
from evaluator.sample_data import write_sample_data
from evaluator.synthetic_media import MediaCache


def seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def add_parser(sub) -> None:
    parser = sub.add_parser("sample-data", help="Write a synthetic dataset for every task, in the hub's format, "
                            "with media like the real ones (phone photos, 44.1/48 kHz audio, 30-60 s videos).")
    parser.add_argument("out_dir", type=Path, help="Folder to write (use it as `mera-eval run --data-dir`).")
    parser.add_argument("--per-split", type=int, default=4, help="Rows per split and domain (default 4).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="*", help="Only these tasks (default: all).")
    parser.add_argument("--video-seconds", type=seconds, help="Cut every longer video to this many seconds "
                        "(same codecs and sizes; the real-sized ones are 30-60 s).")
    parser.add_argument("--media-cache", type=Path, help="Where generated media are kept "
                        "(default $MERA_MEDIA_CACHE or ~/.cache/mera-multi/media).")
    parser.set_defaults(func=main)


def main(args) -> int:
    check_output_dir(args.out_dir, flag="")
    started = time.monotonic()
    cache = MediaCache(args.media_cache)
    if not cache.root.is_dir():
        print(f"rendering media into {cache.root} (once per machine; a few minutes for the videos)", flush=True)
    out = write_sample_data(args.out_dir, per_split=args.per_split, seed=args.seed, tasks=args.tasks, cache=cache,
                            video_seconds=args.video_seconds)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 1e6:.1f} MB) in {time.monotonic() - started:.1f}s")
    return 0
