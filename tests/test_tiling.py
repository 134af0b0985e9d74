"""The tile plan: cores partition the region exactly; bad regions fail with RegionError."""
from __future__ import annotations

import numpy as np
import pytest

from slicer_cli.nuclei.errors import RegionError
from slicer_cli.nuclei.slide import Slide
from slicer_cli.nuclei.tiling import MPP_TOLERANCE, base_per_model_px, plan_tiles
from slicer_cli.nuclei.tissue import TissueMask


@pytest.mark.parametrize("mpp", [0.5, 0.25, 0.499, 1.0])
@pytest.mark.parametrize("region", [None, (100, 200, 1500, 1300), (101, 201, 1499, 1299)])
def test_cores_partition_region(mpp, region):
    slide = Slide("x", 2220, 2967, mpp)
    plan = plan_tiles(slide, 0.5, 512, 128, region)
    left, top, w, h = plan.region
    cover = np.zeros((slide.size_y, slide.size_x), dtype=np.int32)
    for t in plan.tiles:
        cover[t.core_y0:t.core_y1, t.core_x0:t.core_x1] += 1
        # the read window holds the core with the overlap's half on each side where the
        # image goes on, and never reaches before the image
        margin = 64 * 0.5 / mpp
        assert t.x >= 0 and t.y >= 0
        assert t.x <= max(0, t.core_x0 - margin) + 1 and t.y <= max(0, t.core_y0 - margin) + 1
        assert t.x + t.width >= min(slide.size_x, t.core_x1 + margin) - 2
        assert t.y + t.height >= min(slide.size_y, t.core_y1 + margin) - 2
        if mpp == 0.25:  # read at every 2nd pixel: every window on the slide's one lattice
            assert t.x % 2 == 0 and t.y % 2 == 0
    inside = cover[top:top + h, left:left + w]
    assert (inside == 1).all()
    assert cover.sum() == w * h


@pytest.mark.parametrize("mpp, f", [(0.5, 1.0), (0.499, 1.0), (0.504, 1.0), (0.4902, 1.0),
                                     (0.45, 0.5 / 0.45), (0.25, 2.0), (0.2527, 2.0),
                                     (0.2425, 0.5 / 0.2425), (0.1667, 3.0), (1.0, 0.5)])
def test_a_slide_near_a_whole_multiple_of_the_models_resolution_is_read_at_it(mpp, f):
    """Within 2 % of 0.5 um/px (20x scans at 0.499-0.504) each model pixel is a base
    pixel, so every tile is an exact crop of the same image; within 2 % of 0.25 (40x at
    0.2527) every 2nd; farther off (0.45, 0.2425), and coarser than the model, resampled."""
    assert MPP_TOLERANCE == 0.02
    assert base_per_model_px(0.5, mpp) == pytest.approx(f, rel=1e-12)
    plan = plan_tiles(Slide("x", 3000, 2500, mpp), 0.5, 1024, 128)
    assert plan.base_per_px == pytest.approx(f, rel=1e-12)
    for t in plan.tiles:
        assert t.base_per_px == plan.base_per_px
        if f == 1.0:
            assert (t.width, t.height) == (t.px_width, t.px_height)


def test_no_window_is_spent_beyond_the_image():
    """8192 model pixels in windows of 1024 overlapping by 128: 9 per side, not 10."""
    plan = plan_tiles(Slide("x", 8192, 8192, 0.5), 0.5, 1024, 128)
    assert len(plan.tiles) == 81
    assert {t.x for t in plan.tiles} == {i * 896 for i in range(9)}
    assert max(t.x + t.width for t in plan.tiles) == 8192


def test_region_outside_slide():
    with pytest.raises(RegionError, match="outside the slide"):
        plan_tiles(Slide("x", 1000, 1000, 0.5), 0.5, 512, 128, (2000, 2000, 100, 100))


def test_region_without_area():
    with pytest.raises(RegionError, match="no area"):
        plan_tiles(Slide("x", 1000, 1000, 0.5), 0.5, 512, 128, (10, 10, 0, 100))


