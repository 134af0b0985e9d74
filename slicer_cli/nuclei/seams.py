"""Seam merge by ownership: a tile keeps a nucleus only if its centroid lies in its core.

Cores of the tile plan partition the region, and the overlap exceeds the largest nucleus,
so every nucleus is kept exactly once, whole, by the one tile that sees it with context on
all sides (stardist's ``Block.is_responsible`` idea).
"""
from __future__ import annotations

import numpy as np

from .records import Tile


def keep_owned(centroid_x: np.ndarray, centroid_y: np.ndarray, tile: Tile) -> np.ndarray:
    """Boolean mask of the nuclei (base-pixel centroids) that ``tile`` owns.

    Cores are half-open boxes ``[core_x0, core_x1) x [core_y0, core_y1)``, so a centroid on
    a seam belongs to exactly one tile.
    """
    return ((centroid_x >= tile.core_x0) & (centroid_x < tile.core_x1)
            & (centroid_y >= tile.core_y0) & (centroid_y < tile.core_y1))
