"""Seam merge on constructed nuclei: ownership with a margin, then each nucleus written once."""
from __future__ import annotations

import numpy as np

from slicer_cli.nuclei.records import Tile, TileNuclei
from slicer_cli.nuclei.seams import SeamIndex, keep_owned

# two tiles side by side, seam at x = 100 (cores [0,100) and [100,200), rows [0,100))
LEFT = Tile(index=0, x=-32, y=-32, width=164, height=164, core_x0=0, core_y0=0,
            core_x1=100, core_y1=100, base_per_px=1.0, px_width=164, px_height=164, row_y0=0)
RIGHT = Tile(index=1, x=68, y=-32, width=164, height=164, core_x0=100, core_y0=0,
             core_x1=200, core_y1=100, base_per_px=1.0, px_width=164, px_height=164, row_y0=0)


def _disc(cx: float, cy: float, r: float, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)])


def _nuclei(tile: Tile, discs: list[tuple[float, float, float]]) -> TileNuclei:
    contours = [_disc(*d) for d in discs]
    c = np.array([[d[0], d[1]] for d in discs], dtype=np.float64).reshape(-1, 2)
    bbox = np.array([[p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()]
                     for p in contours]).reshape(-1, 4)
    n = len(discs)
    return TileNuclei(tile_index=tile.index, centroid_x=c[:, 0], centroid_y=c[:, 1], bbox=bbox,
                      class_index=np.zeros(n, dtype=np.int64), class_prob=np.ones(n),
                      contours=contours)


def test_strict_ownership_is_a_partition():
    x = np.array([99.9, 100.0, 100.1, 50.0])
    y = np.array([50.0, 50.0, 50.0, 100.0])
    left, right = keep_owned(x, y, LEFT), keep_owned(x, y, RIGHT)
    assert left.tolist() == [True, False, False, False]
    assert right.tolist() == [False, True, True, False]


def test_margin_grows_the_core_but_not_beyond_the_region():
    x = np.array([104.0, 109.0, -3.0])
    y = np.array([50.0, 50.0, 50.0])
    assert keep_owned(x, y, LEFT, margin_px=8).tolist() == [True, False, True]
    assert keep_owned(x, y, LEFT, margin_px=8, region=(0, 0, 200, 100)).tolist() == \
        [True, False, False]


def test_a_seam_nucleus_seen_by_both_tiles_is_written_once():
    # each tile's version of the same nucleus has its centroid just inside the *other*
    # core: strict ownership keeps it nowhere, the margin keeps it twice, the index once
    left_version, right_version = (101.0, 50.0, 10.0), (99.0, 50.5, 10.5)
    assert not keep_owned(np.array([101.0]), np.array([50.0]), LEFT)[0]
    assert not keep_owned(np.array([99.0]), np.array([50.5]), RIGHT)[0]
    assert keep_owned(np.array([101.0]), np.array([50.0]), LEFT, margin_px=8)[0]
    assert keep_owned(np.array([99.0]), np.array([50.5]), RIGHT, margin_px=8)[0]
    index = SeamIndex(reach_px=40)
    a = _nuclei(LEFT, [(20.0, 20.0, 8.0), left_version])
    b = _nuclei(RIGHT, [right_version, (150.0, 50.0, 8.0)])
    assert index.drop_duplicates(a, LEFT).tolist() == [True, True]
    assert index.drop_duplicates(b, RIGHT).tolist() == [False, True]
    assert len(b.take(np.array([False, True]))) == 1


def test_touching_nuclei_across_a_seam_are_both_kept():
    index = SeamIndex(reach_px=40)
    a = _nuclei(LEFT, [(94.0, 50.0, 6.0)])
    b = _nuclei(RIGHT, [(105.0, 50.0, 6.0)])  # touching, a sliver shared
    assert index.drop_duplicates(a, LEFT).tolist() == [True]
    assert index.drop_duplicates(b, RIGHT).tolist() == [True]


def test_index_forgets_rows_the_tile_order_has_passed():
    index = SeamIndex(reach_px=40)
    index.drop_duplicates(_nuclei(LEFT, [(50.0, 95.0, 6.0), (50.0, 50.0, 6.0)]), LEFT)
    assert len(index) == 1  # the interior nucleus is never remembered
    far = Tile(index=2, x=-32, y=468, width=164, height=164, core_x0=0, core_y0=500,
               core_x1=100, core_y1=600, base_per_px=1.0, px_width=164, px_height=164, row_y0=500)
    index.drop_duplicates(_nuclei(far, []), far)
    assert len(index) == 0


def test_index_forgets_by_the_plan_row_not_a_core_fitted_to_tissue():
    """A core shrunk to the tissue (starting lower than its row) must not make the index
    forget a seam nucleus the next tile of the same row still sees."""
    above = Tile(index=0, x=68, y=-132, width=164, height=164, core_x0=100, core_y0=-100,
                 core_x1=200, core_y1=0, base_per_px=1.0, px_width=164, px_height=164, row_y0=-100)
    fitted = Tile(index=1, x=-32, y=28, width=164, height=104, core_x0=0, core_y0=60,
                  core_x1=100, core_y1=100, base_per_px=1.0, px_width=164, px_height=104, row_y0=0)
    index = SeamIndex(reach_px=40)
    # a nucleus on the seam below "above", kept there (centroid inside its core)
    assert index.drop_duplicates(_nuclei(above, [(150.0, -2.0, 6.0)]), above).all()
    index.drop_duplicates(_nuclei(fitted, []), fitted)
    # RIGHT (same row as "fitted") sees the same nucleus from below: written once
    assert index.drop_duplicates(_nuclei(RIGHT, [(150.0, 1.0, 6.0)]), RIGHT).tolist() == [False]
