"""Nucleus outlines: one polygon per label, traced for the whole tile in one pass."""
from __future__ import annotations

import cv2
import numpy as np


def trace_outlines(labels: np.ndarray) -> list[np.ndarray]:
    """Trace the outline of every nucleus of a label image.

    Pixels that touch a *different* nucleus are set aside first, so touching nuclei are
    traced separately by one ``cv2.findContours`` call over the whole tile; vertices are pixel
    centres of each nucleus' outermost pixels (as ``skimage.measure.find_contours`` at 0.5).

    Parameters
    ----------
    labels : ndarray
        int label image, 0 background, nuclei ``1..n`` (consecutive).

    Returns
    -------
    list of ndarray
        ``n`` arrays of shape ``(k, 2)`` float64 ``(x, y)`` vertices, in label order
        (``k >= 3``; a nucleus too thin to trace gets its bounding box).
    """
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return []
    lab = labels.astype(np.int32, copy=False)
    conflict = np.zeros(lab.shape, dtype=bool)
    for axis in (0, 1):
        a = lab.take(np.arange(lab.shape[axis] - 1), axis=axis)
        b = lab.take(np.arange(1, lab.shape[axis]), axis=axis)
        touch = (a > 0) & (b > 0) & (a != b)
        if axis == 0:
            conflict[:-1] |= touch
            conflict[1:] |= touch
        else:
            conflict[:, :-1] |= touch
            conflict[:, 1:] |= touch
    mask = ((lab > 0) & ~conflict).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    best: list[np.ndarray | None] = [None] * (n + 1)
    if contours:
        firsts = np.array([c[0, 0] for c in contours])          # (m, 2) x, y
        owners = lab[firsts[:, 1], firsts[:, 0]]
        lengths = np.array([len(c) for c in contours])
        # keep the longest contour per label: sort by (label, length) and take the last
        order = np.lexsort((lengths, owners))
        last = np.r_[owners[order][1:] != owners[order][:-1], True]
        for idx in order[last]:
            best[owners[idx]] = contours[idx][:, 0, :].astype(np.float64)
    missing = [i for i in range(1, n + 1) if best[i] is None or len(best[i]) < 3]
    if missing:
        from scipy import ndimage as ndi

        slices = ndi.find_objects(lab)
        for i in missing:
            sy, sx = slices[i - 1]
            x0, x1, y0, y1 = sx.start, sx.stop - 1, sy.start, sy.stop - 1
            best[i] = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
    return best[1:]


def on_whole_pixels(contours: list[np.ndarray]) -> list[np.ndarray]:
    """The outlines as the annotation stores them: vertices rounded to whole base pixels,
    repeated neighbours dropped.

    Whole pixels are what HistomicsUI's Metadata Plot needs to join a feature-table row to
    its outline: large_image (1.35) looks an element's bounding-box corner up by integer
    keys, so an outline whose lowest y is fractional never matches its row. A vertex moves
    at most half a base pixel. An outline left with fewer than three vertices becomes its
    whole-pixel bounding box (at least one pixel each way).

    Parameters
    ----------
    contours : list of ndarray
        ``(k, 2)`` float ``x, y`` vertices per nucleus (``k >= 1``), base pixels.

    Returns
    -------
    list of ndarray
        ``(k', 2)`` int64 vertices per nucleus, same order, ``k' >= 3``.
    """
    if not contours:
        return []
    lengths = np.fromiter((len(c) for c in contours), dtype=np.int64, count=len(contours))
    points = np.concatenate(contours).astype(np.float64, copy=False)
    whole = np.rint(points).astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    prev = np.arange(len(whole)) - 1
    prev[starts] = starts + lengths - 1                 # a ring's first vertex follows its last
    keep = (whole != whole[prev]).any(axis=1)
    kept = np.add.reduceat(keep.astype(np.int64), starts)     # vertices kept per outline
    out = np.split(whole[keep], np.cumsum(kept)[:-1])
    for i in np.flatnonzero(kept < 3).tolist():
        lo = np.floor(contours[i].min(axis=0)).astype(np.int64)
        hi = np.maximum(np.ceil(contours[i].max(axis=0)).astype(np.int64), lo + 1)
        out[i] = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
    return out
