"""Macenko stain normalisation (NumPy reference; the same code runs on CuPy arrays).

Macenko et al., "A method for normalizing histology slides for quantitative analysis",
ISBI 2009: optical density -> plane of the two main eigenvectors -> robust extreme angles
give the H and E vectors -> concentrations -> rebuilt with reference vectors and maxima.
"""
from __future__ import annotations

import numpy as np

from .arrays import array_module

#: Reference H&E stain vectors (columns, OD space) and 99th-percentile concentrations,
#: measured with this module on the training image hgsc_nest.jpg
#: (``tests/test_stain.py`` re-derives them).
REFERENCE_STAINS = np.array([[0.5748, 0.2879],
                             [0.7807, 0.9455],
                             [0.2454, 0.1523]])
REFERENCE_MAX_CONC = np.array([2.4450, 3.2607])


def estimate_stains(rgb, io: float = 240.0, beta: float = 0.15, alpha: float = 1.0):
    """Estimate the H&E stain matrix (3x2, OD space) and 99th-percentile concentrations.

    Returns ``None`` when the image holds too little stained tissue to estimate from.
    """
    xp = array_module(rgb)
    od = -xp.log((rgb.reshape(-1, 3).astype(xp.float64) + 1.0) / io)
    od_hat = od[xp.all(od > beta, axis=1)]
    if od_hat.shape[0] < 100:
        return None
    _, vecs = xp.linalg.eigh(xp.cov(od_hat.T))
    plane = vecs[:, 1:3]
    phi = xp.arctan2(od_hat @ plane[:, 1], od_hat @ plane[:, 0])
    lo, hi = xp.percentile(phi, alpha), xp.percentile(phi, 100 - alpha)
    v1 = plane @ xp.stack([xp.cos(lo), xp.sin(lo)])
    v2 = plane @ xp.stack([xp.cos(hi), xp.sin(hi)])
    # hematoxylin first: the vector with the larger red-channel OD
    stains = xp.stack([v1, v2], axis=1) if v1[0] > v2[0] else xp.stack([v2, v1], axis=1)
    stains = stains * xp.sign(stains.sum(axis=0, keepdims=True))
    conc = xp.linalg.lstsq(stains, od.T, rcond=None)[0]
    max_conc = xp.stack([xp.percentile(conc[0], 99), xp.percentile(conc[1], 99)])
    return stains, max_conc


def normalize_stain(rgb, io: float = 240.0, reference_stains=REFERENCE_STAINS,
                    reference_max_conc=REFERENCE_MAX_CONC):
    """Map a uint8 RGB tile onto the reference stain vectors and concentrations.

    Works on NumPy or CuPy arrays (same code).  A tile with too little tissue to estimate
    its stains is returned unchanged.
    """
    xp = array_module(rgb)
    est = estimate_stains(rgb, io=io)
    if est is None:
        return rgb
    stains, max_conc = est
    h, w, _ = rgb.shape
    od = -xp.log((rgb.reshape(-1, 3).astype(xp.float64) + 1.0) / io)
    conc = xp.linalg.lstsq(stains, od.T, rcond=None)[0]
    conc *= (xp.asarray(reference_max_conc) / max_conc)[:, None]
    out = io * xp.exp(-(xp.asarray(reference_stains) @ conc))
    return xp.clip(out.T.reshape(h, w, 3), 0, 255).astype(xp.uint8)
