"""In-process PyTorch backend: the same network from ``<version>/model.pt``, on a GPU or CPU.

The GPU machines we use have PyTorch + CUDA and no ``onnxruntime-gpu``; this backend runs the
network of :mod:`slicer_cli.nuclei.network` with the shipped weights (checked equal to the
ONNX graph by the tests, ``tests/test_backends_torch.py``). On a CUDA device its maps stay on
the device: ``infer`` returns CuPy arrays (zero-copy through DLPack), and the pipeline's
post-processing runs there too. ``half=True`` runs the convolutions in float16 (autocast).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BackendError, ModelError
from ..model import DEFAULT_MODEL_DIR, OUTPUT_NAMES, load_model_info, version_file

WEIGHTS_NAME = "model.pt"


def weights_path(model_dir: str | Path = DEFAULT_MODEL_DIR) -> Path:
    """Path of the newest version's ``model.pt`` (the PyTorch backend's weights).

    Raises
    ------
    ModelError
        When no version holds one.
    """
    return version_file(model_dir, WEIGHTS_NAME)


class TorchBackend:
    """Run the shipped network with PyTorch.

    Parameters
    ----------
    model_dir : path
        Triton-layout model directory (``config.pbtxt``, ``<version>/model.pt``).
    device : str
        ``"cuda"`` (or ``"cuda:1"``...) or ``"cpu"``.
    half : bool
        float16 convolutions (autocast) on CUDA; the maps are returned as float32.
    threads : int, optional
        Intra-op threads on the CPU.

    Raises
    ------
    BackendError
        When PyTorch is missing or the device is not usable.
    ModelError
        When the weights are missing or do not fit the network.
    """

    def __init__(self, model_dir: str | Path = DEFAULT_MODEL_DIR, device: str = "cuda",
                 half: bool = False, threads: int | None = None) -> None:
        try:
            import torch
        except ImportError as e:
            raise BackendError("the PyTorch backend needs torch (pip install torch)") from e
        from ..network import load_exported

        self._torch = torch
        self.info = load_model_info(model_dir)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"device {device!r} requested but no CUDA device is usable")
        if threads and self.device.type == "cpu":
            torch.set_num_threads(threads)
        path = weights_path(model_dir)
        try:
            self._model = load_exported(path, str(self.device))
        except (ValueError, RuntimeError, KeyError) as e:
            raise ModelError(f"cannot load {path}: {e}") from e
        self.half = bool(half) and self.device.type == "cuda"
        self.on_device = self.device.type == "cuda"
        # one stream: calls in flight only queue on the device
        self.concurrency = 1
        self.tiles_per_call = 0

    def infer(self, batch: np.ndarray) -> dict:
        """Run the network on a uint8 ``[N, H, W, 3]`` batch.

        Returns
        -------
        dict
            float32 maps: CuPy arrays on a CUDA device (NumPy when CuPy is missing), NumPy
            arrays on the CPU.
        """
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
            raise BackendError(f"batch must be uint8 [N, H, W, 3], got {batch.dtype} "
                               f"{batch.shape}")
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(batch))
        if self.on_device:
            x = x.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode(), torch.autocast(device_type=self.device.type,
                                                    dtype=torch.float16, enabled=self.half):
            maps = self._model(x)
            out = {name: self._out(m.float().contiguous()) for name, m in zip(OUTPUT_NAMES, maps)}
        if self.on_device:  # the maps are ready when infer returns (honest stage timings)
            torch.cuda.current_stream(self.device).synchronize()
        return out

    def _out(self, tensor):
        if not self.on_device:
            return tensor.numpy()
        try:
            import cupy
        except ImportError:
            return tensor.cpu().numpy()
        return cupy.from_dlpack(tensor)

    def close(self) -> None:
        """Release the model (and its device memory)."""
        self._model = None

    def __enter__(self) -> TorchBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
