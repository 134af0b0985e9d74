"""Inference backends: one protocol, chosen by URL scheme.

``open_backend(None)`` -> in-process ONNX Runtime on the shipped model (:mod:`.local`);
``open_backend("http://host:8000")`` or ``"grpc://host:8001"`` -> Triton (:mod:`.triton`).

Every backend is a context manager with

* ``info``: the :class:`~slicer_cli.nuclei.model.ModelInfo` of the model it serves;
* ``concurrency``: how many ``infer`` calls the caller may keep in flight at once;
* ``infer(batch)``: ``uint8 [N, H, W, 3]`` -> ``{"FOREGROUND": [N,H,W], "DISTANCE": [N,H,W],
  "CLASS_PROB": [N,H,W,C]}`` float32 arrays; thread-safe; raises
  :class:`~slicer_cli.nuclei.errors.BackendError` on transport failure.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import BackendError
from ..model import DEFAULT_MODEL_DIR, ModelInfo


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


def open_backend(url: str | None = None, model_dir: str | Path = DEFAULT_MODEL_DIR,
                 model_name: str | None = None) -> Backend:
    """Open the backend named by ``url`` (``None`` or ``""`` -> local ONNX Runtime).

    Parameters
    ----------
    url : str or None
        ``None``/``""`` for in-process ONNX Runtime; ``http://``/``https://``/``grpc://``
        for a Triton Inference Server.
    model_dir : path
        Local Triton-layout model directory (the local backend runs its ONNX file).
    model_name : str, optional
        Name of the model on the Triton server (default: the name of ``model_dir``).
    """
    if not url:
        from .local import LocalBackend

        return LocalBackend(model_dir)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("http", "https", "grpc"):
        from .triton import TritonBackend

        return TritonBackend(url, model_name or Path(model_dir).name)
    raise BackendError(f"unknown backend URL scheme {scheme + '://' if scheme else '(none)'}: "
                       "use http://, https:// or grpc://")
