"""Per-tile CPU network time of two or more models, interleaved in one run (an A/B that the
machine's drift cannot bias).

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.model_timing models/nucleus_unet /path/to/other_model \
        [--repeats 15] [--threads 2] [--size 1024]

Each model is loaded once through ``LocalBackend`` (ONNX Runtime, CPU), warmed up with one
call, then the models take turns on the same ``size`` x ``size`` tile of hgsc_nest for
``repeats`` rounds; the median and the minimum of each model's calls are printed.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np

from slicer_cli.nuclei.backends.local import LocalBackend
from training.data import load_tile


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dirs", nargs="+")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=1024)
    args = p.parse_args(argv)
    image = np.ascontiguousarray(load_tile().image[None, :args.size, :args.size])
    times: dict[str, list[float]] = {m: [] for m in args.model_dirs}
    with contextlib.ExitStack() as stack:
        backends = [stack.enter_context(LocalBackend(m, threads=args.threads))
                    for m in args.model_dirs]
        for backend in backends:
            backend.infer(image)
        for _ in range(args.repeats):
            for model, backend in zip(args.model_dirs, backends):
                t0 = time.perf_counter()
                backend.infer(image)
                times[model].append(time.perf_counter() - t0)
        versions = [b.info.version for b in backends]
    for (model, t), version in zip(times.items(), versions):
        print(f"{model} ({version}): {args.size}^2 tile median {np.median(t):.3f} s, "
              f"min {np.min(t):.3f} s over {len(t)} calls, {args.threads} threads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
