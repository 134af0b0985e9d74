"""Test-time flips (slicer_cli/nuclei/backends/flips.py) on the shipped model: the averaged
maps are flip-equivariant, one flip is the plain call, and the CLI option runs end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest

from slicer_cli.nuclei.backends.flips import FLIPS, infer_with_flips

from .conftest import cli, load_annotation


@pytest.fixture(scope="module")
def tiles(hgsc_rgb) -> np.ndarray:
    return np.ascontiguousarray(np.stack([hgsc_rgb[:256, :320], hgsc_rgb[300:556, 500:820]]))


def test_one_flip_is_the_plain_call(backend, tiles):
    plain = backend.infer(tiles)
    once = infer_with_flips(backend, tiles, flips=1)
    for name, value in plain.items():
        np.testing.assert_array_equal(once[name], value)


@pytest.mark.parametrize("axes", [(2,), (1,), (1, 2)])
def test_averaged_maps_of_a_mirror_image_are_the_mirrored_maps(backend, tiles, axes):
    """Averaged over the four flips, the maps no longer depend on which way up a tile is;
    the plain network's do (a flipped tile meets other weights)."""
    maps = infer_with_flips(backend, tiles)
    mirrored = infer_with_flips(backend, np.ascontiguousarray(np.flip(tiles, axes)))
    plain = backend.infer(tiles)
    plain_mirrored = backend.infer(np.ascontiguousarray(np.flip(tiles, axes)))
    for name in maps:
        # the same four float32 maps summed in another order: a few ulps of a probability
        np.testing.assert_allclose(np.flip(mirrored[name], axes), maps[name], atol=1e-6,
                                   err_msg=name)
        assert np.abs(np.flip(plain_mirrored[name], axes) - plain[name]).max() > 1e-3, name
        assert maps[name].shape == plain[name].shape and maps[name].dtype == np.float32


@pytest.mark.parametrize("flips", [0, len(FLIPS) + 1])
def test_other_flip_counts_are_refused(backend, tiles, flips):
    with pytest.raises(ValueError, match="flips must be 1 to 4"):
        infer_with_flips(backend, tiles, flips=flips)


def test_cli_option_runs_with_flips_and_records_it(tmp_path, cmu_svs):
    ann, csv = tmp_path / "nuclei.anot", tmp_path / "features.csv"
    proc = cli(cmu_svs, ann, csv, "--region", "400,1000,768,768", "--test-time-flips", "true")
    assert proc.returncode == 0, proc.stderr
    doc = load_annotation(ann)
    assert doc["attributes"]["params"]["test_time_flips"] is True
    assert len(doc["elements"]) > 50
    plain = cli(cmu_svs, tmp_path / "plain.anot", tmp_path / "plain.csv", "--region",
                "400,1000,768,768")
    assert plain.returncode == 0, plain.stderr
    n_plain = len(json.loads((tmp_path / "plain.anot").read_text())["elements"])
    # the same tissue: a similar count (the averaged maps keep or drop a few faint nuclei)
    assert 0.75 * n_plain <= len(doc["elements"]) <= 1.25 * n_plain
