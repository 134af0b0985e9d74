"""HistomicsTK colour deconvolution (default H&E stain matrix, ``I_0=None``) by lookup tables."""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


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


def stain_channel(rgb: Any, xp: ModuleType, stain: int) -> Any:
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
