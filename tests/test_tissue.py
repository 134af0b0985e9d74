"""Tissue masking on real slides and on glass."""
from __future__ import annotations

import numpy as np
import pytest

from slicer_cli.nuclei.slide import open_slide, read_thumbnail
from slicer_cli.nuclei.tissue import detect_tissue


def test_real_svs_has_tissue_and_glass(cmu_svs):
    slide, source = open_slide(str(cmu_svs))
    mask = detect_tissue(read_thumbnail(source, 1024), slide.size_x, slide.size_y)
    frac = mask.mask.mean()
    assert 0.2 < frac < 0.98
    assert mask.fraction(0, 0, slide.size_x, slide.size_y) == pytest.approx(frac)


def test_glass_has_no_tissue():
    white = np.full((200, 300, 3), 245, dtype=np.uint8)
    white += np.random.default_rng(0).integers(0, 8, white.shape, dtype=np.uint8)
    mask = detect_tissue(white, 3000, 2000)
    assert not mask.mask.any()
    assert mask.fraction(0, 0, 3000, 2000) == 0.0


def test_rejects_non_rgb():
    with pytest.raises(ValueError, match="uint8 RGB"):
        detect_tissue(np.zeros((10, 10), dtype=np.uint8), 10, 10)
