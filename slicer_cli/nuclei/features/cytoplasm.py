"""Cytoplasm: intensity, gradient and Haralick features of the ring around each nucleus."""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..arrays import to_host
from .gradient import GRADIENT, measure_gradient
from .haralick import HARALICK, measure_haralick
from .intensity import INTENSITY, measure_intensity
from .pixels import DevicePixels, Pixels

#: Width (px) of the ring around a nucleus taken as its cytoplasm (HistomicsTK's cyto_width).
CYTOPLASM_WIDTH = 8


def measure_cytoplasm(lab: np.ndarray, eosin: Any, xp: ModuleType) -> dict[str, Any]:
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
        px = Pixels(remap[ring], m)
        dev = DevicePixels(px, xp)
        parts = (measure_intensity(dev, eosin), measure_gradient(px, dev, eosin),
                 measure_haralick(px, dev, eosin))
        for part in parts:
            for name, values in part.items():
                full = np.zeros(n)
                full[present] = to_host(values)
                out["Cytoplasm." + name] = full
    else:
        out = {f"Cytoplasm.{name}": np.zeros(n) for name in cytoplasm_names()}
    return out


def cytoplasm_names() -> list[str]:
    """The feature names of a ring (without the ``Cytoplasm.`` prefix), in family order."""
    return ([f"Intensity.{c}" for c in INTENSITY] + [f"Gradient.{c}" for c in GRADIENT]
            + [f"Haralick.{c}.{s}" for c in HARALICK for s in ("Mean", "Range")])
