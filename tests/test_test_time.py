"""Test-time augmentation (slicer_cli/nuclei/backends/test_time.py): flips and one-pixel
shifts averaged. On a constructed stride-2 network the shifts undo its pixel phase exactly;
on the shipped model the averaged maps are flip-equivariant and move with the tile; one
flip and one shift is the plain call; the CLI options run end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest

from slicer_cli.nuclei.backends.test_time import FLIPS, SHIFTS, infer_averaged

from .conftest import cli, load_annotation


@pytest.fixture(scope="module")
def tiles(hgsc_rgb) -> np.ndarray:
    return np.ascontiguousarray(np.stack([hgsc_rgb[:256, :320], hgsc_rgb[300:556, 500:820]]))


class StrideTwo:
    """A constructed network that sees only every other pixel, as a stride-2 stem does: each
    output pixel is a function of the even-row, even-column input pixel of its 2 x 2 cell."""

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        seen = batch[:, ::2, ::2].astype(np.float32)
        seen = np.repeat(np.repeat(seen, 2, axis=1), 2, axis=2)
        return {"FOREGROUND": seen[..., 0] / 255, "CLASS_PROB": seen / 255}


def test_shifts_make_a_stride_two_network_follow_a_one_pixel_shift_exactly(hgsc_rgb):
    """Plain, the constructed network's maps of a tile moved by one pixel are not its maps
    moved by one pixel; averaged over the four shifts they are, exactly, away from the
    tiles' first row and column (a shifted call mirrors them in) and last ones (a shifted
    call pushes them out)."""
    big = hgsc_rgb[:65, :97]
    tile, moved = big[None, :64, :96], big[None, 1:, 1:]  # moved[y, x] = tile[y + 1, x + 1]
    net = StrideTwo()
    plain_a, plain_b = net.infer(tile), net.infer(np.ascontiguousarray(moved))
    avg_a = infer_averaged(net, np.ascontiguousarray(tile), shifts=4)
    avg_b = infer_averaged(net, np.ascontiguousarray(moved), shifts=4)
    for name in avg_a:
        assert np.abs(plain_a[name][:, 1:-1, 1:-1] - plain_b[name][:, :-2, :-2]).max() > 0.05
        # four float32 values of k/255 summed and divided by 4: a few ulps
        np.testing.assert_allclose(avg_a[name][:, 2:-1, 2:-1], avg_b[name][:, 1:-2, 1:-2],
                                   atol=1e-6, err_msg=name)


class StrideFour:
    """As StrideTwo, for a network whose first pooling follows the stem: each output pixel
    is a function of the input pixel at the top left of its 4 x 4 cell."""

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        seen = batch[:, ::4, ::4].astype(np.float32)
        seen = np.repeat(np.repeat(seen, 4, axis=1), 4, axis=2)
        return {"FOREGROUND": seen[..., 0] / 255}


@pytest.mark.parametrize("dy, dx", [(1, 0), (2, 3), (3, 3)])
def test_sixteen_shifts_make_a_stride_four_network_follow_any_shift(hgsc_rgb, dy, dx):
    """The four one-pixel shifts do not undo a stride of 4; the sixteen shifts of 0-3 pixels
    do, exactly, away from the borders the shifted calls mirror in or push out."""
    big = hgsc_rgb[:64 + dy, :96 + dx]
    tile, moved = big[None, :64, :96], np.ascontiguousarray(big[None, dy:, dx:])
    net = StrideFour()
    a4 = infer_averaged(net, np.ascontiguousarray(tile), shifts=4)["FOREGROUND"]
    b4 = infer_averaged(net, moved, shifts=4)["FOREGROUND"]
    a16 = infer_averaged(net, np.ascontiguousarray(tile), shifts=16)["FOREGROUND"]
    b16 = infer_averaged(net, moved, shifts=16)["FOREGROUND"]
    inner = (slice(None), slice(4 + dy, -4), slice(4 + dx, -4))
    back = (slice(None), slice(4, -4 - dy), slice(4, -4 - dx))
    assert np.abs(a4[inner] - b4[back]).max() > 0.05
    # sixteen float32 values of k/255 summed and divided by 16: a few ulps
    np.testing.assert_allclose(a16[inner], b16[back], atol=1e-6)


def test_eight_flips_make_the_maps_of_a_transposed_tile_the_transposed_maps(backend, tiles):
    """With the four transposed images too, the averaged maps no longer depend on a quarter
    turn (a transpose is a quarter turn and a mirror image); the four flips alone do."""
    swapped = np.ascontiguousarray(tiles.transpose(0, 2, 1, 3))
    maps8, of_swapped8 = (infer_averaged(backend, t, flips=8) for t in (tiles, swapped))
    maps4, of_swapped4 = (infer_averaged(backend, t, flips=4) for t in (tiles, swapped))
    for name, value in maps8.items():
        back = of_swapped8[name].transpose((0, 2, 1) + tuple(range(3, value.ndim)))
        # the same eight float32 maps summed in another order: a few ulps of a probability
        np.testing.assert_allclose(back, value, atol=2e-6, err_msg=name)
        back4 = of_swapped4[name].transpose((0, 2, 1) + tuple(range(3, value.ndim)))
        assert np.abs(back4 - maps4[name]).max() > 1e-3, name
        assert value.shape == maps4[name].shape and value.dtype == np.float32


def test_one_flip_and_one_shift_is_the_plain_call(backend, tiles):
    plain = backend.infer(tiles)
    once = infer_averaged(backend, tiles, flips=1, shifts=1)
    for name, value in plain.items():
        np.testing.assert_array_equal(once[name], value)


@pytest.mark.parametrize("axes", [(2,), (1,), (1, 2)])
def test_averaged_maps_of_a_mirror_image_are_the_mirrored_maps(backend, tiles, axes):
    """Averaged over the four flips, the maps no longer depend on which way up a tile is;
    the plain network's do (a flipped tile meets other weights)."""
    maps = infer_averaged(backend, tiles, flips=4)
    mirrored = infer_averaged(backend, np.ascontiguousarray(np.flip(tiles, axes)), flips=4)
    plain = backend.infer(tiles)
    plain_mirrored = backend.infer(np.ascontiguousarray(np.flip(tiles, axes)))
    for name in maps:
        # the same four float32 maps summed in another order: a few ulps of a probability
        np.testing.assert_allclose(np.flip(mirrored[name], axes), maps[name], atol=1e-6,
                                   err_msg=name)
        assert np.abs(np.flip(plain_mirrored[name], axes) - plain[name]).max() > 1e-3, name
        assert maps[name].shape == plain[name].shape and maps[name].dtype == np.float32


