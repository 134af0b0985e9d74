"""The grid anchor (slicer_cli/nuclei/backends/grid_anchor.py): the landmark moves with the
tissue; a constructed network that sees one pixel in 32 x 32 follows any shift exactly once
anchored; the shipped model's maps of a tile and of a shifted copy agree away from the edges;
a blank tile stays on its own grid."""
from __future__ import annotations

import numpy as np
import pytest

from slicer_cli.nuclei.backends.grid_anchor import _axis_window, find_anchor, infer_anchored
from slicer_cli.nuclei.backends.local import LocalBackend
from slicer_cli.nuclei.backends.test_time import infer_averaged
from slicer_cli.nuclei.model import DEFAULT_MODEL_DIR
from slicer_cli.nuclei.records import Tile
from slicer_cli.nuclei.seams import NUCLEUS_REACH_PX, SEAM_MARGIN_PX, unused_edges

from .conftest import cli, load_annotation

#: the shifts of the model issue's stability measure (rows, columns)
OFFSETS = ((1, 0), (0, 3), (8, 0), (17, 9))


@pytest.fixture(scope="module")
def big(hgsc_rgb) -> np.ndarray:
    """A real H&E region, from which a 512 x 544 tile and its shifted copies are cut."""
    return hgsc_rgb[:544, :576]


