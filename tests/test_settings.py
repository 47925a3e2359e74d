"""mera-serve settings: leaderboard defaults, env and flag overrides, one-line errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from server.cli import main
from server.launch import vllm_argv, vllm_env
from server.settings import LEADERBOARD_TEMPLATE, ServerSettings


def test_defaults_are_the_leaderboard_run(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    s = ServerSettings()
    assert (s.model, s.dtype, s.max_model_len, s.seed) == ("google/gemma-4-E4B-it", "bfloat16", 10000, 1234)
    assert s.chat_template == LEADERBOARD_TEMPLATE
    assert s.limit_mm_per_prompt["audio"] >= 2  # AQUARIA sends two clips
    argv = vllm_argv(s)
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    for flag, value in [("--model", "google/gemma-4-E4B-it"), ("--dtype", "bfloat16"), ("--max-model-len", "10000"),
                        ("--seed", "1234"), ("--chat-template", str(LEADERBOARD_TEMPLATE))]:
        assert argv[argv.index(flag) + 1] == value


def test_env_then_flags_override(monkeypatch, capsys):
    monkeypatch.setenv("MERA_SERVE_MAX_MODEL_LEN", "8192")
    monkeypatch.setenv("MERA_SERVE_GUARD__MAX_BODY_BYTES", "1000")
    assert ServerSettings().max_model_len == 8192
    assert ServerSettings().guard.max_body_bytes == 1000
    assert main(["--print-config", "--max-model-len", "4096", "--tensor-parallel-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "--max-model-len 4096" in out and "--tensor-parallel-size 2" in out
    assert '"max_model_len": 4096' in out


def test_api_key_travels_in_the_environment_never_on_argv(monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "s3cret")
    s = ServerSettings()
    assert s.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in " ".join(vllm_argv(s))
    env = vllm_env(s, base={})
    assert env["VLLM_API_KEY"] == "s3cret"
    assert json.loads(env["MERA_GUARD_CONFIG"])["limit_mm_per_prompt"] == s.limit_mm_per_prompt


def test_print_config_hides_the_key(monkeypatch, capsys):
    monkeypatch.setenv("MERA_SERVE_API_KEY", "s3cret")
    assert main(["--print-config"]) == 0
    assert "s3cret" not in capsys.readouterr().out


def test_dev_and_judge_modes(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    dev = ServerSettings(dev=True)
    assert dev.enforce_eager and dev.served_model_name == "mera-dev/tiny-gemma-4"
    judge = vllm_argv(ServerSettings(judge=True))
    assert judge[judge.index("--model") + 1] == "MERA-evaluation/MERA_Answer_judge"
    assert "--chat-template" not in judge and judge[judge.index("--runner") + 1] == "pooling"
    assert judge[judge.index("--port") + 1] == "8001"


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, message", [
    (["--dtype", "int3"], "dtype"),
    (["--chat-template", "/no/such/template.jinja"], "chat template file not found"),
    (["--port", "notaport"], "port"),
])  # fmt: skip
def test_bad_configuration_is_one_line_not_a_traceback(args, message):
    result = _run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_port_in_use_is_one_line():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = _run_cli("--dev", "--host", "127.0.0.1", "--port", str(port))  # --dev: without a GPU the default mode stops first
    assert result.returncode == 2
    assert f"port {port}" in result.stderr and "in use" in result.stderr and "Traceback" not in result.stderr
