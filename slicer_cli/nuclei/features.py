"""Measure: HistomicsTK nucleus features of one tile, vectorised over nuclei.

``compute_features`` reproduces ``histomicstk.features.compute_nuclei_features`` (HistomicsTK
1.4.0) as ``detect_tile_nuclei`` calls it for the ComputeNucleiFeatures / NucleiClassification
CLIs: same column names, definitions, defaults and quirks. Every family is computed for all
nuclei at once: pixel tables sorted by label, ``bincount`` / ``reduceat`` segment reductions,
one ``bincount`` over ``(offset, nucleus, level_i, level_j)`` for the GLCMs, and boundary walks
by pointer doubling. No Python loop runs per nucleus; the few loops left run over a fixed
small set (GLCM offsets, box sizes, bisection steps, batches of 512 nuclei) or over the levels
of the tallest nucleus (convex hull).

Definitions followed (HistomicsTK 1.4.0 / scikit-image ``regionprops``):

* intensity image: hematoxylin channel of colour deconvolution with the default stain matrix
  (hematoxylin, eosin, null) and ``I_0=None`` (the ``(rgb + 1) / 256`` optical density that
  ``detect_tile_nuclei`` uses), truncated to ``uint8`` as ``Stains`` is;
* morphometry: ``regionprops`` of each nucleus (4-connected perimeter, convex hull of the pixel
  edge midpoints, box-counting fractal dimension of the bounding-box image, Hu moments of the
  mask and of the hematoxylin-weighted mask);
* Fourier shape descriptors: 8-connected Moore boundary (HistomicsTK's tracer: start pixel,
  direction and stop rule), resampled to 128 points by arc length, 6 spectral-energy bins;
* intensity (hematoxylin and each RGB band) and gradient (``np.gradient`` magnitude, Canny of
  scikit-image with its defaults) statistics over the nucleus pixels, 10-bin histograms;
* Haralick: 32 grey levels over [0, 255], offsets (0, 1), (1, 0), (1, 1), (1, -1), symmetric
  normalised GLCMs of the nucleus bounding box *plus one row and one column* (HistomicsTK
  slices ``bbox_max + 1`` and applies no mask), mean and range over offsets;
* optional cytoplasm: the same intensity, gradient and Haralick features of the eosin channel
  over ``dilate_xor``'s ring of 8 px (background pixels take their nearest nucleus's label).

Deliberate differences: a nucleus touching the bottom or right edge of the tile keeps its last
row/column for the FSD (HistomicsTK crops it away); a one-pixel nucleus gets zero FSDs
(HistomicsTK raises ``IndexError``); a nucleus without a cytoplasm ring gets zero cytoplasm
gradient features (HistomicsTK drops its row, which shifts the rows after it).

NumPy is the reference. Given CuPy arrays (or ``xp=cupy``), the per-pixel work that maps onto
CuPy (colour deconvolution, gradients, intensity histograms, GLCM counting and the Haralick
algebra) runs on the GPU; label geometry (boundaries, hulls, the cytoplasm ring's distance
transform) runs on the host, and Canny too unless cuCIM is installed.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["compute_features"]

#: Boundary resampling points and frequency bins of the Fourier shape descriptors.
FSD_POINTS = 128
FSD_BINS = 6
#: Grey levels of the co-occurrence matrices, and their offsets (row, column).
GLCM_LEVELS = 32
GLCM_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))
#: Bins of the intensity and gradient histograms (energy, entropy).
HIST_BINS = 10

_INTENSITY = ["Min", "Max", "Mean", "Median", "MeanMedianDiff", "Std", "IQR", "MAD",
              "Skewness", "Kurtosis", "HistEnergy", "HistEntropy"]
_GRADIENT = ["Mag.Mean", "Mag.Std", "Mag.Skewness", "Mag.Kurtosis", "Mag.HistEntropy",
             "Mag.HistEnergy", "Canny.Sum", "Canny.Mean"]
_HARALICK = ["ASM", "Contrast", "Correlation", "SumOfSquares", "IDM", "SumAverage",
             "SumVariance", "SumEntropy", "Entropy", "DifferenceVariance", "DifferenceEntropy",
             "IMC1", "IMC2"]
_IDENTIFIER = ["Identifier.Xmin", "Identifier.Ymin", "Identifier.Xmax", "Identifier.Ymax",
               "Identifier.CentroidX", "Identifier.CentroidY", "Identifier.WeightedCentroidX",
               "Identifier.WeightedCentroidY"]
_MORPHOMETRY = (
    ["Orientation.Orientation", "Size.Area", "Size.ConvexHullArea", "Size.MajorAxisLength",
     "Size.MinorAxisLength", "Size.Perimeter", "Shape.Circularity", "Shape.Eccentricity",
     "Shape.EquivalentDiameter", "Shape.Extent", "Shape.FractalDimension",
     "Shape.MinorMajorAxisRatio", "Shape.Solidity"]
    + [f"Shape.HuMoments{k}" for k in range(1, 8)]
    + [f"Shape.WeightedHuMoments{k}" for k in range(1, 8)]
)
_FSD = [f"Shape.FSD{k}" for k in range(1, FSD_BINS + 1)]



def _ordered_columns(cytoplasm: bool) -> list[str]:
    """Columns in the order of HistomicsTK's compute_nuclei_features."""
    def family(region: str, names: list[str], kind: str) -> list[str]:
        return [f"{region}.{kind}.{c}" for c in names]

    haralick = [f"{c}.{s}" for c in _HARALICK for s in ("Mean", "Range")]
    cols = (["Label"] + _IDENTIFIER + _MORPHOMETRY + _FSD
            + family("Nucleus", _INTENSITY, "Intensity")
            + [f"Nucleus.Band{b}.Intensity.{c}" for b in range(3) for c in _INTENSITY])
    cols += family("Cytoplasm", _INTENSITY, "Intensity") if cytoplasm else []
    cols += family("Nucleus", _GRADIENT, "Gradient")
    cols += family("Cytoplasm", _GRADIENT, "Gradient") if cytoplasm else []
    cols += family("Nucleus", haralick, "Haralick")
    cols += family("Cytoplasm", haralick, "Haralick") if cytoplasm else []
    return cols


