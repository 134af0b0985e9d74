"""Seam merge: every nucleus is kept exactly once, whole, across tile seams.

Two steps (stardist's ``Block.is_responsible`` idea, made robust to the small disagreements
between two tiles that see the same nucleus with different context):

1. **ownership** (``keep_owned``, in the worker): a tile keeps a nucleus if its centroid lies
   in the tile's core grown by a small margin. Cores partition the region and the overlap
   exceeds the largest nucleus, so every nucleus is seen whole by the tile that owns it. The
   margin closes the gap where each tile's version of a seam nucleus has its centroid just
   inside the *other* core (a nucleus nobody keeps).
2. **de-duplication** (``SeamIndex.drop_duplicates``, in the writer's process, in tile
   order): a nucleus that overlaps one already written by a neighbouring tile (its version
   had its centroid on the other side of the seam, or inside the margin) is dropped. Only
   nuclei near a core border are remembered, and only until the tile order has moved past
   them, so memory is bounded by a couple of tile rows of seam nuclei.
"""
from __future__ import annotations

import numpy as np
import shapely

from .records import Tile, TileNuclei

SEAM_MARGIN_PX = 8.0     # model pixels: ownership margin beyond the core
#: model pixels: the farthest a nucleus reaches from its centroid (more than half the
#: largest nucleus of the labelled data, 74 px at 0.5 um/px)
NUCLEUS_REACH_PX = 40
MIN_SHARED_AREA = 0.3    # overlap / smaller area above which two nuclei are one


def unused_edges(tile: Tile, margin_px: float = SEAM_MARGIN_PX,
                 reach_px: float = NUCLEUS_REACH_PX) -> tuple[int, int, int, int]:
    """Rows and columns (model pixels) at the tile's top, bottom, left and right edges that
    no nucleus it keeps reaches: beyond its core grown by the ownership margin and a
    nucleus' reach. 0 where the core meets the tile's edge (the image's edge, or a lone
    tile). The grid anchor computes no maps there when that saves a wider window
    (:func:`slicer_cli.nuclei.backends.grid_anchor.infer_anchored`)."""
    f = tile.base_per_px
    edges = ((tile.core_y0 - tile.y) / f, tile.px_height - (tile.core_y1 - tile.y) / f,
             (tile.core_x0 - tile.x) / f, tile.px_width - (tile.core_x1 - tile.x) / f)
    return tuple(max(0, int(e - margin_px - reach_px)) for e in edges)


def keep_owned(centroid_x: np.ndarray, centroid_y: np.ndarray, tile: Tile,
               margin_px: float = 0.0,
               region: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Boolean mask of the nuclei (base-pixel centroids) that ``tile`` keeps.

    Parameters
    ----------
    centroid_x, centroid_y : ndarray
        Base-pixel centroids.
    tile : Tile
        Its core is the half-open box ``[core_x0, core_x1) x [core_y0, core_y1)``.
    margin_px : float
        Base pixels the core grows by on every side (0: strict ownership, each centroid
        belongs to exactly one tile).
    region : (left, top, width, height), optional
        The analysed region: the grown core never reaches beyond it.
    """
    x0, y0 = tile.core_x0 - margin_px, tile.core_y0 - margin_px
    x1, y1 = tile.core_x1 + margin_px, tile.core_y1 + margin_px
    if region is not None:
        left, top, width, height = region
        x0, y0 = max(x0, left), max(y0, top)
        x1, y1 = min(x1, left + width), min(y1, top + height)
    return ((centroid_x >= x0) & (centroid_x < x1)
            & (centroid_y >= y0) & (centroid_y < y1))


class SeamIndex:
    """Nuclei written near core borders, to drop their second versions from neighbours.

    Parameters
    ----------
    reach_px : float
        Base pixels from a core border within which a nucleus may be seen by a neighbouring
        tile too: ownership margin plus the largest nucleus (the plan's overlap is a safe
        bound).
    min_shared : float
        Two nuclei are the same when their intersection covers more than this fraction of
        the smaller one.

    Tiles must be given in plan order (row-major, as ``plan_tiles`` makes them); nuclei whose
    outline ends above the reach of the current tile's plan row are forgotten (the row, not
    the core: a core fitted to the tissue may start lower than the next tile's).
    """

    def __init__(self, reach_px: float, min_shared: float = MIN_SHARED_AREA):
        self.reach_px = float(reach_px)
        self.min_shared = float(min_shared)
        self._bbox = np.zeros((0, 4))
        self._polygons = np.zeros(0, dtype=object)

    def __len__(self) -> int:
        return int(self._bbox.shape[0])

    def drop_duplicates(self, nuclei: TileNuclei, tile: Tile) -> np.ndarray:
        """Mask of the nuclei of ``tile`` to write (``False``: already written).

        The nuclei kept that lie near the tile's core border are remembered for the tiles
        that follow.
        """
        n = len(nuclei)
        keep = np.ones(n, dtype=bool)
        r = self.reach_px
        if len(self):  # forget what no later tile can reach (row-major order)
            alive = self._bbox[:, 3] >= tile.row_y0 - r
            self._bbox, self._polygons = self._bbox[alive], self._polygons[alive]
        if n == 0:
            return keep
        box = np.asarray(nuclei.bbox, dtype=np.float64)
        near = ((box[:, 0] < tile.core_x0 + r) | (box[:, 2] > tile.core_x1 - r)
                | (box[:, 1] < tile.core_y0 + r) | (box[:, 3] > tile.core_y1 - r))
        idx = np.flatnonzero(near)
        if idx.size == 0:
            return keep
        polygons = np.array([_polygon(nuclei.contours[i]) for i in idx], dtype=object)
        if len(self):
            # candidate pairs by bounding-box overlap, then exact shared area
            b, o = box[idx], self._bbox
            hit = ((b[:, None, 0] < o[None, :, 2]) & (o[None, :, 0] < b[:, None, 2])
                   & (b[:, None, 1] < o[None, :, 3]) & (o[None, :, 1] < b[:, None, 3]))
            new_i, old_i = np.nonzero(hit)
            if new_i.size:
                shared = shapely.area(shapely.intersection(polygons[new_i],
                                                           self._polygons[old_i]))
                smaller = np.minimum(shapely.area(polygons[new_i]),
                                     shapely.area(self._polygons[old_i]))
                same = shared > self.min_shared * np.maximum(smaller, 1e-9)
                keep[idx[np.unique(new_i[same])]] = False
        kept = keep[idx]
        self._bbox = np.concatenate([self._bbox, box[idx][kept]])
        self._polygons = np.concatenate([self._polygons, polygons[kept]])
        return keep


def _polygon(points: np.ndarray) -> shapely.Polygon:
    poly = shapely.Polygon(np.asarray(points, dtype=np.float64))
    return poly if poly.is_valid else shapely.make_valid(poly).buffer(0)