def _tile(big: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The 512 x 544 tile whose pixel (y, x) is ``big``'s (y + dy, x + dx)."""
    return np.ascontiguousarray(big[dy:dy + 512, dx:dx + 544])


@pytest.mark.parametrize("dy, dx", OFFSETS)
def test_landmark_moves_with_the_tissue(big, dy, dx):
    """Cut one pixel (or 17) further along, the tile's landmark is the same tissue pixel:
    integer shifts keep every smoothed value bit for bit."""
    here = find_anchor(_tile(big, 0, 0))
    there = find_anchor(_tile(big, dy, dx))
    assert here is not None and there is not None
    assert (there[0] + dy, there[1] + dx) == here


def test_blank_or_tiny_tiles_have_no_landmark(big):
    assert find_anchor(np.full((256, 256, 3), 235, np.uint8)) is None  # glass: no peak
    assert find_anchor(np.ascontiguousarray(big[:24, :24])) is None  # inside the margins


class GridOf32:
    """A constructed network that sees one pixel in each 32 x 32 cell of its input, as a
    network that halves its resolution five times does at the bottom: each output pixel is
    the input pixel at the top left of its cell."""

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        seen = batch[:, ::32, ::32].astype(np.float32) / 255
        seen = np.repeat(np.repeat(seen, 32, axis=1), 32, axis=2)
        return {"FOREGROUND": seen[..., 0], "CLASS_PROB": seen}


@pytest.mark.parametrize("dy, dx", OFFSETS + ((5, 11),))
def test_anchored_grid_network_follows_any_shift_exactly(big, dy, dx):
    """Plain, the constructed network's maps of a shifted tile are not its maps moved;
    anchored they are, exactly, wherever both tiles' cells lie inside them."""
    net = GridOf32()
    a, b = _tile(big, 0, 0)[None], _tile(big, dy, dx)[None]
    plain_a, plain_b = net.infer(a), net.infer(b)
    anch_a, anch_b = infer_anchored(net.infer, a, 32), infer_anchored(net.infer, b, 32)
    inner = (slice(None), slice(dy + 32, 512 - 32), slice(dx + 32, 544 - 32))
    moved = (slice(None), slice(32, 512 - 32 - dy), slice(32, 544 - 32 - dx))
    for name in anch_a:
        assert anch_a[name].shape == plain_a[name].shape  # cut back to the tile
        assert np.abs(plain_a[name][inner] - plain_b[name][moved]).max() > 0.05
        np.testing.assert_array_equal(anch_a[name][inner], anch_b[name][moved], err_msg=name)


def test_each_tile_of_a_batch_gets_its_own_grid(big):
    """Tiles with different landmarks in one batch: each as if it were alone."""
    net = GridOf32()
    batch = np.stack([_tile(big, 0, 0), _tile(big, 17, 9)])
    together = infer_anchored(net.infer, batch, 32)
    for k in range(2):
        alone = infer_anchored(net.infer, batch[k:k + 1], 32)
        for name in alone:
            np.testing.assert_array_equal(together[name][k], alone[name][0])


@pytest.mark.parametrize("n, phase, before, after, want", [
    (1024, 5, 0, 0, (-27, 1056)),   # a lone tile: one period wider, the whole tile inside
    (1024, 0, 0, 0, (0, 1024)),     # its grid already passes through the landmark
    (1024, 5, 16, 16, (5, 1024)),   # an inner tile: its own size, 5 rows left out on top
    (1024, 20, 16, 16, (-12, 1024)),  # ... 12 mirrored on top, 12 left out at the bottom
    (1024, 20, 0, 16, (-12, 1024)),  # the slide's edge on top: nothing left out there
    (1024, 5, 0, 16, (-27, 1056)),  # ... unless 27 would have to go at the bottom
    (1024, 30, 16, 0, (-2, 1056)),  # the slide's edge at the bottom, 2 would be left out
])
def test_window_holds_the_used_pixels_on_the_anchored_grid(n, phase, before, after, want):
    """Along one axis: the window starts a whole number of periods before the landmark,
    holds every pixel whose maps are used, and is the tile's own length when the unused
    edges allow (the start nearest the tile's), one period longer otherwise."""
    start, length = _axis_window(n, phase, 32, before, after)
    assert (start, length) == want
    assert (start - phase) % 32 == 0 and length % 32 == 0
    assert start <= before and start + length >= n - after


def test_inner_tiles_run_on_their_own_size_and_leave_their_unused_edges_out(big):
    """With unused edges (a slide's inner tile), the constructed network runs on windows the
    size of the tiles, each on its own anchored grid: the maps of the used pixels are the lone
    tile's wherever the 32 x 32 cell they see lies in both windows, and the pixels left out
    are 0 (no nucleus). A batch that mixes an inner tile and a lone one makes one call per
    window size, each tile as if alone."""
    net, shapes = GridOf32(), []

    def infer(windows):
        shapes.append(windows.shape[:3])
        return net.infer(windows)

    tiles = np.stack([_tile(big, 0, 0), _tile(big, 17, 9)])
    unused = [(16, 16, 16, 16), (0, 0, 0, 0)]
    maps = infer_anchored(infer, tiles, 32, unused)
    assert sorted(shapes) == [(1, 512, 544), (1, 544, 576)]
    lone, alone = (infer_anchored(net.infer, tiles[k:k + 1], 32) for k in (0, 1))
    inner = (slice(16 + 32, 512 - 16 - 32), slice(16 + 32, 544 - 16 - 32))
    for name, value in maps.items():
        assert value.shape[:3] == (2, 512, 544)
        np.testing.assert_array_equal(value[0][inner], lone[name][0][inner], err_msg=name)
        np.testing.assert_array_equal(value[1], alone[name][0], err_msg=name)
    # the rows and columns outside the window: 0; inside, the tissue's values
    ay, ax = find_anchor(tiles[0])
    sy, _ = _axis_window(512, ay % 32, 32, 16, 16)
    sx, _ = _axis_window(544, ax % 32, 32, 16, 16)
    assert (sy, sx) != (0, 0)  # this tile's landmark does move its window
    covered = np.zeros((512, 544), bool)
    covered[max(sy, 0):min(sy + 512, 512), max(sx, 0):min(sx + 544, 544)] = True
    assert not maps["FOREGROUND"][0][~covered].any()
    assert maps["FOREGROUND"][0][covered].min() > 0


def test_unused_edges_of_a_tile():
    """Beyond the core grown by the ownership margin and a nucleus' reach, in model pixels:
    an inner tile of the default plan (1024 px, cores 64 px in) has 16 on every side; where
    the core meets the tile's edge (the image's edge) none; a 0.25 um/px slide read at 0.5
    um/px counts model pixels, not base pixels."""
    reach = SEAM_MARGIN_PX + NUCLEUS_REACH_PX
    inner = Tile(index=0, x=896, y=896, width=1024, height=1024, core_x0=960, core_y0=960,
                 core_x1=1856, core_y1=1856, base_per_px=1.0, px_width=1024, px_height=1024,
                 row_y0=960)
    assert unused_edges(inner) == (int(64 - reach),) * 4 == (16,) * 4
    first = Tile(index=0, x=0, y=0, width=1024, height=1024, core_x0=0, core_y0=0,
                 core_x1=960, core_y1=960, base_per_px=1.0, px_width=1024, px_height=1024,
                 row_y0=0)
    assert unused_edges(first) == (0, 16, 0, 16)
    fine = Tile(index=0, x=1792, y=0, width=2048, height=2048, core_x0=1920, core_y0=0,
                core_x1=3712, core_y1=1920, base_per_px=2.0, px_width=1024, px_height=1024,
                row_y0=0)
    assert unused_edges(fine) == (0, 16, 16, 16)
    lone = Tile(index=0, x=0, y=0, width=500, height=300, core_x0=0, core_y0=0, core_x1=500,
                core_y1=300, base_per_px=1.0, px_width=512, px_height=320, row_y0=0)
    assert unused_edges(lone) == (0, 0, 0, 0)


#: how closely the anchored maps of a shifted tile follow the tile's own, 160 px or more from
#: the edges: (largest difference, mean difference as a fraction of the plain call's). What
#: the tile's edges change reaches the interior as rounding in the float graph (measured
#: 0.001-0.022 at most, 0.1-1.6 % of the plain call's mean); in the int8 graph the deep
#: levels, whose view spans the whole tile, now and then round such a change across a
#: quantization step (measured 0.006-0.022 at most, 1.7-4.2 %; with levels 1-4 in int8 it
#: was 0.015-0.056 and 5-10 %).
FOLLOWS = (0.05, 0.1)


@pytest.mark.parametrize("precision", ["float", "int8"])
@pytest.mark.parametrize("dy, dx", [(1, 0), (17, 9)])
def test_shipped_model_follows_a_shift_when_anchored(big, dy, dx, precision):
    """The shipped network, plain, gives a shifted tile maps that differ from its own by up
    to 0.3-0.55 of a probability; anchored, 160 px or more from the edges (what a tile's
    edges change reaches no further through the five levels), they agree to within a few
    hundredths with either graph (:data:`FOLLOWS`)."""
    with LocalBackend(DEFAULT_MODEL_DIR, threads=2, precision=precision) as backend:
        a, b = _tile(big, 0, 0)[None], _tile(big, dy, dx)[None]
        plain_a, plain_b = backend.infer(a), backend.infer(b)
        anch_a = infer_anchored(backend.infer, a, 32)
        anch_b = infer_anchored(backend.infer, b, 32)
    e = 160
    inner = (0, slice(dy + e, 512 - e), slice(dx + e, 544 - e))
    moved = (0, slice(e, 512 - e - dy), slice(e, 544 - e - dx))
    largest, fraction = FOLLOWS
    for name in anch_a:
        plain = np.abs(plain_a[name][inner] - plain_b[name][moved])
        anchored = np.abs(anch_a[name][inner] - anch_b[name][moved])
        assert plain.max() > 0.1, name
        assert anchored.max() < largest and anchored.mean() < fraction * plain.mean(), name


@pytest.mark.parametrize("precision", ["float", "int8"])
def test_flips_average_on_the_anchored_grid(big, precision):
    """``infer_averaged(flips=4, anchor=True)``: the window's far edges lie whole periods
    from the landmark too, so each mirror image meets the same grid and the average of a
    shifted tile still follows the tile (as the plain anchored call, above, :data:`FOLLOWS`)."""
    dy, dx = 17, 9
    a, b = _tile(big, 0, 0)[None], _tile(big, dy, dx)[None]
    with LocalBackend(DEFAULT_MODEL_DIR, threads=2, precision=precision) as backend:
        maps_a = infer_averaged(backend, a, flips=4, anchor=True)
        maps_b = infer_averaged(backend, b, flips=4, anchor=True)
        plain_a, plain_b = (infer_averaged(backend, t, flips=4) for t in (a, b))
    largest, fraction = FOLLOWS
    e = 160
    inner = (0, slice(dy + e, 512 - e), slice(dx + e, 544 - e))
    moved = (0, slice(e, 512 - e - dy), slice(e, 544 - e - dx))
    for name in maps_a:
        assert maps_a[name].shape == a.shape[:3] + maps_a[name].shape[3:]
        plain = np.abs(plain_a[name][inner] - plain_b[name][moved])
        anchored = np.abs(maps_a[name][inner] - maps_b[name][moved])
        assert anchored.max() < largest and anchored.mean() < fraction * plain.mean(), name



def test_cli_grid_anchor_follows_a_shifted_region_and_is_recorded(tmp_path, cmu_svs):
    """The CLI's default (the anchor on) through the real argument parser, on the real CMU
    slide: a region and the same region moved by (3, 1) base pixels (one tile each, which
    moves with the region) agree where they overlap; with ``--grid-anchor false`` they do
    not (measured with 5.3.0: 0.751 plain, 0.987 anchored). The
    setting is recorded in the annotation."""
    from slicer_cli.nuclei.metrics import agreement_pq
    from training.robustness import rasterise

    agreement = {}
    for anchored, flags in ((True, ()), (False, ("--grid-anchor", "false"))):
        labels = []
        for k, (left, top) in enumerate(((400, 1000), (403, 1001))):
            ann, csv = tmp_path / f"{anchored}_{k}.anot", tmp_path / f"{anchored}_{k}.csv"
            proc = cli(cmu_svs, ann, csv, "--region", f"{left},{top},768,768", *flags)
            assert proc.returncode == 0, proc.stderr
            doc = load_annotation(ann)
            assert doc["attributes"]["params"]["grid_anchor"] is anchored
            assert len(doc["elements"]) > 50
            labels.append(rasterise(doc, (768, 768), origin=(left, top)))
        agreement[anchored] = agreement_pq(labels[0], labels[1], (1, 3))["pq"]
    assert agreement[False] < 0.85 and agreement[True] >= 0.95, agreement