#: Every column, in HistomicsTK's order (``cytoplasm=False``).
COLUMNS: list[str] = _ordered_columns(cytoplasm=False)
#: Every column with ``cytoplasm=True``.
COLUMNS_WITH_CYTOPLASM: list[str] = _ordered_columns(cytoplasm=True)
#: Width (px) of the ring around a nucleus taken as its cytoplasm (HistomicsTK's cyto_width).
CYTOPLASM_WIDTH = 8

_E = 0.00001  # HistomicsTK's guard against log(0) in the Haralick entropies


def compute_features(labels: np.ndarray, image_rgb: np.ndarray, *, cytoplasm: bool = False,
                     xp: ModuleType | None = None) -> pd.DataFrame:
    """Compute the HistomicsTK nucleus features of every nucleus of one tile.

    Parameters
    ----------
    labels : numpy.ndarray or cupy.ndarray
        ``H x W`` integer label image of the tile (``int32`` expected): 0 is background and
        ``1..n`` are the nuclei, every label present.
    image_rgb : numpy.ndarray or cupy.ndarray
        ``H x W x 3`` ``uint8`` RGB image of the same tile.
    cytoplasm : bool, optional
        Also compute the ``Cytoplasm.*`` intensity, gradient and Haralick features on the
        eosin channel, over a ring of :data:`CYTOPLASM_WIDTH` pixels around each nucleus
        (HistomicsTK's ``dilate_xor``). Roughly doubles the run time. A nucleus whose ring is
        empty (enclosed by other nuclei) gets zeros, as HistomicsTK's intensity and Haralick
        features do.
    xp : module, optional
        Array module for the per-pixel work (``numpy`` or ``cupy``). By default ``cupy`` when
        either input is a CuPy array, else ``numpy``.

    Returns
    -------
    pandas.DataFrame
        One row per label ``1..n`` in label order: ``Label``, ``Identifier.*`` (bounding box
        and centroids in tile pixels) and the HistomicsTK feature columns (``Size.*``,
        ``Shape.*``, ``Orientation.*``, ``Nucleus.Intensity.*``, ``Nucleus.Band{0,1,2}.*``,
        ``Nucleus.Gradient.*``, ``Nucleus.Haralick.*``, and ``Cytoplasm.*`` if asked), in
        HistomicsTK's order: :data:`COLUMNS` or :data:`COLUMNS_WITH_CYTOPLASM`. A tile
        without nuclei gives an empty frame with all the columns.

    Raises
    ------
    ValueError
        If ``labels`` is not a 2-D integer array, holds negative values or skips a label, or
        if ``image_rgb`` is not an ``H x W x 3`` ``uint8`` array of the same size.
    """
    _validate(labels, image_rgb)
    if xp is None:                      # CuPy if either input lives on the GPU
        xp = _array_module(labels)
        xp = _array_module(image_rgb) if xp is np else xp
    columns = COLUMNS_WITH_CYTOPLASM if cytoplasm else COLUMNS
    lab = _to_host(labels)
    if lab.size and int(lab.min()) < 0:
        raise ValueError("labels must be non-negative (0 background, 1..n nuclei)")
    n = int(lab.max()) if lab.size else 0
    if n == 0:
        return _empty_frame(columns)
    px = _Pixels(lab, n)
    rgb = xp.asarray(_to_host(image_rgb)) if xp is np else xp.asarray(image_rgb)
    hema = _stain_channel(rgb, xp, 0)
    dev = _DevicePixels(px, xp)

    cols: dict[str, Any] = {"Label": np.arange(1, n + 1, dtype=np.int64)}
    cols.update(_identifier_and_morphometry(px, _to_host(hema)))
    cols.update(_fsd_features(px))
    cols.update(_prefixed("Nucleus.", _intensity_features(dev, hema)))
    for band in range(3):
        cols.update(_prefixed(f"Nucleus.Band{band}.",
                              _intensity_features(dev, xp.ascontiguousarray(rgb[..., band]))))
    cols.update(_prefixed("Nucleus.", _gradient_features(px, dev, hema)))
    cols.update(_prefixed("Nucleus.", _haralick_features(px, dev, hema)))
    if cytoplasm:
        cols.update(_cytoplasm_features(lab, _stain_channel(rgb, xp, 1), xp))
    return pd.DataFrame({name: _to_host(cols[name]) for name in columns})


def _cytoplasm_features(lab: np.ndarray, eosin: Any, xp: ModuleType) -> dict[str, Any]:
    """Intensity, gradient and Haralick features of each nucleus's cytoplasm ring."""
    from scipy.ndimage import distance_transform_edt

    n = int(lab.max())
    # HistomicsTK's dilate_xor: background pixels within CYTOPLASM_WIDTH of an object take the
    # label of their nearest object pixel.
    dist, (near_r, near_c) = distance_transform_edt(lab == 0, return_indices=True)
    ring = np.where((dist > 0) & (dist <= CYTOPLASM_WIDTH), lab[near_r, near_c], 0)
    present = np.bincount(ring.ravel(), minlength=n + 1)[1:] > 0
    m = int(present.sum())
    remap = np.zeros(n + 1, dtype=np.int32)
    remap[1:][present] = np.arange(1, m + 1)
    out: dict[str, Any] = {}
    if m:
        px = _Pixels(remap[ring], m)
        dev = _DevicePixels(px, xp)
        parts = (_intensity_features(dev, eosin), _gradient_features(px, dev, eosin),
                 _haralick_features(px, dev, eosin))
        for part in parts:
            for name, values in part.items():
                full = np.zeros(n)
                full[present] = _to_host(values)
                out["Cytoplasm." + name] = full
    else:
        out = {c: np.zeros(n) for c in COLUMNS_WITH_CYTOPLASM if c.startswith("Cytoplasm.")}
    return out


# ----------------------------------------------------------------------------- boundary


def _array_module(arr: Any) -> ModuleType:
    mod = type(arr).__module__.split(".")[0]
    if mod == "cupy":
        import cupy

        return cupy
    return np


def _to_host(arr: Any) -> Any:
    if type(arr).__module__.split(".")[0] == "cupy":
        return arr.get()
    return arr


