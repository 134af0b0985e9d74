"""Metrics on hand-made label images whose scores are worked out by hand in each test."""
from __future__ import annotations

import math

import numpy as np
import pytest

from slicer_cli.nuclei.metrics import (
    aggregated_jaccard_index,
    agreement_pq,
    common_region,
    detection_f1,
    multiclass_pq,
    panoptic_quality,
    pq_difference_intervals,
    pq_intervals,
)


def _canvas() -> np.ndarray:
    return np.zeros((30, 40), dtype=np.int32)


def _two_squares() -> np.ndarray:
    lab = _canvas()
    lab[0:10, 0:10] = 1      # 100 px
    lab[15:25, 20:30] = 2    # 100 px
    return lab


def test_perfect_match_scores_one_even_with_other_ids():
    true = _two_squares()
    pred = np.where(true == 1, 42, np.where(true == 2, 7, 0))  # same nuclei, other ids
    pq = panoptic_quality(true, pred)
    assert pq["pq"] == pq["dq"] == pq["sq"] == pq["f1"] == 1.0
    assert (pq["tp"], pq["fp"], pq["fn"]) == (2, 0, 0)
    assert aggregated_jaccard_index(true, pred) == 1.0
    assert detection_f1(true, pred) == 1.0


def test_one_missed_nucleus():
    true = _two_squares()
    pred = np.where(true == 1, 1, 0)
    pq = panoptic_quality(true, pred)
    # tp 1, fn 1: DQ = 1 / (1 + 0.5) = 2/3, SQ = 1, PQ = 2/3
    assert (pq["tp"], pq["fp"], pq["fn"]) == (1, 0, 1)
    assert pq["dq"] == pytest.approx(2 / 3)
    assert pq["sq"] == pytest.approx(1.0)
    assert pq["pq"] == pytest.approx(2 / 3)
    assert pq["recall"] == pytest.approx(0.5) and pq["precision"] == pytest.approx(1.0)
    # AJI: intersection 100 / (union 100 + missed area 100) = 0.5
    assert aggregated_jaccard_index(true, pred) == pytest.approx(0.5)


def test_shifted_nucleus_with_known_iou():
    true = _canvas()
    true[0:10, 0:10] = 1
    pred = _canvas()
    pred[0:10, 2:12] = 1  # shift by 2 px: intersection 80, union 120, IoU 2/3
    pq = panoptic_quality(true, pred)
    assert (pq["tp"], pq["fp"], pq["fn"]) == (1, 0, 0)
    assert pq["sq"] == pytest.approx(2 / 3)
    assert pq["pq"] == pytest.approx(2 / 3)
    assert aggregated_jaccard_index(true, pred) == pytest.approx(80 / 120)


def test_shift_below_iou_half_is_a_miss_and_a_false_positive():
    true = _canvas()
    true[0:10, 0:10] = 1
    pred = _canvas()
    pred[0:10, 4:14] = 1  # intersection 60, union 140, IoU 3/7 < 0.5
    pq = panoptic_quality(true, pred)
    assert (pq["tp"], pq["fp"], pq["fn"]) == (0, 1, 1)
    assert pq["pq"] == 0.0 and pq["f1"] == 0.0
    assert aggregated_jaccard_index(true, pred) == pytest.approx(60 / 140)


def test_iou_exactly_half_does_not_match():
    true = _canvas()
    true[0:10, 0:10] = 1
    true[0:10, 10:20] = 2
    pred = _canvas()
    pred[0:10, 0:20] = 1  # one prediction over both: IoU 100/200 = 0.5 with each
    pq = panoptic_quality(true, pred)
    assert (pq["tp"], pq["fp"], pq["fn"]) == (0, 1, 2)
    assert pq["pq"] == 0.0
    # AJI: both true nuclei pair with the merged prediction (its area counted per pair):
    # (100 + 100) / (200 + 200) = 0.5
    assert aggregated_jaccard_index(true, pred) == pytest.approx(0.5)


def test_aji_adds_unpaired_prediction_to_union():
    true = _canvas()
    true[0:10, 0:10] = 1
    pred = _canvas()
    pred[0:10, 0:6] = 1   # IoU 60/100, the best pair
    pred[0:10, 6:10] = 2  # IoU 40/100, left unpaired: its 40 px join the union
    pred[20:25, 30:35] = 3  # a 25 px false positive elsewhere
    assert aggregated_jaccard_index(true, pred) == pytest.approx(60 / (100 + 40 + 25))
    pq = panoptic_quality(true, pred)
    assert (pq["tp"], pq["fp"], pq["fn"]) == (1, 2, 0)
    # DQ = 1 / (1 + 1) = 0.5, SQ = 0.6
    assert pq["pq"] == pytest.approx(0.3)


