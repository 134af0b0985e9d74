"""Test-time augmentation: the network's maps averaged over mirror images and pixel shifts.

* **Flips** (``flips=4``): the tile, its left-right, up-down and doubly mirrored images.
  A flipped tile meets other weights; the mean is a little more accurate and steadier.
  ``flips=8`` adds the four transposed (rotated by a quarter turn and mirrored) images.
* **Shifts** (``shifts=4``): the tile moved by one pixel down, right and both. The network
  works at half resolution from its stride-2 stem, so a tile and the same tile one pixel
  further along are seen at different pixel phases and give different maps. Averaged over
  the four phases, a shift of the slide by one pixel only re-orders the calls (up to an even
  shift), so the nuclei stop depending on where the scanner or the region of interest put
  the first pixel. ``shifts=16`` moves by 0-3 pixels each way: the phases of the stem and
  of the first pooling (stride 4).

The CLI's flips and shifts together make 16 calls; every flip and shift, 128. Each call's
maps are moved back to the tile's own pixels before they are averaged; a shifted call has no
estimate for the last rows or columns it pushed out, which repeat the row or column before
(tiles overlap far more than a few pixels).
Works for every backend (NumPy or CuPy maps). Figures: models/nucleus_unet/MODEL.md,
"Calls at a glance"; the runs behind them: EXPERIMENTS.md beside it.
"""
from __future__ import annotations

import numpy as np

from ..arrays import array_module
from .grid_anchor import infer_anchored

#: per pass, the batch's spatial axes flipped and whether rows and columns are then swapped
#: (NHWC input; [N, H, W(, C)] maps): the four mirror images, then the four transposed ones
FLIPS: tuple[tuple[tuple[int, ...], bool], ...] = tuple(
    (axes, swap) for swap in (False, True) for axes in ((), (2,), (1,), (1, 2)))
#: the (rows, columns) each pass moves the tile down and right by: the stem's pixel phases,
#: then the rest of the first pooling's
SHIFTS: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (1, 0), (1, 1)) + tuple(
    (dy, dx) for dy in range(4) for dx in range(4) if dy > 1 or dx > 1)
#: the counts ``infer_averaged`` takes (the first flips and shifts of the lists above)
FLIP_COUNTS, SHIFT_COUNTS = (1, 2, 4, 8), (1, 4, 16)


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


def _swapped(value, swap: bool):
    """``value`` ([N, H, W(, C)]) with rows and columns swapped when ``swap``."""
    if not swap:
        return value
    return value.transpose((0, 2, 1) + tuple(range(3, value.ndim)))


def infer_averaged(backend, batch: np.ndarray, flips: int = 1, shifts: int = 1,
                   anchor: bool = False, unused: list | None = None) -> dict:
    """``backend.infer`` of ``batch`` under the first ``flips`` flips and ``shifts`` shifts
    (every combination), averaged; with ``anchor``, each tile on the grid its tissue fixes
    (:func:`~slicer_cli.nuclei.backends.grid_anchor.infer_anchored`, the grid of the
    backend's ``info.size_multiple``; the flips and shifts then happen on that grid).

    Parameters
    ----------
    backend
        Any backend (:mod:`slicer_cli.nuclei.backends`).
    batch : uint8 array, shape (N, H, W, 3)
        The tiles (with ``flips=8``, H and W must both suit the network, as rows and
        columns are swapped).
    flips : int
        1 (none), 2 (and left-right), 4 (and up-down, both) or 8 (and the four transposed).
    shifts : int
        1 (none), 4 (one column, one row, both) or 16 (0-3 rows and 0-3 columns).
    anchor : bool
        Place each tile's grid by its tissue (the CLI's ``--grid-anchor``).
    unused : list of (top, bottom, left, right), optional
        With ``anchor``: per tile, the edge pixels no kept nucleus reaches
        (:func:`~slicer_cli.nuclei.backends.grid_anchor.infer_anchored`).

    Raises
    ------
    ValueError
        When ``flips`` or ``shifts`` is not one of those.
    """
    if flips not in FLIP_COUNTS:
        raise ValueError(f"flips must be one of {FLIP_COUNTS}, got {flips}")
    if shifts not in SHIFT_COUNTS:
        raise ValueError(f"shifts must be one of {SHIFT_COUNTS}, got {shifts}")
    if anchor:
        return infer_anchored(lambda windows: infer_averaged(backend, windows, flips, shifts),
                              batch, backend.info.size_multiple, unused)
    n = flips * shifts
    if n == 1:  # the default: the plain call, its maps untouched
        return backend.infer(batch)
    total: dict = {}
    for dy, dx in SHIFTS[:shifts]:
        moved = _shifted(batch, dy, dx)
        for axes, swap in FLIPS[:flips]:
            shown = _swapped(np.flip(moved, axes) if axes else moved, swap)
            maps = backend.infer(np.ascontiguousarray(shown) if axes or swap else moved)
            for name, value in maps.items():
                xp = array_module(value)
                value = _swapped(value, swap)
                value = _shifted_back(xp.flip(value, axes) if axes else value, dy, dx)
                if name in total:
                    total[name] += value
                else:
                    total[name] = value.copy()
    for value in total.values():
        value /= n
    return total
