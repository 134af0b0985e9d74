"""Triton Python-backend model that runs a model repository's ONNX file with ONNX Runtime.

``scripts/serve_triton.py`` copies this file to ``<repo>/<model>/<version>/model.py`` next to a
link to the shipped ``model.onnx``, so a CPU-only tritonserver (the one bundled with
nvidia-pytriton) serves exactly the network the local backend runs, under the same name,
inputs, outputs, ``max_batch_size`` and config ``parameters``.

Runs inside the Python backend stub (``./.venv-triton``: numpy<2, onnxruntime); it is not
imported by the engine. The dynamic batcher may hand ``execute`` several requests at once:
requests of the same tile size are concatenated into one ONNX Runtime call.

For fault tests only: a model whose config has the parameter ``test_hold_while_exists``
(a file path) writes ``<path>.arrived`` when a request reaches ``execute`` and holds it there
while the file exists, so a test can kill the server with a request provably in flight.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

SERVING_FILE = "onnx_serving.json"  # written by serve_triton.py: {"threads": int}


class TritonPythonModel:
    """Serve ``<version>/model.onnx`` with the config's input and output names."""

    def initialize(self, args: dict) -> None:
        """Load the ONNX session (called once per model instance)."""
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        model_dir = Path(args["model_repository"])
        onnx_file = model_dir / args["model_version"] / "model.onnx"
        settings_file = model_dir / SERVING_FILE
        settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(settings.get("threads") or len(os.sched_getaffinity(0)))
        opts.inter_op_num_threads = 1
        # idle threads sleep: on a CPU host the cores are shared with the client's
        # post-processing (the in-process backend does the same)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(onnx_file), opts,
                                             providers=["CPUExecutionProvider"])
        hold = config.get("parameters", {}).get("test_hold_while_exists", {})
        self._hold = Path(hold["string_value"]) if hold.get("string_value") else None
        self._input = config["input"][0]["name"]
        self._onnx_input = self._session.get_inputs()[0].name
        onnx_outputs = [o.name for o in self._session.get_outputs()]
        # Outputs are matched by name; a config whose names differ from the graph's (a
        # deliberately broken config in the tests) falls back to the graph's order, so the
        # model still loads and the client's contract check is what reports it.
        self._outputs = [(o["name"], o["name"] if o["name"] in onnx_outputs else onnx_outputs[i])
                         for i, o in enumerate(config["output"][:len(onnx_outputs)])]

    def execute(self, requests: list) -> list:
        """Run every request; same-shaped requests share one ONNX Runtime call."""
        if self._hold is not None and self._hold.exists():
            self._hold.with_name(self._hold.name + ".arrived").touch()
            while self._hold.exists():
                time.sleep(0.05)
        images = [pb_utils.get_input_tensor_by_name(r, self._input).as_numpy() for r in requests]
        results: list = [None] * len(requests)
        by_shape: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            by_shape.setdefault(image.shape[1:], []).append(i)
        for members in by_shape.values():
            try:
                batch = np.concatenate([images[i] for i in members]) if len(members) > 1 \
                    else images[members[0]]
                outs = self._session.run([g for _, g in self._outputs], {self._onnx_input: batch})
            except Exception as e:  # onnxruntime raises its own non-exported types
                error = pb_utils.TritonError(f"onnxruntime failed: {e}")
                for i in members:
                    results[i] = pb_utils.InferenceResponse(output_tensors=[], error=error)
                continue
            start = 0
            for i in members:
                n = images[i].shape[0]
                tensors = [pb_utils.Tensor(name, np.ascontiguousarray(out[start:start + n]))
                           for (name, _), out in zip(self._outputs, outs)]
                results[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += n
        return results

    def finalize(self) -> None:
        """Drop the session."""
        self._session = None
