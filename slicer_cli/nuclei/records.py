"""Small frozen records passed between stages.

Coordinates are always base-level slide pixels (level 0); units are in the names.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Tile:
    """One tile of the plan.

    ``x``/``y``/``width``/``height`` are the read window in base pixels (overlap included),
    read as ``px_width`` x ``px_height`` model pixels; ``core_*`` is the part this tile owns:
    a nucleus whose centroid lies there belongs to it. ``base_per_px`` = base pixels per
    model pixel (e.g. 2.0 for a 0.25 um/px slide read at 0.5): the tile's only scale, and
    :meth:`to_base` / :meth:`edges_to_base` its only transforms. ``row_y0`` is the top of
    the core of the plan row the tile belongs to (tiles come in row-major order of it; a core
    can be shrunk to the tissue, the row cannot).
    """

    index: int
    x: int
    y: int
    width: int
    height: int
    core_x0: int
    core_y0: int
    core_x1: int
    core_y1: int
    base_per_px: float
    px_width: int
    px_height: int
    row_y0: int

    def to_base(self, px_x, px_y):
        """Base-pixel coordinates of model-pixel *centres* ``(px_x, px_y)`` of this tile.

        Pixel centres map to pixel centres: model pixel ``i`` covers base pixels
        ``[x + i f, x + (i + 1) f)``, whose centre is ``x + (i + 0.5) f - 0.5``.
        """
        f = self.base_per_px
        return self.x + (px_x + 0.5) * f - 0.5, self.y + (px_y + 0.5) * f - 0.5

    def edges_to_base(self, px_x, px_y):
        """Base-pixel coordinates of model-pixel *edges* (bounding boxes: ``x + i f``)."""
        return self.x + px_x * self.base_per_px, self.y + px_y * self.base_per_px


@dataclass(frozen=True)
class TilePlan:
    """Where to read: the tiles with tissue, and the facts used to make them."""

    slide_path: str
    size_x: int
    size_y: int
    slide_mpp: float
    model_mpp: float
    tile_size_px: int
    overlap_px: int
    region: tuple[int, int, int, int]
    tiles: tuple[Tile, ...]
    #: base pixels per model pixel (``tiling.base_per_model_px``; every tile's ``base_per_px``)
    base_per_px: float = 1.0
    tissue_fraction: float = 1.0
    skipped_tiles: int = 0


@dataclass(frozen=True)
class TileNuclei:
    """Nuclei one tile owns, in base pixels; parallel arrays of length n.

    ``contours`` holds one ``(k, 2)`` float array of ``x, y`` vertices per nucleus (closed
    implicitly); ``features`` one row per nucleus with HistomicsTK column names.
    """

    tile_index: int
    centroid_x: np.ndarray
    centroid_y: np.ndarray
    bbox: np.ndarray              # (n, 4) left, top, right, bottom
    class_index: np.ndarray       # (n,) int
    class_prob: np.ndarray        # (n,) float
    contours: list = field(default_factory=list)
    features: object = None       # pandas.DataFrame or None

    def __len__(self) -> int:
        return int(self.centroid_x.shape[0])

    def take(self, keep: np.ndarray) -> TileNuclei:
        """The nuclei where boolean ``keep`` is true, in the same order."""
        if keep.all():
            return self
        idx = np.flatnonzero(keep)
        features = self.features
        if features is not None:
            features = features.iloc[idx].reset_index(drop=True)
        return TileNuclei(tile_index=self.tile_index, centroid_x=self.centroid_x[idx],
                          centroid_y=self.centroid_y[idx], bbox=self.bbox[idx],
                          class_index=self.class_index[idx], class_prob=self.class_prob[idx],
                          contours=[self.contours[i] for i in idx], features=features)
