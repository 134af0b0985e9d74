"""Instance segmentation metrics (HoVer-Net ``compute_stats`` / PanNuke conventions).

All functions take integer label images (0 background, any positive ids) and are vectorised:
overlaps come from one ``np.unique`` over (true, pred) label pairs, never a per-nucleus loop.

* :func:`panoptic_quality` -- binary PQ with DQ (= detection F1 at IoU 0.5) and SQ; a true
  and a predicted nucleus match when their IoU is > 0.5 (such matches are unique);
* :func:`aggregated_jaccard_index` -- AJI (Kumar et al. 2017, HoVer-Net ``get_fast_aji``);
* :func:`multiclass_pq` -- per-class PQ on class-restricted instance maps and their mean, mPQ
  (PanNuke: a class absent from both truth and prediction is skipped, NaN);
* :func:`agreement_pq` -- PQ between two *predictions* of the same tissue seen through
  shifted or re-encoded images (no labels needed): how stable the nuclei are;
* :func:`pq_intervals` -- block-bootstrap intervals of bPQ, mPQ and per-class PQ (how much
  of a score is the luck of the nuclei in the image), and :func:`pq_difference_intervals`,
  the same for the difference of two predictions scored on the same draws.
"""
from __future__ import annotations

import warnings

import numpy as np

_MATCH_IOU = 0.5


def _overlaps(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, ...]:
    """Areas of every true / pred id and intersections of every overlapping pair.

    Returns ``(true_ids, true_area, pred_ids, pred_area, pair_t, pair_p, inter)`` where
    ``pair_t`` / ``pair_p`` index into ``true_ids`` / ``pred_ids``.
    """
    true = np.asarray(true)
    pred = np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"label images differ in shape: {true.shape} vs {pred.shape}")
    t_ids, t_inv = np.unique(true.ravel(), return_inverse=True)
    p_ids, p_inv = np.unique(pred.ravel(), return_inverse=True)
    t_area = np.bincount(t_inv, minlength=len(t_ids))
    p_area = np.bincount(p_inv, minlength=len(p_ids))
    both = (true.ravel() > 0) & (pred.ravel() > 0)
    keys = t_inv[both].astype(np.int64) * len(p_ids) + p_inv[both]
    pairs, inter = np.unique(keys, return_counts=True)
    pair_t, pair_p = np.divmod(pairs, len(p_ids))
    t_fg = t_ids > 0
    p_fg = p_ids > 0
    # Re-index to foreground ids only.
    t_map = np.cumsum(t_fg) - 1
    p_map = np.cumsum(p_fg) - 1
    return (t_ids[t_fg], t_area[t_fg], p_ids[p_fg], p_area[p_fg], t_map[pair_t],
            p_map[pair_p], inter)


def panoptic_quality(true_labels: np.ndarray, pred_labels: np.ndarray,
                     match_iou: float = _MATCH_IOU) -> dict[str, float]:
    """Binary panoptic quality of a predicted instance map against the truth.

    Parameters
    ----------
    true_labels, pred_labels : array of int, same shape
        Instance label images (0 background).
    match_iou : float
        A pair matches when IoU > ``match_iou`` (>= 0.5 keeps matches unique).

    Returns
    -------
    dict
        ``pq``, ``dq`` (= ``f1``, detection F1 at the matching IoU), ``sq`` (mean IoU of the
        matches), ``f1``, ``precision``, ``recall``, and counts ``tp``, ``fp``, ``fn``.
        With no nucleus in either image every score is 1.0 (nothing to find, nothing found);
        with nuclei on one side only they are 0.0.

    Raises
    ------
    ValueError
        When the shapes differ or ``match_iou`` < 0.5.
    """
    t_ids, p_ids, pt, pp, iou, matched = _matches(true_labels, pred_labels, match_iou)
    tp = int(matched.sum())
    fp = len(p_ids) - tp
    fn = len(t_ids) - tp
    return _pq_dict(tp, fp, fn, float(iou[matched].sum()))


def _matches(true_labels: np.ndarray, pred_labels: np.ndarray, match_iou: float):
    """``(true_ids, pred_ids, pair_t, pair_p, iou, matched)``: every overlapping pair
    (:func:`_overlaps`), its IoU, and whether it is a match (IoU > ``match_iou``, unique for
    ``match_iou`` >= 0.5)."""
    if match_iou < 0.5:
        raise ValueError("match_iou must be >= 0.5 for unique matching")
    t_ids, t_area, p_ids, p_area, pt, pp, inter = _overlaps(true_labels, pred_labels)
    iou = inter / (t_area[pt] + p_area[pp] - inter)
    return t_ids, p_ids, pt, pp, iou, iou > match_iou


