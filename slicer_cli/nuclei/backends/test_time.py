"""Test-time augmentation: the network's maps averaged over mirror images and pixel shifts.

* **Flips** (``flips=4``): the tile, its left-right, up-down and doubly mirrored images.
  A flipped tile meets other weights; the mean is a little more accurate and steadier.
* **Shifts** (``shifts=4``): the tile moved by one pixel down, right and both. The network
  works at half resolution from its stride-2 stem, so a tile and the same tile one pixel
  further along are seen at different pixel phases and give different maps. Averaged over
  the four phases, a shift of the slide by one pixel only re-orders the calls (up to an even
  shift), so the nuclei stop depending on where the scanner or the region of interest put
  the first pixel.

Both together make 16 calls. Each call's maps are moved back to the tile's own pixels
before they are averaged; a shifted call has no estimate for the last row or column it
pushed out, which repeat the row or column before (tiles overlap far more than a pixel).
Works for every backend (NumPy or CuPy maps). Figures: models/nucleus_unet/MODEL.md,
"Stability".
"""
from __future__ import annotations

import numpy as np

from ..arrays import array_module

#: the batch's spatial axes flipped for each pass (NHWC input; [N, H, W(, C)] maps)
FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (1,), (1, 2))
#: the (rows, columns) each pass moves the tile down and right by: the stem's pixel phases
SHIFTS: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (1, 0), (1, 1))


def _shifted(batch: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``batch`` moved ``dy`` rows down and ``dx`` columns right, same shape (the rows and
    columns it uncovers mirror the ones next to them)."""
    if not (dy or dx):
        return batch
    h, w = batch.shape[1:3]
    padded = np.pad(batch, ((0, 0), (dy, 0), (dx, 0), (0, 0)), mode="reflect")
    return np.ascontiguousarray(padded[:, :h, :w])


def _shifted_back(value, dy: int, dx: int):
    """Maps of a batch moved by (``dy``, ``dx``), brought back onto the batch's pixels."""
    if not (dy or dx):
        return value
    xp = array_module(value)
    pad = ((0, 0), (0, dy), (0, dx)) + ((0, 0),) * (value.ndim - 3)
    return xp.pad(value[:, dy:, dx:], pad, mode="edge")


def infer_averaged(backend, batch: np.ndarray, flips: int = 1, shifts: int = 1) -> dict:
    """``backend.infer`` of ``batch`` under the first ``flips`` flips and ``shifts`` shifts
    (every combination), averaged.

    Parameters
    ----------
    backend
        Any backend (:mod:`slicer_cli.nuclei.backends`).
    batch : uint8 array, shape (N, H, W, 3)
        The tiles.
    flips : int
        1 (none) to 4 (identity, left-right, up-down, both).
    shifts : int
        1 (none) to 4 (none, one column, one row, both).

    Raises
    ------
    ValueError
        When ``flips`` or ``shifts`` is not 1 to 4.
    """
    if not 1 <= flips <= len(FLIPS):
        raise ValueError(f"flips must be 1 to {len(FLIPS)}, got {flips}")
    if not 1 <= shifts <= len(SHIFTS):
        raise ValueError(f"shifts must be 1 to {len(SHIFTS)}, got {shifts}")
    n = flips * shifts
    if n == 1:  # the default: the plain call, its maps untouched
        return backend.infer(batch)
    total: dict = {}
    for dy, dx in SHIFTS[:shifts]:
        moved = _shifted(batch, dy, dx)
        for axes in FLIPS[:flips]:
            maps = backend.infer(np.ascontiguousarray(np.flip(moved, axes)) if axes else moved)
            for name, value in maps.items():
                xp = array_module(value)
                value = _shifted_back(xp.flip(value, axes) if axes else value, dy, dx)
                if name in total:
                    total[name] += value
                else:
                    total[name] = value.copy()
    for value in total.values():
        value /= n
    return total
