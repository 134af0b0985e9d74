"""Macenko stain normalisation on real H&E."""
from __future__ import annotations

import numpy as np
import pytest

from slicer_cli.nuclei import stain


def test_reference_is_derived_from_training_image(hgsc_rgb):
    stains, max_conc = stain.estimate_stains(hgsc_rgb)
    np.testing.assert_allclose(stains, stain.REFERENCE_STAINS, atol=1e-3)
    np.testing.assert_allclose(max_conc, stain.REFERENCE_MAX_CONC, rtol=1e-3)


def test_normalised_tile_takes_reference_stains(cmu_svs):
    from slicer_cli.nuclei.slide import open_slide

    _, source = open_slide(str(cmu_svs))
    tile, _ = source.getRegion(region=dict(left=700, top=1500, width=768, height=768),
                               format="numpy")
    tile = np.ascontiguousarray(tile[:, :, :3])
    before, _ = stain.estimate_stains(tile)
    out = stain.normalize_stain(tile)
    assert out.shape == tile.shape and out.dtype == np.uint8
    after, after_max = stain.estimate_stains(out)
    # the hematoxylin vector moves towards the reference
    ref_h = stain.REFERENCE_STAINS[:, 0]
    assert np.linalg.norm(after[:, 0] - ref_h) < np.linalg.norm(before[:, 0] - ref_h)
    np.testing.assert_allclose(after_max, stain.REFERENCE_MAX_CONC, rtol=0.15)


def test_glass_is_left_unchanged():
    glass = np.full((64, 64, 3), 240, dtype=np.uint8)
    assert stain.estimate_stains(glass) is None
    np.testing.assert_array_equal(stain.normalize_stain(glass), glass)


@pytest.mark.gpu
def test_cupy_twin_matches_numpy(hgsc_rgb):
    cp = pytest.importorskip("cupy")
    if cp.cuda.runtime.getDeviceCount() == 0:  # pragma: no cover
        pytest.skip("no CUDA device")
    tile = hgsc_rgb[:512, :512]
    ref = stain.normalize_stain(tile)
    got = cp.asnumpy(stain.normalize_stain(cp.asarray(tile)))
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