def _pq_dict(tp: int, fp: int, fn: int, iou_sum: float) -> dict[str, float]:
    if tp + fp + fn == 0:
        dq = sq = precision = recall = 1.0
    else:
        dq = tp / (tp + 0.5 * fp + 0.5 * fn)
        sq = iou_sum / tp if tp else 0.0
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
    return {"pq": dq * sq, "dq": dq, "sq": sq, "f1": dq, "precision": precision,
            "recall": recall, "tp": tp, "fp": fp, "fn": fn}


def detection_f1(true_labels: np.ndarray, pred_labels: np.ndarray,
                 match_iou: float = _MATCH_IOU) -> float:
    """Detection F1: a nucleus is found when one prediction overlaps it with IoU > 0.5."""
    return panoptic_quality(true_labels, pred_labels, match_iou)["f1"]


def aggregated_jaccard_index(true_labels: np.ndarray, pred_labels: np.ndarray) -> float:
    """Aggregated Jaccard Index (AJI).

    Each true nucleus is paired with the prediction of highest IoU among those it overlaps
    (ties: the lowest predicted id); intersections and unions of the pairs are summed, the
    areas of unpaired true nuclei and of predictions paired with no nucleus are added to the
    union. A prediction may pair with several true nuclei (as in Kumar et al. and HoVer-Net's
    ``get_fast_aji``).

    Returns
    -------
    float
        AJI in [0, 1]; 1.0 when both images are empty, 0.0 when only one is.
    """
    t_ids, t_area, p_ids, p_area, pt, pp, inter = _overlaps(true_labels, pred_labels)
    if len(t_ids) == 0 and len(p_ids) == 0:
        return 1.0
    union = t_area[pt] + p_area[pp] - inter
    iou = inter / union
    # Best pair per true nucleus: sort by (true, -iou, pred) and take the first of each true.
    order = np.lexsort((pp, -iou, pt))
    first = np.ones(len(order), dtype=bool)
    first[1:] = pt[order][1:] != pt[order][:-1]
    best = order[first]
    total_inter = float(inter[best].sum())
    total_union = float(union[best].sum())
    paired_true = np.zeros(len(t_ids), dtype=bool)
    paired_true[pt[best]] = True
    paired_pred = np.zeros(len(p_ids), dtype=bool)
    paired_pred[pp[best]] = True
    total_union += float(t_area[~paired_true].sum()) + float(p_area[~paired_pred].sum())
    return total_inter / total_union if total_union else 0.0


def _class_maps(true_labels: np.ndarray, true_classes, pred_labels: np.ndarray, pred_classes,
                n_classes: int):
    """For each class c, the true and predicted instance maps restricted to class c.

    Raises
    ------
    ValueError
        When a label has no class (``classes[k]`` is the class of label ``k + 1``).
    """
    true_labels = np.asarray(true_labels)
    pred_labels = np.asarray(pred_labels)
    t_lut = np.concatenate([[-1], np.asarray(true_classes, dtype=np.int64)])
    p_lut = np.concatenate([[-1], np.asarray(pred_classes, dtype=np.int64)])
    if len(t_lut) <= true_labels.max(initial=0) or len(p_lut) <= pred_labels.max(initial=0):
        raise ValueError("need one class per label 1..max(labels)")
    t_cls = t_lut[true_labels]
    p_cls = p_lut[pred_labels]
    for c in range(n_classes):
        yield np.where(t_cls == c, true_labels, 0), np.where(p_cls == c, pred_labels, 0)


def multiclass_pq(true_labels: np.ndarray, true_classes: np.ndarray, pred_labels: np.ndarray,
                  pred_classes: np.ndarray, n_classes: int,
                  match_iou: float = _MATCH_IOU) -> dict[str, object]:
    """Per-class PQ and mPQ (mean over classes), PanNuke / HoVer-Net convention.

    For class ``c`` the instance maps are restricted to the nuclei of class ``c`` (truth and
    prediction separately) and binary PQ is computed on them.

    Parameters
    ----------
    true_labels, pred_labels : array of int
        Instance label images.
    true_classes, pred_classes : array of int
        Class (0-based) of each instance: element ``k`` belongs to label ``k + 1``.
    n_classes : int
        Number of classes C.

    Returns
    -------
    dict
        ``mpq`` (mean of the defined per-class PQs), ``pq_per_class`` (list of C floats; NaN
        for a class absent from truth and prediction) and ``per_class`` (the full
        :func:`panoptic_quality` dict of every class).
    """
    per_class = []
    pqs = []
    for t, p in _class_maps(true_labels, true_classes, pred_labels, pred_classes, n_classes):
        stats = panoptic_quality(t, p, match_iou)
        per_class.append(stats)
        pqs.append(float("nan") if stats["tp"] + stats["fp"] + stats["fn"] == 0
                   else stats["pq"])
    defined = [q for q in pqs if q == q]
    return {"mpq": float(np.mean(defined)) if defined else float("nan"),
            "pq_per_class": pqs, "per_class": per_class}


