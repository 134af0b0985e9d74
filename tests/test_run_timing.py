"""benchmarks/run_timing.py on the real slide: the shipped model against itself without the
peak threshold (5.1.0's post-processing) -- the A/B that BENCHMARKS.md reports."""
from __future__ import annotations

import re
import shutil

from benchmarks import run_timing
from slicer_cli.nuclei.model import DEFAULT_MODEL_DIR


def test_peak_threshold_drops_a_few_faint_nuclei_of_the_real_slide(tmp_path, capsys):
    no_peak = tmp_path / "nucleus_unet"
    shutil.copytree(DEFAULT_MODEL_DIR, no_peak)
    config = no_peak / "config.pbtxt"
    text = config.read_text()
    assert 'key: "fg_peak_threshold"' in text
    config.write_text(re.sub(r'parameters \{ key: "fg_peak_threshold"[^\n]*\n', "", text))
    assert run_timing.main([str(DEFAULT_MODEL_DIR), str(no_peak), "--rounds", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    counts = {}
    for line in lines:
        m = re.match(r"round 0 (\S+): [\d.]+ s, (\d+) nuclei, stages", line)
        assert m, line
        counts[m.group(1)] = int(m.group(2))
    with_peak, without = counts[str(DEFAULT_MODEL_DIR)], counts[str(no_peak)]
    assert without > 1000  # the CMU slide's nuclei (README run)
    assert 0.9 * without <= with_peak < without  # a few faint blobs dropped, no more


def test_onnx_profile_splits_a_real_call_into_its_parts(capsys):
    """benchmarks/onnx_profile.py: the shipped network's nodes, profiled by ONNX Runtime on a
    real tile, fall into the input side, the U-Net and the output side, and the parts add up
    to the total it prints (BENCHMARKS.md quotes these parts)."""
    from benchmarks import onnx_profile

    assert onnx_profile.main([str(DEFAULT_MODEL_DIR), "--size", "256", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    total = float(re.search(r"([\d.]+) ms of node time per call", out).group(1))
    parts = {m.group(2): float(m.group(1)) for m in re.finditer(
        r"^\s+([\d.]+) ms\s+[\d.]+ %\s+(input|the U-Net|output)", out, re.M)}
    assert set(parts) == {"input", "the U-Net", "output"}, out
    assert abs(sum(parts.values()) - total) <= 0.2  # each printed to 0.1 ms
    assert parts["the U-Net"] > parts["input"] > 0 and parts["output"] > 0
