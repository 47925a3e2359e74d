"""How many requests to keep in flight when the user did not say (`--concurrency auto`, the default).

The aim is a server whose batch is always full: vLLM runs at most `--max-num-seqs` sequences at once
(its defaults: 1024 on H100/H200/B200-class GPUs, 256 on smaller ones, 128 per CPU socket) and at most as
many as its KV cache holds; requests beyond that wait in its queue, which costs the server nothing but
memory for their decoded media (and the evaluator the same: every request in flight is held whole). vLLM
does not publish `max_num_seqs`, but its `/metrics` page (vLLM 0.32) publishes the KV cache in the labels
of `vllm:cache_config_info`: `kv_cache_size_tokens` (older versions: `num_gpu_blocks` x `block_size`) and
`kv_cache_memory_bytes`, which is set only when the KV budget was given in bytes — as vLLM's CPU backend
always does (`VLLM_CPU_KVCACHE_SPACE`, mera-serve --dev) — and is `None` when a GPU engine sized its cache
from `gpu_memory_utilization`. No label names the device. The rule:

* a vLLM engine with a GPU-sized cache: as many requests as its KV cache holds at ~1k tokens each (a MERA
  prompt with an image or a 20 s clip and a short answer), between 64 and 1024 (vLLM's largest default
  batch), summed over the endpoints;
* a vLLM engine with a KV budget in bytes (a CPU engine, or a GPU one started with
  `--kv-cache-memory-bytes`): 64 — a CPU engine runs a handful of sequences at a time, and a deeper queue
  only makes each request wait longer towards its timeout and holds more media in memory on both sides;
* an endpoint without vLLM's `/metrics` (an OpenAI gateway, another server, a key that hides it): 64,
  what the evaluator always sent before and what the peer harnesses send.

`--concurrency N` overrides it. The value and its reason are printed when the run starts, and kept in the
run store with the invocation (so the report can say what was used).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from evaluator.endpoints import PROBE_TIMEOUTS, Endpoint, EndpointPool
from evaluator.http_policy import MiB, perform

DEFAULT_CONCURRENCY = 64
MAX_AUTO = 1024  # vLLM's largest default max_num_seqs (H100/H200/B200-class GPUs)
MIN_AUTO_GPU = 64
TOKENS_PER_REQUEST = 1024
CPU_ENGINE = 64

_INFO = re.compile(r"^vllm:cache_config_info\{(?P<labels>[^}]*)\}", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Capacity:
    """What an endpoint's vLLM /metrics says about its batch."""

    kv_tokens: int | None  # kv_cache_size_tokens (or num_gpu_blocks x block_size); None when not published
    cpu: bool  # the KV budget was given in bytes (vLLM's CPU backend always does)


@dataclass(frozen=True)
class ConcurrencyChoice:
    value: int
    reason: str

    def record(self) -> dict:
        return {"value": self.value, "reason": self.reason}


def parse_metrics(text: str) -> Capacity | None:
    """vLLM's Prometheus page -> its KV capacity, summed over its engines (data-parallel replicas each
    publish their own `engine="N"` line); None when the page is not vLLM's."""
    if "vllm:" not in text:
        return None
    engines: dict[str, tuple[int | None, bool]] = {}
    for match in _INFO.finditer(text):
        labels = dict(_LABEL.findall(match.group("labels")))

        def number(name: str, labels: dict[str, str] = labels) -> int | None:
            try:
                return int(float(labels.get(name, "")))
            except ValueError:
                return None

        tokens = number("kv_cache_size_tokens")
        if not tokens:
            blocks, size = number("num_gpu_blocks"), number("block_size")
            tokens = blocks * size if blocks and size else None
        engines[labels.get("engine", str(len(engines)))] = (tokens, (number("kv_cache_memory_bytes") or 0) > 0)
    if not engines:
        return Capacity(kv_tokens=None, cpu=False)
    sizes = [t for t, _ in engines.values()]
    return Capacity(kv_tokens=sum(sizes) if all(sizes) else None, cpu=any(c for _, c in engines.values()))


def rule(capacity: Capacity | None) -> tuple[int, str]:
    """One endpoint's share and why."""
    if capacity is None:
        return DEFAULT_CONCURRENCY, "no vLLM /metrics"
    if capacity.cpu:
        return CPU_ENGINE, "vLLM with a KV budget in bytes, as on CPU"
    if capacity.kv_tokens is None:
        return DEFAULT_CONCURRENCY, "vLLM /metrics without its KV cache size"
    value = max(MIN_AUTO_GPU, min(MAX_AUTO, capacity.kv_tokens // TOKENS_PER_REQUEST))
    return value, (f"vLLM KV cache of {capacity.kv_tokens:,} tokens / {TOKENS_PER_REQUEST} per request, "
                   f"within {MIN_AUTO_GPU}-{MAX_AUTO}")


async def read_capacity(pool: EndpointPool, endpoint: Endpoint) -> Capacity | None:
    attempt = await perform(pool.http, "GET", endpoint.api("/metrics"), timeouts=PROBE_TIMEOUTS, max_bytes=4 * MiB,
                            clock=pool.clock)
    if attempt.failure is not None or attempt.status != 200:
        return None
    return parse_metrics(attempt.body.decode("utf-8", "replace"))


async def choose_concurrency(pool: EndpointPool, given: int | None) -> ConcurrencyChoice:
    """`given` (from --concurrency), or the rule above over the endpoints that are up."""
    if given is not None:
        return ConcurrencyChoice(given, "set by --concurrency")
    shares = [rule(await read_capacity(pool, e)) for e in pool.endpoints if e.up]
    if not shares:
        return ConcurrencyChoice(DEFAULT_CONCURRENCY, "auto: no endpoint up to ask")
    total = sum(v for v, _ in shares)
    if len(shares) == 1:
        return ConcurrencyChoice(total, f"auto: {shares[0][1]}; --concurrency overrides")
    reasons = "; ".join(f"{e.url}: {v} ({why})" for e, (v, why) in zip([e for e in pool.endpoints if e.up], shares,
                                                                       strict=True))
    return ConcurrencyChoice(total, f"auto: the sum over {len(shares)} endpoints ({reasons}); --concurrency overrides")
