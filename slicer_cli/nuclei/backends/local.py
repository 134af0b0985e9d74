"""In-process ONNX Runtime backend (the default; needs no server, no GPU)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import BackendError, ModelError
from ..model import DEFAULT_MODEL_DIR, INPUT_NAME, OUTPUT_NAMES, load_model_info, onnx_path
from ..options import PRECISIONS

#: the in-process CPU graph in int8 beside ``model.onnx`` (``training/quantize.py``)
INT8_NAME = "model.int8.onnx"


class LocalBackend:
    """Run the shipped ONNX model with ONNX Runtime (CUDA provider when available).

    Parameters
    ----------
    model_dir : path
        Triton-layout model directory: ``config.pbtxt`` plus ``<version>/model.onnx`` (and,
        for the CPU, ``<version>/model.int8.onnx``).
    threads : int, optional
        Intra-op threads (default: half the cores this process may use).
    precision : {"auto", "float", "int8"}
        ``auto`` (the default): the model's int8 graph where it ships one and ONNX Runtime
        runs on the CPU (14-17 % less time per tile, the float graph's nuclei:
        models/nucleus_unet/EXPERIMENTS.md, "int8 on the CPU"), the float graph otherwise.
        ``float``: the float graph, the one Triton, the GPU and the PyTorch backend run.
        ``int8``: the int8 graph, on the CPU. The one run is in :attr:`precision`.

    Raises
    ------
    ModelError
        When the graph cannot be loaded, or ``int8`` is asked of a model without one.
    """

    def __init__(self, model_dir: str | Path = DEFAULT_MODEL_DIR, threads: int | None = None,
                 precision: str = "auto"):
        import onnxruntime as ort

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.info = load_model_info(model_dir)
        path = onnx_path(model_dir)
        int8 = path.with_name(INT8_NAME)
        if precision == "int8" and not int8.is_file():
            raise ModelError(f"model {self.info.name} has no int8 graph (no {int8.name}); "
                             "use precision auto or float")
        available = ort.get_available_providers()
        cuda = "CUDAExecutionProvider" in available
        if precision == "int8" or (precision == "auto" and int8.is_file() and not cuda):
            path, self.precision = int8, "int8"
        else:
            self.precision = "float"
        opts = ort.SessionOptions()
        # Half the cores: the other half post-processes the tiles the network has done
        # (8192^2 benchmark slide on 2 cores, with 4 pipeline workers and batches of 2:
        # 42-45 s with one thread, 44-47 s with two; one thread is also less CPU per tile).
        opts.intra_op_num_threads = threads or max(1, len(os.sched_getaffinity(0)) // 2)
        opts.inter_op_num_threads = 1
        # Idle intra-op threads sleep instead of spinning: the cores are shared with the
        # post-processing threads (8192^2 benchmark slide: 73 s instead of 85 s wall, 136
        # instead of 160 CPU s; the network alone is 5 % slower).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in available
                     and (self.precision == "float" or p == "CPUExecutionProvider")]
        try:
            self._session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own non-exported exception types
            raise ModelError(f"cannot load {path}: {e}") from e
        names = {o.name for o in self._session.get_outputs()}
        if INPUT_NAME not in {i.name for i in self._session.get_inputs()} or not set(
                OUTPUT_NAMES) <= names:
            raise ModelError(f"{path} does not have the contract's inputs/outputs")
        # ONNX Runtime parallelises inside one call; more calls in flight only contend.
        self.concurrency = 1
        # On the CPU a batch gains nothing over its tiles one by one, while its activations
        # (about 1 GiB per 1024 x 1024 tile) grow the memory arena with the batch: run the
        # tiles of a batch one at a time there; a GPU takes the batch whole.
        on_gpu = self._session.get_providers()[0] == "CUDAExecutionProvider"
        self.tiles_per_call = 0 if on_gpu else 1

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the network on a uint8 ``[N, H, W, 3]`` batch."""
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
            raise BackendError(f"batch must be uint8 [N, H, W, 3], got {batch.dtype} "
                               f"{batch.shape}")
        step = self.tiles_per_call or len(batch)
        if step >= len(batch):
            outs = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
            return dict(zip(OUTPUT_NAMES, outs))
        parts = [self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch[i:i + step]})
                 for i in range(0, len(batch), step)]
        return {name: np.concatenate([p[k] for p in parts])
                for k, name in enumerate(OUTPUT_NAMES)}

    def close(self) -> None:
        """Drop the session."""
        self._session = None

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
