"""What the guard costs per request.

1. In process (default): the same MERA-shaped request bodies through a trivial ASGI app, bare and
   wrapped by GuardMiddleware; reports p50/p95 per request and the guard's added time.
2. End to end (`--e2e`): two real `mera-serve --dev` servers started side by side, one with the
   guard and one without, the same chat requests sent to both in alternation (so machine noise
   hits both alike); reports p50/p95 latency, throughput and the ratio from this one run.

    .venv/bin/python bench/guard_overhead.py [--repeat 50] [--e2e --requests 40 --concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.guard.app import GuardMiddleware  # noqa: E402
from server.guard.config import GuardSettings  # noqa: E402

KEY = "bench-key"


# --- MERA-shaped media (noise, so it compresses like real photos/recordings) --------------------------
def jpeg(width: int = 800, height: int = 600, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def wav(seconds: float, rate: int = 16000, seed: int = 0) -> bytes:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    sf.write(buf, (0.1 * rng.standard_normal(int(seconds * rate))).astype("float32"), rate, format="WAV")
    return buf.getvalue()


def mp4(seconds: float = 10, fps: int = 8, size: int = 320, seed: int = 0) -> bytes:
    import av

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(
                (rng.random((size, size, 3)) * 255).astype(np.uint8), format="rgb24"
            )
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def h264(seconds: float = 6, fps: int = 25, width: int = 1920, height: int = 1080) -> bytes:
    """A MERA-like phone clip: 1080p H.264, a moving gradient (compresses like real footage, unlike noise)."""
    import av

    buf = io.BytesIO()
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * fps)):
            luma = ((x + y + 4 * i) % 256).astype(np.uint8)
            plane = np.concatenate([luma, np.full((height // 2, width), 128, np.uint8)])
            for packet in stream.encode(av.VideoFrame.from_ndarray(plane, format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def mera_requests() -> dict[str, dict]:
    """One request per board, shaped like MERA's (instruction text + media + question)."""
    text = {"type": "text", "text": "Внимательно изучите материал и ответьте на вопрос. " * 8}
    image = {
        "type": "image_url",
        "image_url": {"url": url("image/png", jpeg())},
    }  # MERA labels JPEGs image/png
    audio = [{"type": "audio_url", "audio_url": {"url": url("audio/wav", wav(20, seed=s))}} for s in (1, 2)]
    video = {"type": "video_url", "video_url": {"url": url("video/mp4", mp4())}}

    def chat(*parts):
        return {
            "model": "m",
            "max_tokens": 16,
            "temperature": 0,
            "messages": [{"role": "user", "content": [text, *parts, {"type": "text", "text": "Ответ:"}]}],
        }

    phone = {"type": "video_url", "video_url": {"url": url("video/mp4", h264())}}
    rutie = []  # ruTiE with history 5: five earlier turns with their images and answers, then the question
    for turn in range(6):
        rutie.append({"role": "user", "content": [text, {"type": "image_url", "image_url": {
            "url": url("image/png", jpeg(640, 480, seed=turn))}}]})  # fmt: skip
        rutie.append({"role": "assistant", "content": "A"})
    rutie_turn = {**chat(), "messages": rutie[:-1]}
    return {"text only": chat(), "image (800x600 JPEG)": chat(image), "audio (2 x 20 s WAV, AQUARIA)": chat(*audio),
            "video (10 s 320x320 MP4)": chat(video), "video (6 s 1080p H.264)": chat(phone),
            "ruTiE turn (11 messages, 6 images)": rutie_turn}  # fmt: skip


# --- in-process microbench ----------------------------------------------------------------------------
async def bare_app(scope, receive, send):
    """Stands in for vLLM: reads the whole body, answers 200."""
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": b"{}", "more_body": False})


async def one_call(app, body: bytes) -> float:
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "root_path": "", "query_string": b"",
             "headers": [(b"authorization", f"Bearer {KEY}".encode()), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())],
             "http_version": "1.1", "scheme": "http", "server": ("bench", 80), "client": ("127.0.0.1", 1)}  # fmt: skip
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]
    index = 0
    status = 0

    async def receive():
        nonlocal index
        index += 1
        if index <= len(chunks):
            return {"type": "http.request", "body": chunks[index - 1], "more_body": index < len(chunks)}
        await asyncio.sleep(3600)

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    started, cpu = time.perf_counter(), time.process_time()
    await app(scope, receive, send)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert status == 200, status
    return elapsed, cpu


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


