"""Every route the pinned vLLM can register is in the guard's route table, so a route added by a
new vLLM cannot slip past the guard's inspection unnoticed.

vLLM's own app is built here with every optional route family switched on (all tasks, development
and LoRA routes, scale-out, tokenizer info, fault tolerance, the profiler, and the pooling routers
for each pooling task) and its routes compared with `server.guard.routes.ROUTES`.
"""

from __future__ import annotations

import inspect
import typing
from types import SimpleNamespace

import pytest
from fastapi import FastAPI

from server.guard.routes import REFUSED_BECAUSE, ROUTES, Shape, route_template

OPTIONAL_DEPENDENCY_ROUTES = {"/cohere/v2/chat", "/cohere/v2/chat/render"}  # need the `cohere` SDK


@pytest.fixture(scope="module")
def vllm_routes() -> dict[str, set[str]]:
    mp = pytest.MonkeyPatch()
    for name in ("VLLM_SERVER_DEV_MODE", "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "VLLM_ENABLE_COHERE_API"):
        mp.setenv(name, "1")
    try:
        import vllm.tasks
        from vllm.entrypoints.launchers.app import build_app
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.entrypoints.pooling.factories import register_pooling_api_routers
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        args = make_arg_parser(FlexibleArgumentParser()).parse_args([
            "--model", "m", "--enable-scale-out", "--enable-tokenizer-info-endpoint", "--enable-fault-tolerance",
            "--profiler-config", '{"profiler": "torch", "torch_profiler_dir": "/tmp/mera-profile"}',
        ])  # fmt: skip
        tasks = typing.get_args(vllm.tasks.SupportedTask)
        apps = [build_app(args, supported_tasks=tasks)]
        for task in ("embed", "classify", "token_embed", "token_classify", "plugin"):
            model = SimpleNamespace(get_pooling_task=lambda _tasks, t=task: t, architecture="Any",
                                    hf_config=SimpleNamespace(num_labels=1))  # fmt: skip
            pooling = FastAPI()
            pooling.state.args = args
            register_pooling_api_routers(pooling, tasks, model)
            apps.append(pooling)
    finally:
        mp.undo()
    routes: dict[str, set[str]] = {}
    for app in apps:
        for route in app.routes:
            routes.setdefault(route.path, set()).update(getattr(route, "methods", None) or {"WEBSOCKET"})
    return routes


def test_every_vllm_route_is_in_the_guards_table(vllm_routes):
    assert len(vllm_routes) > 60  # the build really switched the optional families on
    unknown = sorted(path for path in vllm_routes if path not in ROUTES)
    assert unknown == [], "new vLLM routes: add each to server/guard/routes.py with the shape of its body"


def test_the_table_holds_no_route_vllm_does_not_have(vllm_routes):
    from vllm.entrypoints.cohere import api_router as cohere

    stale = sorted(set(ROUTES) - set(vllm_routes) - OPTIONAL_DEPENDENCY_ROUTES)
    assert stale == []
    assert all(f'"{path}"' in inspect.getsource(cohere) for path in OPTIONAL_DEPENDENCY_ROUTES)


def test_media_routes_of_the_issue_are_inspected_and_audio_uploads_refused(vllm_routes):
    inspected = {"/v1/chat/completions", "/v1/chat/completions/batch", "/v1/responses", "/v1/messages", "/tokenize",
                 "/invocations", "/v1/chat/completions/render", "/v1/messages/count_tokens"}  # fmt: skip
    assert all(ROUTES[p] not in (Shape.TEXT_ONLY, Shape.REFUSED) for p in inspected)
    assert {p for p, shape in ROUTES.items() if shape is Shape.REFUSED} == set(REFUSED_BECAUSE)
    assert ROUTES["/v1/audio/transcriptions"] is Shape.REFUSED and "WEBSOCKET" in vllm_routes["/v1/realtime"]


@pytest.mark.parametrize(("path", "template"), [
    ("/v1/chat/completions", "/v1/chat/completions"),
    ("/v1/chat/completions/", "/v1/chat/completions"),
    ("/v1/responses/resp_123", "/v1/responses/{response_id}"),
    ("/v1/responses/resp_123/cancel", "/v1/responses/{response_id}/cancel"),
    ("/adapters/my-lora", "/adapters/{adapter_name}"),
    ("/v1/plugin/route", None),
    ("/v1/responses/a/b", None),
])  # fmt: skip
def test_request_paths_map_to_table_entries(path, template):
    assert route_template(path) == template
