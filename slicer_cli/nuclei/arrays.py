"""One array-module helper for every stage: NumPy on the host, CuPy on a GPU.

A stage is written once against ``xp`` (``numpy`` or ``cupy``); these helpers pick the module
of its inputs, the matching ``ndimage``, and bring results to the host. Where a stage must
branch (``xp is np``: a NumPy-only shortcut), the other branch is written with functions
CuPy and NumPy share, so that a NumPy twin passed as ``xp`` (``tests/conftest.py``) runs the
very code a GPU runs: that is how the CPU tests exercise the GPU branches.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def is_device_array(array: Any) -> bool:
    """Whether ``array`` is a CuPy array (lives on a GPU)."""
    return type(array).__module__.split(".")[0] == "cupy"


def array_module(*arrays: Any) -> ModuleType:
    """``cupy`` when any of ``arrays`` is a CuPy array, else ``numpy``."""
    if any(is_device_array(a) for a in arrays):
        import cupy

        return cupy
    return np


def ndimage_of(xp: ModuleType) -> ModuleType:
    """``cupyx.scipy.ndimage`` for CuPy, ``scipy.ndimage`` for NumPy (and NumPy twins)."""
    if getattr(xp, "__name__", "").split(".")[0] == "cupy":
        from cupyx.scipy import ndimage
    else:
        from scipy import ndimage
    return ndimage


def to_host(array: Any) -> Any:
    """A NumPy view of ``array`` (copied from the GPU when it is a CuPy array)."""
    return array.get() if is_device_array(array) else array