@pytest.mark.parametrize("corner", [(0, 0), (300, 500), (900, 200)])
def test_averaged_maps_of_the_shipped_model_move_with_the_tile(backend, hgsc_rgb, corner):
    """A real tile and the same tissue one pixel further along: the shifts halve how much
    the foreground and distance maps differ beyond the move (measured 0.48-0.52 of the plain
    call's mean difference on these three tiles), flips and shifts together do better still
    (0.28-0.31)."""
    y0, x0 = corner
    big = hgsc_rgb[y0:y0 + 257, x0:x0 + 321]
    tile = np.ascontiguousarray(big[None, :256, :320])
    moved = np.ascontiguousarray(big[None, 1:, 1:])

    def difference(flips: int, shifts: int) -> dict[str, float]:
        a = infer_averaged(backend, tile, flips, shifts)
        b = infer_averaged(backend, moved, flips, shifts)
        return {k: float(np.abs(a[k][0, 9:-8, 9:-8] - b[k][0, 8:-9, 8:-9]).mean()) for k in a}

    plain, shifted, both = difference(1, 1), difference(1, 4), difference(4, 4)
    for name in ("FOREGROUND", "DISTANCE"):
        assert shifted[name] < 0.65 * plain[name], (name, shifted, plain)
        assert both[name] < shifted[name], (name, both, shifted)


@pytest.mark.parametrize("kwargs, message", [
    ({"flips": 0}, "flips must be one of"), ({"flips": 3}, "flips must be one of"),
    ({"flips": len(FLIPS) + 1}, "flips must be one of"), ({"shifts": 0}, "shifts must be one of"),
    ({"shifts": 2}, "shifts must be one of"),
    ({"shifts": len(SHIFTS) + 1}, "shifts must be one of")])
def test_other_counts_are_refused(backend, tiles, kwargs, message):
    with pytest.raises(ValueError, match=message):
        infer_averaged(backend, tiles, **kwargs)


def test_cli_options_run_and_are_recorded(tmp_path, cmu_svs):
    plain = cli(cmu_svs, tmp_path / "plain.anot", tmp_path / "plain.csv", "--region",
                "400,1000,768,768")
    assert plain.returncode == 0, plain.stderr
    n_plain = len(json.loads((tmp_path / "plain.anot").read_text())["elements"])
    for name, flags in {"flips": ("--test-time-flips", "true"),
                        "both": ("--test-time-flips", "true", "--test-time-shifts", "true")
                        }.items():
        ann, csv = tmp_path / f"{name}.anot", tmp_path / f"{name}.csv"
        proc = cli(cmu_svs, ann, csv, "--region", "400,1000,768,768", *flags)
        assert proc.returncode == 0, proc.stderr
        doc = load_annotation(ann)
        assert doc["attributes"]["params"]["test_time_flips"] is True
        assert doc["attributes"]["params"]["test_time_shifts"] is (name == "both")
        n = len(doc["elements"])
        assert n > 50, (name, n)
        # the same tissue: a similar count (the averaged maps keep or drop a few faint nuclei)
        assert 0.75 * n_plain <= n <= 1.25 * n_plain, (name, n, n_plain)
