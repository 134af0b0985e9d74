"""The pixel table every family reads: foreground pixels grouped by nucleus, on the host
and (per-pixel arrays) on the array module; input checks and empty frames."""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd


def validate_inputs(labels: Any, image_rgb: Any) -> None:
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


def empty_frame(columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
    return frame.astype({"Label": "int64", "Identifier.Xmin": "int64", "Identifier.Ymin": "int64",
                         "Identifier.Xmax": "int64", "Identifier.Ymax": "int64"})


def prefixed(prefix: str, cols: dict[str, Any]) -> dict[str, Any]:
    return {prefix + k: v for k, v in cols.items()}


class Pixels:
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


class DevicePixels:
    """The pixel table's per-pixel arrays on the array module ``xp``."""

    def __init__(self, px: Pixels, xp: ModuleType) -> None:
        self.xp = xp
        self.n = px.n
        self.flat = xp.asarray(px.flat)
        self.lid = xp.asarray(px.lid)
        self.area = xp.asarray(px.area.astype(np.float64))
