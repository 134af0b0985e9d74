"""Where one network call's CPU time goes: ONNX Runtime's own profiler, node by node.

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.onnx_profile [models/nucleus_unet] [--size 1024]
        [--repeats 12] [--threads 2] [--top 15]

The model's ``1/model.onnx`` runs in ONNX Runtime on the CPU with the settings of
``LocalBackend`` (``--threads`` intra-op threads, no spinning) on a ``size`` x ``size`` tile
of hgsc_nest (mirrored past its edge when ``size`` exceeds it), ``repeats`` times after one
warm-up call. Printed: the mean time per call of the ``--top`` slowest nodes; the time
before the stem (the full-resolution input work), between stem and head (the U-Net) and
after the head (upsampling, activations and layout of the full-resolution output); and per
operator type. The profiler adds a little to every node, so these times add up to a little
more than ``benchmarks.model_timing`` measures.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from slicer_cli.nuclei.model import DEFAULT_MODEL_DIR


def _side(order: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Each node's part of the call, by where it runs: before the stem's convolution (the
    input at full resolution: cast, normalise, low-passes), after the head's (upsampling,
    activations, the output's layout), or the U-Net between them."""
    stem = next((i for i, (_, name) in enumerate(order) if "stem" in name), 0)
    head = next((i for i, (_, name) in enumerate(order) if "/head" in name), len(order))
    return {key: ("input, full resolution (before the stem)" if i < stem else
                  "output, full resolution (after the head)" if i > head else
                  "the U-Net (stem to head)") for i, key in enumerate(order)}


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    from training.data import load_tile

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dir", nargs="?", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    image = load_tile().image
    pad = max(0, args.size - min(image.shape[:2]))
    image = np.pad(image, ((0, pad), (0, pad), (0, 0)), mode="reflect")
    tile = np.ascontiguousarray(image[None, :args.size, :args.size])
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(str(args.model_dir / "1" / "model.onnx"), opts,
                                       providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: tile}
        session.run(None, feed)
        for _ in range(args.repeats):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes: dict[tuple[str, str], float] = defaultdict(float)  # in the order they first ran
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            nodes[(event["args"].get("op_name", ""), event["name"][:-len("_kernel_time")])] \
                += event["dur"]
    side = _side(list(nodes))
    calls = args.repeats + 1
    per_call = {key: us / calls / 1000 for key, us in nodes.items()}  # ms
    total = sum(per_call.values())
    print(f"{args.model_dir}: {args.size}^2 tile, {args.threads} threads, {total:.1f} ms of "
          f"node time per call (mean of {calls})")
    for (op, name), ms in sorted(per_call.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {ms:6.2f} ms  {op:14s} {name}")
    parts: dict[str, float] = defaultdict(float)
    kinds: dict[str, float] = defaultdict(float)
    for (op, name), ms in per_call.items():
        parts[side[(op, name)]] += ms
        kinds[op] += ms
    for title, table in (("by part of the call:", parts), ("by operator:", kinds)):
        print(title)
        for label, ms in sorted(table.items(), key=lambda kv: -kv[1]):
            print(f"  {ms:6.1f} ms  {100 * ms / total:4.1f} %  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
