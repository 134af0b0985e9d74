"""Open a slide with ``large_image`` and read tiles at the model's resolution.

Where the slide comes from ends here: every later stage sees uint8 RGB arrays and base-pixel
coordinates only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import ResolutionError, SlideError
from .options import LIMITS
from .records import Tile

GLASS_RGB = 255  # value used to pad reads that fall outside the slide


@dataclass(frozen=True)
class Slide:
    """An opened slide: its path, size (base pixels) and base resolution (um/px)."""

    path: str
    size_x: int
    size_y: int
    mpp: float


#: large_image's in-memory tile cache, in tiles. Its default (a 32nd of the machine's memory)
#: fills as a whole slide is read once: at 16384² it held 361 MiB of the CLI's peak RSS
#: (BENCHMARKS.md). The engine reads each tile once and re-reads only the overlap, soon after,
#: so a few dozen tiles are all that is ever reused. A deployment's own setting
#: (``LARGE_IMAGE_CACHE_TILECACHE_MAXIMUM`` or large_image's config) wins.
TILE_CACHE_TILES = 64


def bound_tile_cache() -> None:
    """Cap large_image's tile cache at :data:`TILE_CACHE_TILES` unless it is configured
    (takes effect when the cache is made: before the process's first tile read)."""
    from large_image import config

    try:
        configured = int(config.getConfig("cache_tileCache_maximum", 0) or 0)
    except (TypeError, ValueError):
        configured = 0
    if configured <= 0:
        config.setConfig("cache_tileCache_maximum", TILE_CACHE_TILES)


def open_slide(path: str, mpp: float | None = None):
    """Open ``path`` with large_image and check it is usable.

    Parameters
    ----------
    path : str
        Slide file (any format large_image opens).
    mpp : float, optional
        Base resolution in um/px, overriding the slide's metadata (needed when it has none).

    Returns
    -------
    (Slide, large_image.tilesource.TileSource)

    Raises
    ------
    SlideError
        Missing, unreadable or corrupt file.
    ResolutionError
        No resolution in the metadata and none given.
    """
    import large_image

    bound_tile_cache()
    if not os.path.exists(path):
        raise SlideError(f"slide not found: {path}")
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise SlideError(f"slide is not a readable file: {path}")
    try:
        source = large_image.open(path)
        meta = source.getMetadata()
    except Exception as e:  # large_image raises its own and its readers' exceptions
        raise SlideError(f"cannot read slide {os.path.basename(path)}: {_first_line(e)}") from e
    size_x, size_y = int(meta.get("sizeX") or 0), int(meta.get("sizeY") or 0)
    if size_x <= 0 or size_y <= 0:
        raise SlideError(f"slide {os.path.basename(path)} has no pixels")
    if mpp is None or mpp <= 0:
        mm_x = meta.get("mm_x")
        if not mm_x or mm_x <= 0 or not np.isfinite(mm_x):
            raise ResolutionError(
                f"slide {os.path.basename(path)} has no resolution metadata; "
                "give its base resolution with --slide-mpp (um/px)")
        mpp = float(mm_x) * 1000.0
        low, high = LIMITS["slide_mpp"]
        if not low <= mpp <= high:
            raise ResolutionError(
                f"slide {os.path.basename(path)} declares {mpp:.4g} um/px, outside "
                f"[{low:g}, {high:g}]; give its base resolution with --slide-mpp (um/px)")
    return Slide(path=path, size_x=size_x, size_y=size_y, mpp=float(mpp)), source


def read_tile(source, slide: Slide, tile: Tile) -> np.ndarray:
    """Read one tile as uint8 RGB ``[px_height, px_width, 3]`` at the model's resolution.

    The parts of the tile window that fall outside the slide are padded with glass (white).

    Raises
    ------
    SlideError
        When the slide's pixels cannot be decoded (e.g. a truncated file).
    """
    import large_image

    out = np.full((tile.px_height, tile.px_width, 3), GLASS_RGB, dtype=np.uint8)
    f = tile.base_per_px
    x0, y0 = max(tile.x, 0), max(tile.y, 0)
    x1, y1 = min(tile.x + tile.width, slide.size_x), min(tile.y + tile.height, slide.size_y)
    if x1 <= x0 or y1 <= y0:
        return out
    ox, oy = round((x0 - tile.x) / f), round((y0 - tile.y) / f)
    ow = min(tile.px_width - ox, max(1, round((x1 - x0) / f)))
    oh = min(tile.px_height - oy, max(1, round((y1 - y0) / f)))
    try:
        region, _ = source.getRegion(
            region=dict(left=x0, top=y0, right=x1, bottom=y1, units="base_pixels"),
            output=dict(maxWidth=ow, maxHeight=oh),
            format=large_image.constants.TILE_FORMAT_NUMPY)
    except Exception as e:
        raise SlideError(f"cannot decode slide pixels at x={x0}, y={y0}: {_first_line(e)}") from e
    region = _to_rgb(region)
    if region.shape[:2] != (oh, ow):
        region = _resize(region, ow, oh)
    out[oy:oy + oh, ox:ox + ow] = region
    return out


def read_thumbnail(source, max_px: int) -> np.ndarray:
    """Whole-slide thumbnail as uint8 RGB, its longer side at most ``max_px``."""
    import large_image

    try:
        thumb, _ = source.getThumbnail(width=max_px, height=max_px,
                                       format=large_image.constants.TILE_FORMAT_NUMPY)
    except Exception as e:
        raise SlideError(f"cannot decode slide thumbnail: {_first_line(e)}") from e
    return _to_rgb(thumb)


def _to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != np.uint8:
        hi = float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "ui" else 1.0
        arr = np.clip(arr.astype(np.float32) * (255.0 / hi), 0, 255).astype(np.uint8)
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4 and bool((arr[:, :, 3] == 255).all()):  # opaque: nothing to blend
        return np.ascontiguousarray(arr[:, :, :3])
    if arr.shape[2] == 4:  # composite alpha over glass
        rgb, alpha = arr[:, :, :3].astype(np.float32), arr[:, :, 3:4].astype(np.float32) / 255
        return (rgb * alpha + GLASS_RGB * (1 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(arr[:, :, :3])


def _resize(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(arr).resize((width, height), Image.BILINEAR))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
