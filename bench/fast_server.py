"""Can the evaluator keep a fast (GPU) server saturated? `ChatClient` against a loopback endpoint that answers
at once or after a fixed latency (30 ms: a GPU serving E4B a short answer), at 64, 256 and 512 in flight,
with short text prompts and with real-world-sized media (a multi-MB phone JPEG, 20 s 44.1 kHz and 48 kHz/24-bit
WAVs, a 720p H.264 MP4 with sound), through each HTTP transport:

* `aiohttp`: the evaluator's transport (`evaluator.transport.AiohttpTransport`);
* `httpx`: httpx's own pool (httpcore), what the client used before, limits as it set them.

Each measurement runs in its own child process (so its peak RSS is its own): requests/s, client CPU ms per
request and per MB sent, event-loop lag p99 (a 10 ms ticker), peak RSS (VmHWM), and the endpoint's own CPU
(it must not be the bottleneck: a raw asyncio protocol on uvloop when available, one process, no parsing
beyond the HTTP framing). Rounds interleave the transports. Run by hand:

    .venv/bin/python bench/fast_server.py [--rounds 2] [--requests 4000] [--concurrency 64 256 512]
        [--latency-ms 0 30] [--payloads text image audio44 audio48 video] [--transports aiohttp httpx]

Prints one JSON object per measurement and markdown tables (medians over rounds) at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.evaluator_throughput import machine, vm_kb  # noqa: E402

REPLY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "model": "bench",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ОТВЕТ A"}}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
}, ensure_ascii=False).encode()
MODELS = b'{"object":"list","data":[{"id":"bench","object":"model"}]}'


# --- the endpoint --------------------------------------------------------------------------------------------
class _Endpoint(asyncio.Protocol):
    """HTTP/1.1 keep-alive framing only: request line, headers, Content-Length body; answers after `latency`."""

    latency = 0.0

    def connection_made(self, transport) -> None:
        self.transport, self.buffer, self.need = transport, bytearray(), None
        self.path = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.need is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buffer[:end]).lower()
                self.path = head.split(b" ", 2)[1]
                length = 0
                at = head.find(b"content-length:")
                if at >= 0:
                    length = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None])
                self.need = end + 4 + length
            if len(self.buffer) < self.need:
                return
            del self.buffer[:self.need]
            self.need = None
            body = REPLY if self.path.endswith(b"/chat/completions") else MODELS if b"/models" in self.path else b"{}"
            reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            if self.latency:
                asyncio.get_running_loop().call_later(self.latency, self._write, reply)
            else:
                self.transport.write(reply)

    def _write(self, reply: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(reply)


def serve(port: int, latency_ms: float) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    _Endpoint.latency = latency_ms / 1000

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Endpoint, "127.0.0.1", port, backlog=4096)
        print("ready", flush=True)
        await server.serve_forever()

    asyncio.run(main())


def start_endpoint(latency_ms: float) -> tuple[subprocess.Popen, str]:
    from tests.server_process import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--latency-ms", str(latency_ms)],
                            stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the bench endpoint did not start")
    return proc, f"http://127.0.0.1:{port}"


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the payloads --------------------------------------------------------------------------------------------
def messages(kind: str) -> tuple[list[dict], float]:
    """One MERA-shaped user message and the MB of media it carries."""
    from evaluator.media import audio_part, image_part, video_part
    from evaluator.synthetic_media import PHONE_PHOTO, AudioSpec, MediaCache, VideoSpec

    text = {"type": "text", "text": "Вопрос: Что изображено на картинке?\nA. кошка\nB. собака\nC. дом\nD. дерево\n"
            "Ответ дайте одной буквой.\nОТВЕТ:"}
    cache = MediaCache()
    if kind == "text":
        return [{"role": "user", "content": [text]}], 0.0
    if kind == "image":
        data = big_jpeg(cache.path(PHONE_PHOTO).parent)
        part = image_part(data)
    elif kind in ("audio44", "audio48"):
        spec = AudioSpec(rate=44100, seconds=20.0) if kind == "audio44" else \
            AudioSpec(rate=48000, subtype="PCM_24", seconds=20.0)
        data = cache.bytes(spec)
        part = audio_part(data)
    elif kind == "video":
        data = cache.bytes(VideoSpec(codec="h264", width=1280, height=720, fps=30, seconds=20, audio=True))
        part = video_part(data)
    else:
        raise ValueError(kind)
    return [{"role": "user", "content": [part, text]}], len(data) / 1e6


def big_jpeg(cache_dir: Path) -> bytes:
    """A 4032x3024 phone-camera JPEG with sensor-like noise (the generator's photo compresses to ~0.3 MB;
    real phone photos are 3-6 MB)."""
    target = cache_dir / "bench-phone-noise-4032x3024-q90.jpg"
    if not target.is_file():
        import io

        import numpy as np
        from PIL import Image

        from evaluator.synthetic_media import PHONE_PHOTO, render

        base = np.asarray(Image.open(io.BytesIO(render(PHONE_PHOTO))).convert("RGB"), dtype=np.int16)
        noise = np.random.default_rng(0).integers(-12, 13, size=base.shape, dtype=np.int16)
        out = io.BytesIO()
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(out.getvalue())
        tmp.replace(target)
    return target.read_bytes()


# --- one measurement (in a child process) ----------------------------------------------------------------------
async def measure(url: str, transport_name: str, kind: str, concurrency: int, n: int) -> dict:
    import httpx

    from evaluator.client import ChatClient
    from evaluator.schema import ChatRequest, GenerationParams

    msgs, media_mb = messages(kind)
    request = ChatRequest(sample_key="bench", modality="image" if kind == "text" else kind.rstrip("0123456789"),
                          messages=msgs, params=GenerationParams(model="bench", max_tokens=16), digest="-")
    transport = None
    if transport_name == "httpx":  # the client before: httpx's pool, limits as it set them
        transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=concurrency + 8,
                                                                 max_keepalive_connections=concurrency))
    body_mb = len(json.dumps(request.payload(), ensure_ascii=False).encode()) / 1e6
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - started - 0.01)

    async with ChatClient([url], concurrency=concurrency, transport=transport) as client:
        await client.wait_ready(30)
        await asyncio.gather(*(client.send(request) for _ in range(min(concurrency, n))))  # connections opened
        rss_before = vm_kb(os.getpid(), "VmRSS:")
        tick = asyncio.create_task(ticker())
        cpu0, wall0 = time.process_time(), time.monotonic()
        statuses: list[str] = []

        async def worker(start: int) -> None:  # as the runner does: one sender per slot
            for _ in range(start, n, concurrency):
                statuses.append((await client.send(request)).status)

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        stop.set()
        await tick
    ok = statuses.count("ok")
    lags.sort()
    return {"requests": n, "ok": ok, "request_mb": round(body_mb, 2), "media_mb": round(media_mb, 2),
            "wall_s": round(wall, 2), "req_per_s": round(n / wall, 1), "mb_per_s": round(n * body_mb / wall, 1),
            "cpu_ms_per_req": round(cpu * 1000 / n, 3),
            "cpu_ms_per_mb": round(cpu * 1000 / (n * body_mb), 3) if media_mb else None,
            "lag_p99_ms": round(lags[int(len(lags) * 0.99)] * 1000, 1) if lags else None,
            "rss_mb_before": round(rss_before / 1024), "peak_rss_mb": round(vm_kb(os.getpid(), "VmHWM:") / 1024)}


def child(args) -> None:
    result = asyncio.run(measure(args.url, args.transport, args.payload, args.concurrency, args.requests))
    print(json.dumps(result), flush=True)


def run_child(url: str, transport: str, kind: str, concurrency: int, n: int) -> dict:
    cmd = [sys.executable, __file__, "--child", url, "--transport", transport, "--payload", kind,
           "--concurrency", str(concurrency), "--requests", str(n)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the benchmark -----------------------------------------------------------------------------------------------
def requests_for(kind: str, base: int) -> int:
    return base if kind == "text" else max(200, base // 10)  # a 10 MB body x 4000 is 40 GB over loopback


def bench(args) -> list[dict]:
    results = []
    for latency in args.latency_ms:
        proc, url = start_endpoint(latency)
        try:
            for rnd in range(args.rounds):
                for kind in args.payloads:
                    for concurrency in args.concurrency:
                        transports = args.transports if rnd % 2 == 0 else list(reversed(args.transports))
                        for transport in transports:  # interleaved, order alternating per round
                            n = requests_for(kind, args.requests)
                            server0 = cpu_s(proc.pid)
                            r = run_child(url, transport, kind, concurrency, n)
                            server_cpu = cpu_s(proc.pid) - server0
                            r = {"latency_ms": latency, "payload": kind, "concurrency": concurrency,
                                 "transport": transport, "round": rnd, **r,
                                 "server_cpu_ms_per_req": round(server_cpu * 1000 / (n + concurrency), 3),
                                 "load": round(os.getloadavg()[0], 1)}
                            print(json.dumps(r), flush=True)
                            results.append(r)
        finally:
            proc.terminate()
            proc.wait(10)
    return results


COLUMNS = ["latency_ms", "payload", "concurrency", "transport", "requests", "request_mb", "req_per_s", "mb_per_s",
           "cpu_ms_per_req", "cpu_ms_per_mb", "lag_p99_ms", "peak_rss_mb", "server_cpu_ms_per_req"]


def markdown(results: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["latency_ms"], r["payload"], r["concurrency"], r["transport"]), []).append(r)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for rows in groups.values():
        cells = []
        for c in COLUMNS:
            values = [r[c] for r in rows if r.get(c) is not None]
            if not values:
                cells.append("")
            elif isinstance(values[0], int | float) and c not in ("latency_ms", "concurrency", "requests"):
                med = statistics.median(values)
                spread = f" ({min(values):g}-{max(values):g})" if len(values) > 1 and c in ("req_per_s", "cpu_ms_per_req") else ""
                cells.append(f"{med:g}{spread}")
            else:
                cells.append(str(values[0]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=4000, help="Text requests per measurement (media: a tenth).")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 30.0])
    parser.add_argument("--payloads", nargs="+", default=["text", "image", "audio44", "audio48", "video"],
                        choices=["text", "image", "audio44", "audio48", "video"])
    parser.add_argument("--transports", nargs="+", default=["aiohttp", "httpx"], choices=["aiohttp", "httpx"])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: run the endpoint on this port
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one measurement against this URL
    parser.add_argument("--transport", help=argparse.SUPPRESS)
    parser.add_argument("--payload", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.latency_ms[0])
        return
    if args.child:
        args.url, args.concurrency = args.child, args.concurrency[0]
        child(args)
        return
    print(json.dumps({"machine": machine(), "date": datetime.now(UTC).isoformat(timespec="minutes")}), flush=True)
    results = bench(args)
    print(markdown(results))


if __name__ == "__main__":
    main()
