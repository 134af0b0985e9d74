"""Tile plan: which windows of the slide to read, at which resolution, owning which core."""
from __future__ import annotations

import math

from .errors import RegionError
from .records import Tile, TilePlan
from .slide import Slide
from .tissue import TissueMask

#: a slide whose resolution is within this fraction of a whole multiple of the model's is
#: read at that whole factor (its own pixels, every 2nd, ...)
MPP_TOLERANCE = 0.02


def base_per_model_px(model_mpp: float, slide_mpp: float) -> float:
    """Base pixels per model pixel: ``model_mpp / slide_mpp``, or the whole number it is
    within :data:`MPP_TOLERANCE` of (a 20x scan at 0.499 or 0.504 um/px for a 0.5 um/px
    model: 1, its own pixels; a 40x scan at 0.2527 um/px: 2).

    Resampling by a fraction of a percent buys the network nothing (it was trained with
    scale jitter of 0.7-1.4) and costs consistency: each tile starts at a whole base pixel,
    so each would be resampled at its own sub-pixel phase, and the network answers such
    phases with other nuclei (tiled against one pass, the CMU slide at 0.499 um/px: 0.77
    resampled, 0.97 at its own pixels; hgsc_nest enlarged to 0.2527 um/px: 0.948 at a factor
    of 1.979, 0.989 at 2).
    """
    f = model_mpp / slide_mpp
    whole = round(f)
    return float(whole) if whole >= 1 and abs(f / whole - 1.0) <= MPP_TOLERANCE else f


def plan_tiles(slide: Slide, model_mpp: float, tile_size_px: int, overlap_px: int,
               region: tuple[int, int, int, int] | None = None,
               tissue: TissueMask | None = None, min_tissue_fraction: float = 0.01,
               size_multiple: int = 32) -> TilePlan:
    """Cover the region with overlapping tiles read at ``model_mpp``.

    The plan is a grid of windows of ``tile_size_px`` model pixels; each grid cell's *core*
    (what its tile owns) is the window less ``overlap_px / 2`` on each side (on the sides
    where the image goes on), so cores tile the region exactly once. A nucleus belongs to
    the tile whose core holds its centroid, so the overlap must exceed the largest nucleus.

    With a tissue mask, cells whose core has less than ``min_tissue_fraction`` tissue are
    skipped, and the core of every other cell shrinks to the tissue it holds (grown by half
    the overlap, so nuclei the coarse mask clips at a tissue edge are still owned); the
    window shrinks with it, to a multiple of ``size_multiple`` model pixels. A tile that is
    half glass then costs the network about half a tile. Windows are also cut at the
    image's far edge instead of being padded.

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
        Where the tissue is.
    min_tissue_fraction : float
        Cells whose core has less tissue than this are skipped.
    size_multiple : int
        The network's input sides must be multiples of this.

    Raises
    ------
    RegionError
        When the region does not overlap the slide or is empty.
    """
    if tile_size_px <= 2 * overlap_px or overlap_px < 0:
        raise ValueError("need tile_size_px > 2 * overlap_px >= 0")
    if tile_size_px % size_multiple:
        raise ValueError(f"tile_size_px {tile_size_px} is not a multiple of {size_multiple}")
    left, top, right, bottom = _clip_region(slide, region)
    f = base_per_model_px(model_mpp, slide.mpp)
    xs, x_cores = _axis(left, right, slide.size_x, f, tile_size_px, overlap_px)
    ys, y_cores = _axis(top, bottom, slide.size_y, f, tile_size_px, overlap_px)
    half = overlap_px / 2 * f
    tiles = []
    skipped = 0
    for y, (cy0, cy1) in zip(ys, y_cores):
        for x, (cx0, cx1) in zip(xs, x_cores):
            core = (cx0, cy0, cx1, cy1)
            if tissue is not None:
                if tissue.fraction(*core) < min_tissue_fraction:
                    skipped += 1
                    continue
                core = _fit_core(core, tissue, half)
            wx, pw = _window(x, core[0], core[2], slide.size_x, f, half, tile_size_px,
                             size_multiple)
            wy, ph = _window(y, core[1], core[3], slide.size_y, f, half, tile_size_px,
                             size_multiple)
            tiles.append(Tile(index=len(tiles), x=wx, y=wy, width=round(pw * f),
                              height=round(ph * f), core_x0=core[0], core_y0=core[1],
                              core_x1=core[2], core_y1=core[3], base_per_px=f,
                              px_width=pw, px_height=ph, row_y0=cy0))
    frac = 1.0 if tissue is None else tissue.fraction(left, top, right, bottom)
    return TilePlan(slide_path=slide.path, size_x=slide.size_x, size_y=slide.size_y,
                    slide_mpp=slide.mpp, model_mpp=model_mpp, tile_size_px=tile_size_px,
                    overlap_px=overlap_px, region=(left, top, right - left, bottom - top),
                    tiles=tuple(tiles), base_per_px=f, tissue_fraction=frac,
                    skipped_tiles=skipped)


def _fit_core(core: tuple[int, int, int, int], tissue: TissueMask,
              margin: float) -> tuple[int, int, int, int]:
    """The part of ``core`` within ``margin`` base pixels of the tissue's bounding box."""
    box = tissue.bounding_box(*core)
    if box is None:  # min_tissue_fraction 0 keeps cells without tissue: keep them whole
        return core
    x0, y0, x1, y1 = box
    return (max(core[0], math.floor(x0 - margin)), max(core[1], math.floor(y0 - margin)),
            min(core[2], math.ceil(x1 + margin)), min(core[3], math.ceil(y1 + margin)))


def _window(origin: int, lo: int, hi: int, extent: int, f: float, half: float,
            tile_size_px: int, multiple: int) -> tuple[int, int]:
    """Window start (base px) and length (model px) along one axis for the core [lo, hi).

    The window holds the core and half the overlap beyond it, stays inside the grid cell's
    full window ``[origin, origin + tile_size_px * f)`` and ends at the image's edge; its
    length is rounded up to ``multiple`` model pixels (at most ``tile_size_px``).
    """
    full_end = origin + tile_size_px * f
    start = max(origin, _on_lattice(lo - half, f))
    end = min(full_end, hi + half, extent)
    px = min(tile_size_px, -(-math.ceil((end - start) / f - 1e-6) // multiple) * multiple)
    start = max(origin, min(start, full_end - px * f))
    return int(round(start)), int(px)


def _on_lattice(x: float, f: float) -> float:
    """``x`` moved back to a multiple of ``f`` when ``f`` is a whole number above 1, else ``x``.

    At a whole factor (a 40x slide read at every 2nd pixel) a window starting there samples
    the base pixels every other window samples, whatever the region's corner or the tissue
    fitted to: one lattice for the slide, as at a factor of 1 (a window from an odd pixel
    would show the network the other half of the pixels, as if moved by half a pixel).
    """
    return int(math.floor(x / f) * f) if f > 1 and f == int(f) else x


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
    start = max(0, _on_lattice(lo - round(half), f))
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