def _validate(labels: Any, image_rgb: Any) -> None:
    shape = getattr(labels, "shape", None)
    dtype = getattr(labels, "dtype", None)
    if shape is None or dtype is None or len(shape) != 2:
        raise ValueError(f"labels must be a 2-D integer array (H x W), got shape {shape}")
    if not np.issubdtype(np.dtype(dtype), np.integer):
        raise ValueError(f"labels must have an integer dtype (int32), got {dtype}")
    ishape = getattr(image_rgb, "shape", None)
    idtype = getattr(image_rgb, "dtype", None)
    if ishape is None or tuple(ishape) != (shape[0], shape[1], 3):
        raise ValueError(
            f"image_rgb must be H x W x 3 matching labels {tuple(shape)}, got shape {ishape}")
    if np.dtype(idtype) != np.uint8:
        raise ValueError(f"image_rgb must be uint8, got {idtype}")


def _empty_frame(columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
    return frame.astype({"Label": "int64", "Identifier.Xmin": "int64", "Identifier.Ymin": "int64",
                         "Identifier.Xmax": "int64", "Identifier.Ymax": "int64"})


def _prefixed(prefix: str, cols: dict[str, Any]) -> dict[str, Any]:
    return {prefix + k: v for k, v in cols.items()}


# ----------------------------------------------------------------------------- pixel table


class _Pixels:
    """Foreground pixels grouped by label (raster order inside a label), on the host."""

    def __init__(self, lab: np.ndarray, n: int) -> None:
        h, w = lab.shape
        flat = lab.ravel()
        fg = np.flatnonzero(flat)
        lid = (flat[fg] - 1).astype(np.int32 if n >= 2**15 else np.int16)
        area = np.bincount(lid, minlength=n)
        if not area.all():
            raise ValueError(f"labels must be consecutive 1..n; {int((area == 0).sum())} of "
                             f"1..{n} are missing")
        order = np.argsort(lid, kind="stable")
        self.n, self.h, self.w = n, h, w
        self.flat = fg[order]                       # flat pixel index, grouped by label
        self.lid = lid[order].astype(np.intp)       # 0-based label of each pixel
        self.rows = self.flat // w
        self.cols = self.flat - self.rows * w
        self.area = area
        self.starts = np.concatenate([[0], np.cumsum(area)[:-1]])
        self.rmin = self.rows[self.starts]
        self.rmax = self.rows[self.starts + area - 1]
        self.cmin = np.minimum.reduceat(self.cols, self.starts)
        self.cmax = np.maximum.reduceat(self.cols, self.starts)
        # Label image with a one-pixel background frame, for neighbour look-ups.
        self.wp = w + 2
        self.padded = np.pad(lab, 1).ravel()
        self.pflat = (self.rows + 1) * self.wp + (self.cols + 1)
        self.own = (self.lid + 1).astype(self.padded.dtype)


class _DevicePixels:
    """The pixel table's per-pixel arrays on the array module ``xp``."""

    def __init__(self, px: _Pixels, xp: ModuleType) -> None:
        self.xp = xp
        self.n = px.n
        self.flat = xp.asarray(px.flat)
        self.lid = xp.asarray(px.lid)
        self.area = xp.asarray(px.area.astype(np.float64))


# ----------------------------------------------------------------------------- intensity image


def _stain_inverse() -> np.ndarray:
    """Inverse of HistomicsTK's default H&E stain matrix (hematoxylin, eosin, null)."""
    w = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.0, 0.0, 0.0]]).T
    third = np.cross(w[:, 0], w[:, 1])
    wc = np.array([w[:, 0], w[:, 1], third / np.linalg.norm(third)]).T
    wc = wc / np.sqrt((wc**2).sum(0))
    return np.linalg.pinv(wc)


_STAIN_INV = _stain_inverse()


def _sda_lut() -> np.ndarray:
    """``rgb_to_sda(v, I_0=None)`` for every uint8 value ``v``, as HistomicsTK computes it."""
    v = np.arange(256).astype(float) + 1
    v = np.maximum(v, 1e-10)
    sda = -np.log(v / (1.0 * 256)) * 255 / np.log(256)
    return np.maximum(sda, 0)


_SDA_LUT = _sda_lut()


def _stain_tables() -> tuple[np.ndarray, np.ndarray]:
    """Per-channel terms of each stain's optical density, and of its exponential."""
    terms = _STAIN_INV[:, :, None] * _SDA_LUT[None, None, :]         # stain x channel x 256
    return terms, 256.0 ** (-terms / 255.0)


_STAIN_TERMS, _STAIN_FACTORS = _stain_tables()


def _stain_channel(rgb: Any, xp: ModuleType, stain: int) -> Any:
    """One channel (uint8) of HistomicsTK colour deconvolution, ``I_0=None``.

    ``stain`` 0 is hematoxylin, 1 eosin. HistomicsTK computes ``256 ** (1 - d / 255) - 1`` with
    ``d`` the stain's row of the inverse stain matrix times the per-channel optical densities,
    and truncates to uint8. Here the power is a product of three per-channel factors looked up
    by value (a few ULPs from HistomicsTK's number); the few pixels whose value lies within
    1e-6 of an integer, where those ULPs could change the truncation, are recomputed with
    HistomicsTK's arithmetic.
    """
    h, w = rgb.shape[:2]
    flat = rgb.reshape(-1, 3)
    f = xp.asarray(_STAIN_FACTORS[stain])
    chan = [flat[:, c].astype(xp.intp) for c in range(3)]
    value = 256.0 * f[0][chan[0]] * f[1][chan[1]] * f[2][chan[2]] - 1
    near = xp.flatnonzero(xp.abs(value - xp.rint(value)) < 1e-6)
    if near.size:
        t = xp.asarray(_STAIN_TERMS[stain])
        d = t[0][chan[0][near]] + t[1][chan[1][near]] + t[2][chan[2][near]]
        value[near] = 256 ** (1 - d / 255.0) - 1
    return value.clip(0, 255).astype(xp.uint8).reshape(h, w)


# ----------------------------------------------------------------------------- morphometry