async def microbench(repeat: int) -> list[dict]:
    import logging

    from server.guard.access_log import LOGGER_NAME

    settings = GuardSettings(limit_mm_per_prompt={"image": 6, "audio": 6, "video": 1})  # as mera-serve fills it
    guard = GuardMiddleware(bare_app, settings=settings, api_key=KEY)
    logging.getLogger(LOGGER_NAME).setLevel(logging.WARNING)  # measure the checks, not stderr writes
    rows = []
    for name, payload in mera_requests().items():
        body = json.dumps(payload).encode()
        bare, guarded, bare_cpu, guarded_cpu = [], [], [], []
        for _ in range(3):  # warm-up (imports, Pillow/soundfile/PyAV plugin loading)
            await one_call(guard, body)
        for _ in range(repeat):  # alternate so drift affects both alike
            wall, cpu = await one_call(bare_app, body)
            bare.append(wall)
            bare_cpu.append(cpu)
            wall, cpu = await one_call(guard, body)
            guarded.append(wall)
            guarded_cpu.append(cpu)
        rows.append({"request": name, "body_mb": len(body) / 1e6, "bare_p50_ms": pct(bare, 50) * 1e3,
                     "guard_p50_ms": pct(guarded, 50) * 1e3, "guard_p95_ms": pct(guarded, 95) * 1e3,
                     "added_p50_ms": (pct(guarded, 50) - pct(bare, 50)) * 1e3,
                     "added_cpu_ms": (float(np.mean(guarded_cpu)) - float(np.mean(bare_cpu))) * 1e3})  # fmt: skip
    return rows


# --- end to end on two real dev servers ----------------------------------------------------------------
def e2e(requests: int, concurrency: int) -> list[dict]:
    import httpx

    from tests.server_process import start_server

    servers = {}
    try:
        servers["guard"] = start_server(["--dev"], api_key=KEY)
        servers["no guard"] = start_server(["--dev"], api_key=KEY, env={"MERA_SERVE_GUARD__ENABLED": "false"})
        small = {"type": "image_url", "image_url": {"url": url("image/png", jpeg(320, 240))}}
        audio = {"type": "audio_url", "audio_url": {"url": url("audio/wav", wav(5))}}
        contents = [
            [{"type": "text", "text": "Что на картинке?"}, small],
            [{"type": "text", "text": "Что звучит?"}, audio],
            "Ответь одним словом: да или нет?",
        ]

        def payload(server, i):
            return {
                "model": server.model,
                "max_tokens": 8,
                "temperature": 0,
                "messages": [{"role": "user", "content": contents[i % len(contents)]}],
            }

        async def run_round(server, n) -> tuple[list[float], float]:
            latencies: list[float] = []
            gate = asyncio.Semaphore(concurrency)
            async with httpx.AsyncClient(timeout=600, headers=server.headers) as client:

                async def one(i):
                    async with gate:
                        t0 = time.perf_counter()
                        reply = await client.post(server.url("/v1/chat/completions"), json=payload(server, i))
                        reply.raise_for_status()
                        latencies.append(time.perf_counter() - t0)

                t0 = time.perf_counter()
                await asyncio.gather(*(one(i) for i in range(n)))
                return latencies, time.perf_counter() - t0

        results = {name: ([], 0.0) for name in servers}
        asyncio.run(run_round(servers["guard"], concurrency))  # warm-up both
        asyncio.run(run_round(servers["no guard"], concurrency))
        rounds = 8
        per_round = max(concurrency, requests // rounds)
        for _ in range(rounds):  # alternate rounds so machine noise hits both alike
            for name, server in servers.items():
                lat, wall = asyncio.run(run_round(server, per_round))
                results[name] = (results[name][0] + lat, results[name][1] + wall)
        rows = []
        for name, (lat, wall) in results.items():
            rows.append({"server": name, "requests": len(lat), "p50_ms": pct(lat, 50) * 1e3,
                         "p95_ms": pct(lat, 95) * 1e3, "req_per_s": len(lat) / wall})  # fmt: skip
        return rows
    finally:
        for server in servers.values():
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=50, help="calls per request shape (in process)")
    parser.add_argument(
        "--e2e", action="store_true", help="also start two dev servers and compare end to end"
    )
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    rows = asyncio.run(microbench(args.repeat))
    print("| request | body MB | bare p50 ms | guard p50 ms | guard p95 ms | added p50 ms | added CPU ms (mean) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['request']} | {r['body_mb']:.2f} | {r['bare_p50_ms']:.2f} | {r['guard_p50_ms']:.2f} | "
            f"{r['guard_p95_ms']:.2f} | {r['added_p50_ms']:.2f} | {r['added_cpu_ms']:.2f} |"
        )
    if args.e2e:
        e2e_rows = e2e(args.requests, args.concurrency)
        print("\n| server | requests | p50 ms | p95 ms | req/s |")
        print("|---|---:|---:|---:|---:|")
        for r in e2e_rows:
            print(
                f"| {r['server']} | {r['requests']} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['req_per_s']:.2f} |"
            )
        g, n = e2e_rows
        print(
            f"\nratio guard/no-guard: p50 {g['p50_ms'] / n['p50_ms']:.3f}, p95 {g['p95_ms'] / n['p95_ms']:.3f}, "
            f"throughput {g['req_per_s'] / n['req_per_s']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
