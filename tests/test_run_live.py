"""The dispatch path against the real vLLM dev server (tiny Gemma-4, guard on, API key set): what a real
server rejects is recorded with vLLM's own message and never retried; a wrong key stops the run before
anything is sent; the same run through two endpoint URLs of one server shares the work.
(Every-task completion, kill-and-resume and server restart are in tests/test_run_e2e.py.)"""

from __future__ import annotations

import pytest

from evaluator.data import DataSource
from evaluator.http_policy import AuthError, RetryPolicy
from evaluator.requests import RequestOptions
from evaluator.runner import RunConfig, run
from evaluator.schema import GenerationParams
from evaluator.store import RunStore

pytestmark = pytest.mark.server
FAST = RetryPolicy(max_attempts=3, base_delay_s=0.05, max_delay_s=0.2, max_downtime_s=120)


def config(endpoints, data_dir, out, api_key, *, max_tokens=4, tasks=("WEIRD", "ruEnvAQA"), **kw) -> RunConfig:
    return RunConfig(endpoints=endpoints, output=out, tasks=list(tasks), source=DataSource(data_dir=data_dir),
                     api_key=api_key, retry=FAST, limit=2, concurrency=4,
                     options=RequestOptions(params=GenerationParams(model="", max_tokens=max_tokens)), **kw)


async def test_a_request_vllm_rejects_is_recorded_with_its_message_not_retried(dev_server, sample_data_dir, tmp_path):
    out = tmp_path / "run"
    # max_tokens beyond max_model_len (10000): vLLM answers 400 before generating anything
    summary = await run(config([dev_server.base_url], sample_data_dir, out, dev_server.api_key, max_tokens=20000))
    assert summary.errors == summary.sent == 4
    replies = list(RunStore.open_existing(out).replies())
    assert len(replies) == 4
    for reply in replies:
        assert reply.status == "invalid_request" and reply.http_status == 400 and reply.attempts == 1
        assert reply.content is None and "max_model_len=10000" in reply.error  # vLLM's own words


async def test_a_wrong_api_key_stops_the_run_at_once_and_stores_nothing(dev_server, sample_data_dir, tmp_path):
    """With or without --model: the key is refused on /v1/models (readiness), before any sample is sent,
    so a rerun with the right key sends everything without --retry-errors."""
    with pytest.raises(AuthError, match="/v1/models answered 401") as err:
        await run(config([dev_server.base_url], sample_data_dir, tmp_path / "ask", "not-the-key"))
    assert "--api-key" in err.value.one_line()
    cfg = config([dev_server.base_url], sample_data_dir, tmp_path / "run", "not-the-key", tasks=["WEIRD"])
    cfg.options.params.model = dev_server.model
    with pytest.raises(AuthError):
        await run(cfg)
    assert RunStore.open_existing(tmp_path / "run").count() == 0
    right = config([dev_server.base_url], sample_data_dir, tmp_path / "run", dev_server.api_key, tasks=["WEIRD"])
    right.options.params.model = dev_server.model
    summary = await run(right)
    assert summary.sent == 2 and summary.errors == 0


async def test_two_endpoint_urls_share_one_queue_and_answers_are_stored(dev_server, sample_data_dir, tmp_path):
    endpoints = [dev_server.base_url, dev_server.base_url.replace("127.0.0.1", "localhost") + "/v1"]
    summary = await run(config(endpoints, sample_data_dir, tmp_path / "run", dev_server.api_key,
                               tasks=["WEIRD", "ruEnvAQA", "CommonVideoQA", "ruTiE-Audio"], rutie_history=1))
    assert summary.errors == 0
    replies = list(RunStore.open_existing(tmp_path / "run").replies())
    assert {r.task for r in replies} == {"WEIRD", "ruEnvAQA", "CommonVideoQA", "ruTiE-Audio"}
    assert all(r.status == "ok" and r.content is not None and r.prompt_tokens for r in replies)
    assert {r.endpoint for r in replies} == {dev_server.base_url, dev_server.base_url.replace("127.0.0.1", "localhost")}
