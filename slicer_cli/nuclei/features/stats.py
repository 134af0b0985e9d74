"""Segment statistics shared by the intensity and gradient families (NumPy or CuPy)."""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..arrays import ndimage_of
from .pixels import Pixels

#: Bins of the intensity and gradient histograms (energy, entropy).
HIST_BINS = 10


def moments_stats(xp: ModuleType, mean: Any, m2: Any, m3: Any, m4: Any) -> tuple[Any, Any]:
    """scipy.stats skew and (Fisher) kurtosis from central moments; NaN for constant data."""
    eps = np.finfo(np.float64).eps
    zero = m2 <= (eps * mean) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = xp.where(zero, xp.nan, m3 / m2**1.5)
        kurt = xp.where(zero, xp.nan, m4 / m2**2.0) - 3
    return skew, kurt


def hist_bins(xp: ModuleType, values: Any, first: Any, last: Any) -> Any:
    """Bin index of ``values`` in np.histogram(bins=HIST_BINS) over [first, last] (per value).

    ``first``/``last`` are the per-value range (min/max of the value's nucleus); the arithmetic
    is numpy's (linspace edges, the +-1 ULP corrections, closed last bin).
    """
    same = first == last
    first = xp.where(same, first - 0.5, first)
    last = xp.where(same, last + 0.5, last)
    denom = last - first
    step = denom / HIST_BINS
    idx = (((values - first) / denom) * HIST_BINS).astype(xp.intp)
    idx = xp.clip(idx, 0, HIST_BINS)
    idx = xp.where(idx == HIST_BINS, HIST_BINS - 1, idx)

    def edge(i: Any) -> Any:
        return xp.where(i >= HIST_BINS, last, i * step + first)

    idx = xp.where(values < edge(idx), idx - 1, idx)
    inc = (values >= edge(idx + 1)) & (idx != HIST_BINS - 1)
    return xp.where(inc, idx + 1, idx)


def hist_energy_entropy(xp: ModuleType, hist: Any, total: Any) -> tuple[Any, Any]:
    """HistomicsTK's HistEnergy and HistEntropy (scipy.stats.entropy) of per-label histograms."""
    prob = hist / total[:, None]
    pk = prob / prob.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        entr = xp.where(pk > 0, -pk * xp.log(xp.where(pk > 0, pk, 1.0)), 0.0)
    return (prob**2).sum(axis=1), entr.sum(axis=1)


def value_at_rank(xp: ModuleType, cum: Any, rank: Any) -> Any:
    """Per row, the bin holding each 0-based ``rank`` of a cumulative histogram (rows x bins).

    That is the number of bins whose cumulative count is <= rank: one ``searchsorted`` over
    all rows at once, each row shifted by its own multiple of a bound on the counts (the
    values are integers, so the shifted keys are exact).
    """
    n, nbins = cum.shape
    span = float(cum[:, -1].max()) + 1 if n else 1.0
    shift = xp.arange(n, dtype=xp.float64)[:, None] * span
    keys = (cum.astype(xp.float64) + shift).ravel()
    pos = xp.searchsorted(keys, (rank.astype(xp.float64) + shift).ravel(), side="right")
    return pos.reshape(rank.shape) - xp.arange(n)[:, None] * nbins


def lerp(xp: ModuleType, a: Any, b: Any, t: Any) -> Any:
    """numpy's percentile interpolation (``lerp``)."""
    diff = b - a
    return xp.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def segment_min_max(xp: ModuleType, values: Any, px: Pixels) -> tuple[Any, Any]:
    if xp is np:
        return (np.minimum.reduceat(values, px.starts), np.maximum.reduceat(values, px.starts))
    cndi = ndimage_of(xp)
    lab = xp.asarray(px.lid + 1)
    index = xp.arange(1, px.n + 1)
    return cndi.minimum(values, lab, index), cndi.maximum(values, lab, index)


def expand(xp: ModuleType, counts: Any) -> Any:
    """``repeat(arange(len(counts)), counts)`` (CuPy's repeat takes no array of counts)."""
    if xp is np:
        return np.repeat(np.arange(counts.size), counts)
    total = int(counts.sum())
    return xp.searchsorted(xp.cumsum(counts), xp.arange(total), side="right")
