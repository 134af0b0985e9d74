"""Intensity statistics of a uint8 image over each nucleus, from 256-bin histograms."""
from __future__ import annotations

from typing import Any

from .pixels import DevicePixels
from .stats import HIST_BINS, hist_bins, hist_energy_entropy, lerp, moments_stats, value_at_rank

INTENSITY = ["Min", "Max", "Mean", "Median", "MeanMedianDiff", "Std", "IQR", "MAD",
              "Skewness", "Kurtosis", "HistEnergy", "HistEntropy"]


def measure_intensity(dev: DevicePixels, image: Any) -> dict[str, Any]:
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
    skew, kurt = moments_stats(xp, mean, m2, m3, m4)
    cum = xp.cumsum(hist, axis=1)
    cnt = xp.asarray(dev.area.astype(xp.int64))
    # ranks: median (two middle), 25th and 75th percentile neighbours (numpy 'linear')
    q25, q75 = (cnt - 1) * 0.25, (cnt - 1) * 0.75
    lo25, lo75 = xp.floor(q25).astype(xp.int64), xp.floor(q75).astype(xp.int64)
    ranks = xp.stack([(cnt - 1) // 2, cnt // 2, lo25, xp.minimum(lo25 + 1, cnt - 1),
                      lo75, xp.minimum(lo75 + 1, cnt - 1)], axis=1)
    at = value_at_rank(xp, cum, ranks).astype(xp.float64)
    median = (at[:, 0] + at[:, 1]) / 2
    p25 = lerp(xp, at[:, 2], at[:, 3], q25 - lo25)
    p75 = lerp(xp, at[:, 4], at[:, 5], q75 - lo75)
    # MAD: median of |v - median| from a histogram of 2|v - median| (integers).
    dev2 = xp.abs(2 * levels[None, :] - 2 * median[:, None]).astype(xp.intp)     # 0..510
    rows = xp.arange(n)[:, None]
    dhist = xp.bincount((rows * 511 + dev2).ravel(), weights=histf.ravel(),
                        minlength=n * 511).reshape(n, 511)
    dcum = xp.cumsum(dhist, axis=1)
    mad_at = value_at_rank(xp, dcum, ranks[:, :2].astype(xp.float64)).astype(xp.float64) / 2
    mad = (mad_at[:, 0] + mad_at[:, 1]) / 2
    # levels outside [min, max] hold no pixels; clip their (meaningless) bins
    bins = xp.clip(hist_bins(xp, levels[None, :], vmin[:, None], vmax[:, None]),
                   0, HIST_BINS - 1)
    h10 = xp.bincount((rows * HIST_BINS + bins).ravel(), weights=histf.ravel(),
                      minlength=n * HIST_BINS).reshape(n, HIST_BINS)
    energy, entropy = hist_energy_entropy(xp, h10, total)
    std = xp.sqrt(m2)
    return {
        "Intensity.Min": vmin, "Intensity.Max": vmax, "Intensity.Mean": mean,
        "Intensity.Median": median, "Intensity.MeanMedianDiff": mean - median,
        "Intensity.Std": std, "Intensity.IQR": p75 - p25, "Intensity.MAD": mad,
        "Intensity.Skewness": skew, "Intensity.Kurtosis": kurt,
        "Intensity.HistEnergy": energy, "Intensity.HistEntropy": entropy,
    }
