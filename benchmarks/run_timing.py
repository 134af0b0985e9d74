"""The README's whole run (the CMU slide) with two or more model directories, interleaved in
one process: wall time, stage times and nuclei of each (an A/B of post-processing settings
or models that the machine's drift cannot bias).

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.run_timing models/nucleus_unet /path/to/other_model \
        [--rounds 3] [--slide data/cmu_small_region.svs]

Round ``k`` runs the models in order, round ``k + 1`` in reverse order. The first run of the
process pays for cold caches; read it apart.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from slicer_cli.nuclei.options import AnalysisOptions
from slicer_cli.nuclei.pipeline import run_analysis


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dirs", nargs="+")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--slide", default="data/cmu_small_region.svs")
    args = p.parse_args(argv)
    for k in range(args.rounds):
        order = args.model_dirs if k % 2 == 0 else args.model_dirs[::-1]
        for model_dir in order:
            with tempfile.TemporaryDirectory() as tmp:
                ann = Path(tmp) / "n.anot"
                t0 = time.perf_counter()
                result = run_analysis(args.slide, str(ann), str(Path(tmp) / "f.csv"),
                                      AnalysisOptions(model_dir=model_dir, parquet=False))
                wall = time.perf_counter() - t0
                nuclei = len(json.loads(ann.read_text())["elements"])
            print(f"round {k} {model_dir}: {wall:.2f} s, {nuclei} nuclei, stages (s) "
                  f"{json.dumps(result.timings)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
