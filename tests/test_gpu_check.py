"""The prepared GPU check (docs/GPU.md): its wheel set, the carry budget, and its dry run."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from benchmarks.gpu_check import BUDGET_BYTES, NEEDED, carried_bytes, check_wheels

from .conftest import ROOT


def test_wheel_set_covers_what_the_gpu_machine_lacks():
    if not (ROOT / ".gpu_wheels").is_dir():
        pytest.fail(".gpu_wheels is missing: run scripts/fetch_gpu_wheels.sh (setup does)")
    report = check_wheels()
    assert report["ok"], report
    assert {w.split("-")[0].replace("_", "-").lower() for w in report["wheels"]} >= set(NEEDED)


def test_what_the_device_tool_carries_fits_its_64_mib():
    assert carried_bytes() <= BUDGET_BYTES


@pytest.mark.slow
def test_dry_run_on_the_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "TMPDIR": str(tmp_path)}
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--device", "cpu", "--small"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["wheels"]["ok"] and report["carried_bytes"]["ok"]
    assert report["gpu_tests"]["rc"] in (0, 5)  # every GPU test skips here (5: none ran)
    fp32 = report["parity"]["fp32"]
    assert max(fp32["max_abs_diff"].values()) <= 2e-4 and fp32["instance_agreement_pq"] >= 0.99
    cost = report["test_time_cost"]
    assert {f"{k}_s_per_tile" for k in ("plain", "flips", "shifts", "flips_shifts")} <= set(cost)
    assert 0 < cost["plain_s_per_tile"] < cost["flips_shifts_s_per_tile"]  # 1 call vs 16
    run = report["whole_slide"]
    assert run["nuclei"] > 0 and run["tiles"] > 0 and run["slide"]["gigapixels"] >= 0.05
    assert {"read", "network", "instances", "features"} <= set(
        run["stage_seconds_summed_over_threads"])
    assert (tmp_path / "report.txt").is_file() and (tmp_path / "pytest_gpu.log").is_file()
