"""Tile plan: which windows of the slide to read, at which resolution, owning which core."""
from __future__ import annotations

import math

from .errors import RegionError
from .records import Tile, TilePlan
from .slide import Slide
from .tissue import TissueMask


def plan_tiles(slide: Slide, model_mpp: float, tile_size_px: int, overlap_px: int,
               region: tuple[int, int, int, int] | None = None,
               tissue: TissueMask | None = None, min_tissue_fraction: float = 0.01) -> TilePlan:
    """Cover the region with overlapping tiles read at ``model_mpp``.

    Tile ``i`` reads ``tile_size_px`` model pixels; its *core* (what it owns) is the tile less
    ``overlap_px / 2`` on each side (on the sides where the image goes on), so cores tile the
    region exactly once. A nucleus belongs to the tile whose core holds its centroid, so the
    overlap must exceed the largest nucleus.

    Parameters
    ----------
    slide : Slide
    model_mpp : float
        Resolution the network expects (um/px).
    tile_size_px, overlap_px : int
        Tile edge and overlap, in model pixels.
    region : (left, top, width, height), optional
        Base-pixel ROI; ``None`` or negative values mean the whole slide.
    tissue : TissueMask, optional
        Tiles whose core has less than ``min_tissue_fraction`` tissue are skipped.

    Raises
    ------
    RegionError
        When the region does not overlap the slide or is empty.
    """
    if tile_size_px <= 2 * overlap_px or overlap_px < 0:
        raise ValueError("need tile_size_px > 2 * overlap_px >= 0")
    left, top, right, bottom = _clip_region(slide, region)
    f = model_mpp / slide.mpp  # base pixels per model pixel
    xs, x_cores = _axis(left, right, slide.size_x, f, tile_size_px, overlap_px)
    ys, y_cores = _axis(top, bottom, slide.size_y, f, tile_size_px, overlap_px)
    size = round(tile_size_px * f)
    tiles = []
    skipped = 0
    for y, (cy0, cy1) in zip(ys, y_cores):
        for x, (cx0, cx1) in zip(xs, x_cores):
            if tissue is not None and tissue.fraction(cx0, cy0, cx1, cy1) < min_tissue_fraction:
                skipped += 1
                continue
            tiles.append(Tile(index=len(tiles), x=x, y=y, width=size, height=size,
                              core_x0=cx0, core_y0=cy0, core_x1=cx1, core_y1=cy1,
                              scale=1.0 / f))
    frac = 1.0 if tissue is None else tissue.fraction(left, top, right, bottom)
    return TilePlan(slide_path=slide.path, size_x=slide.size_x, size_y=slide.size_y,
                    slide_mpp=slide.mpp, model_mpp=model_mpp, tile_size_px=tile_size_px,
                    overlap_px=overlap_px, region=(left, top, right - left, bottom - top),
                    tiles=tuple(tiles), tissue_fraction=frac, skipped_tiles=skipped)


def _axis(lo: int, hi: int, extent: int, f: float, tile_size_px: int,
          overlap_px: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Window origins and cores along one axis (base pixels) for the span ``[lo, hi)``.

    Windows start half an overlap before the span where the image goes on, and at the
    image's edge where it does not: padding beyond the image would be network time spent on
    nothing. Consecutive cores meet in the middle of their windows' overlap; the first core
    starts at ``lo``, the last ends at ``hi``.
    """
    half = overlap_px / 2 * f
    stride = (tile_size_px - overlap_px) * f
    start = max(0, lo - round(half))
    end = min(extent, hi + round(half))
    n = max(1, math.ceil((end - start - overlap_px * f) / stride))
    origins = [start + round(i * stride) for i in range(n)]
    bounds = [lo] + [start + round(i * stride + half) for i in range(1, n)] + [hi]
    return origins, list(zip(bounds[:-1], bounds[1:]))


def _clip_region(slide: Slide, region) -> tuple[int, int, int, int]:
    if region is None or len(region) != 4 or all(v < 0 for v in region):
        return 0, 0, slide.size_x, slide.size_y
    left, top, width, height = (int(round(v)) for v in region)
    if width <= 0 or height <= 0:
        raise RegionError(f"region {list(region)} has no area (width and height must be > 0)")
    x0, y0 = max(0, left), max(0, top)
    x1, y1 = min(slide.size_x, left + width), min(slide.size_y, top + height)
    if x1 <= x0 or y1 <= y0:
        raise RegionError(f"region {list(region)} lies outside the slide "
                          f"({slide.size_x} x {slide.size_y} pixels)")
    return x0, y0, x1, y1
