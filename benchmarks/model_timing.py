"""Per-tile CPU network time of two or more models, interleaved in one run (an A/B that the
machine's drift cannot bias).

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.model_timing models/nucleus_unet /path/to/other_model \
        [--repeats 15] [--threads 2] [--size 1024] [--grid-anchor-too] [--float-too]

Each model is loaded once through ``LocalBackend`` (ONNX Runtime, CPU, as the CLI runs it:
its int8 graph where it ships one; ``--float-too`` adds its float graph), warmed up with one
call, then the models take turns on the same ``size`` x ``size`` tile of hgsc_nest for
``repeats`` rounds; the median and the minimum of each model's calls are printed. With
``--grid-anchor-too`` each model also takes two turns with the grid anchor, timed as the
engine runs it (``backends.test_time.infer_averaged(anchor=True)``: the landmark, the
window, the network, the cut back): as a lone tile (a region no bigger than a tile: every
pixel used, the window one period wider) and as a slide's inner tile (the edges its
overlap leaves unused, :func:`slicer_cli.nuclei.seams.unused_edges`: a window of the
tile's own size).
"""
from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np

from slicer_cli.nuclei.backends.local import LocalBackend
from slicer_cli.nuclei.backends.test_time import infer_averaged
from slicer_cli.nuclei.seams import unused_edges
from slicer_cli.nuclei.slide import Slide
from slicer_cli.nuclei.tiling import plan_tiles
from training.data import load_tile


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dirs", nargs="+")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--float-too", action="store_true",
                   help="also time the float graph of each model that ships an int8 one")
    p.add_argument("--grid-anchor-too", action="store_true",
                   help="also time each model with the grid anchor (--grid-anchor)")
    args = p.parse_args(argv)
    image = np.ascontiguousarray(load_tile().image[None, :args.size, :args.size])
    anchors = (False, "lone", "inner") if args.grid_anchor_too else (False,)
    with contextlib.ExitStack() as stack:
        # each model as the CLI runs it on the CPU (its int8 graph where it ships one), and
        # with --float-too its float graph as well
        backends = {}
        for m in args.model_dirs:
            backends[m] = stack.enter_context(LocalBackend(m, threads=args.threads))
            if args.float_too and backends[m].precision == "int8":
                backends[m + " [float]"] = stack.enter_context(
                    LocalBackend(m, threads=args.threads, precision="float"))
        runs = [(m, a) for m in backends for a in anchors]
        times = {run: [] for run in runs}
        # an inner tile of the model's own plan of a slide three tiles wide: edges unused
        # on every side
        inner = {}
        for m, backend in backends.items():
            info = backend.info
            plan = plan_tiles(Slide("inner", 3 * args.size, 3 * args.size, info.mpp), info.mpp,
                              args.size, info.overlap)
            inner[m] = [max((unused_edges(t) for t in plan.tiles), key=min)]

        def call(model, anchor):
            return infer_averaged(backends[model], image, anchor=bool(anchor),
                                  unused=inner[model] if anchor == "inner" else None)

        for model, anchor in runs:
            call(model, anchor)
        for _ in range(args.repeats):
            for model, anchor in runs:
                t0 = time.perf_counter()
                call(model, anchor)
                times[(model, anchor)].append(time.perf_counter() - t0)
        versions = [backends[m].info.version + f", {backends[m].precision}"
                    + (f", grid anchor, {a} tile" if a else "") for m, a in runs]
    for ((model, _), t), version in zip(times.items(), versions):
        print(f"{model} ({version}): {args.size}^2 tile median {np.median(t):.3f} s, "
              f"min {np.min(t):.3f} s over {len(t)} calls, {args.threads} threads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
