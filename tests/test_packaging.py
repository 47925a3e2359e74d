"""The distribution: wheel and sdist carry every file the code opens, and the installed package finds them.

An editable install (the test venv's) hides missing package files, so the installed-package checks run the
wheel's own copy from a folder outside the repository, with it first on the path, and check that what they
found lies in that copy. CI repeats them with a real non-editable install in a fresh venv (.ci/run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from mera_multi.version import source_commit, version_text
from server.settings import ServerSettings
from tests.server_process import PROJECT_ROOT

PACKAGES = ("server", "evaluator", "mera_multi", "chat_templates")
VERSION = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


def package_files() -> set[str]:
    """Every file of the importable packages in the source tree, as paths relative to the root."""
    out = set()
    for package in PACKAGES:
        for path in (PROJECT_ROOT / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                out.add(path.relative_to(PROJECT_ROOT).as_posix())
    return out


# Build outputs and local state: a build from a tree holding them can pick up files a clean one lacks
# (setuptools reads a stale *.egg-info/SOURCES.txt), so the build runs on a copy without them.
LOCAL_STATE = (".git", ".venv", ".cache", "build", "dist", "*.egg-info", "__pycache__", "runs", ".*_cache")


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """sdist, then the wheel built from that sdist (python -m build), offline with the venv's setuptools."""
    source = tmp_path_factory.mktemp("source") / "mera-multi"
    shutil.copytree(PROJECT_ROOT, source, ignore=shutil.ignore_patterns(*LOCAL_STATE))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
                   check=True, capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory) -> Path:
    """The wheel's files unpacked as pip installs them (no dependencies: the venv has those)."""
    target = tmp_path_factory.mktemp("site")
    wheel = next(dist.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    return target


def run_installed(installed: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERA_SERVE_")}
    env["PYTHONPATH"] = str(installed)
    return subprocess.run([sys.executable, *args], cwd=installed.parent, env=env, capture_output=True, text=True,
                          timeout=120)


def test_wheel_carries_every_package_file(dist):
    wheel = next(dist.glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert package_files() <= names, sorted(package_files() - names)
    assert "chat_templates/gemma4_mera.jinja" in names
    assert sum(n.startswith("evaluator/assets/prompt_templates/") and n.endswith(".json") for n in names) == 18


def test_sdist_carries_the_packages_and_the_tests_with_their_data(dist):
    sdist = next(dist.glob("*.tar.gz"))
    root = f"mera_multi-{VERSION}/"
    with tarfile.open(sdist) as tar:
        names = {n.removeprefix(root) for n in tar.getnames()}
    assert package_files() <= names, sorted(package_files() - names)
    assert {"pyproject.toml", "README.md", "tests/conftest.py", "tests/fixtures/mera_card_examples.jsonl",
            "tests/fixtures/mera_prompt_templates.sha256.json"} <= names


def test_installed_server_finds_its_template_in_the_install(installed):
    done = run_installed(installed, "-m", "server.cli", "--print-config")
    assert done.returncode == 0, done.stderr
    template = (installed / "chat_templates" / "gemma4_mera.jinja").resolve()
    assert f"--chat-template {template}" in done.stdout
    assert template.read_bytes() == (PROJECT_ROOT / "chat_templates" / "gemma4_mera.jinja").read_bytes()


def test_installed_evaluator_runs_and_reads_its_templates(installed):
    code = ("import evaluator.sample_data as s, mera_multi.version as v; "
            "print(s.TEMPLATES_DIR.resolve()); print(v.version_text('mera-eval'))")
    done = run_installed(installed, "-c", code)
    assert done.returncode == 0, done.stderr
    templates_dir, version = done.stdout.splitlines()
    assert Path(templates_dir) == (installed / "evaluator" / "assets" / "prompt_templates").resolve()
    assert version == f"mera-eval {VERSION}"  # an install is no checkout: no commit


def test_version_in_the_checkout_names_the_commit(capsys):
    from evaluator.cli import main as eval_main
    from server.cli import main as serve_main

    for main, prog in ((eval_main, "mera-eval"), (serve_main, "mera-serve")):
        with pytest.raises(SystemExit) as done:
            main(["--version"])
        assert done.value.code == 0
        line = capsys.readouterr().out.strip()
        assert line == version_text(prog) and line.startswith(f"{prog} {VERSION}")
    commit = source_commit()
    if (PROJECT_ROOT / ".git").exists():  # a clone; an unpacked sdist has no history
        head = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        assert commit and head.startswith(commit.removesuffix("-dirty"))
    else:
        assert commit is None


def test_no_commit_outside_a_checkout(tmp_path):
    assert source_commit(tmp_path) is None


def test_dev_checkpoints_go_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("MERA_SERVE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ServerSettings(dev=True).dev_checkpoint_dir() == tmp_path / "xdg" / "mera-multi" / "tiny-gemma4"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ServerSettings(dev=True).cache_dir == tmp_path / "home" / ".cache" / "mera-multi"
    monkeypatch.setenv("MERA_SERVE_CACHE_DIR", str(tmp_path / "mine"))
    assert ServerSettings(dev=True, judge=True).dev_checkpoint_dir() == tmp_path / "mine" / "tiny-judge"
