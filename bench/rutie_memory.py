"""Peak memory of a whole ruTiE-Audio run: 1500 turns (3 dialogues of 500), a 20 s 44.1 kHz clip per turn.

Writes a synthetic split in the hub's layout (parquet, 100-row groups as `push_to_hub` writes audio sets;
about 2.6 GB: every turn has its own 20 s 16-bit mono WAV), then runs `mera-eval run --tasks ruTiE-Audio`
as a child process against an endpoint that answers instantly (tests/faults.py in its own process), and
reports the child's peak RSS (VmHWM), CPU time, wall time and requests sent.

    .venv/bin/python bench/rutie_memory.py [--work /tmp/mera-rutie-bench] [--turns 1500] [--seconds 20]
        [--history 5] [--keep]

This split is deliberately minimal (one template, one synthetic clip shifted per turn): the project's
generator of real-world media is elsewhere; here only the size of each turn matters.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.evaluator_throughput import echo_server, eval_run, machine  # noqa: E402

TEMPLATE = ("Послушайте аудио и выберите ответ.\n<audio>\nA. {option_a}\nB. {option_b}\nC. {option_c}\n"
            "D. {option_d}\nОтвет:")


def wav16(samples, rate: int) -> bytes:
    data = samples.astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def write_split(root: Path, turns: int, seconds: float, rate: int = 44100) -> Path:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from evaluator.registry import get_task
    from evaluator.sample_data import _features_schema

    path = root / "MERA-evaluation" / "ruTiE-Audio" / "data" / "test-00000-of-00001.parquet"
    if path.exists() and pq.ParquetFile(path).metadata.num_rows == turns:
        return root
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    base = (8000 * np.sin(2 * np.pi * 220 * t) + 2000 * rng.standard_normal(n)).astype(np.int16)
    spec = get_task("ruTiE-Audio")
    writer = None
    for start in range(0, turns, 100):  # 100-row groups, as datasets writes audio datasets
        rows = []
        for i in range(start, min(turns, start + 100)):
            rows.append({
                "instruction": TEMPLATE,
                "inputs": {"audio": {"bytes": wav16(np.roll(base, 37 * i), rate), "path": f"turn{i}.wav"},
                           **{f"option_{c}": f"вариант {c.upper()} {i}" for c in "abcd"}},
                "outputs": "", "meta": {"id": 11 + i},
            })  # fmt: skip
        table = pa.Table.from_pylist(rows)
        table = table.cast(_features_schema(spec, table))
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=100)
    writer.close()
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mera-rutie-bench"))
    parser.add_argument("--turns", type=int, default=1500)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--history", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the split (it is reused when present)")
    args = parser.parse_args()
    started = time.time()
    data = write_split(args.work / "data", args.turns, args.seconds)
    size_mb = sum(p.stat().st_size for p in (data / "MERA-evaluation").rglob("*.parquet")) / 2**20
    print(json.dumps({"split": str(data), "turns": args.turns, "parquet_mb": round(size_mb), "written_s":
                      round(time.time() - started, 1)}), flush=True)
    server, url = echo_server()
    out = args.work / "run"
    shutil.rmtree(out, ignore_errors=True)
    try:
        result = eval_run(out, url, data, "--tasks", "ruTiE-Audio", "--rutie-history", str(args.history),
                          "--max-error-rate", "1")
    finally:
        server.terminate()
        server.wait(10)
    result.update(turns=args.turns, clip_s=args.seconds, history=args.history, machine=machine(),
                  load_after=round(os.getloadavg()[0], 1))
    print(json.dumps(result), flush=True)
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
