"""Gradient statistics: ``np.gradient`` magnitude and Canny edges over each nucleus."""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..arrays import to_host
from .pixels import DevicePixels, Pixels
from .stats import HIST_BINS, hist_bins, hist_energy_entropy, moments_stats, segment_min_max

GRADIENT = ["Mag.Mean", "Mag.Std", "Mag.Skewness", "Mag.Kurtosis", "Mag.HistEntropy",
             "Mag.HistEnergy", "Canny.Sum", "Canny.Mean"]


def _canny(image: Any, xp: ModuleType) -> np.ndarray:
    """scikit-image Canny with its defaults (cuCIM's on the GPU when installed)."""
    if xp is not np:
        try:
            from cucim.skimage.feature import canny as gpu_canny

            return to_host(gpu_canny(image))
        except ImportError:
            pass
    from skimage.feature import canny

    return canny(to_host(image))


def measure_gradient(px: Pixels, dev: DevicePixels, image: Any) -> dict[str, Any]:
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
    skew, kurt = moments_stats(xp, mean, m2, m3, m4)
    gmin, gmax = segment_min_max(xp, g, px)
    bins = hist_bins(xp, g, gmin[lid], gmax[lid])
    h10 = xp.bincount(lid * HIST_BINS + bins, minlength=n * HIST_BINS).reshape(n, HIST_BINS)
    energy, entropy = hist_energy_entropy(xp, h10.astype(xp.float64), total)
    edges = _canny(image, xp)
    canny_sum = np.bincount(px.lid, edges.ravel()[px.flat].astype(np.float64), n)
    return {
        "Gradient.Mag.Mean": mean, "Gradient.Mag.Std": xp.sqrt(m2),
        "Gradient.Mag.Skewness": skew, "Gradient.Mag.Kurtosis": kurt,
        "Gradient.Mag.HistEntropy": entropy, "Gradient.Mag.HistEnergy": energy,
        "Gradient.Canny.Sum": canny_sum, "Gradient.Canny.Mean": canny_sum / px.area,
    }
