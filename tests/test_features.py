"""Nucleus features: parity with HistomicsTK's compute_nuclei_features on real nuclei."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from skimage.segmentation import clear_border, relabel_sequential

from slicer_cli.nuclei.features import (
    COLUMNS,
    COLUMNS_WITH_CYTOPLASM,
    HIST_BINS,
    compute_features,
)

# --------------------------------------------------------------------------- tolerances
# Every compared column must satisfy |ours - htk| <= RTOL * |htk| + ATOL * max|htk column|,
# with NaN exactly where HistomicsTK has NaN. The scale-relative ATOL keeps tiny moments
# (Hu moments ~1e-20) honest without letting them pass trivially.
#
# Exact columns (integers, counts, order statistics of uint8 values, means of uint8 values,
# single divisions and square roots of integers): exact integer arithmetic, or one correctly
# rounded float operation on exact operands, so nothing may differ on any CPU.
EXACT = (0.0, 0.0)
#: unit roundoff of float64
U = np.finfo(np.float64).eps / 2
# Histogram energy and entropy are sums of HIST_BINS non-negative terms, and NumPy sums in an
# order that depends on the CPU's SIMD width (AVX2 vs AVX-512 differ in the last bit). A sum
# of n same-sign terms in any order is within (n - 1) u of the exact sum, relative to it; the
# probabilities pass through one such sum (normalisation) before the total, and each term
# carries a few roundings of its own (division, product, log): relative 2 n + 8 units. Where
# one bin holds nearly everything the entropy's log terms are ill-conditioned relative to the
# (tiny) entropy but not absolutely: each term errs by at most a few u times its
# probability, which sum to 1, hence an absolute (n + 8) u on the column's scale.
HIST_SUM = ((2 * HIST_BINS + 8) * U, (HIST_BINS + 8) * U)
# Float algebra summed in a different order (bincount / matmul vs. per-nucleus numpy calls):
# last-bit differences only. Measured max deviation ~1e-13 relative (kurtosis of gradients).
FLOAT = (1e-9, 1e-12)
# FSD: HistomicsTK rounds each bin to 7 decimals; a last-bit difference in the arc-length
# resampling before the rounding can flip the 7th decimal, i.e. move a value by 1e-7.
FSD = (0.0, 2e-7)


def _tolerance(column: str) -> tuple[float, float]:
    exact_prefixes = ("Label", "Identifier.", "Size.Area", "Size.ConvexHullArea",
                      "Shape.Extent", "Shape.Solidity", "Shape.EquivalentDiameter")
    exact_suffixes = ("Intensity.Min", "Intensity.Max", "Intensity.Mean", "Intensity.Median",
                      "Intensity.MeanMedianDiff", "Intensity.IQR", "Intensity.MAD",
                      "Canny.Sum", "Canny.Mean")
    if column.startswith("Shape.FSD"):
        return FSD
    if column.endswith(("HistEnergy", "HistEntropy")):
        return HIST_SUM
    if column.startswith(exact_prefixes) or column.endswith(exact_suffixes):
        return EXACT
    return FLOAT


# --------------------------------------------------------------------------- helpers


def _crop(rgb: np.ndarray, labels: np.ndarray, top: int, left: int, size: int):
    """A tile of the real image; nuclei cut by the tile edge are dropped, labels 1..n."""
    lab = clear_border(labels[top:top + size, left:left + size].copy())
    lab = relabel_sequential(lab)[0].astype(np.int32)
    return lab, np.ascontiguousarray(rgb[top:top + size, left:left + size])


def _histomicstk(lab: np.ndarray, rgb: np.ndarray, cytoplasm: bool = False) -> pd.DataFrame:
    """compute_nuclei_features called as HistomicsTK's detect_tile_nuclei calls it.

    (detect_tile_nuclei(return_fdata=True) is what the ComputeNucleiFeatures and
    NucleiClassification CLIs run after NucleiDetection's segmentation.)
    """
    htk_features = pytest.importorskip("histomicstk.features")
    from histomicstk.preprocessing.color_deconvolution import color_deconvolution, stain_color_map

    w = np.array([stain_color_map[s] for s in ("hematoxylin", "eosin", "null")]).T
    # Stains of color_deconvolution(tile, w) (I_0 left None), channels 0 and 1 passed as
    # uint8, tile_info carrying the RGB tile (-> Nucleus.Band* features)
    stains = color_deconvolution(rgb, w).Stains
    hema = stains[:, :, 0].astype(float).astype(np.uint8)
    eosin = stains[:, :, 1].astype(float).astype(np.uint8) if cytoplasm else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return htk_features.compute_nuclei_features(lab, hema, eosin, tile_info={"tile": rgb})


def _deviation(ours: pd.Series, ref: pd.Series, column: str) -> float:
    a, b = ours.to_numpy(float), ref.to_numpy(float)
    if column == "Orientation.Orientation":
        # an axis angle: +pi/2 and -pi/2 are the same axis; which one HistomicsTK reports for a
        # symmetric nucleus (mu11 == 0) depends on the sign of its rounding error
        d = np.abs(a - b)
        return np.max(np.minimum(d, np.pi - d), initial=0.0)
    return np.max(np.abs(a - b), initial=0.0)


def _assert_matches(ours: pd.DataFrame, ref: pd.DataFrame) -> dict[str, float]:
    assert list(ours.columns) == list(ref.columns)
    assert len(ours) == len(ref)
    deviations = {}
    failures = []
    for column in ref.columns:
        a, b = ours[column].to_numpy(float), ref[column].to_numpy(float)
        nan = np.isnan(b)
        if not np.array_equal(np.isnan(a), nan):
            failures.append(f"{column}: NaN at different rows")
            continue
        rtol, atol = _tolerance(column)
        scale = np.max(np.abs(b[~nan]), initial=0.0)
        dev = _deviation(ours[column][~nan], ref[column][~nan], column)
        allowed = rtol * np.abs(b[~nan]) + atol * scale
        if column == "Orientation.Orientation":
            if dev > 1e-9:
                failures.append(f"{column}: max deviation {dev:.3g}")
        elif np.any(np.abs(a[~nan] - b[~nan]) > allowed):
            failures.append(f"{column}: max deviation {dev:.3g} (rtol {rtol}, atol {atol})")
        deviations[column] = dev
    assert not failures, "\n".join(failures)
    return deviations


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tile(hgsc_rgb, hgsc_labels):
    lab, rgb = _crop(hgsc_rgb, hgsc_labels, 0, 0, 512)
    assert lab.max() > 150
    return lab, rgb


# --------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def parity(tile):
    lab, rgb = tile
    return compute_features(lab, rgb, cytoplasm=True), _histomicstk(lab, rgb, cytoplasm=True)


def test_matches_histomicstk_on_real_nuclei(parity, tile):
    ours, ref = parity
    nucleus_only = compute_features(*tile)
    deviations = _assert_matches(nucleus_only, ref[COLUMNS])
    assert len(deviations) == len(COLUMNS)  # every HistomicsTK nucleus column is reproduced
    pd.testing.assert_frame_equal(ours[COLUMNS], nucleus_only)


def test_cytoplasm_matches_histomicstk_on_real_nuclei(parity):
    ours, ref = parity
    assert list(ours.columns) == COLUMNS_WITH_CYTOPLASM
    _assert_matches(ours, ref)


@pytest.mark.parametrize("column, delta", [
    ("Size.ConvexHullArea", 1.0),                # one pixel of hull
    ("Nucleus.Intensity.Median", 0.5),
    ("Shape.FSD3", 1e-6),
    ("Nucleus.Haralick.IMC1.Mean", 1e-6),
    ("Orientation.Orientation", 1e-6),
])
def test_parity_check_detects_a_small_deviation(parity, column, delta):
    ours, ref = parity
    bad = ours.copy()
    bad.loc[7, column] += delta
    with pytest.raises(AssertionError, match=column):
        _assert_matches(bad, ref)


def test_single_nucleus_matches_histomicstk(hgsc_rgb, hgsc_labels):
    lab, rgb = _crop(hgsc_rgb, hgsc_labels, 600, 600, 96)
    keep = np.bincount(lab.ravel())[1:].argmax() + 1         # the largest nucleus only
    lab = (lab == keep).astype(np.int32)
    ours = compute_features(lab, rgb)
    assert len(ours) == 1 and ours["Label"].tolist() == [1]
    _assert_matches(ours, _histomicstk(lab, rgb))


def test_rows_follow_labels_and_tile_pixels(tile):
    lab, rgb = tile
    ours = compute_features(lab, rgb)
    n = int(lab.max())
    assert ours["Label"].tolist() == list(range(1, n + 1))
    area = np.bincount(lab.ravel())[1:]
    np.testing.assert_array_equal(ours["Size.Area"], area)
    rows, cols = np.nonzero(lab == n)
    assert ours["Identifier.Xmin"].iloc[-1] == cols.min()
    assert ours["Identifier.Ymax"].iloc[-1] == rows.max() + 1


def test_changing_one_nucleus_leaves_the_others_shape(tile):
    lab, rgb = tile
    before = compute_features(lab, rgb)
    moved = lab.copy()
    moved[moved == 1] = 0                                    # delete nucleus 1 ...
    moved = relabel_sequential(moved)[0].astype(np.int32)    # ... labels shift down by one
    after = compute_features(moved, rgb)
    shape = [c for c in COLUMNS if c.startswith(("Size.", "Shape.", "Orientation."))]
    pd.testing.assert_frame_equal(after[shape].reset_index(drop=True),
                                  before[shape].iloc[1:].reset_index(drop=True))


# --------------------------------------------------------------------------- edges


@pytest.mark.parametrize("cytoplasm, columns", [(False, COLUMNS),
                                                (True, COLUMNS_WITH_CYTOPLASM)])
def test_empty_tile_gives_empty_frame_with_all_columns(cytoplasm, columns):
    out = compute_features(np.zeros((64, 64), np.int32), np.zeros((64, 64, 3), np.uint8),
                           cytoplasm=cytoplasm)
    assert list(out.columns) == columns
    assert len(out) == 0
    assert out["Label"].dtype == np.int64


def test_enclosed_nucleus_has_zero_cytoplasm(hgsc_rgb):
    lab = np.zeros((64, 64), np.int32)
    lab[10:40, 10:40] = 1
    lab[20:30, 20:30] = 2          # inside nucleus 1: no background around it, no ring
    out = compute_features(lab, np.ascontiguousarray(hgsc_rgb[:64, :64]), cytoplasm=True)
    cyto = [c for c in COLUMNS_WITH_CYTOPLASM if c.startswith("Cytoplasm.")]
    assert (out.loc[1, cyto] == 0).all()
    assert out.loc[0, "Cytoplasm.Intensity.Mean"] > 0


def test_one_pixel_and_line_nuclei_do_not_fail():
    lab = np.zeros((32, 32), np.int32)
    lab[3, 3] = 1                  # one pixel: HistomicsTK's FSD raises IndexError here
    lab[10, 5:15] = 2              # one row
    lab[15:25, 20] = 3             # one column
    rgb = np.full((32, 32, 3), 120, np.uint8)
    out = compute_features(lab, rgb)
    assert len(out) == 3
    assert out.loc[0, [f"Shape.FSD{k}" for k in range(1, 7)]].eq(0).all()
    np.testing.assert_array_equal(out["Size.Area"], [1, 10, 10])
    np.testing.assert_array_equal(out["Size.ConvexHullArea"], [1, 10, 10])


@pytest.mark.parametrize("labels, image, message", [
    (np.zeros((8, 8), np.float32), np.zeros((8, 8, 3), np.uint8), "integer dtype"),
    (np.zeros((8, 8, 1), np.int32), np.zeros((8, 8, 3), np.uint8), "2-D integer"),
    ([[0, 1], [1, 0]], np.zeros((2, 2, 3), np.uint8), "2-D integer"),
    (np.zeros((8, 8), np.int32), np.zeros((8, 8, 3), np.float32), "uint8"),
    (np.zeros((8, 8), np.int32), np.zeros((8, 9, 3), np.uint8), "H x W x 3"),
    (np.zeros((8, 8), np.int32), np.zeros((8, 8), np.uint8), "H x W x 3"),
    (np.zeros((8, 8), np.int32), np.zeros((8, 8, 4), np.uint8), "H x W x 3"),
    (np.full((8, 8), -1, np.int32), np.zeros((8, 8, 3), np.uint8), "non-negative"),
    (np.array([[0, 2], [2, 0]], np.int32), np.zeros((2, 2, 3), np.uint8), "consecutive"),
])
def test_bad_inputs_raise_value_error(labels, image, message):
    with pytest.raises(ValueError, match=message):
        compute_features(labels, image)


# --------------------------------------------------------------------------- GPU twin


@pytest.mark.gpu
def test_cupy_matches_numpy(tile):
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() == 0:  # pragma: no cover
            pytest.skip("no CUDA device")
    except cp.cuda.runtime.CUDARuntimeError:  # pragma: no cover
        pytest.skip("no CUDA device")
    lab, rgb = tile
    ref = compute_features(lab, rgb)
    got = compute_features(cp.asarray(lab), cp.asarray(rgb))
    assert list(got.columns) == COLUMNS
    for column in COLUMNS:
        a, b = got[column].to_numpy(float), ref[column].to_numpy(float)
        if column.startswith("Nucleus.Gradient.Canny"):
            # cuCIM's Canny (when installed) is a different implementation
            assert np.nanmax(np.abs(a - b) / np.maximum(np.abs(b), 1)) < 0.2, column
        else:
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9 * np.nanmax(np.abs(b)),
                                       err_msg=column)


def test_expand_branch_for_cupy_runs_on_numpy_semantics():
    """The CuPy branch of the ragged expansion (no repeat-by-array) equals np.repeat."""
    from slicer_cli.nuclei.features.stats import expand

    from .conftest import NUMPY_TWIN

    counts = np.array([0, 3, 1, 0, 2, 0])
    np.testing.assert_array_equal(expand(NUMPY_TWIN, counts), np.repeat(np.arange(6), counts))


def test_gpu_code_path_on_the_numpy_twin_matches_numpy(tile):
    """compute_features' GPU branches (segment min/max through ndimage, ragged expansion by
    searchsorted, device pixel tables) run on the CPU through a NumPy twin: same table."""
    from .conftest import NUMPY_TWIN

    lab, rgb = tile
    ref = compute_features(lab, rgb, cytoplasm=True)
    twin = compute_features(lab, rgb, cytoplasm=True, xp=NUMPY_TWIN)
    assert list(twin.columns) == list(ref.columns)
    for column in ref.columns:
        a, b = twin[column].to_numpy(float), ref[column].to_numpy(float)
        # the only arithmetic difference is the order of a few reductions (GLCM batches are
        # the same, min/max are exact): a few units of the last place
        np.testing.assert_allclose(a, b, rtol=8 * np.finfo(float).eps, atol=0,
                                   equal_nan=True, err_msg=column)
