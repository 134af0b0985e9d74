"""The grid anchor (slicer_cli/nuclei/backends/grid_anchor.py): the landmark moves with the
tissue; a constructed network that sees one pixel in 32 x 32 follows any shift exactly once
anchored; the shipped model's maps of a tile and of a shifted copy agree away from the edges;
a blank tile stays on its own grid."""
from __future__ import annotations

import numpy as np
import pytest

from slicer_cli.nuclei.backends.grid_anchor import find_anchor, infer_anchored
from slicer_cli.nuclei.backends.test_time import infer_averaged

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


@pytest.mark.parametrize("dy, dx", [(1, 0), (17, 9)])
def test_shipped_model_follows_a_shift_when_anchored(backend, big, dy, dx):
    """The shipped network, plain, gives a shifted tile maps that differ from its own by up
    to 0.3-0.55 of a probability; anchored, 160 px or more from the edges (what a tile's
    edges change reaches no further through the five levels), they agree to within a few
    thousandths (measured: 0.002-0.009 at most, 1e-5 on average)."""
    a, b = _tile(big, 0, 0)[None], _tile(big, dy, dx)[None]
    plain_a, plain_b = backend.infer(a), backend.infer(b)
    anch_a, anch_b = infer_anchored(backend.infer, a, 32), infer_anchored(backend.infer, b, 32)
    e = 160
    inner = (0, slice(dy + e, 512 - e), slice(dx + e, 544 - e))
    moved = (0, slice(e, 512 - e - dy), slice(e, 544 - e - dx))
    for name in anch_a:
        plain = np.abs(plain_a[name][inner] - plain_b[name][moved])
        anchored = np.abs(anch_a[name][inner] - anch_b[name][moved])
        assert plain.max() > 0.1, name
        assert anchored.max() < 0.05 and anchored.mean() < 0.1 * plain.mean(), name


def test_flips_average_on_the_anchored_grid(backend, big):
    """``infer_averaged(flips=4, anchor=True)``: the window's far edges lie whole periods
    from the landmark too, so each mirror image meets the same grid and the average of a
    shifted tile still follows the tile (as the plain anchored call, above)."""
    dy, dx = 17, 9
    a, b = _tile(big, 0, 0)[None], _tile(big, dy, dx)[None]
    maps_a = infer_averaged(backend, a, flips=4, anchor=True)
    maps_b = infer_averaged(backend, b, flips=4, anchor=True)
    plain_a, plain_b = (infer_averaged(backend, t, flips=4) for t in (a, b))
    e = 160
    inner = (0, slice(dy + e, 512 - e), slice(dx + e, 544 - e))
    moved = (0, slice(e, 512 - e - dy), slice(e, 544 - e - dx))
    for name in maps_a:
        assert maps_a[name].shape == a.shape[:3] + maps_a[name].shape[3:]
        plain = np.abs(plain_a[name][inner] - plain_b[name][moved])
        anchored = np.abs(maps_a[name][inner] - maps_b[name][moved])
        assert anchored.max() < 0.05 and anchored.mean() < 0.1 * plain.mean(), name



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
