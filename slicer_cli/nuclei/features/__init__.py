"""Measure: HistomicsTK nucleus features of one tile, vectorised over nuclei.

One module per family, as HistomicsTK's ``features`` package: ``morphometry`` (identifiers,
size, shape, Hu moments), ``fourier`` (Fourier shape descriptors), ``intensity``,
``gradient``, ``haralick`` and ``cytoplasm``; ``pixels`` (the pixel table they share),
``deconvolution`` (the hematoxylin/eosin channels) and ``stats`` (shared segment statistics).

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

from ..arrays import array_module, to_host
from .cytoplasm import CYTOPLASM_WIDTH, measure_cytoplasm
from .deconvolution import stain_channel
from .fourier import FSD_BINS, FSD_COLUMNS, FSD_POINTS, measure_fsd
from .gradient import GRADIENT, measure_gradient
from .haralick import GLCM_LEVELS, GLCM_OFFSETS, HARALICK, measure_haralick
from .intensity import INTENSITY, measure_intensity
from .morphometry import IDENTIFIER, MORPHOMETRY, measure_morphometry
from .pixels import DevicePixels, Pixels, empty_frame, prefixed, validate_inputs
from .stats import HIST_BINS

__all__ = ["COLUMNS", "COLUMNS_WITH_CYTOPLASM", "CYTOPLASM_WIDTH", "FSD_BINS", "FSD_POINTS",
           "GLCM_LEVELS", "GLCM_OFFSETS", "HIST_BINS", "compute_features"]


def _ordered_columns(cytoplasm: bool) -> list[str]:
    """Columns in the order of HistomicsTK's compute_nuclei_features."""
    def family(region: str, names: list[str], kind: str) -> list[str]:
        return [f"{region}.{kind}.{c}" for c in names]

    haralick = [f"{c}.{s}" for c in HARALICK for s in ("Mean", "Range")]
    cols = (["Label"] + IDENTIFIER + MORPHOMETRY + FSD_COLUMNS
            + family("Nucleus", INTENSITY, "Intensity")
            + [f"Nucleus.Band{b}.Intensity.{c}" for b in range(3) for c in INTENSITY])
    cols += family("Cytoplasm", INTENSITY, "Intensity") if cytoplasm else []
    cols += family("Nucleus", GRADIENT, "Gradient")
    cols += family("Cytoplasm", GRADIENT, "Gradient") if cytoplasm else []
    cols += family("Nucleus", haralick, "Haralick")
    cols += family("Cytoplasm", haralick, "Haralick") if cytoplasm else []
    return cols


#: Every column, in HistomicsTK's order (``cytoplasm=False``).
COLUMNS: list[str] = _ordered_columns(cytoplasm=False)


#: Every column with ``cytoplasm=True``.
COLUMNS_WITH_CYTOPLASM: list[str] = _ordered_columns(cytoplasm=True)


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
    validate_inputs(labels, image_rgb)
    xp = xp or array_module(labels, image_rgb)  # CuPy if either input lives on the GPU
    columns = COLUMNS_WITH_CYTOPLASM if cytoplasm else COLUMNS
    lab = to_host(labels)
    if lab.size and int(lab.min()) < 0:
        raise ValueError("labels must be non-negative (0 background, 1..n nuclei)")
    n = int(lab.max()) if lab.size else 0
    if n == 0:
        return empty_frame(columns)
    px = Pixels(lab, n)
    rgb = xp.asarray(to_host(image_rgb)) if xp is np else xp.asarray(image_rgb)
    hema = stain_channel(rgb, xp, 0)
    dev = DevicePixels(px, xp)

    cols: dict[str, Any] = {"Label": np.arange(1, n + 1, dtype=np.int64)}
    cols.update(measure_morphometry(px, to_host(hema)))
    cols.update(measure_fsd(px))
    cols.update(prefixed("Nucleus.", measure_intensity(dev, hema)))
    for band in range(3):
        cols.update(prefixed(f"Nucleus.Band{band}.",
                              measure_intensity(dev, xp.ascontiguousarray(rgb[..., band]))))
    cols.update(prefixed("Nucleus.", measure_gradient(px, dev, hema)))
    cols.update(prefixed("Nucleus.", measure_haralick(px, dev, hema)))
    if cytoplasm:
        cols.update(measure_cytoplasm(lab, stain_channel(rgb, xp, 1), xp))
    return pd.DataFrame({name: to_host(cols[name]) for name in columns})
