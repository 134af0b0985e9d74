"""Haralick texture features from the GLCMs of every nucleus's bounding box (sparse)."""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from .pixels import DevicePixels, Pixels
from .stats import expand

#: Grey levels of the co-occurrence matrices, and their offsets (row, column).
GLCM_LEVELS = 32


GLCM_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))


HARALICK = ["ASM", "Contrast", "Correlation", "SumOfSquares", "IDM", "SumAverage",
             "SumVariance", "SumEntropy", "Entropy", "DifferenceVariance", "DifferenceEntropy",
             "IMC1", "IMC2"]


_E = 0.00001  # HistomicsTK's guard against log(0) in the Haralick entropies


def _glcm_lut() -> np.ndarray:
    """graycomatrixext's quantisation of uint8 values to GLCM_LEVELS levels."""
    v = np.arange(256).astype("float")
    v -= 0
    v /= float(255 - 0)
    v *= GLCM_LEVELS - 1
    return np.round(v).astype("int")


_GLCM_LUT = _glcm_lut()


#: Nuclei per GLCM batch: bounds the dense count array to 4 * 512 * 32 * 32 entries (16 MB).
_GLCM_BATCH = 512


def measure_haralick(px: Pixels, dev: DevicePixels, image: Any) -> dict[str, Any]:
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
    for i, name in enumerate(HARALICK):
        out[f"Haralick.{name}.Mean"] = mean[:, i]
        out[f"Haralick.{name}.Range"] = rng[:, i]
    return out


def _haralick_batch(px: Pixels, level: Any, xp: ModuleType, lo: int, hi: int) -> Any:
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
    first = expand(xp, reach)
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
