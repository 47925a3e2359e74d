"""`--concurrency auto`: the requests in flight chosen from the server's vLLM /metrics, visible to the user.
The vLLM page is a real one (tests/fixtures/vllm-0.32-cpu-metrics.txt, from mera-serve --dev)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from evaluator.concurrency import Capacity, parse_metrics, rule
from evaluator.data import DataSource
from evaluator.requests import RequestOptions
from evaluator.runner import RunConfig, run
from evaluator.schema import GenerationParams
from evaluator.store import RunStore
from tests.faults import FaultServer

CPU_PAGE = (Path(__file__).parent / "fixtures" / "vllm-0.32-cpu-metrics.txt").read_text()


def gpu_page(kv_tokens: int) -> str:
    """The same page as a GPU engine serves it: the cache sized by gpu_memory_utilization (no byte budget)."""
    page = re.sub(r'kv_cache_memory_bytes="\d+"', 'kv_cache_memory_bytes="None"', CPU_PAGE)
    return re.sub(r'kv_cache_size_tokens="\d+"', f'kv_cache_size_tokens="{kv_tokens}"', page)


def test_the_real_cpu_page_is_read_as_a_byte_budget_engine():
    assert parse_metrics(CPU_PAGE) == Capacity(kv_tokens=3378144, cpu=True)
    assert rule(parse_metrics(CPU_PAGE)) == (64, "vLLM with a KV budget in bytes, as on CPU")


@pytest.mark.parametrize(("kv_tokens", "expected"), [(2_000_000, 1024), (300_000, 292), (20_000, 64)])
def test_a_gpu_engine_gets_what_its_kv_cache_holds_within_64_to_1024(kv_tokens, expected):
    value, reason = rule(parse_metrics(gpu_page(kv_tokens)))
    assert value == expected and f"KV cache of {kv_tokens:,} tokens" in reason


def test_older_pages_without_kv_cache_size_tokens_use_blocks_times_block_size():
    page = re.sub(r'kv_cache_size_tokens="\d+",', "", gpu_page(1))
    assert parse_metrics(page).kv_tokens == 32768 * 128


def test_data_parallel_replicas_add_up():
    one = gpu_page(500_000)
    info = next(line for line in one.splitlines() if line.startswith("vllm:cache_config_info{"))
    two = one + "\n" + info.replace('engine="0"', 'engine="1"') + "\n"
    assert parse_metrics(two).kv_tokens == 1_000_000
    assert rule(parse_metrics(two))[0] == 976


def test_a_page_that_is_not_vllms_is_the_default():
    assert parse_metrics("# HELP http_requests_total\nhttp_requests_total 3\n") is None
    assert rule(None) == (64, "no vLLM /metrics")


def config(server: FaultServer, data_dir, out, **kw) -> RunConfig:
    return RunConfig(endpoints=[server.base_url], output=out, tasks=["ruCLEVR"], source=DataSource(data_dir=data_dir),
                     options=RequestOptions(params=GenerationParams(model="fault-model")), **kw)


@pytest.mark.parametrize(("metrics", "expected", "why"), [
    (None, 64, "auto: no vLLM /metrics; --concurrency overrides"),
    (gpu_page(400_000), 390, "auto: vLLM KV cache of 400,000 tokens / 1024 per request, within 64-1024; "
                             "--concurrency overrides"),
])
async def test_auto_asks_the_server_says_so_and_keeps_it_with_the_run(sample_data_dir, tmp_path, metrics, expected,
                                                                      why):
    notices: list[str] = []
    with FaultServer() as server:
        server.metrics = metrics
        summary = await run(config(server, sample_data_dir, tmp_path / "run"), on_notice=notices.append)
    assert summary.errors == 0 and summary.concurrency.value == expected and summary.concurrency.reason == why
    assert f"concurrency {expected} ({why})" in notices
    store = RunStore.open_existing(tmp_path / "run")
    assert store.invocations()[-1]["concurrency"] == {"value": expected, "reason": why}
    store.close()


async def test_the_flag_overrides_and_is_bounded_on_the_wire(sample_data_dir, tmp_path):
    with FaultServer(default="slow:0.1") as server:
        server.metrics = gpu_page(2_000_000)
        summary = await run(config(server, sample_data_dir, tmp_path / "run", concurrency=2))
        assert server.max_in_flight == 2
    assert summary.concurrency.value == 2 and summary.concurrency.reason == "set by --concurrency"