def test_region_partly_outside_is_clipped():
    plan = plan_tiles(Slide("x", 1000, 1000, 0.5), 0.5, 512, 128, (900, -50, 500, 200))
    assert plan.region == (900, 0, 100, 150)


def test_tiles_without_tissue_are_skipped():
    mask = np.zeros((100, 100), dtype=bool)
    mask[:50, :50] = True  # tissue only in the top-left quarter
    tissue = TissueMask(mask, 100 / 4000, 100 / 4000)
    plan = plan_tiles(Slide("x", 4000, 4000, 0.5), 0.5, 512, 128, None, tissue)
    assert plan.skipped_tiles > 0
    assert all(t.core_x0 < 2000 and t.core_y0 < 2000 for t in plan.tiles)
    assert [t.index for t in plan.tiles] == list(range(len(plan.tiles)))


def test_bad_geometry():
    with pytest.raises(ValueError):
        plan_tiles(Slide("x", 1000, 1000, 0.5), 0.5, 256, 128)


def test_windows_fit_the_tissue():
    """Cores shrink to the tissue (plus half the overlap), windows with them, in multiples
    of 32 model pixels; every tissue cell is still owned by exactly one core."""
    mask = np.zeros((100, 100), dtype=bool)
    mask[10:30, 12:57] = True       # a band of tissue across two cells
    mask[70:72, 90:92] = True       # a speck in a corner cell
    tissue = TissueMask(mask, 100 / 4000, 100 / 4000)
    slide = Slide("x", 4000, 4000, 0.25)   # 40x: 2 base pixels per model pixel
    full = plan_tiles(slide, 0.5, 512, 128)
    plan = plan_tiles(slide, 0.5, 512, 128, None, tissue, 0.0001)
    cover = np.zeros((4000, 4000), dtype=np.int32)
    for t in plan.tiles:
        cover[t.core_y0:t.core_y1, t.core_x0:t.core_x1] += 1
        assert t.px_width % 32 == 0 and t.px_height % 32 == 0
        assert t.px_width <= 512 and t.px_height <= 512
        assert (t.width, t.height) == (2 * t.px_width, 2 * t.px_height)
        assert t.x % 2 == 0 and t.y % 2 == 0  # the cores fit odd tissue edges, the reads do not
        cell = next(c for c in full.tiles if c.core_x0 <= t.core_x0 < c.core_x1
                    and c.core_y0 <= t.core_y0 < c.core_y1)
        # inside the grid cell's core and window; half the overlap (64 px) around the core
        assert cell.core_x0 <= t.core_x0 < t.core_x1 <= cell.core_x1
        assert cell.core_y0 <= t.core_y0 < t.core_y1 <= cell.core_y1
        assert t.row_y0 == cell.core_y0
        assert cell.x <= t.x and t.x + t.width <= cell.x + cell.width
        assert t.x <= max(0, t.core_x0 - 128) and t.y <= max(0, t.core_y0 - 128)
        assert t.x + t.width >= min(4000, t.core_x1 + 128)
        assert t.y + t.height >= min(4000, t.core_y1 + 128)
    assert cover.max() == 1
    rows, cols = np.nonzero(mask)
    assert (cover[rows * 40 + 20, cols * 40 + 20] == 1).all()  # every tissue cell owned
    assert len(plan.tiles) < len(full.tiles)
    # the speck's tile reads a small window, not a whole tile
    speck = next(t for t in plan.tiles if t.core_x0 <= 3620 < t.core_x1
                 and t.core_y0 <= 2820 < t.core_y1)
    # 40 model px of tissue + 2 x 64 margin + 2 x 64 context = 296 -> 320
    assert (speck.px_width, speck.px_height) == (320, 320)
    pixels = sum(t.px_width * t.px_height for t in plan.tiles)
    assert pixels < 0.7 * len(plan.tiles) * 512 * 512
