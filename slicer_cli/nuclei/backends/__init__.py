"""Inference backends: one protocol, chosen by URL scheme.

``open_backend(None)`` -> in-process ONNX Runtime on the shipped model (:mod:`.local`);
``open_backend(None, device="cuda")`` -> in-process on a GPU: ONNX Runtime's CUDA provider
when installed, else PyTorch on the same network (:mod:`.pytorch`), maps left on the device;
``open_backend("http://host:8000")`` or ``"grpc://host:8001"`` -> Triton (:mod:`.triton`),
with CUDA shared memory when ``device="cuda"`` and the server shares the GPU.

Every backend is a context manager with

* ``info``: the :class:`~slicer_cli.nuclei.model.ModelInfo` of the model it serves;
* ``concurrency``: how many ``infer`` calls the caller may keep in flight at once;
* ``infer(batch)``: ``uint8 [N, H, W, 3]`` -> ``{"FOREGROUND": [N,H,W], "DISTANCE": [N,H,W],
  "CLASS_PROB": [N,H,W,C]}`` float32 arrays (NumPy, or CuPy from a device backend);
  thread-safe; raises :class:`~slicer_cli.nuclei.errors.BackendError` on transport failure.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import BackendError
from ..model import DEFAULT_MODEL_DIR, ModelInfo, repository_model_dir


@runtime_checkable
class Backend(Protocol):
    """What the pipeline needs from an inference backend."""

    info: ModelInfo
    concurrency: int

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the network on a uint8 ``[N, H, W, 3]`` batch."""

    def close(self) -> None:
        """Release sessions, connections and threads."""

    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc: object) -> None: ...


#: the deployment's default device (the worker's environment), used for ``device="auto"``
ENV_DEVICE = "NUCLEUS_ANALYSIS_DEVICE"
DEVICES = ("auto", "cpu", "cuda")


def cuda_usable() -> bool:
    """Whether a CUDA device can run the post-processing (CuPy) and a backend (torch)."""
    try:
        import cupy
        import torch
    except ImportError:
        return False
    try:
        return bool(torch.cuda.is_available()) and cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, no device
        return False


def resolve_device(device: str = "auto") -> str:
    """``cpu`` or ``cuda`` for a requested device (``auto``: the deployment's
    ``NUCLEUS_ANALYSIS_DEVICE``, else CUDA when usable, else the CPU).

    Raises
    ------
    BackendError
        For an unknown device, or ``cuda`` where no CUDA device is usable.
    """
    device = (device or "auto").lower()
    if device == "auto":
        device = os.environ.get(ENV_DEVICE, "").strip().lower() or "auto"
    if device not in DEVICES:
        raise BackendError(f"unknown device {device!r}: use auto, cpu or cuda")
    if device == "auto":
        return "cuda" if cuda_usable() else "cpu"
    if device == "cuda" and not cuda_usable():
        raise BackendError("device cuda requested, but no CUDA device is usable here (needs "
                           "a GPU, its driver, CuPy and PyTorch); use --device cpu")
    return device


def open_backend(url: str | None = None, model_dir: str | Path = DEFAULT_MODEL_DIR,
                 model_name: str | None = None, device: str = "cpu",
                 precision: str = "auto") -> Backend:
    """Open the backend named by ``url`` (``None`` or ``""`` -> in-process).

    Parameters
    ----------
    url : str or None
        ``None``/``""`` for in-process; ``http://``/``https://``/``grpc://`` for a Triton
        Inference Server.
    model_dir : path
        Local Triton-layout model directory (the in-process backends run its files).
    model_name : str, optional
        Name of the model on the Triton server (default: the name of ``model_dir``);
        in-process, the folder of that name in the shipped model repository
        (:func:`~slicer_cli.nuclei.model.repository_model_dir`), instead of ``model_dir``.
    device : str
        ``cpu`` (ONNX Runtime on the CPU: the reference) or ``cuda`` (resolved already, see
        :func:`resolve_device`).
    precision : str
        In-process on the CPU: ``auto`` (the default: the model's int8 graph where it ships
        one), ``float`` or ``int8`` (:class:`~.local.LocalBackend`). The GPU and Triton
        always run the float graph.
    """
    if not url:
        if model_name:
            model_dir = repository_model_dir(model_name)
        if device == "cuda":
            return _cuda_backend(model_dir)
        from .local import LocalBackend

        return LocalBackend(model_dir, precision=precision)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("http", "https", "grpc"):
        from .triton import TritonBackend

        return TritonBackend(url, model_name or Path(model_dir).name,
                             cuda_shm=device == "cuda")
    raise BackendError(f"unknown backend URL scheme {scheme + '://' if scheme else '(none)'}: "
                       "use http://, https:// or grpc://")


def _cuda_backend(model_dir: str | Path) -> Backend:
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            from .local import LocalBackend

            return LocalBackend(model_dir, precision="float")
    except ImportError:
        pass
    from .pytorch import TorchBackend

    return TorchBackend(model_dir, device="cuda")
