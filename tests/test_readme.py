"""README's first steps work as written: every mera-eval/mera-serve command before "GPU host" is a valid
command of the real parsers, the dataset list is the registry's, the dev server's model name is the real one.
(The "GPU host" section has its own checks in test_docker_config.py.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from evaluator.cli import build_parser as eval_parser
from evaluator.registry import TASKS
from server.cli import build_parser as serve_parser
from server.settings import DEV_MODEL_NAME

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
FIRST_STEPS = README[: README.index("\n## GPU host")]
PARSERS = {"mera-eval": eval_parser, "mera-serve": serve_parser}


def bash_lines(text: str) -> list[str]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def project_commands() -> list[list[str]]:
    commands = []
    for line in bash_lines(FIRST_STEPS):
        if " ... " in line:  # "mera-eval run ... --tasks audio": the options of the line above, elided
            continue
        tokens = [t.strip("[]") for t in shlex.split(line) if t not in ("&", "[", "]")]
        if tokens and tokens[0] in PARSERS:
            commands.append(tokens)
    return commands


def test_first_steps_commands_parse():
    commands = project_commands()
    assert {c[0] for c in commands} == set(PARSERS)
    assert any(c[:2] == ["mera-eval", "sample-data"] for c in commands)
    assert any(c[:2] == ["mera-eval", "run"] and "--data-dir" in c for c in commands)
    for tokens in commands:
        PARSERS[tokens[0]]().parse_args(tokens[1:])  # SystemExit (a failing test) on an unknown option


def test_dev_loop_comes_first_under_using_it():
    using = FIRST_STEPS[FIRST_STEPS.index("\n## Using it"):]
    first = bash_lines(using)
    assert "mera-serve --dev" in first[1] and first[2].startswith("mera-eval sample-data")


def test_snapshot_loop_downloads_every_dataset():
    loop = next(line for line in bash_lines(FIRST_STEPS) if line.startswith("for name in"))
    names = loop.removeprefix("for name in").split(";")[0].split()
    assert names == list(TASKS)


def test_examples_send_the_dev_servers_model_name():
    sent = re.findall(r'"model": "([^"]+)"', FIRST_STEPS)
    assert sent and set(sent) == {DEV_MODEL_NAME}
