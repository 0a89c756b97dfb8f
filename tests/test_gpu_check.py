"""benchmarks/gpu_check.py, the one command a lent GPU machine runs, checked on the CPU at its tiny scale:
every part runs and says what it measured, with Ray and Optuna unimportable (the GPU machines lack them)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NO_RAY = ("import runpy, sys; sys.modules['ray'] = None; sys.modules['optuna'] = None; "
          "sys.argv = ['gpu_check.py', *sys.argv[1:]]; runpy.run_path({script!r}, run_name='__main__')")


@pytest.mark.slow
def test_the_gpu_check_runs_every_part_on_a_cpu_without_ray_or_optuna(tmp_path):
    out = tmp_path / "check.json"
    code = NO_RAY.format(script=str(ROOT / "benchmarks" / "gpu_check.py"))
    done = subprocess.run([sys.executable, "-c", code, "--device", "cpu", "--tiny", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(out.read_text())
    parts = ["environment", "losses", "distill", "deterministic_models", "pack_equality", "step_time", "throughput",
             "processes", "host_syncs"]
    assert all(summary[p]["ok"] for p in parts), {p: summary[p].get("error") for p in parts}
    assert summary["environment"]["device_type"] == "cpu"
    # bf16 logits, a float32 loss: within float32 rounding of the float64 loss of the same logits
    assert summary["losses"]["max_relative_error"] < 1e-5
    assert summary["distill"]["default"]["equal_metrics"] and summary["distill"]["deterministic"]["equal_metrics"]
    assert summary["distill"]["default"]["max_parameter_difference"] == 0.0  # a CPU rerun is exact
    assert summary["deterministic_models"]["torchvision:resnet18"]["equal"]
    assert summary["deterministic_models"]["cnn3 at 40x40"]["equal"]
    assert all(v < 1e-4 for v in summary["pack_equality"]["max_difference"].values())
    assert summary["step_time"]["eager"]["images_per_s"] > 0
    assert set(summary["throughput"]) - {"ok", "seconds"} == {"1", "2", "4"} and summary["throughput"]["2"]["stack"] > 0
    assert set(summary["processes"]) - {"ok", "seconds", "stacks", "choice"} == {"1", "2"}
    assert summary["processes"]["2"]["images_per_s"] > 0 and summary["processes"]["stacks"]["6"]["images_per_s"] > 0
    assert summary["processes"]["choice"]["trials_per_gpu"] in (1, 2)
    assert summary["host_syncs"]["count"] == 0 and summary["host_syncs"]["steps"] >= 4
    assert summary["host_syncs"]["per_step"] == 0 and summary["host_syncs"]["per_epoch"] == 0


def test_the_gpu_check_keeps_the_parts_it_finished_when_stopped_during_a_later_one(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # its dataclasses look their module up there
    spec.loader.exec_module(gpu_check)

    def stopped(device):
        raise SystemExit(137)  # as a time limit's kill would stop it: no part's error handling runs

    monkeypatch.setattr(gpu_check, "losses", stopped)
    monkeypatch.setattr(gpu_check, "_cache", lambda *args: None)  # no teacher: neither part needs one
    out = tmp_path / "check.json"
    with pytest.raises(SystemExit):
        gpu_check.main(["--device", "cpu", "--tiny", "--parts", "environment", "losses", "--json", str(out)])
    summary = json.loads(out.read_text())
    assert summary["environment"]["ok"] and summary["environment"]["device_type"] == "cpu"
    assert "losses" not in summary
    assert not (tmp_path / "check.json.tmp").exists()
