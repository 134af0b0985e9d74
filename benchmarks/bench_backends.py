"""Tiles per second through Triton (HTTP and gRPC) vs in-process ONNX Runtime, same real tiles.

The tiles are real H&E: 1024 x 1024 crops (the model's tile size) of ``data/hgsc_nest.jpg``
(about 0.5 um/px, the model's resolution). Each backend gets one warm-up batch, then batches
are timed until ``--tiles`` tiles are done or ``--max-seconds`` pass, whichever comes first.
Unless ``--http-url``/``--grpc-url`` name a running server, a local CPU tritonserver is
started with ``scripts/serve_triton.py`` (needs ``bash scripts/setup_triton_env.sh``); its ONNX
Runtime uses as many threads as the local backend, so the difference is the serving path
(serialisation, transport, Python backend, dynamic batcher). The first Triton output is
checked against the local one (max absolute difference printed).

Usage::

    .venv/bin/python benchmarks/bench_backends.py [--tiles 8] [--batch 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slicer_cli.nuclei.backends.local import LocalBackend  # noqa: E402
from slicer_cli.nuclei.backends.triton import TritonBackend  # noqa: E402
from slicer_cli.nuclei.model import DEFAULT_MODEL_DIR, load_model_info  # noqa: E402


def machine() -> str:
    """One line naming the machine the figures come from."""
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh
                        if ln.startswith("model name")), cpu)
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{platform.node()}: {cpu}, {len(os.sched_getaffinity(0))} usable cores, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"no GPU used, load average {load} at start")


def real_tiles(size: int) -> np.ndarray:
    """Four distinct real ``size`` x ``size`` crops of hgsc_nest.jpg (corners)."""
    from PIL import Image

    image = np.asarray(Image.open(ROOT / "data" / "hgsc_nest.jpg").convert("RGB"))
    h, w = image.shape[:2]
    if min(h, w) < size:
        sys.exit(f"error: hgsc_nest.jpg is {w} x {h}, smaller than a {size} tile")
    return np.stack([image[y:y + size, x:x + size]
                     for y in (0, h - size) for x in (0, w - size)])


def bench(backend: object, tiles: np.ndarray, batch: int, n_tiles: int,
          max_seconds: float) -> tuple[float, int, float, dict[str, np.ndarray]]:
    """Return (tiles/s, tiles done, seconds, first outputs) after one warm-up batch."""
    first = backend.infer(tiles[:batch])
    done, start = 0, time.perf_counter()
    i = 0
    while done < n_tiles and time.perf_counter() - start < max_seconds:
        idx = [(i + k) % len(tiles) for k in range(min(batch, n_tiles - done))]
        backend.infer(np.ascontiguousarray(tiles[idx]))
        done += len(idx)
        i += len(idx)
    seconds = time.perf_counter() - start
    return done / seconds, done, seconds, first


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one line per backend."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiles", type=int, default=8, help="tiles timed per backend")
    p.add_argument("--batch", type=int, default=2, help="tiles per infer call")
    p.add_argument("--tile-size", type=int, default=0, help="default: the model's tile_size")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="ONNX Runtime threads (local backend and the local server)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="time bound per backend")
    p.add_argument("--http-url", default=None, help="bench this server instead of starting one")
    p.add_argument("--grpc-url", default=None, help="bench this server instead of starting one")
    p.add_argument("--skip-triton", action="store_true")
    args = p.parse_args(argv)

    info = load_model_info()
    size = args.tile_size or info.tile_size
    tiles = real_tiles(size)
    print(f"machine: {machine()}")
    print(f"model: {info.name} {info.version}; {len(tiles)} real {size}x{size} tiles "
          f"(hgsc_nest.jpg), batch {args.batch}, up to {args.tiles} tiles or "
          f"{args.max_seconds:g} s per backend, ONNX Runtime threads {args.threads}")

    import onnxruntime

    with LocalBackend(DEFAULT_MODEL_DIR, threads=args.threads, precision="float") as local:
        rate, done, secs, reference = bench(local, tiles, args.batch, args.tiles,
                                            args.max_seconds)
    print(f"local onnxruntime {onnxruntime.__version__}: {rate:.3f} tiles/s "
          f"({done} tiles in {secs:.1f} s)", flush=True)
    if args.skip_triton:
        return 0

    server = None
    http_url, grpc_url = args.http_url, args.grpc_url
    if not (http_url or grpc_url):
        from tests.triton_server import SKIP_REASON, TRITON_ENV_MISSING, TritonServerProcess

        if TRITON_ENV_MISSING:
            sys.exit(f"error: {SKIP_REASON}")
        server = TritonServerProcess(ROOT / "models", threads=args.threads).start()
        http_url, grpc_url = server.http_url, server.grpc_url
    try:
        for label, url in (("http", http_url), ("grpc", grpc_url)):
            if not url:
                continue
            with TritonBackend(url, info.name, timeout_s=600) as backend:
                rate, done, secs, first = bench(backend, tiles, args.batch, args.tiles,
                                                args.max_seconds)
            diff = max(float(np.abs(first[k] - reference[k]).max()) for k in reference)
            print(f"triton {label} (CPU server, Python backend + onnxruntime): {rate:.3f} "
                  f"tiles/s ({done} tiles in {secs:.1f} s; max |triton - local| {diff:.1e})",
                  flush=True)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