def _identifier_and_morphometry(px: _Pixels, hema: np.ndarray) -> dict[str, Any]:
    n, lid = px.n, px.lid
    area = px.area.astype(np.float64)
    rl = (px.rows - px.rmin[lid]).astype(np.float64)
    cl = (px.cols - px.cmin[lid]).astype(np.float64)
    cr = np.bincount(lid, rl, n) / area
    cc = np.bincount(lid, cl, n) / area
    mu = _central_moments(lid, rl - cr[lid], cl - cc[lid], None, n)
    mu.update(_second_moments_exact(px))
    wgt = hema.ravel()[px.flat].astype(np.float64)
    wsum = np.bincount(lid, wgt, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        wcr = np.bincount(lid, wgt * rl, n) / wsum
        wcc = np.bincount(lid, wgt * cl, n) / wsum
        wmu = _central_moments(lid, rl - wcr[lid], cl - wcc[lid], wgt, n)
        hu = _hu_moments(mu, area)
        whu = _hu_moments(wmu, wsum)

    # Inertia tensor [[a, b], [b, c]] and its eigenvalues, as regionprops.
    a, b, c = mu[(0, 2)] / area, -mu[(1, 1)] / area, mu[(2, 0)] / area
    half = (a + c) / 2
    root = np.sqrt(((a - c) / 2) ** 2 + b * b)
    ev1 = np.maximum(half + root, 0)
    ev2 = np.maximum(half - root, 0)
    major, minor = 4 * np.sqrt(ev1), 4 * np.sqrt(ev2)
    orientation = np.where(a - c == 0, np.where(b < 0, np.pi / 4.0, -np.pi / 4.0),
                           0.5 * np.arctan2(-2 * b, c - a))
    with np.errstate(divide="ignore", invalid="ignore"):
        eccentricity = np.where(ev1 == 0, 0.0, np.sqrt(1 - ev2 / ev1))
        ratio = np.where(major > 0, minor / major, 1.0)
    perimeter = _perimeter(px)
    convex = _convex_area(px)
    height = px.rmax - px.rmin + 1
    width = px.cmax - px.cmin + 1

    out: dict[str, Any] = {
        "Identifier.Xmin": px.cmin.astype(np.int64),
        "Identifier.Ymin": px.rmin.astype(np.int64),
        "Identifier.Xmax": (px.cmax + 1).astype(np.int64),
        "Identifier.Ymax": (px.rmax + 1).astype(np.int64),
        "Identifier.CentroidX": np.bincount(lid, px.cols.astype(np.float64), n) / area,
        "Identifier.CentroidY": np.bincount(lid, px.rows.astype(np.float64), n) / area,
        "Identifier.WeightedCentroidX": wcc + px.cmin,
        "Identifier.WeightedCentroidY": wcr + px.rmin,
        "Orientation.Orientation": orientation,
        "Size.Area": area,
        "Size.ConvexHullArea": convex,
        "Size.MajorAxisLength": major,
        "Size.MinorAxisLength": minor,
        "Size.Perimeter": perimeter,
        "Shape.Circularity": 4 * np.pi * area / np.where(perimeter > 0, perimeter**2, 1),
        "Shape.Eccentricity": eccentricity,
        "Shape.EquivalentDiameter": (2 * 2 * area / np.pi) ** (1 / 2),
        "Shape.Extent": area / (height * width),
        "Shape.FractalDimension": _fractal_dimension(px, height, width),
        "Shape.MinorMajorAxisRatio": ratio,
        "Shape.Solidity": area / convex,
    }
    for k in range(7):
        out[f"Shape.HuMoments{k + 1}"] = hu[k]
    for k in range(7):
        out[f"Shape.WeightedHuMoments{k + 1}"] = whu[k]
    return out


_MOMENT_ORDERS = ((2, 0), (1, 1), (0, 2), (3, 0), (2, 1), (1, 2), (0, 3))


def _central_moments(lid: np.ndarray, dr: np.ndarray, dc: np.ndarray,
                     weight: np.ndarray | None, n: int) -> dict[tuple[int, int], np.ndarray]:
    """Central moments ``mu[p, q] = sum(w * dr**p * dc**q)`` per label (p: rows)."""
    if weight is not None:
        dr_w = weight * dr
        rpow = {0: weight, 1: dr_w, 2: dr_w * dr, 3: dr_w * dr * dr}
    else:
        rpow = {0: None, 1: dr, 2: dr * dr, 3: dr * dr * dr}
    cpow = {0: None, 1: dc, 2: dc * dc, 3: dc * dc * dc}
    out = {}
    for p, q in _MOMENT_ORDERS:
        a, b = rpow[p], cpow[q]
        term = a if b is None else (b if a is None else a * b)
        out[(p, q)] = np.bincount(lid, term, n)
    return out


def _second_moments_exact(px: _Pixels) -> dict[tuple[int, int], np.ndarray]:
    """Second-order central moments from exact integer sums.

    ``A * mu_pq = A * sum(r**p c**q) - sum(r**p) sum(c**q)`` is an integer, so a moment that is
    zero (a symmetric nucleus) is exactly zero and the orientation's branch (``mu11 == 0``,
    ``mu20 == mu02``) is decided as exact arithmetic decides it.
    """
    lid, n = px.lid, px.n
    rl = (px.rows - px.rmin[lid]).astype(np.int64)
    cl = (px.cols - px.cmin[lid]).astype(np.int64)
    area = px.area.astype(np.int64)

    def isum(v: np.ndarray) -> np.ndarray:
        # integer segment sums (exact; bincount would go through float64)
        return np.add.reduceat(v, px.starts) if v.size else np.zeros(n, np.int64)

    sr, sc = isum(rl), isum(cl)
    out = {}
    for (p, q), prod, s1, s2 in (((2, 0), rl * rl, sr, sr), ((1, 1), rl * cl, sr, sc),
                                 ((0, 2), cl * cl, sc, sc)):
        out[(p, q)] = (area * isum(prod) - s1 * s2) / area
    return out


def _hu_moments(mu: dict[tuple[int, int], np.ndarray], mu0: np.ndarray) -> list[np.ndarray]:
    """Hu's seven invariants of normalised central moments (scikit-image's formula)."""
    nu = {pq: mu[pq] / mu0 ** (sum(pq) / 2 + 1) for pq in _MOMENT_ORDERS}
    t0 = nu[(3, 0)] + nu[(1, 2)]
    t1 = nu[(2, 1)] + nu[(0, 3)]
    q0, q1 = t0 * t0, t1 * t1
    n4 = 4 * nu[(1, 1)]
    s = nu[(2, 0)] + nu[(0, 2)]
    d = nu[(2, 0)] - nu[(0, 2)]
    hu1, hu2, hu4 = s, d * d + n4 * nu[(1, 1)], q0 + q1
    hu6 = d * (q0 - q1) + n4 * t0 * t1
    t0 = t0 * (q0 - 3 * q1)
    t1 = t1 * (3 * q0 - q1)
    q0 = nu[(3, 0)] - 3 * nu[(1, 2)]
    q1 = 3 * nu[(2, 1)] - nu[(0, 3)]
    hu3 = q0 * q0 + q1 * q1
    hu5 = q0 * t0 + q1 * t1
    hu7 = q1 * t0 - q0 * t1
    return [hu1, hu2, hu3, hu4, hu5, hu6, hu7]


_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
_PERIMETER_WEIGHTS[[21, 33]] = np.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + np.sqrt(2)) / 2