def common_region(shape_a: tuple[int, int], shape_b: tuple[int, int],
                  offset: tuple[int, int]) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Slices of A and of B that show the same tissue when B's pixel ``(y, x)`` is A's
    ``(y + dy, x + dx)`` (``offset = (dy, dx)``, any sign).

    Raises
    ------
    ValueError
        When the two images share no pixel.
    """
    sl_a, sl_b = [], []
    for n_a, n_b, d in zip(shape_a[:2], shape_b[:2], offset):
        start, stop = max(0, d), min(n_a, n_b + d)
        if stop <= start:
            raise ValueError(f"images of shapes {shape_a[:2]} and {shape_b[:2]} share no "
                             f"pixel at offset {tuple(offset)}")
        sl_a.append(slice(start, stop))
        sl_b.append(slice(start - d, stop - d))
    return (sl_a[0], sl_a[1]), (sl_b[0], sl_b[1])


def agreement_pq(labels_a: np.ndarray, labels_b: np.ndarray, offset: tuple[int, int] = (0, 0),
                 match_iou: float = _MATCH_IOU) -> dict[str, float]:
    """Instance agreement of two predictions of the same tissue (binary PQ of B against A).

    B's pixel ``(y, x)`` shows A's ``(y + dy, x + dx)``; the two are compared over their
    common region. Nuclei cut by that region's edge are cut differently in the two images
    (one image may end there, the other not), so they are left out symmetrically: every
    nucleus touching the edge, in A or in B, is dropped from both images together with the
    nuclei of the other image it overlaps.

    Returns
    -------
    dict
        :func:`panoptic_quality` of B's nuclei against A's on the common region, plus
        ``n_a`` and ``n_b`` (nuclei compared on each side).

    Raises
    ------
    ValueError
        When the images share no pixel.
    """
    sl_a, sl_b = common_region(np.shape(labels_a), np.shape(labels_b), offset)
    a = np.asarray(labels_a)[sl_a]
    b = np.asarray(labels_b)[sl_b]
    edge = np.zeros(a.shape, dtype=bool)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    drop = np.zeros(a.shape, dtype=bool)
    for labels in (a, b):
        cut = np.unique(labels[edge & (labels > 0)])
        drop |= np.isin(labels, cut)
    for labels in (a, b):  # with whatever those overlap on the other side
        hit = np.unique(labels[drop & (labels > 0)])
        drop |= np.isin(labels, hit)
    a = np.where(drop, 0, a)
    b = np.where(drop, 0, b)
    stats = panoptic_quality(a, b, match_iou)
    stats["n_a"] = int(len(np.unique(a)) - (a == 0).any())
    stats["n_b"] = int(len(np.unique(b)) - (b == 0).any())
    return stats


def _centroid_blocks(labels: np.ndarray, blocks: int) -> np.ndarray:
    """Block (row-major in a ``blocks`` x ``blocks`` grid) of the centroid of every label
    ``0..max`` (index it by label)."""
    h, w = labels.shape
    flat = labels.ravel()
    count = np.maximum(np.bincount(flat), 1)
    rows, cols = np.divmod(np.arange(flat.size), w)
    cy = np.bincount(flat, weights=rows) / count
    cx = np.bincount(flat, weights=cols) / count
    by = np.minimum((cy * blocks / h).astype(int), blocks - 1)
    bx = np.minimum((cx * blocks / w).astype(int), blocks - 1)
    return by * blocks + bx


def _block_sums(true_labels: np.ndarray, true_classes, pred_labels: np.ndarray,
                pred_classes, n_classes: int, blocks: int, match_iou: float) -> np.ndarray:
    """PQ sums per tile: ``[tile, score, (tp, fp, fn, iou)]``, score 0 binary, ``1 + c``
    class c; each event in the tile of its nucleus' centroid (the true one; the predicted
    one for a false prediction)."""
    true_labels = np.asarray(true_labels)
    pred_labels = np.asarray(pred_labels)
    t_block = _centroid_blocks(true_labels, blocks)
    p_block = _centroid_blocks(pred_labels, blocks)
    maps = [(true_labels, pred_labels), *_class_maps(true_labels, true_classes, pred_labels,
                                                      pred_classes, n_classes)]
    sums = np.zeros((blocks * blocks, len(maps), 4))
    for m, (t, p) in enumerate(maps):
        t_ids, p_ids, pt, pp, iou, hit = _matches(t, p, match_iou)
        t_hit = np.zeros(len(t_ids), dtype=bool)
        t_hit[pt[hit]] = True
        p_hit = np.zeros(len(p_ids), dtype=bool)
        p_hit[pp[hit]] = True
        t_of, p_of = t_block[t_ids], p_block[p_ids]
        np.add.at(sums[:, m, 0], t_of[pt[hit]], 1)
        np.add.at(sums[:, m, 3], t_of[pt[hit]], iou[hit])
        np.add.at(sums[:, m, 1], p_of[~p_hit], 1)
        np.add.at(sums[:, m, 2], t_of[~t_hit], 1)
    return sums


def _draws(blocks: int, n_boot: int, seed: int) -> np.ndarray:
    """``n_boot`` draws of ``blocks**2`` tile indices with replacement."""
    n_blocks = blocks * blocks
    return np.random.default_rng(seed).integers(0, n_blocks, (n_boot, n_blocks))


def _drawn_scores(sums: np.ndarray, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per draw (rows of tile indices): PQ of every score ``[B, 1 + C]`` (NaN for a class
    that does not occur) and mPQ ``[B]``."""
    tp, fp, fn, iou_sum = np.moveaxis(sums[draws].sum(axis=1), -1, 0)
    events = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        pq = np.where(events > 0, iou_sum / (tp + 0.5 * fp + 0.5 * fn), np.nan)
    pq[:, 0] = np.where(events[:, 0] > 0, pq[:, 0], 1.0)  # binary: nothing to find, found
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a draw where no class occurs
        mpq = np.nanmean(pq[:, 1:], axis=1)
    return pq, mpq


