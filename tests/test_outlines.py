"""Outlines: one polygon per nucleus, touching nuclei traced apart."""
from __future__ import annotations

import numpy as np
from shapely.geometry import Polygon

from slicer_cli.nuclei.outlines import trace_outlines


def test_touching_squares_give_two_outlines():
    lab = np.zeros((40, 60), dtype=np.int32)
    lab[10:30, 10:30] = 1
    lab[10:30, 30:50] = 2
    outs = trace_outlines(lab)
    assert len(outs) == 2
    p1, p2 = Polygon(outs[0]), Polygon(outs[1])
    assert p1.is_valid and p2.is_valid
    assert p1.centroid.x < 30 < p2.centroid.x
    assert not p1.intersects(p2)


def test_outline_area_matches_pixels(hgsc_labels):
    lab = hgsc_labels[:400, :400]
    ids = np.unique(lab)
    ids = ids[ids > 0]
    relabel = np.zeros(lab.max() + 1, dtype=np.int32)
    relabel[ids] = np.arange(1, len(ids) + 1)
    lab = relabel[lab]
    outs = trace_outlines(lab)
    assert len(outs) == len(ids)
    areas = np.bincount(lab.ravel())[1:]
    poly = np.array([Polygon(o).area for o in outs])
    big = areas > 100
    # vertices are pixel centres of the outermost pixels: area is about pixels - perimeter / 2
    ratio = poly[big] / areas[big]
    assert np.median(ratio) > 0.75 and np.median(ratio) < 1.0
    cy = np.array([Polygon(o).centroid.y for o in outs])
    ys = np.bincount(lab.ravel(), weights=np.indices(lab.shape)[0].ravel())[1:] / areas
    assert np.abs(cy - ys)[big].max() < 1.5


def test_empty_and_tiny():
    assert trace_outlines(np.zeros((5, 5), dtype=np.int32)) == []
    lab = np.zeros((5, 5), dtype=np.int32)
    lab[2, 2] = 1
    (out,) = trace_outlines(lab)
    assert out.shape[0] >= 3
