"""Outlines: one polygon per nucleus, touching nuclei traced apart."""
from __future__ import annotations

import numpy as np
from shapely.geometry import Polygon

from slicer_cli.nuclei.outlines import on_whole_pixels, trace_outlines


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


def test_whole_pixel_outlines_move_each_vertex_half_a_pixel_at_most():
    ring = np.array([[10.3, 20.6], [15.49, 20.4], [15.51, 26.2], [10.2, 25.7]])
    tiny = np.array([[3.2, 4.2], [3.4, 4.1], [3.3, 4.4]])      # all round to (3, 4)
    line = np.array([[7.0, 1.0], [7.4, 1.2], [9.0, 1.3]])      # rounds to two vertices
    # a repeat across the wrap (last equals first once rounded) is dropped too
    wrap = np.array([[0.1, 0.1], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0], [-0.2, 0.3]])
    got = on_whole_pixels([ring, tiny, line, wrap])
    assert [g.dtype.kind for g in got] == ["i"] * 4
    assert got[0].tolist() == [[10, 21], [15, 20], [16, 26], [10, 26]]
    assert np.abs(got[0] - ring).max() <= 0.5
    # fewer than three distinct vertices: the whole-pixel box, at least one pixel each way
    assert got[1].tolist() == [[3, 4], [4, 4], [4, 5], [3, 5]]
    assert got[2].tolist() == [[7, 1], [9, 1], [9, 2], [7, 2]]
    assert got[3].tolist() == [[4, 0], [4, 4], [0, 4], [0, 0]]
    assert on_whole_pixels([]) == []


def test_whole_pixel_outlines_of_real_nuclei_keep_their_shape(hgsc_labels):
    lab = hgsc_labels[:400, :400]
    ids = np.unique(lab[lab > 0])
    relabel = np.zeros(lab.max() + 1, dtype=np.int32)
    relabel[ids] = np.arange(1, len(ids) + 1)
    outs = trace_outlines(relabel[lab])
    # the pipeline's contours sit at fractional base pixels (model-to-base scale)
    scaled = [o * 1.0137 + [1000.25, 2000.75] for o in outs]
    whole = on_whole_pixels(scaled)
    assert len(whole) == len(scaled)
    for before, after in zip(scaled, whole):
        assert len(after) >= 3 and (np.abs(np.diff(after, axis=0)).sum(axis=1) > 0).all()
        # the box moves by at most half a pixel per side (one pixel for a collapsed outline)
        gap = np.abs(np.r_[after.min(0) - before.min(0), after.max(0) - before.max(0)])
        assert gap.max() <= (0.5 if len(after) > 4 else 1.0)
    areas = np.array([Polygon(a).area for a in whole])
    ref = np.array([Polygon(b).area for b in scaled])
    big = ref > 100
    # rounding moves each vertex by at most half a pixel: area within perimeter / 2
    per = np.array([Polygon(b).length for b in scaled])
    assert (np.abs(areas - ref)[big] <= per[big] / 2).all()