def _intervals(pq: np.ndarray, mpq: np.ndarray, level: float, n_blocks: int,
               n_boot: int) -> dict[str, object]:
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]

    def interval(values: np.ndarray) -> list[float]:
        values = values[~np.isnan(values)]
        return [float(v) for v in np.percentile(values, q)] if len(values) else [np.nan] * 2

    return {"bpq": interval(pq[:, 0]), "mpq": interval(mpq),
            "pq_per_class": [interval(pq[:, 1 + c]) for c in range(pq.shape[1] - 1)],
            "level": level, "blocks": n_blocks, "n_boot": n_boot}


def pq_intervals(true_labels: np.ndarray, true_classes: np.ndarray, pred_labels: np.ndarray,
                 pred_classes: np.ndarray, n_classes: int, blocks: int = 4,
                 n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                 match_iou: float = _MATCH_IOU) -> dict[str, object]:
    """Block-bootstrap intervals of bPQ, mPQ and per-class PQ: how much of a score is the
    luck of which nuclei the image happens to hold.

    The image is cut into ``blocks`` x ``blocks`` tiles. Every event of the PQ sums (a match
    with its IoU, a missed true nucleus, a false prediction) is counted in the tile of its
    nucleus' centroid (the true one; the predicted one for a false prediction), separately
    for the binary PQ and for each class's (:func:`multiclass_pq`). Tiles are then drawn with
    replacement, ``n_boot`` times, and the scores recomputed from the drawn tiles' sums;
    drawing whole tiles keeps neighbouring nuclei, which err together, together.

    Returns
    -------
    dict
        ``bpq``, ``mpq``: ``[low, high]``; ``pq_per_class``: one ``[low, high]`` per class
        (NaN where the class never occurs); ``level``, ``blocks`` (tiles drawn), ``n_boot``.
        The sums over all tiles give exactly :func:`panoptic_quality` and
        :func:`multiclass_pq`.
    """
    sums = _block_sums(true_labels, true_classes, pred_labels, pred_classes, n_classes,
                       blocks, match_iou)
    return _intervals(*_drawn_scores(sums, _draws(blocks, n_boot, seed)), level,
                      blocks * blocks, n_boot)


def pq_difference_intervals(true_labels: np.ndarray, true_classes: np.ndarray,
                            pred_a: tuple[np.ndarray, np.ndarray],
                            pred_b: tuple[np.ndarray, np.ndarray], n_classes: int,
                            blocks: int = 4, n_boot: int = 2000, level: float = 0.95,
                            seed: int = 0, match_iou: float = _MATCH_IOU) -> dict[str, object]:
    """Block-bootstrap intervals of B's scores minus A's on the same nuclei.

    ``pred_a`` and ``pred_b`` are ``(labels, classes)`` of two predictions of the same image.
    Both are scored on the same drawn tiles (:func:`pq_intervals`), so the luck of which
    nuclei the image holds, which the two share, cancels: far sharper than comparing two
    separate intervals. An interval above 0 says B scores higher on nuclei like these.
    """
    draws = _draws(blocks, n_boot, seed)
    scores = [_drawn_scores(_block_sums(true_labels, true_classes, labels, classes, n_classes,
                                        blocks, match_iou), draws)
              for labels, classes in (pred_a, pred_b)]
    (pq_a, mpq_a), (pq_b, mpq_b) = scores
    return _intervals(pq_b - pq_a, mpq_b - mpq_a, level, blocks * blocks, n_boot)
