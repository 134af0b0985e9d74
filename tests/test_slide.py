"""Opening slides and reading tiles: real files, and each way a slide can be bad."""
from __future__ import annotations

import numpy as np
import pytest

from slicer_cli.nuclei.errors import ResolutionError, SlideError
from slicer_cli.nuclei.records import Tile
from slicer_cli.nuclei.slide import open_slide, read_thumbnail, read_tile


def test_open_real_svs_reads_size_and_resolution(cmu_svs):
    slide, _ = open_slide(str(cmu_svs))
    assert (slide.size_x, slide.size_y) == (2220, 2967)
    assert slide.mpp == pytest.approx(0.499)


def test_missing_file(tmp_path):
    with pytest.raises(SlideError, match="not found"):
        open_slide(str(tmp_path / "nope.svs"))


def test_directory_is_not_a_slide(tmp_path):
    with pytest.raises(SlideError, match="not a readable file"):
        open_slide(str(tmp_path))


def test_non_image_file(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_text("this is not a slide\n" * 100)
    with pytest.raises(SlideError, match="cannot read slide notes.svs"):
        open_slide(str(path))


def test_truncated_slide_fails_cleanly(tmp_path, cmu_svs):
    path = tmp_path / "truncated.svs"
    path.write_bytes(cmu_svs.read_bytes()[:300_000])
    with pytest.raises(SlideError):
        slide, source = open_slide(str(path))
        # Some readers open the header and fail only on pixels: read everything.
        read_thumbnail(source, 256)
        for y in range(0, slide.size_y, 1024):
            for x in range(0, slide.size_x, 1024):
                read_tile(source, slide, Tile(0, x, y, 1024, 1024, x, y, x + 1, y + 1, 1.0,
                                              1024, 1024, y))


def test_no_resolution_needs_explicit_mpp(hgsc_image):
    with pytest.raises(ResolutionError, match="--slide-mpp"):
        open_slide(str(hgsc_image))
    slide, _ = open_slide(str(hgsc_image), mpp=0.5)
    assert slide.mpp == 0.5


def test_read_tile_pads_outside_with_glass(cmu_svs):
    slide, source = open_slide(str(cmu_svs))
    tile = Tile(0, -100, -50, 400, 400, 0, 0, 300, 350, 1.0, 400, 400, 0)
    arr = read_tile(source, slide, tile)
    assert arr.shape == (400, 400, 3) and arr.dtype == np.uint8
    assert (arr[:50] == 255).all() and (arr[:, :100] == 255).all()
    inside = arr[50:, 100:]
    direct, _ = source.getRegion(region=dict(left=0, top=0, width=300, height=350),
                                 format="numpy")
    np.testing.assert_array_equal(inside, direct[:, :, :3])


def test_read_tile_resamples_to_model_resolution(cmu_svs):
    slide, source = open_slide(str(cmu_svs), mpp=0.25)  # pretend 40x: read at half size
    tile = Tile(0, 800, 1200, 800, 600, 800, 1200, 1600, 1800, 0.5, 400, 300, 1200)
    arr = read_tile(source, slide, tile)
    assert arr.shape == (300, 400, 3)
    assert arr.std() > 10  # real tissue, not padding


_CACHE_PROBE = """
import sys
from large_image.cache_util import getTileCache
from slicer_cli.nuclei.records import Tile
from slicer_cli.nuclei.slide import open_slide, read_tile
slide, source = open_slide(sys.argv[1])
for y in range(0, slide.size_y, 512):
    for x in range(0, slide.size_x, 512):
        read_tile(source, slide, Tile(0, x, y, 512, 512, x, y, x + 512, y + 512, 1.0,
                                      512, 512, y))
cache = getTileCache()[0]
print(cache.maxsize, len(cache))
"""


@pytest.mark.parametrize("env, maxsize", [({}, "64"), ({"LARGE_IMAGE_CACHE_TILECACHE_MAXIMUM":
                                                       "500"}, "500")])
def test_tile_cache_is_bounded_unless_the_deployment_sets_it(cmu_svs, env, maxsize):
    """A whole slide read once must not fill large_image's default cache (a 32nd of memory);
    a deployment's own setting is kept. In a fresh process: the cache is made once."""
    import os
    import subprocess
    import sys

    from slicer_cli.nuclei.slide import TILE_CACHE_TILES

    clean = {k: v for k, v in os.environ.items() if not k.startswith("LARGE_IMAGE_")}
    out = subprocess.run([sys.executable, "-c", _CACHE_PROBE, str(cmu_svs)], text=True,
                         capture_output=True, env={**clean, **env}, check=True).stdout.split()
    assert out[0] == maxsize and int(out[1]) <= int(maxsize)
    assert TILE_CACHE_TILES == 64
    if not env:  # the CMU slide has more tiles than that: the bound is what held them
        assert int(out[1]) == TILE_CACHE_TILES
