"""The prepared GPU check (docs/GPU.md): its wheel set, the carry budget, and its dry run."""
from __future__ import annotations

import json
import os
import re
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
    """benchmarks/gpu_all.sh as the GPU machine runs it, on the CPU: the twin trains for 2
    iterations beside the check's untimed steps, then the timed ones on a small slide; the
    report and the training's files come back as few files in $OUT."""
    import tarfile

    env = {**os.environ, "OUT": str(tmp_path / "out"), "TMPDIR": str(tmp_path),
           "TRAIN_LIMIT_S": "600", "SLIDE_LIMIT_S": "600"}
    done = subprocess.run(["bash", "benchmarks/gpu_all.sh", "--device", "cpu", "--iterations",
                           "2", "--stain-transfer", "0", "--", "--device", "cpu", "--small"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["wheels"]["ok"] and report["carried_bytes"]["ok"]
    assert report["gpu_tests"]["rc"] in (0, 5)  # every GPU test skips here (5: none ran)
    fp32 = report["parity"]["fp32"]
    assert max(fp32["max_abs_diff"].values()) <= 2e-4 and fp32["instance_agreement_pq"] >= 0.99
    cost = report["test_time_cost"]
    assert {f"{k}_s_per_tile" for k in ("plain", "flips", "shifts", "flips_shifts")} <= set(cost)
    assert 0 < cost["plain_s_per_tile"] < cost["flips_shifts_s_per_tile"]  # 1 call vs 16
    accurate = report["accurate_cost"]
    assert accurate["model"] == "nucleus_unet_accurate" and cost["model"] == "nucleus_unet"
    assert 0 < accurate["plain_s_per_tile"] < accurate["flips_shifts_s_per_tile"]
    run = report["whole_slide"]
    assert run["nuclei"] > 0 and run["tiles"] > 0 and run["slide"]["gigapixels"] >= 0.05
    assert {"read", "network", "instances", "features"} <= set(
        run["stage_seconds_summed_over_threads"])
    assert "finished" in report  # the second, timed half merged into the first's report
    with tarfile.open(out / "train.tar.gz") as tar:
        names = set(tar.getnames())
        assert {"train/heldout_model/1/model.onnx", "train/heldout_model/1/model.int8.onnx",
                "train/heldout_model/config.pbtxt"} <= names
        assert json.load(tar.extractfile("train/summary.json"))["split"] == "heldout"
        log = tar.extractfile("train/train.log").read().decode()
    assert "it 2/2" in log and re.search(r"'loader_workers': [1-9]", log)  # batch makers
    # what the device tool returns: at most 8 files, none deeper than two folders
    files = [f for f in out.rglob("*") if f.is_file()]
    assert len(files) <= 8 and all(len(f.relative_to(out).parts) <= 3 for f in files)


def test_check_runs_the_steps_it_is_told(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--device", "cpu", "--only",
                           "environment,wheels"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert {"environment", "wheels"} <= set(report) and "parity" not in report
    bad = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--only", "parity,nap"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown steps ['nap']" in bad.stderr