def _perimeter(px: _Pixels) -> np.ndarray:
    """``skimage.measure.perimeter(mask, 4)`` of every label at once."""
    pf, p, own, wp = px.padded, px.pflat, px.own, px.wp
    interior = ((pf[p - 1] == own) & (pf[p + 1] == own)
                & (pf[p - wp] == own) & (pf[p + wp] == own))
    border = ~interior
    bp, bown = p[border], own[border]
    border_img = np.zeros_like(pf)
    border_img[bp] = bown
    n4 = sum((border_img[bp + o] == bown).astype(np.intp) for o in (-1, 1, -wp, wp))
    nd = sum((border_img[bp + o] == bown).astype(np.intp)
             for o in (-wp - 1, -wp + 1, wp - 1, wp + 1))
    weight = _PERIMETER_WEIGHTS[1 + 2 * n4 + 10 * nd]
    return np.bincount(px.lid[border], weight, px.n)


def _convex_area(px: _Pixels) -> np.ndarray:
    """Pixel count of ``skimage.morphology.convex_hull_image`` of every label.

    scikit-image takes the hull of the pixel edge midpoints and keeps the pixel centres inside
    it or on its border. In doubled coordinates (Y = 2 row, X = 2 col) every midpoint is an
    integer point; on each half-row level Y only the leftmost and rightmost midpoints matter.
    The hull's left side is the convex minorant of the leftmost X over Y (the right side the
    same, mirrored); both are built together for all labels with a monotone-chain stack that
    advances one level per step, then evaluated exactly (integers) at each pixel row.
    """
    n, lid, rows, cols = px.n, px.lid, px.rows, px.cols
    # Row extremes: pixels are grouped by label and in raster order inside a label.
    key = lid * px.h + rows
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    last = np.r_[first[1:] - 1, key.size - 1]
    gl, grow = lid[first], rows[first]
    left, right = cols[first], cols[last]
    height = px.rmax - px.rmin + 1
    nlev = 2 * int(height.max()) + 1
    k_even = 2 * (grow - px.rmin[gl]) + 1         # level of the row's centre line
    big = np.iinfo(np.int64).max // 4
    chains = np.full((2 * n, nlev), big, dtype=np.int64)
    # left chain: minimum X; right chain: minimum of -X (mirrored)
    for half, xs, sign in ((0, left, 1), (n, right, -1)):
        ch = gl + half
        chains[ch, k_even] = sign * 2 * xs - 1
        chains[ch, k_even - 1] = np.minimum(chains[ch, k_even - 1], sign * 2 * xs)
        chains[ch, k_even + 1] = np.minimum(chains[ch, k_even + 1], sign * 2 * xs)
    present = chains != big
    stack_y = np.zeros((2 * n, nlev), dtype=np.int64)
    stack_x = np.zeros((2 * n, nlev), dtype=np.int64)
    size = np.zeros(2 * n, dtype=np.intp)
    for k in range(nlev):
        act = np.flatnonzero(present[:, k])
        if act.size == 0:
            continue
        cand = act
        while cand.size:
            cand = cand[size[cand] >= 2]
            if cand.size == 0:
                break
            s = size[cand]
            oy, ox = stack_y[cand, s - 2], stack_x[cand, s - 2]
            ay, ax = stack_y[cand, s - 1], stack_x[cand, s - 1]
            cross = (ay - oy) * (chains[cand, k] - ox) - (ax - ox) * (k - oy)
            cand = cand[cross <= 0]
            size[cand] -= 1
        stack_y[act, size[act]] = k
        stack_x[act, size[act]] = chains[act, k]
        size[act] += 1
    # Evaluate each chain at the odd levels (pixel centre lines).
    levels = np.arange(nlev)
    valid = levels[None, :] < size[:, None]
    ch_idx = np.nonzero(valid)
    vert = np.full((2 * n, nlev), -1, dtype=np.int64)
    vert[ch_idx[0], stack_y[ch_idx]] = stack_y[ch_idx]
    vx = np.zeros((2 * n, nlev), dtype=np.int64)
    vx[ch_idx[0], stack_y[ch_idx]] = stack_x[ch_idx]
    below = np.maximum.accumulate(vert, axis=1)                       # last vertex <= level
    above_src = np.where(vert >= 0, vert, nlev)
    above = np.minimum.accumulate(above_src[:, ::-1], axis=1)[:, ::-1]  # first vertex >= level
    odd = levels[1::2]
    ya, yb = below[:, odd], above[:, odd]
    inside = (ya >= 0) & (yb < nlev)
    ya_c, yb_c = np.where(inside, ya, 0), np.where(inside, yb, 0)
    rr = np.arange(2 * n)[:, None]
    xa, xb = vx[rr, ya_c], vx[rr, yb_c]
    den = np.where(yb_c > ya_c, yb_c - ya_c, 1)
    num = xa * den + (odd[None, :] - ya_c) * (xb - xa)
    bound = -((-num) // (2 * den))                                    # ceil(X / 2)
    lo, hi = bound[:n], -bound[n:]
    ok = inside[:n] & inside[n:]
    counts = np.where(ok, np.maximum(hi - lo + 1, 0), 0)
    return counts.sum(axis=1).astype(np.float64)


def _fractal_dimension(px: _Pixels, height: np.ndarray, width: np.ndarray) -> np.ndarray:
    """HistomicsTK's box-counting dimension of each label's bounding-box image."""
    n, lid = px.n, px.lid
    smaller = np.minimum(height, width)
    power = 2 ** np.floor(np.log(smaller) / np.log(2))
    top = (np.log(power) / np.log(2)).astype(np.intp)     # box sizes 2**top .. 4
    rl = px.rows - px.rmin[lid]
    cl = px.cols - px.cmin[lid]
    logs, counts_log, used = [], [], []
    for e in range(2, int(top.max()) + 1 if n else 2):
        k = 2**e
        sel = top >= e
        nbh = -(-height // k)
        nbw = -(-width // k)
        nbox = np.where(sel, nbh * nbw, 0)
        offset = np.concatenate([[0], np.cumsum(nbox)[:-1]])
        pix = sel[lid]
        box = offset[lid[pix]] + (rl[pix] // k) * nbw[lid[pix]] + cl[pix] // k
        filled = np.bincount(box, minlength=int(nbox.sum()))
        partial = (filled > 0) & (filled < k * k)
        owner = np.repeat(np.arange(n), nbox)
        count = np.bincount(owner, partial.astype(np.float64), n)
        with np.errstate(divide="ignore"):
            counts_log.append(np.where(sel, np.log(count), 0.0))
        logs.append(np.full(n, np.log(k)))
        used.append(sel)
    fd = np.zeros(n)
    if not used:
        return fd
    x, y, m = np.array(logs), np.array(counts_log), np.array(used)
    npts = m.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        xm = np.where(m, x, 0).sum(0) / npts
        ym = np.where(m, y, 0).sum(0) / npts
        sxy = np.where(m, (x - xm) * (y - ym), 0).sum(0)
        sxx = np.where(m, (x - xm) ** 2, 0).sum(0)
        slope = np.where(npts >= 2, sxy / sxx, 0.0)
        # One box size: np.polyfit's minimum-norm answer, log(count) / (2 log(size)).
        one = npts == 1
        slope[one] = (y[0] / (2 * x[0]))[one] if one.any() else slope[one]
    # log(0) (no partial box) makes np.polyfit return NaN, and so do we.
    nan = (np.where(m, np.isinf(y), False)).any(axis=0)
    fd = np.where(npts > 0, -slope, 0.0)
    fd[nan] = np.nan
    return fd


# ----------------------------------------------------------------------------- FSD

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


def _trace_boundaries(px: _Pixels) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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


def _fsd_features(px: _Pixels) -> dict[str, np.ndarray]:
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
    return {name: out[:, i] for i, name in enumerate(_FSD)}


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


# ----------------------------------------------------------------------------- intensity


def _moments_stats(xp: ModuleType, mean: Any, m2: Any, m3: Any, m4: Any) -> tuple[Any, Any]:
    """scipy.stats skew and (Fisher) kurtosis from central moments; NaN for constant data."""
    eps = np.finfo(np.float64).eps
    zero = m2 <= (eps * mean) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = xp.where(zero, xp.nan, m3 / m2**1.5)
        kurt = xp.where(zero, xp.nan, m4 / m2**2.0) - 3
    return skew, kurt


def _hist_bins(xp: ModuleType, values: Any, first: Any, last: Any) -> Any:
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


def _hist_energy_entropy(xp: ModuleType, hist: Any, total: Any) -> tuple[Any, Any]:
    """HistomicsTK's HistEnergy and HistEntropy (scipy.stats.entropy) of per-label histograms."""
    prob = hist / total[:, None]
    pk = prob / prob.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        entr = xp.where(pk > 0, -pk * xp.log(xp.where(pk > 0, pk, 1.0)), 0.0)
    return (prob**2).sum(axis=1), entr.sum(axis=1)


def _value_at_rank(xp: ModuleType, cum: Any, rank: Any) -> Any:
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


def _intensity_features(dev: _DevicePixels, image: Any) -> dict[str, Any]:
    """HistomicsTK ``compute_intensity_features`` of a uint8 image, from 256-bin histograms."""
    xp, n, lid = dev.xp, dev.n, dev.lid
    values = image.ravel()[dev.flat].astype(xp.intp)
    hist = xp.bincount(lid * 256 + values, minlength=n * 256).reshape(n, 256)
    total = dev.area
    levels = xp.arange(256, dtype=xp.float64)
    occupied = hist > 0
    vmin = xp.argmax(occupied, axis=1).astype(xp.float64)
    vmax = (255 - xp.argmax(occupied[:, ::-1], axis=1)).astype(xp.float64)
    histf = hist.astype(xp.float64)
    mean = (histf @ levels) / total
    dev_ = levels[None, :] - mean[:, None]
    m2 = (histf * dev_**2).sum(axis=1) / total
    m3 = (histf * dev_**3).sum(axis=1) / total
    m4 = (histf * dev_**4).sum(axis=1) / total
    skew, kurt = _moments_stats(xp, mean, m2, m3, m4)
    cum = xp.cumsum(hist, axis=1)
    cnt = xp.asarray(dev.area.astype(xp.int64))
    # ranks: median (two middle), 25th and 75th percentile neighbours (numpy 'linear')
    q25, q75 = (cnt - 1) * 0.25, (cnt - 1) * 0.75
    lo25, lo75 = xp.floor(q25).astype(xp.int64), xp.floor(q75).astype(xp.int64)
    ranks = xp.stack([(cnt - 1) // 2, cnt // 2, lo25, xp.minimum(lo25 + 1, cnt - 1),
                      lo75, xp.minimum(lo75 + 1, cnt - 1)], axis=1)
    at = _value_at_rank(xp, cum, ranks).astype(xp.float64)
    median = (at[:, 0] + at[:, 1]) / 2
    p25 = _lerp(xp, at[:, 2], at[:, 3], q25 - lo25)
    p75 = _lerp(xp, at[:, 4], at[:, 5], q75 - lo75)
    # MAD: median of |v - median| from a histogram of 2|v - median| (integers).
    dev2 = xp.abs(2 * levels[None, :] - 2 * median[:, None]).astype(xp.intp)     # 0..510
    rows = xp.arange(n)[:, None]
    dhist = xp.bincount((rows * 511 + dev2).ravel(), weights=histf.ravel(),
                        minlength=n * 511).reshape(n, 511)
    dcum = xp.cumsum(dhist, axis=1)
    mad_at = _value_at_rank(xp, dcum, ranks[:, :2].astype(xp.float64)).astype(xp.float64) / 2
    mad = (mad_at[:, 0] + mad_at[:, 1]) / 2
    # levels outside [min, max] hold no pixels; clip their (meaningless) bins
    bins = xp.clip(_hist_bins(xp, levels[None, :], vmin[:, None], vmax[:, None]),
                   0, HIST_BINS - 1)
    h10 = xp.bincount((rows * HIST_BINS + bins).ravel(), weights=histf.ravel(),
                      minlength=n * HIST_BINS).reshape(n, HIST_BINS)
    energy, entropy = _hist_energy_entropy(xp, h10, total)
    std = xp.sqrt(m2)
    return {
        "Intensity.Min": vmin, "Intensity.Max": vmax, "Intensity.Mean": mean,
        "Intensity.Median": median, "Intensity.MeanMedianDiff": mean - median,
        "Intensity.Std": std, "Intensity.IQR": p75 - p25, "Intensity.MAD": mad,
        "Intensity.Skewness": skew, "Intensity.Kurtosis": kurt,
        "Intensity.HistEnergy": energy, "Intensity.HistEntropy": entropy,
    }


def _lerp(xp: ModuleType, a: Any, b: Any, t: Any) -> Any:
    """numpy's percentile interpolation (``_lerp``)."""
    diff = b - a
    return xp.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


# ----------------------------------------------------------------------------- gradient


def _canny(image: Any, xp: ModuleType) -> np.ndarray:
    """scikit-image Canny with its defaults (cuCIM's on the GPU when installed)."""
    if xp is not np:
        try:
            from cucim.skimage.feature import canny as gpu_canny

            return _to_host(gpu_canny(image))
        except ImportError:
            pass
    from skimage.feature import canny

    return canny(_to_host(image))


def _gradient_features(px: _Pixels, dev: _DevicePixels, image: Any) -> dict[str, Any]:
    """HistomicsTK ``compute_gradient_features``: np.gradient magnitude and Canny edges."""
    xp, n, lid = dev.xp, dev.n, dev.lid
    gy, gx = xp.gradient(image.astype(xp.float64))
    mag = xp.sqrt(gy**2 + gx**2)
    g = mag.ravel()[dev.flat]
    total = dev.area
    mean = xp.bincount(lid, g, n) / total
    d = g - mean[lid]
    m2 = xp.bincount(lid, d**2, n) / total
    m3 = xp.bincount(lid, d**3, n) / total
    m4 = xp.bincount(lid, d**4, n) / total
    skew, kurt = _moments_stats(xp, mean, m2, m3, m4)
    gmin, gmax = _segment_min_max(xp, g, px)
    bins = _hist_bins(xp, g, gmin[lid], gmax[lid])
    h10 = xp.bincount(lid * HIST_BINS + bins, minlength=n * HIST_BINS).reshape(n, HIST_BINS)
    energy, entropy = _hist_energy_entropy(xp, h10.astype(xp.float64), total)
    edges = _canny(image, xp)
    canny_sum = np.bincount(px.lid, edges.ravel()[px.flat].astype(np.float64), n)
    return {
        "Gradient.Mag.Mean": mean, "Gradient.Mag.Std": xp.sqrt(m2),
        "Gradient.Mag.Skewness": skew, "Gradient.Mag.Kurtosis": kurt,
        "Gradient.Mag.HistEntropy": entropy, "Gradient.Mag.HistEnergy": energy,
        "Gradient.Canny.Sum": canny_sum, "Gradient.Canny.Mean": canny_sum / px.area,
    }


def _segment_min_max(xp: ModuleType, values: Any, px: _Pixels) -> tuple[Any, Any]:
    if xp is np:
        return (np.minimum.reduceat(values, px.starts), np.maximum.reduceat(values, px.starts))
    from cupyx.scipy import ndimage as cndi

    lab = xp.asarray(px.lid + 1)
    index = xp.arange(1, px.n + 1)
    return cndi.minimum(values, lab, index), cndi.maximum(values, lab, index)


# ----------------------------------------------------------------------------- Haralick


def _glcm_lut() -> np.ndarray:
    """graycomatrixext's quantisation of uint8 values to GLCM_LEVELS levels."""
    v = np.arange(256).astype("float")
    v -= 0
    v /= float(255 - 0)
    v *= GLCM_LEVELS - 1
    return np.round(v).astype("int")


_GLCM_LUT = _glcm_lut()


def _expand(xp: ModuleType, counts: Any) -> Any:
    """``repeat(arange(len(counts)), counts)`` (CuPy's repeat takes no array of counts)."""
    if xp is np:
        return np.repeat(np.arange(counts.size), counts)
    total = int(counts.sum())
    return xp.searchsorted(xp.cumsum(counts), xp.arange(total), side="right")


#: Nuclei per GLCM batch: bounds the dense count array to 4 * 512 * 32 * 32 entries (16 MB).
_GLCM_BATCH = 512


def _haralick_features(px: _Pixels, dev: _DevicePixels, image: Any) -> dict[str, Any]:
    """HistomicsTK ``compute_haralick_features`` (32 levels, 4 offsets, symmetric, normed).

    The GLCMs of a batch of nuclei, all offsets, come from one ``bincount`` over
    ``(offset, nucleus, level_i, level_j)`` codes; the features are then computed from the
    non-zero GLCM entries only (sparse), where all their terms are.
    """
    xp = dev.xp
    level = xp.asarray(_GLCM_LUT)[image.ravel().astype(xp.intp)]
    feats = xp.concatenate([_haralick_batch(px, level, xp, lo, min(lo + _GLCM_BATCH, px.n))
                            for lo in range(0, px.n, _GLCM_BATCH)], axis=1)
    mean = feats.mean(axis=0)
    rng = feats.max(axis=0) - feats.min(axis=0)
    out = {}
    for i, name in enumerate(_HARALICK):
        out[f"Haralick.{name}.Mean"] = mean[:, i]
        out[f"Haralick.{name}.Range"] = rng[:, i]
    return out


def _haralick_batch(px: _Pixels, level: Any, xp: ModuleType, lo: int, hi: int) -> Any:
    """Haralick features (offsets x nuclei x 13) of nuclei ``lo..hi-1``."""
    n, lv = hi - lo, GLCM_LEVELS
    # Window of each nucleus: bbox rows rmin..rmax+1, cols cmin..cmax+1, inside the image.
    rmin, cmin = px.rmin[lo:hi].astype(np.int64), px.cmin[lo:hi].astype(np.int64)
    hgt = np.minimum(px.rmax[lo:hi] + 2, px.h) - rmin
    wid = np.minimum(px.cmax[lo:hi] + 2, px.w) - cmin
    sizes = hgt * wid
    owner = np.repeat(np.arange(n, dtype=np.int64), sizes)
    local = np.arange(owner.size, dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    wid_o = wid[owner]
    lr = local // wid_o
    lc = local - lr * wid_o
    flat = np.repeat(rmin * px.w + cmin, sizes) + lr * px.w + lc
    last_row = lr == hgt[owner] - 1
    last_col = lc == wid_o - 1
    invalid = {(0, 1): last_col, (1, 0): last_row, (1, 1): last_row | last_col,
               (1, -1): last_row | (lc == 0)}
    m = len(GLCM_OFFSETS) * n
    trash = m * lv * lv                                 # pairs leaving the window land here
    flat_d = xp.asarray(flat)
    q = level[flat_d] * lv
    base = xp.asarray(owner * (lv * lv))
    codes = []
    for k, (dr, dc) in enumerate(GLCM_OFFSETS):
        neighbour = level[xp.clip(flat_d + (dr * px.w + dc), 0, level.size - 1)]
        code = base + (k * n * lv * lv) + q + neighbour
        codes.append(xp.where(xp.asarray(invalid[(dr, dc)]), trash, code))
    counts = xp.bincount(xp.concatenate(codes), minlength=trash + 1)[:trash]
    counts = counts.reshape(m, lv, lv)
    counts = (counts + counts.transpose(0, 2, 1)).ravel()   # symmetric GLCMs
    return _haralick_sparse(xp, counts, m, lv).reshape(len(GLCM_OFFSETS), n, -1)


def _haralick_sparse(xp: ModuleType, counts: Any, m: int, lv: int) -> Any:
    """The 13 Haralick features of ``m`` GLCMs given as flat counts (m * lv * lv).

    HistomicsTK's definitions and arithmetic: marginals summed in the same order as its
    Cython loop, entropies with ``log2(p + 1e-5)``, ``DifferenceVariance = var(p_x-y)``,
    ``Correlation = 0`` when the variance is 0.
    """
    nz = xp.flatnonzero(counts)
    gi = nz // lv                          # g * lv + i
    g = gi // lv
    j = nz - gi * lv
    i = gi - g * lv
    gj = g * lv + j
    c = counts[nz].astype(xp.float64)
    tot = xp.bincount(g, c, m)
    p = c / tot[g]

    def per_glcm(values: Any) -> Any:
        return xp.bincount(g, values, m)

    px_ = xp.bincount(gi, p, m * lv).reshape(m, lv)
    py_ = xp.bincount(gj, p, m * lv).reshape(m, lv)
    p_plus = xp.bincount(g * (2 * lv - 1) + i + j, p, m * (2 * lv - 1)).reshape(m, -1)
    p_minus = xp.bincount(g * lv + xp.abs(i - j), p, m * lv).reshape(m, lv)
    n_minus = xp.arange(lv, dtype=xp.float64)
    n_plus = xp.arange(2 * lv - 1, dtype=xp.float64)
    fi, fj = i.astype(xp.float64), j.astype(xp.float64)
    asm = per_glcm(p * p)
    contrast = p_minus @ n_minus**2
    meanx = px_ @ n_minus
    variance = px_ @ n_minus**2 - meanx**2
    exy = per_glcm(fi * fj * p)
    idm = per_glcm(p / (1 + (fi - fj) ** 2))
    sum_avg = p_plus @ n_plus
    sum_var = p_plus @ n_plus**2 - sum_avg**2
    entropy = -per_glcm(p * xp.log2(p + _E))

    def dense_entropy(prob: Any) -> Any:
        return -(prob * xp.log2(prob + _E)).sum(axis=-1)

    sum_ent = dense_entropy(p_plus)
    diff_var = p_minus.var(axis=-1)
    diff_ent = dense_entropy(p_minus)
    hx, hy = dense_entropy(px_), dense_entropy(py_)
    hxy1 = -per_glcm(p * xp.log2(px_.ravel()[gi] * py_.ravel()[gj] + _E))
    # HXY2 runs over all (i, j) with p_x(i) p_y(j) > 0. The GLCMs are symmetric, so
    # p_x == p_y: take the pairs i <= j of occupied levels, off-diagonal ones twice.
    occ = xp.flatnonzero(px_.ravel() > 0)
    occ_g = occ // lv
    per = xp.bincount(occ_g, minlength=m)
    rank = xp.arange(occ.size) - (xp.cumsum(per) - per)[occ_g]     # position inside its GLCM
    reach = per[occ_g] - rank                                      # levels from here to the end
    first = _expand(xp, reach)
    second = first + xp.arange(first.size) - (xp.cumsum(reach) - reach)[first]
    marg = px_.ravel()[occ]
    pxy = marg[first] * marg[second]
    weight = xp.where(first == second, 1.0, 2.0)
    hxy2 = -xp.bincount(occ_g[first], weight * (pxy * xp.log2(pxy + _E)), m)
    with np.errstate(divide="ignore", invalid="ignore"):
        correlation = xp.where(variance != 0, (exy - meanx**2) / variance, 0.0)
        imc1 = (entropy - hxy1) / xp.maximum(hx, hy)
        imc2 = xp.sqrt(xp.maximum(0, 1 - xp.exp(-2.0 * (hxy2 - entropy))))
    return xp.stack([asm, contrast, correlation, variance, idm, sum_avg, sum_var, sum_ent,
                     entropy, diff_var, diff_ent, imc1, imc2], axis=-1)
