"""Run the exported model on a region and tune post-processing on the validation block.

Tuning reads only ``data.VALIDATION`` (inside the training quadrants), never the held-out
quadrant.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from slicer_cli.nuclei.instances import extract_instances
from slicer_cli.nuclei.metrics import multiclass_pq, panoptic_quality

from .data import CLASSES, VALIDATION, Tile, region

FG_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)
SEED_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
AREA_GRID = (8, 16, 32, 48, 64)
TOLERANCE = 0.02  # bPQ + mPQ differences below this are noise on 89 nuclei


def predict_maps(backend, image: np.ndarray, multiple: int = 32) -> dict[str, np.ndarray]:
    """Network maps of one H x W x 3 image (reflect-padded to a multiple of ``multiple``)."""
    h, w = image.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    padded = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect")
    maps = backend.infer(padded[None])
    return {k: v[0, :h, :w] for k, v in maps.items()}


def score(maps: dict[str, np.ndarray], labels: np.ndarray, classes: np.ndarray,
          thresholds: dict) -> dict[str, float]:
    """bPQ, mPQ, per-class PQ (and the rest) of the maps post-processed with ``thresholds``
    (keywords of ``extract_instances``) against the truth."""
    inst = extract_instances(maps["FOREGROUND"], maps["DISTANCE"], maps["CLASS_PROB"],
                             **thresholds)
    binary = panoptic_quality(labels, inst.labels)
    multi = multiclass_pq(labels, classes, inst.labels, inst.class_index, len(CLASSES))
    return {"bpq": binary["pq"], "mpq": multi["mpq"], "f1": binary["f1"],
            "pq_per_class": multi["pq_per_class"], "n_pred": int(inst.labels.max())}


def tune_thresholds(model_dir: Path, tile: Tile, log=print, tolerance: float = TOLERANCE,
                    fixed: dict | None = None) -> dict[str, float]:
    """Grid-search fg / seed thresholds and min area on the validation block (bPQ + mPQ).

    With ``fixed`` (``fg_threshold``, ``seed_threshold``, ``min_area_px``,
    ``fg_peak_threshold``) that setting is returned, with its own validation scores; the
    search still runs (with the fixed peak, 0 without ``fixed``) and is logged, so the cost
    of the fixed setting on the validation block is on record.

    The block holds 89 nuclei, so objectives closer than ``tolerance`` are ties; among the
    tied settings the one that finds the most nuclei wins (on slides unlike the training tile
    the network is less sure of itself, and the strictest tied setting then drops most of
    their nuclei: on the CMU skin slide 290 instead of about 800).
    """
    from slicer_cli.nuclei.backends.local import LocalBackend

    image, labels, classes = region(tile, VALIDATION)
    with LocalBackend(model_dir, threads=2) as backend:
        maps = predict_maps(backend, image)
    peak = float((fixed or {}).get("fg_peak_threshold", 0.0))
    scored = []
    for fg_t, seed_t, area in itertools.product(FG_GRID, SEED_GRID, AREA_GRID):
        s = score(maps, labels, classes, {"fg_threshold": fg_t, "seed_threshold": seed_t,
                                          "min_area_px": area, "fg_peak_threshold": peak})
        scored.append((s["bpq"] + s["mpq"], fg_t, seed_t, area, s))
    best = max(o for o, *_ in scored)
    tied = [t for t in scored if t[0] >= best - tolerance]
    objective, fg_t, seed_t, area, s = max(tied, key=lambda t: (t[4]["n_pred"], t[0]))
    log(f"tuned on validation {VALIDATION}: fg={fg_t} seed={seed_t} min_area={area} "
        f"bPQ={s['bpq']:.3f} mPQ={s['mpq']:.3f} F1={s['f1']:.3f} "
        f"n_pred={s['n_pred']} n_true={int(labels.max())} ({len(tied)} settings within "
        f"{tolerance} of the best objective {best:.3f})")
    if fixed is not None:
        fg_t, seed_t, area = (fixed["fg_threshold"], fixed["seed_threshold"],
                              int(fixed["min_area_px"]))
        s = score(maps, labels, classes, {"fg_threshold": fg_t, "seed_threshold": seed_t,
                                          "min_area_px": area, "fg_peak_threshold": peak})
        log(f"fixed setting fg={fg_t} seed={seed_t} min_area={area} peak={peak} on validation: "
            f"bPQ={s['bpq']:.3f} mPQ={s['mpq']:.3f} F1={s['f1']:.3f} n_pred={s['n_pred']}")
    return {"fg_threshold": fg_t, "seed_threshold": seed_t, "min_area_px": area,
            "fg_peak_threshold": peak, "val_bpq": s["bpq"], "val_mpq": s["mpq"]}
