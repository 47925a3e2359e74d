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


# --- settings that cannot be mistyped (issue 14) -----------------------------------------------------------
def _clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.upper().startswith("MERA_SERVE_") or name == "VLLM_API_KEY":
            monkeypatch.delenv(name)


def _cli_env(**env: str) -> dict[str, str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("MERA_SERVE_") and k != "VLLM_API_KEY"}
    return {**base, **env}


def _run_cli_env(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, timeout=60,
                          env=env)  # fmt: skip


def assert_one_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize(("name", "closest"), [
    ("MERA_SERVE_GUARD__MAX_BODY_BYTE", "MERA_SERVE_GUARD__MAX_BODY_BYTES"),
    ("MERA_SERVE_MAX_MODEL_LENGTH", "MERA_SERVE_MAX_MODEL_LEN"),
    ("MERA_SERVE_APIKEY", "MERA_SERVE_API_KEY"),
])  # fmt: skip
def test_unknown_environment_setting_names_the_closest_one(name, closest):
    result = _run_cli_env(_cli_env(**{name: "1"}), "--print-config")
    assert_one_line(result, f"unknown setting {name}", f"did you mean {closest}?")


def test_unknown_setting_is_refused_in_process_too(monkeypatch):
    from server.errors import SettingsProblem

    _clean_env(monkeypatch)
    monkeypatch.setenv("MERA_SERVE_GUARD__MAX_BODY_BYTE", "1")
    with pytest.raises(SettingsProblem) as refused:
        ServerSettings()
    assert refused.value.one_line().endswith("did you mean MERA_SERVE_GUARD__MAX_BODY_BYTES?")


def test_dict_and_list_flags_take_json(monkeypatch, capsys):
    _clean_env(monkeypatch)
    assert main(["--print-config", "--limit-mm-per-prompt", '{"image":2}', "--extra-args",
                 '["--max-num-batched-tokens", "16384"]', "--guard-allowed-media-hosts", '["media.example.org"]',
                 "--guard-limit-mm-per-prompt", '{"image": 1}', "--guard.max-messages", "12"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    settings = json.loads(out.split("# vLLM command")[0].removeprefix("# effective settings"))
    assert settings["limit_mm_per_prompt"] == {"image": 2} and settings["extra_args"][-1] == "16384"
    assert settings["guard"]["allowed_media_hosts"] == ["media.example.org"]
    assert settings["guard"]["limit_mm_per_prompt"] == {"image": 1} and settings["guard"]["max_messages"] == 12
    assert "--limit-mm-per-prompt '{\"image\":2}'" in out and "--max-num-batched-tokens 16384" in out


def test_nested_environment_and_flags_merge(monkeypatch):
    from server.cli import build_parser, settings_from_args

    _clean_env(monkeypatch)
    monkeypatch.setenv("MERA_SERVE_GUARD__MAX_BODY_BYTES", "1000")
    monkeypatch.setenv("MERA_SERVE_LIMIT_MM_PER_PROMPT", '{"image": 3}')
    parser = build_parser()
    settings = settings_from_args(parser.parse_args(["--guard.max-image-pixels", "99"]), parser)
    assert settings.guard.max_body_bytes == 1000 and settings.guard.max_image_pixels == 99
    assert settings.limit_mm_per_prompt == {"image": 3}


@pytest.mark.parametrize(("env", "args", "fragments"), [
    ({"MERA_SERVE_LIMIT_MM_PER_PROMPT": "{image: 2}"}, ["--print-config"],
     ["MERA_SERVE_LIMIT_MM_PER_PROMPT is not valid JSON"]),
    ({"MERA_SERVE_GUARD__ALLOWED_MEDIA_HOSTS": "[oops"}, ["--print-config"],
     ["MERA_SERVE_GUARD__ALLOWED_MEDIA_HOSTS is not valid JSON"]),
    ({}, ["--extra-args", "[--x"], ["--extra-args is not valid JSON"]),
    ({}, ["--guard.max-messages", "many"], ["--guard.max-messages / MERA_SERVE_GUARD__MAX_MESSAGES"]),
    ({}, ["--max-model-length", "8"], ["did you mean --max-model-len?"]),
    ({}, ["--api-key", "s3cret"], ["never from argv"]),
    ({"MERA_SERVE_API_KEY_FILE": "/no/such/key"}, ["--print-config"], ["cannot read the API key file"]),
    ({}, ["--model", "/no/such/checkpoint"], ["model folder not found: /no/such/checkpoint"]),
    ({}, ["--host", "0.0.0.0"], ["refusing to serve on 0.0.0.0:8000 without an API key", "MERA_SERVE_API_KEY"]),
])  # fmt: skip
def test_user_errors_are_one_line_with_the_fix(env, args, fragments):
    assert_one_line(_run_cli_env(_cli_env(**env), *args), *fragments)


def test_debug_shows_the_traceback():
    result = _run_cli_env(_cli_env(MERA_SERVE_LIMIT_MM_PER_PROMPT="{image: 2}"), "--print-config", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_the_key_is_not_a_flag_and_comes_from_a_file(monkeypatch, tmp_path):
    from server.cli import build_parser

    _clean_env(monkeypatch)
    import re

    assert not re.search(r"--api-key(?!-file)", build_parser().format_help())
    key = tmp_path / "key"
    key.write_text("s3cret-from-file\n")
    monkeypatch.setenv("MERA_SERVE_API_KEY_FILE", str(key))
    settings = ServerSettings()
    assert settings.api_key.get_secret_value() == "s3cret-from-file"
    assert vllm_env(settings, base={})["VLLM_API_KEY"] == "s3cret-from-file"
    assert "s3cret" not in " ".join(vllm_argv(settings))
    key.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        ServerSettings()
    key.write_text("k")
    monkeypatch.setenv("MERA_SERVE_API_KEY", "other")
    with pytest.raises(ValueError, match="set twice"):
        ServerSettings()


def test_loopback_by_default_and_a_loud_warning_when_open_on_purpose(monkeypatch):
    from server.launch import check_settings

    _clean_env(monkeypatch)
    assert ServerSettings().host == "127.0.0.1" and check_settings(ServerSettings()) == []
    warnings = check_settings(ServerSettings(host="0.0.0.0", allow_unauthenticated=True))
    assert len(warnings) == 1 and warnings[0].startswith("WARNING") and "no API key" in warnings[0]
    assert check_settings(ServerSettings(host="0.0.0.0", api_key="k")) == []


def test_the_guard_is_told_what_it_must_know_about_the_server(monkeypatch):
    _clean_env(monkeypatch)
    settings = ServerSettings(max_model_len=8192, extra_args=["--media-io-kwargs", '{"video": {"num_frames": 16}}'])
    argv = vllm_argv(settings)
    assert "--disable-uvicorn-access-log" in argv  # uvicorn's log would keep a key sent in a query string
    guard = json.loads(vllm_env(settings, base={})["MERA_GUARD_CONFIG"])
    assert guard["context_tokens"] == 8192 and guard["video_num_frames"] == 16
    judge = json.loads(vllm_env(ServerSettings(judge=True), base={})["MERA_GUARD_CONFIG"])
    assert judge["limit_mm_per_prompt"] == {"image": 0, "audio": 0, "video": 0}