def test_empty_images():
    empty = _canvas()
    both = panoptic_quality(empty, empty)
    assert both["pq"] == 1.0 and both["tp"] == both["fp"] == both["fn"] == 0
    assert aggregated_jaccard_index(empty, empty) == 1.0
    one = _two_squares()
    assert panoptic_quality(one, empty)["pq"] == 0.0
    assert panoptic_quality(empty, one)["pq"] == 0.0
    assert panoptic_quality(empty, one)["fp"] == 2
    assert aggregated_jaccard_index(one, empty) == 0.0
    assert aggregated_jaccard_index(empty, one) == 0.0


def test_multiclass_pq_per_class_and_mean():
    true = _two_squares()
    pred = true.copy()
    # truth: nucleus 1 is class 0, nucleus 2 class 1; the prediction calls both class 1.
    res = multiclass_pq(true, [0, 1], pred, [1, 1], n_classes=3)
    pqs = res["pq_per_class"]
    assert pqs[0] == 0.0                       # class 0: tp 0, fn 1
    assert pqs[1] == pytest.approx(2 / 3)      # class 1: tp 1, fp 1 -> DQ 2/3, SQ 1
    assert math.isnan(pqs[2])                  # class 2 absent from both: skipped
    assert res["mpq"] == pytest.approx((0 + 2 / 3) / 2)
    perfect = multiclass_pq(true, [0, 1], pred, [0, 1], n_classes=3)
    assert perfect["pq_per_class"][:2] == [1.0, 1.0] and perfect["mpq"] == 1.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        panoptic_quality(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(ValueError):
        panoptic_quality(_two_squares(), _two_squares(), match_iou=0.3)
    with pytest.raises(ValueError):
        multiclass_pq(_two_squares(), [0], _two_squares(), [0, 1], n_classes=2)


# --------------------------------------------------------------------------- agreement
def _grid_of_nuclei() -> np.ndarray:
    """Nine 6 x 6 nuclei in a 60 x 60 image, none near the edges."""
    lab = np.zeros((60, 60), dtype=np.int32)
    k = 0
    for r in (10, 27, 44):
        for c in (10, 27, 44):
            k += 1
            lab[r:r + 6, c:c + 6] = k
    return lab


@pytest.mark.parametrize("offset", [(0, 0), (1, 0), (0, 3), (8, 0), (17, 9), (-5, 2)])
def test_agreement_of_a_shifted_copy_is_one(offset):
    a = _grid_of_nuclei()
    dy, dx = offset
    # B shows A's pixel (y + dy, x + dx) at (y, x): the same nuclei, other ids
    b = np.zeros_like(a)
    src = a[max(dy, 0):a.shape[0] + min(dy, 0), max(dx, 0):a.shape[1] + min(dx, 0)]
    b[max(-dy, 0):max(-dy, 0) + src.shape[0], max(-dx, 0):max(-dx, 0) + src.shape[1]] = \
        np.where(src > 0, src + 100, 0)
    stats = agreement_pq(a, b, offset)
    assert stats["pq"] == 1.0 and stats["tp"] == stats["n_a"] == stats["n_b"]
    assert stats["n_a"] >= 4  # interior nuclei are compared, edge ones dropped


def test_agreement_counts_a_lost_and_a_moved_nucleus():
    a = _grid_of_nuclei()
    b = a.copy()
    b[b == 5] = 0                         # the centre nucleus lost
    b[b == 1] = 0
    b[10:16, 13:19] = 1                   # nucleus 1 moved by 3 px: IoU 18 / 54 = 1/3
    stats = agreement_pq(a, b)
    # 7 matches with IoU 1; nucleus 1 unmatched on both sides; nucleus 5 missed in B
    assert (stats["tp"], stats["fp"], stats["fn"]) == (7, 1, 2)
    assert stats["pq"] == pytest.approx(7 / (7 + 0.5 * 1 + 0.5 * 2))


def test_agreement_ignores_nuclei_cut_by_the_common_edge():
    a = _grid_of_nuclei()
    a[0:4, 30:36] = 20       # cut by A's top edge
    b = a.copy()
    b[0:4, 30:36] = 0
    b[0:2, 30:36] = 21       # the same nucleus, cut differently
    stats = agreement_pq(a, b)
    assert stats["pq"] == 1.0 and stats["n_a"] == 9


def test_agreement_of_disjoint_images_is_refused():
    with pytest.raises(ValueError, match="share no pixel"):
        agreement_pq(np.zeros((10, 10), np.int32), np.zeros((10, 10), np.int32), (10, 0))
    with pytest.raises(ValueError, match="share no pixel"):
        common_region((5, 5), (5, 5), (0, -5))


def test_common_region_slices():
    sl_a, sl_b = common_region((100, 80), (90, 70), (8, 17))
    assert sl_a == (slice(8, 98), slice(17, 80)) and sl_b == (slice(0, 90), slice(0, 63))


def _grid(n: int = 8, size: int = 80) -> np.ndarray:
    """``n`` x ``n`` squares of 6 x 6 px, ids 1.. row by row, on a ``size`` x ``size`` image."""
    lab = np.zeros((size, size), dtype=np.int32)
    step = size // n
    for k in range(n * n):
        r, c = divmod(k, n)
        lab[r * step + 2:r * step + 8, c * step + 2:c * step + 8] = k + 1
    return lab


def test_pq_intervals_of_one_block_are_the_scores_themselves():
    true = _grid()
    classes = np.arange(64) % 3
    pred = true.copy()
    pred[true == 5] = 0                                   # a miss
    moved = np.roll(true == 9, 3, axis=1)
    pred[true == 9] = 0
    pred[moved] = 9                                       # moved 3 px: IoU 18 / 54, a miss
    pred[70:76, 70:76] = 99                               # a false one
    pred_classes = classes.copy()
    pred_classes[:10] = (pred_classes[:10] + 1) % 3       # ten called wrong
    pred_classes = np.concatenate([pred_classes, np.zeros(35, dtype=int)])
    res = pq_intervals(true, classes, pred, pred_classes, 3, blocks=1, n_boot=50)
    b = panoptic_quality(true, pred)["pq"]
    m = multiclass_pq(true, classes, pred, pred_classes, 3)
    assert 0.5 < b < 1
    # the same sums in another order: float rounding of a few ulps
    assert res["bpq"] == pytest.approx([b, b], abs=1e-12)
    assert res["mpq"] == pytest.approx([m["mpq"]] * 2, abs=1e-12)
    for got, want in zip(res["pq_per_class"], m["pq_per_class"]):
        assert got == pytest.approx([want, want], abs=1e-12)


def test_pq_intervals_of_errors_in_one_quadrant_worked_by_hand():
    """4 nuclei per quadrant; the top-left four are all missed: bPQ 12 / 14. Four quadrants
    drawn with replacement, k of them the bad one (binomial, p = 1/4): bPQ 4(4-k) / (4(4-k)
    + 2k) = 1, 0.857, 0.667, 0.4, 0 for k = 0..4. P(k >= 3) = 0.051, P(k = 4) = 0.004, P(k
    = 0) = 0.32: the 95 % interval is [0.4, 1]."""
    true = _grid(4, 40)
    pred = np.where(np.isin(true, [1, 2, 5, 6]), 0, true)
    classes = np.zeros(16, dtype=int)
    res = pq_intervals(true, classes, pred, classes, 1, blocks=2, n_boot=4000)
    assert panoptic_quality(true, pred)["pq"] == pytest.approx(12 / 14)
    assert res["bpq"] == pytest.approx([0.4, 1.0])
    assert res["pq_per_class"][0] == pytest.approx([0.4, 1.0])
    perfect = pq_intervals(true, classes, true, classes, 1, blocks=2)
    assert perfect["bpq"] == [1.0, 1.0] and perfect["mpq"] == [1.0, 1.0]


def test_pq_difference_intervals_worked_by_hand_and_sharper_than_two_intervals():
    true = _grid(4, 40)
    classes = np.zeros(16, dtype=int)
    perfect = (true, classes)
    assert pq_difference_intervals(true, classes, perfect, perfect, 1, blocks=2)["bpq"] == \
        [0.0, 0.0]
    # B misses the top-left four (the case above), A is perfect: B - A = bPQ_B - 1, that is
    # 0, -0.143, -0.333, -0.6, -1 for k = 0..4 bad quadrants drawn: the interval [-0.6, 0]
    worse = (np.where(np.isin(true, [1, 2, 5, 6]), 0, true), classes)
    res = pq_difference_intervals(true, classes, perfect, worse, 1, blocks=2, n_boot=4000)
    assert res["bpq"] == pytest.approx([-0.6, 0.0])
    # two predictions that share most of their errors: the paired interval is much narrower
    # than either prediction's own (the shared luck cancels)
    true = _grid()
    classes = np.zeros(64, dtype=int)
    shared = np.where(np.isin(true, [3, 12, 22, 31, 45, 50, 58, 63]), 0, true)
    one_more = np.where(true == 27, 0, shared)
    own = pq_intervals(true, classes, one_more, classes, 1)["bpq"]
    diff = pq_difference_intervals(true, classes, (shared, classes), (one_more, classes),
                                   1)["bpq"]
    assert diff[1] <= 0 and diff[1] - diff[0] < 0.5 * (own[1] - own[0])
