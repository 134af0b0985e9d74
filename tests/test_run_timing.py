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
