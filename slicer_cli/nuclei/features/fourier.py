"""Fourier shape descriptors: HistomicsTK's Moore boundary of every nucleus (pointer
doubling), resampled by arc length, spectral-energy bins."""
from __future__ import annotations

import numpy as np

from .pixels import Pixels

#: Boundary resampling points and frequency bins of the Fourier shape descriptors.
FSD_POINTS = 128


FSD_BINS = 6


FSD_COLUMNS = [f"Shape.FSD{k}" for k in range(1, FSD_BINS + 1)]


# Moore tracing as HistomicsTK's ``_moore``: in the frame of the current direction the eight
# neighbours are scanned clockwise from the rear-left; the first one inside is the next pixel.
_MOORE_OFFSETS = np.array([(-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1), (0, 1)])


_MOORE_DIRS = np.array([(-1, 0), (0, -1), (0, -1), (1, 0), (1, 0), (0, 1), (0, 1), (-1, 0)])


# direction codes 0..3 = (DX, DY) (0, -1), (1, 0), (0, 1), (-1, 0): rotation by k * 90 degrees
_ROT_COS = np.array([1, 0, -1, 0])


_ROT_SIN = np.array([0, 1, 0, -1])


def _rotate(code: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, s = _ROT_COS[code], _ROT_SIN[code]
    return c * x - s * y, s * x + c * y


def _dir_code(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return np.where(dy == -1, 0, np.where(dx == 1, 1, np.where(dy == 1, 2, 3)))


def _trace_boundaries(px: Pixels) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """HistomicsTK's 8-connected Moore boundary of every label, by pointer doubling.

    Returns ``(traced, rows, cols, stop)``: the labels traced; ``len(traced) x T`` arrays of
    the boundary pixel coordinates in tracing order; and for each the step at which the
    tracer stops (0 if it did not within ``T`` steps).
    """
    pf, p, own, wp = px.padded, px.pflat, px.own, px.wp

    def inside(offset: int, at: np.ndarray = p, lab: np.ndarray = own) -> np.ndarray:
        return pf[at + offset] == lab

    # Start pixel: the first pixel in raster order with a right, lower, lower-right or
    # upper-right neighbour in the object (HistomicsTK skips the others); a label needs >1 px.
    startable = inside(1) | inside(wp) | inside(wp + 1) | inside(-wp + 1)
    cand = np.flatnonzero(startable & (px.area[px.lid] > 1))
    traced, first = np.unique(px.lid[cand], return_index=True)
    start_pix = cand[first]
    # States: (boundary pixel, direction). A boundary pixel has an 8-neighbour outside.
    ring = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    interior = np.ones(p.size, dtype=bool)
    for dy, dx in ring:
        interior &= inside(dy * wp + dx)
    bnd = np.flatnonzero(~interior)
    if traced.size == 0:
        empty = np.zeros((0, 0), np.intp)
        return traced, empty, empty, np.zeros(0, np.intp)
    index = np.full(pf.size, -1, dtype=np.intp)
    index[p[bnd]] = np.arange(bnd.size)
    bp, bown = p[bnd], own[bnd]
    nb = bnd.size
    nxt = np.empty((nb, 4), dtype=np.intp)
    for code in range(4):
        # the eight neighbours in this direction's frame, as flat offsets of the padded image
        ox, oy = _rotate(np.full(8, code), _MOORE_OFFSETS[:, 0], _MOORE_OFFSETS[:, 1])
        step = oy * wp + ox
        hit = np.empty((nb, 8), dtype=bool)
        for i in range(8):
            hit[:, i] = pf[bp + step[i]] == bown
        move = np.argmax(hit, axis=1)              # first hit; 0 when none (as the tracer)
        ndx, ndy = _rotate(np.full(8, code), _MOORE_DIRS[:, 0], _MOORE_DIRS[:, 1])
        new_code = _dir_code(ndx, ndy)[move]
        nxt_b = index[bp + step[move]]
        stay = np.arange(nb) * 4 + code            # off the boundary (cannot happen): stall
        nxt[:, code] = np.where(nxt_b >= 0, nxt_b * 4 + new_code, stay)
    nxt = nxt.ravel()
    start_state = index[p[start_pix]] * 4 + 1     # initial direction (DX, DY) = (1, 0)
    state_pix = np.repeat(bp, 4)
    # Walk all boundaries at once: seq[:, t] = next^t(start), doubling the length per round.
    seq = start_state[:, None]
    jump = nxt
    # a walk revisits a (pixel, direction) state only after closing: 4 states per pixel bound
    # each boundary's length
    limit = 4 * int(np.bincount(px.lid[bnd], minlength=px.n).max()) + 4
    while True:
        seq = np.concatenate([seq, jump[seq]], axis=1)
        pos = state_pix[seq]
        done = _stop_index(pos)
        if (done > 0).all() or seq.shape[1] > limit:
            break
        jump = jump[jump]
    rows = pos // wp - 1
    cols = pos % wp - 1
    return traced, rows, cols, done


def _stop_index(pos: np.ndarray) -> np.ndarray:
    """Index ``t >= 3`` where HistomicsTK's tracer stops (0 where not reached yet)."""
    if pos.shape[1] < 4:
        return np.zeros(pos.shape[0], dtype=np.intp)
    hit = (pos[:, 3:] == pos[:, 1:2]) & (pos[:, 2:-1] == pos[:, 0:1])
    return np.where(hit.any(axis=1), np.argmax(hit, axis=1) + 3, 0)


def measure_fsd(px: Pixels) -> dict[str, np.ndarray]:
    """HistomicsTK's Fourier shape descriptors (``compute_fsd_features`` defaults)."""
    n = px.n
    out = np.zeros((n, FSD_BINS))
    traced, rows, cols, stop = _trace_boundaries(px)
    ok = stop > 0
    traced, rows, cols, stop = traced[ok], rows[ok], cols[ok], stop[ok]
    npts = stop - 1                        # the stop point and the repeated start are dropped
    keep = npts >= 2
    traced, rows, cols, npts = traced[keep], rows[keep], cols[keep], npts[keep]
    if traced.size:
        # Coordinates in HistomicsTK's window (bbox grown by 8, padded by 1 at the top/left
        # image edge), so that the arithmetic sees the same numbers.
        r0 = np.maximum(0, px.rmin[traced] - 8)
        c0 = np.maximum(0, px.cmin[traced] - 8)
        x = (rows - r0[:, None] + (r0 == 0)[:, None]).astype(np.float64)
        y = (cols - c0[:, None] + (c0 == 0)[:, None]).astype(np.float64)
        out[traced] = _fsd(x, y, npts)
    return {name: out[:, i] for i, name in enumerate(FSD_COLUMNS)}


def _fsd(x: np.ndarray, y: np.ndarray, npts: np.ndarray) -> np.ndarray:
    """``_FSDs`` of HistomicsTK for contours stored as rows (``npts`` points each)."""
    m, width = x.shape
    k = FSD_POINTS
    j = np.arange(width)
    seg = j[None, :-1] < (npts - 1)[:, None]
    slens = np.where(seg, np.sqrt(np.diff(x, axis=1) ** 2 + np.diff(y, axis=1) ** 2), 0.0)
    slens = slens / slens.sum(axis=1, keepdims=True)
    cumulative = np.zeros((m, width))
    cumulative[:, 1:] = np.cumsum(slens, axis=1)
    interval = np.linspace(0, 1, k + 1)
    # np.digitize(interval, cumulative[:npts]) by bisection, per contour.
    lo = np.zeros((m, k + 1), dtype=np.intp)
    hi = np.repeat(npts[:, None], k + 1, axis=1)
    rr = np.arange(m)[:, None]
    for _ in range(int(np.ceil(np.log2(width + 1))) + 1):
        mid = (lo + hi) // 2
        active = lo < hi
        right = cumulative[rr, np.minimum(mid, width - 1)] <= interval[None, :]
        lo = np.where(active & right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)
    loc = np.minimum(lo, (npts - 1)[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        lie = (interval[None, :] - cumulative[rr, loc - 1]) / slens[rr, loc - 1]
    ix = x[rr, loc - 1] + (x[rr, loc] - x[rr, loc - 1]) * lie
    iy = y[rr, loc - 1] + (y[rr, loc] - y[rr, loc - 1]) * lie
    curvature = np.arctan2(iy[:, 1:] - iy[:, :-1], ix[:, 1:] - ix[:, :-1])
    curvature = curvature - curvature[:, :1]
    z = 1 * np.cos(curvature) + 1j * np.sin(curvature)
    fx = np.fft.fft(z, axis=1)
    fx = fx * fx.conj()
    fx = fx / fx.sum(axis=1, keepdims=True)
    edges = np.round(np.power(2, np.linspace(0, np.log2(k) - 1, FSD_BINS + 1))).astype(int)
    nb = len(edges)
    return np.stack([np.round(fx[:, edges[i] - 1:edges[i + 1]].sum(axis=1), nb).real
                     for i in range(FSD_BINS)], axis=1)
