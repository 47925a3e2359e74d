"""`mera-eval sample-data DIR`: write the synthetic MERA Multi snapshot (hub parquet layout)."""

from __future__ import annotations

import time
from pathlib import Path

from evaluator.checks import check_output_dir
from evaluator.sample_data import write_sample_data


def add_parser(sub) -> None:
    parser = sub.add_parser("sample-data", help="Write a small synthetic dataset for every task, in the hub's format.")
    parser.add_argument("out_dir", type=Path, help="Folder to write (use it as `mera-eval run --data-dir`).")
    parser.add_argument("--per-split", type=int, default=4, help="Rows per split and domain (default 4).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="*", help="Only these tasks (default: all).")
    parser.set_defaults(func=main)


def main(args) -> int:
    check_output_dir(args.out_dir, flag="")
    started = time.monotonic()
    out = write_sample_data(args.out_dir, per_split=args.per_split, seed=args.seed, tasks=args.tasks)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 1e6:.1f} MB) in {time.monotonic() - started:.1f}s")
    return 0
