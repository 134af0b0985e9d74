"""Test-time flips: the network's maps averaged over a batch and its mirror images.

The maps of a flipped tile, flipped back, are another estimate of the same maps; their mean
is steadier under small shifts and re-encodings of the slide, and a little more accurate
(figures: models/nucleus_unet/MODEL.md, "Stability").
It costs one network call per flip. Works for every backend (NumPy or CuPy maps).
"""
from __future__ import annotations

import numpy as np

from ..arrays import array_module

#: the batch's spatial axes flipped for each pass (NHWC input; [N, H, W(, C)] maps)
FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (1,), (1, 2))


def infer_with_flips(backend, batch: np.ndarray, flips: int = len(FLIPS)) -> dict:
    """``backend.infer`` of ``batch`` and of its first ``flips - 1`` mirror images, averaged.

    Parameters
    ----------
    backend
        Any backend (:mod:`slicer_cli.nuclei.backends`).
    batch : uint8 array, shape (N, H, W, 3)
        The tiles.
    flips : int
        1 (the plain call) to 4 (identity, left-right, up-down, both).

    Raises
    ------
    ValueError
        When ``flips`` is not 1 to 4.
    """
    if not 1 <= flips <= len(FLIPS):
        raise ValueError(f"flips must be 1 to {len(FLIPS)}, got {flips}")
    total: dict = {}
    for axes in FLIPS[:flips]:
        maps = backend.infer(np.ascontiguousarray(np.flip(batch, axes)) if axes else batch)
        for name, value in maps.items():
            xp = array_module(value)
            value = xp.flip(value, axes) if axes else value
            total[name] = value + total[name] if name in total else value.copy()
    return {name: value / flips for name, value in total.items()}
