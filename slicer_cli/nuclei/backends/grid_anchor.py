"""The grid anchor: each tile meets the network on a pixel grid fixed by its own tissue.

The network samples its input every other pixel (the stride-2 stem), then every 4th, ..., down
to every 32nd (``size_multiple``): a tile and the same tissue one pixel further along are seen
at different phases of that grid and give different nuclei (models/nucleus_unet/MODEL.md,
"Stability"). Moved by a multiple of 32 pixels the network follows almost exactly. So the
grid is placed by the tissue, not by the tile's first pixel:

1. :func:`find_anchor` picks a landmark: the darkest spot of the tile's luma (JPEG's own
   channel, kept at full resolution) smoothed by a Gaussian of 4 px, a nucleus most often;
   its pixel moves with the tissue.
2. :func:`infer_anchored` runs the network on a window of the tile, widened by one grid
   period and mirrored at its edges, whose grid passes through the landmark (its first
   pixel lies a whole number of periods before it), and cuts the maps back to the tile.

A copy of the tile shifted by any number of pixels then meets the grid where the tile did,
and gets the same maps, moved, wherever the landmark is found again at the same pixel.
Integer shifts keep every smoothed value bit for bit, so the landmark follows them unless a
crop takes it away; a JPEG re-encode moves it by a pixel now and then (about one tile in
twenty at quality 75), and that copy is then no steadier than without the anchor. One
network call per tile: on a window 32 px wider and taller for a lone tile (6 % more pixels
for a 1024 px tile), on one of the tile's own size for a slide's inner tile, whose outer
pixels no nucleus it keeps reaches (the window moves by up to 16 px into that edge;
``unused`` of :func:`infer_anchored`). Figures: EXPERIMENTS.md, Stability, "Grid anchor".
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi

from ..arrays import array_module

#: the Gaussian (px) the landmark is the brightest spot of, in the darkness 255 - luma
SIGMA = 4.0
#: candidate landmarks: the darkest spots of the tile seen in 4 x 4 blocks ...
CANDIDATES = 16
BLOCK = 4
#: ... each followed to its full-resolution peak within this many pixels
REACH = 10
#: JPEG's luma (ITU-R BT.601), the channel a re-encode keeps at full resolution
LUMA = (0.299, 0.587, 0.114)

_KERNEL_RADIUS = int(4 * SIGMA + 0.5)  # scipy's Gaussian: truncate 4 sigma


def _darkness(pixels: np.ndarray) -> np.ndarray:
    """255 - luma of ``pixels`` ([..., 3]), float32, element-wise (the same rounding at every
    pixel, so a shifted copy gets the same values)."""
    rgb = pixels.astype(np.float32, copy=False)
    luma = (np.float32(LUMA[0]) * rgb[..., 0] + np.float32(LUMA[1]) * rgb[..., 1]
            + np.float32(LUMA[2]) * rgb[..., 2])
    return np.float32(255) - luma


def find_anchor(tile: np.ndarray) -> tuple[int, int] | None:
    """The tile's landmark: the pixel (row, column) where its darkness, smoothed by a
    Gaussian of :data:`SIGMA`, peaks highest (at least the Gaussian's reach from the tile's
    edges, where a crop would change it).

    Parameters
    ----------
    tile : uint8 array, shape (H, W, 3)

    Returns
    -------
    tuple of int or None
        The landmark, or None when the tile has no peak inside those margins (blank or too
        small); the tile is then left on its own grid.
    """
    h, w = tile.shape[:2]
    margin = _KERNEL_RADIUS + 2
    hb, wb = h // BLOCK, w // BLOCK
    if min(h, w) < 2 * margin + 3 or min(hb, wb) < 3:
        return None
    # candidates, cheaply: peaks of the darkness of 4 x 4 blocks
    # (exact integer sums: rows of blocks first, then columns, as strided slices; several
    # times faster than a reshaped mean or slices strided both ways)
    whole = tile[:hb * BLOCK, :wb * BLOCK]
    rows = whole[0::BLOCK].astype(np.uint16)
    for i in range(1, BLOCK):
        rows += whole[i::BLOCK]
    sums = rows[:, 0::BLOCK].copy()
    for j in range(1, BLOCK):
        sums += rows[:, j::BLOCK]
    blocks = _darkness(sums * np.float32(1 / BLOCK ** 2))
    blocks = ndi.gaussian_filter(blocks, 1.0)
    # peaks: inner blocks at least as dark as their 8 neighbours (the outer ring is none)
    inner = blocks[1:-1, 1:-1]
    peaks = np.ones(inner.shape, dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if (dy, dx) != (1, 1):
                peaks &= inner >= blocks[dy:dy + hb - 2, dx:dx + wb - 2]
    ys, xs = np.nonzero(peaks)
    ys, xs = ys + 1, xs + 1
    order = np.argsort(-blocks[ys, xs], kind="stable")[:CANDIDATES]
    # each followed to its peak at full resolution, from pixels alone (no edge of the patch
    # cut out for it reaches the values compared, so they move with the tissue bit for bit)
    reach = REACH + _KERNEL_RADIUS + 1
    boxes = []
    for by, bx in zip(ys[order], xs[order]):
        y0, x0 = BLOCK * int(by) + BLOCK // 2, BLOCK * int(bx) + BLOCK // 2
        boxes.append((max(0, y0 - reach), min(h, y0 + reach),
                      max(0, x0 - reach), min(w, x0 + reach)))
    best, where = -np.inf, None
    for (ya, yb, xa, xb), smooth in zip(boxes, _smoothed_patches(tile, boxes)):
        top = _KERNEL_RADIUS if ya > 0 else 0
        left = _KERNEL_RADIUS if xa > 0 else 0
        inner = smooth[top:smooth.shape[0] - (_KERNEL_RADIUS if yb < h else 0),
                       left:smooth.shape[1] - (_KERNEL_RADIUS if xb < w else 0)]
        if inner.shape[0] < 3 or inner.shape[1] < 3:
            continue
        py, px = np.unravel_index(int(np.argmax(inner)), inner.shape)
        if py in (0, inner.shape[0] - 1) or px in (0, inner.shape[1] - 1):
            continue  # the hill climbs on out of this patch: another candidate's peak
        gy, gx = ya + top + int(py), xa + left + int(px)
        if not (margin <= gy < h - margin and margin <= gx < w - margin):
            continue
        if inner[py, px] > best:
            best, where = float(inner[py, px]), (gy, gx)
    return where


def _smoothed_patches(tile: np.ndarray, boxes: list[tuple[int, int, int, int]]
                      ) -> list[np.ndarray]:
    """The darkness of each box ``(row0, row1, col0, col1)`` of ``tile``, smoothed by the
    Gaussian of :data:`SIGMA` (edges: nearest). Boxes of one shape are smoothed as one stack
    (no smoothing across the stack's axis: each patch's values are the ones it gets alone),
    one filter call instead of one per candidate."""
    out: list[np.ndarray | None] = [None] * len(boxes)
    shapes: dict[tuple[int, int], list[int]] = {}
    for k, (ya, yb, xa, xb) in enumerate(boxes):
        shapes.setdefault((yb - ya, xb - xa), []).append(k)
    for members in shapes.values():
        stack = np.stack([tile[ya:yb, xa:xb] for ya, yb, xa, xb in (boxes[k] for k in members)])
        smooth = ndi.gaussian_filter(_darkness(stack), (0.0, SIGMA, SIGMA), mode="nearest")
        for j, k in enumerate(members):
            out[k] = smooth[j]
    return out


def _axis_window(n: int, phase: int, period: int, before: int, after: int
                 ) -> tuple[int, int]:
    """Start (tile pixel, may be negative) and length of the window along one axis.

    The window's first pixel lies a whole number of periods before the landmark (start =
    ``phase`` mod ``period``). It must hold the tile's pixels ``[before, n - after)``: the
    ones whose maps are used. When that span allows, the window is the tile's own length,
    started at the fitting start nearest 0 (less network time; up to ``before`` or ``after``
    pixels at the edges are then not computed); otherwise one period longer, holding the
    whole tile: start ``phase - period``.
    """
    fits = [start for start in (phase, phase - period) if -after <= start <= before]
    if fits:
        return min(fits, key=abs), n
    return phase - period, n + period


def infer_anchored(infer: Callable[[np.ndarray], dict], batch: np.ndarray,
                   period: int, unused: list[tuple[int, int, int, int]] | None = None) -> dict:
    """``infer`` of ``batch``, each tile on the grid of ``period`` pixels through its
    :func:`find_anchor` landmark.

    Parameters
    ----------
    infer
        Maps of a uint8 ``[N, H', W', 3]`` batch (a backend's ``infer``, or an average of
        calls); called once per window shape, on windows whose sides are ``H`` or
        ``H + period`` (``W`` or ``W + period``).
    batch : uint8 array, shape (N, H, W, 3)
        H and W multiples of ``period`` (the network's ``size_multiple``).
    period : int
        The grid the network follows exactly: its ``size_multiple``.
    unused : list of (top, bottom, left, right), optional
        Per tile, how many rows and columns at each edge no kept nucleus reaches (a slide's
        inner tile: its overlap beyond what its core and the seams use; see
        :func:`slicer_cli.nuclei.seams.unused_edges`). Where they allow, the window is the
        tile's own size, and the maps of the edge pixels it leaves out are 0 (no nucleus).
        None (a lone tile): every pixel is used; the window is one period wider.

    Returns
    -------
    dict
        Each map ``[N, H, W(, C)]`` on the tiles' own pixels (NumPy or CuPy, as ``infer``
        returns them).
    """
    n, h, w = batch.shape[:3]
    places = []
    for k, tile in enumerate(batch):
        ay, ax = find_anchor(tile) or (0, 0)
        top, bottom, left, right = unused[k] if unused is not None else (0, 0, 0, 0)
        places.append(_axis_window(h, ay % period, period, top, bottom)
                      + _axis_window(w, ax % period, period, left, right))
    groups: dict[tuple[int, int], list[int]] = {}
    for k, (_, wh, _, ww) in enumerate(places):
        groups.setdefault((wh, ww), []).append(k)
    out: dict = {}
    for (wh, ww), members in groups.items():
        windows = np.empty((len(members), wh, ww, 3), dtype=batch.dtype)
        # per tile: the tile's pixels the window holds, and where they sit in the window
        spans = []
        for j, k in enumerate(members):
            sy, _, sx, _ = places[k]
            tile = (slice(max(sy, 0), min(sy + wh, h)), slice(max(sx, 0), min(sx + ww, w)))
            inside = (slice(tile[0].start - sy, tile[0].stop - sy),
                      slice(tile[1].start - sx, tile[1].stop - sx))
            spans.append((tile, inside))
            # mirrored where the window goes beyond the tile
            windows[j] = np.pad(batch[k][tile], ((inside[0].start, wh - inside[0].stop),
                                                 (inside[1].start, ww - inside[1].stop),
                                                 (0, 0)), mode="reflect")
        maps = infer(windows)
        if n == 1:  # one tile: its maps are a view of the window's, no copy
            (tile, inside), = spans
            if tile == (slice(0, h), slice(0, w)):
                return {name: value[:, inside[0], inside[1]] for name, value in maps.items()}
        for name, value in maps.items():
            xp = array_module(value)
            if name not in out:
                out[name] = xp.zeros((n, h, w) + value.shape[3:], dtype=value.dtype)
            for j, (k, (tile, inside)) in enumerate(zip(members, spans)):
                out[name][k][tile] = value[j][inside]
    return out
