"""Evaluate the shipped model on the held-out quadrant of hgsc_nest (rows/cols 750:1500).

Usage (from the repository root)::

    .venv/bin/python -m training.evaluate [--model-dir models/nucleus_unet] [--json out.json]
                                          [--region held_out|validation] [--timing]
                                          [--robustness] [--flips 4] [--shifts 4]
                                          [--no-grid-anchor] [--baseline OTHER_MODEL_DIR]
                                          [--windows] [--selection]

The exported ONNX runs through ONNX Runtime (``LocalBackend``) on the quadrant alone
(reflect-padded to a multiple of 32), its maps are post-processed by
``slicer_cli.nuclei.instances.extract_instances`` with the thresholds of ``config.pbtxt``,
and the result is scored against the labels: detection F1 at IoU 0.5, binary PQ (DQ, SQ),
AJI, per-class PQ and mPQ (PanNuke / HoVer-Net conventions), with 95 % block-bootstrap
intervals of bPQ, mPQ and per-class PQ (``metrics.pq_intervals``, 4 x 4 tiles).
``--baseline DIR`` adds this model minus DIR's on the same nuclei, with paired intervals
(``metrics.pq_difference_intervals``): how to tell whether a change made a model better.

``--robustness`` adds the model's agreement with itself (``training/robustness.py``): on the
held-out quadrant and on a region of the real CMU slide (no labels needed), agreement PQ
between the image and its copies shifted by (1, 0), (0, 3), (8, 0), (17, 9) pixels,
re-encoded as JPEG 90 and 75, and both; and the whole-slide pipeline on the CMU slide with
its region starting at (0, 0) versus (1, 1); and bPQ / mPQ with the quadrant re-stained with
each unlabelled slide's own H&E vectors (``robustness.restained_scores``).

``--flips 4`` scores all of it with the test-time flips (the CLI's ``--test-time-flips``),
``--shifts 4`` with the test-time shifts (``--test-time-shifts``); both: every combination.
``--flips 8`` adds the transposed images, ``--shifts 16`` every shift of 0-3 pixels (not
CLI settings: the ROI shift is then not measured). Each image's network grid goes through
its tissue's landmark, as the CLI's ``--grid-anchor`` (on by default) does, with or without
them; ``--no-grid-anchor`` leaves each image on its own grid. ``--cmu-region`` moves the CMU
region.

``--windows`` adds the same shifts and re-encodes on about a hundred 512 px windows of the
real images off every reserved box (``robustness.stability_windows``): the mean and the
spread of the worst copy's agreement, for choosing between variants where the quadrant and
the CMU region are one draw each.

``--selection`` adds the selection data the model rules of EXPERIMENTS.md are written on (never
the held-out quadrant): the validation block's bPQ and mPQ at each of 12 grid phases (the
network sees the block cut 0-22 px further up and left; scored on the block itself) and
their means, and the worst of the 10 copies on CMU selection regions A and B.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from slicer_cli.nuclei.backends.local import LocalBackend
from slicer_cli.nuclei.backends.test_time import FLIP_COUNTS, SHIFT_COUNTS, infer_averaged
from slicer_cli.nuclei.instances import extract_instances
from slicer_cli.nuclei.metrics import (
    aggregated_jaccard_index,
    multiclass_pq,
    panoptic_quality,
    pq_difference_intervals,
    pq_intervals,
)
from slicer_cli.nuclei.model import DEFAULT_MODEL_DIR
from slicer_cli.nuclei.options import PRECISIONS
from slicer_cli.nuclei.stain import REFERENCE_STAINS

from .data import HELD_OUT, VALIDATION, load_tile, region
from .robustness import (
    CMU_REGION,
    SELECTION_REGIONS,
    cmu_region,
    restained_scores,
    roi_agreement,
    stability_windows,
    tile_agreement,
    windows_agreement,
)
from .tune import predict_maps, score
from .unlabelled import UnlabelledPool, stain_targets


class Averaged:
    """A backend whose ``infer`` averages over test-time flips and shifts (``--flips``,
    ``--shifts``), on each image's anchored grid with ``anchor`` (``--grid-anchor``)."""

    def __init__(self, backend, flips: int = 1, shifts: int = 1, anchor: bool = False) -> None:
        self.backend, self.flips, self.shifts, self.info = backend, flips, shifts, backend.info
        self.anchor = anchor

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return infer_averaged(self.backend, batch, self.flips, self.shifts, self.anchor)


def _instances(model_dir: Path, image: np.ndarray, threads: int, flips: int,
               shifts: int, anchor: bool = False, precision: str = "auto") -> tuple:
    """``(info, instances, inference s, post-processing s, graph precision)`` of the model
    on ``image``."""
    with LocalBackend(model_dir, threads=threads, precision=precision) as backend:
        info, ran = backend.info, backend.precision
        t0 = time.perf_counter()
        maps = predict_maps(Averaged(backend, flips, shifts, anchor), image, info.size_multiple)
        infer_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    inst = extract_instances(maps["FOREGROUND"], maps["DISTANCE"], maps["CLASS_PROB"],
                             **info.thresholds)
    return info, inst, infer_s, time.perf_counter() - t0, ran


def evaluate(model_dir: Path, box: tuple[int, int, int, int] = HELD_OUT,
             threads: int = 2, flips: int = 1, shifts: int = 1,
             baseline: Path | None = None, anchor: bool = True,
             precision: str = "auto") -> dict:
    """Score the model of ``model_dir`` on ``box`` of hgsc_nest; returns a metrics dict.

    With ``baseline`` (another model directory) also ``versus_baseline``: this model minus
    that one on the same nuclei, bPQ, mPQ and per-class PQ, each with its paired 95 %
    block-bootstrap interval (``metrics.pq_difference_intervals``). ``precision``: the graph,
    ``auto`` (the CLI's default: int8 on the CPU where the model ships it), ``float`` or
    ``int8`` (``LocalBackend``'s, the CLI's ``--precision``).
    """
    tile = load_tile()
    image, labels, classes = region(tile, box)
    info, inst, infer_s, post_s, ran = _instances(model_dir, image, threads, flips, shifts,
                                                  anchor, precision)
    binary = panoptic_quality(labels, inst.labels)
    multi = multiclass_pq(labels, classes, inst.labels, inst.class_index, len(info.classes))
    result = {
        "model": info.name, "version": info.version, "region_rows_cols": list(box),
        "test_time_flips": flips, "test_time_shifts": shifts, "grid_anchor": anchor,
        "graph": ran, "thresholds": info.thresholds,
        "n_true": int(labels.max()), "n_pred": int(inst.labels.max()),
        "f1": binary["f1"], "precision": binary["precision"], "recall": binary["recall"],
        "bpq": binary["pq"], "dq": binary["dq"], "sq": binary["sq"],
        "aji": aggregated_jaccard_index(labels, inst.labels),
        "mpq": multi["mpq"],
        "pq_per_class": dict(zip(info.classes, multi["pq_per_class"])),
        # how much of those scores is the luck of the nuclei in the region (block bootstrap)
        "intervals": pq_intervals(labels, classes, inst.labels, inst.class_index,
                                  len(info.classes)),
        "n_true_per_class": dict(zip(info.classes, np.bincount(classes, minlength=len(
            info.classes)).tolist())),
        "n_pred_per_class": dict(zip(info.classes, np.bincount(inst.class_index, minlength=len(
            info.classes)).tolist())),
        "inference_s": round(infer_s, 3), "postprocess_s": round(post_s, 3),
    }
    if baseline is not None:
        base = _instances(baseline, image, threads, flips, shifts, anchor, precision)[1]
        base_multi = multiclass_pq(labels, classes, base.labels, base.class_index,
                                   len(info.classes))
        result["versus_baseline"] = {
            "baseline": str(baseline),
            "bpq": binary["pq"] - panoptic_quality(labels, base.labels)["pq"],
            "mpq": multi["mpq"] - base_multi["mpq"],
            "pq_per_class": dict(zip(info.classes, (np.asarray(multi["pq_per_class"])
                                                    - base_multi["pq_per_class"]).tolist())),
            "intervals": pq_difference_intervals(
                labels, classes, (base.labels, base.class_index),
                (inst.labels, inst.class_index), len(info.classes))}
    return result


#: where the validation block starts on the network's grid for ``--selection``: (dy, dx) px
#: further up and left (EXPERIMENTS.md, "Chroma low-pass and the anchor by default")
GRID_PHASES = ((0, 0), (1, 0), (0, 1), (1, 1), (0, 3), (3, 0), (8, 0), (17, 9), (5, 11),
               (13, 22), (2, 2), (16, 16))


def selection(model_dir: Path, threads: int = 2, flips: int = 1, shifts: int = 1,
              anchor: bool = True, precision: str = "auto") -> dict:
    """The selection data of the model rules (EXPERIMENTS.md): the validation block over
    ``GRID_PHASES`` and the worst copies on CMU selection regions A and B."""
    tile = load_tile()
    r0, r1, c0, c1 = VALIDATION
    _, labels, classes = region(tile, VALIDATION)
    phases = {}
    with LocalBackend(model_dir, threads=threads, precision=precision) as backend:
        info, net = backend.info, Averaged(backend, flips, shifts, anchor)
        for dy, dx in GRID_PHASES:
            image = np.ascontiguousarray(tile.image[r0 - dy:r1, c0 - dx:c1])
            maps = {k: v[dy:, dx:] for k, v in
                    predict_maps(net, image, info.size_multiple).items()}
            scores = score(maps, labels, classes, info.thresholds)
            phases[f"{dy},{dx}"] = {"bpq": scores["bpq"], "mpq": scores["mpq"]}
        copies = {name: tile_agreement(net, cmu_region(box))
                  for name, box in zip("AB", SELECTION_REGIONS)}
    return {"graph": backend.precision, "grid_anchor": anchor, "validation_phases": phases,
            "validation_bpq": float(np.mean([v["bpq"] for v in phases.values()])),
            "validation_mpq": float(np.mean([v["mpq"] for v in phases.values()])),
            **{f"{name}_worst": c["min"] for name, c in copies.items()},
            "copies": copies}


def robustness(model_dir: Path, box: tuple[int, int, int, int] = HELD_OUT,
               threads: int = 2, flips: int = 1, shifts: int = 1,
               name: str = "held_out", cmu: tuple[int, int, int, int] = CMU_REGION,
               anchor: bool = True, precision: str = "auto") -> dict:
    """Agreement of the model with itself (shifts and re-encodes on ``box`` and on the CMU
    slide's region ``cmu``, the ROI (1, 1) shift) and its accuracy on ``box`` re-stained as
    other labs' H&E; ``box``'s agreement is keyed ``name`` (the ``--region``). The ROI
    shift runs the CLI's pipeline, which averages 1 or 4 flips and shifts: with 8 flips or 16
    shifts it is not measured (said so in the result)."""
    tile = load_tile()
    image, labels, classes = region(tile, box)
    targets = stain_targets(UnlabelledPool())
    with LocalBackend(model_dir, threads=threads, precision=precision) as backend:
        averaged = Averaged(backend, flips, shifts, anchor)
        quadrant = tile_agreement(averaged, np.ascontiguousarray(image))
        on_cmu = tile_agreement(averaged, cmu_region(cmu))
        restained = restained_scores(averaged, image, labels, classes, targets,
                                     REFERENCE_STAINS)
    if flips in (1, 4) and shifts in (1, 4):
        roi = roi_agreement(model_dir, flips=flips > 1, shifts=shifts > 1, anchor=anchor,
                            precision=precision)
    else:
        roi = {"not measured": "the CLI averages 1 or 4 flips and 1 or 4 shifts"}
    return {name: quadrant, "cmu_region": on_cmu, "cmu_box": list(cmu),
            "roi_0_0_vs_1_1": roi, "restained": restained}


def time_inference(model_dir: Path, sizes: tuple[int, ...] = (256, 1024), repeats: int = 3,
                   threads: int = 2, precision: str = "auto") -> dict[str, float]:
    """Median ONNX Runtime seconds for one real tile of each size (batch of 1)."""
    tile = load_tile()
    out = {}
    with LocalBackend(model_dir, threads=threads, precision=precision) as backend:
        for size in sizes:
            batch = np.ascontiguousarray(tile.image[None, :size, :size])
            backend.infer(batch)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                backend.infer(batch)
                times.append(time.perf_counter() - t0)
            out[f"{size}x{size}_s"] = round(float(np.median(times)), 3)
    return out


def _box(text: str) -> tuple[int, int, int, int]:
    """``left,top,width,height`` in whole, non-negative pixels (width and height >= 64)."""
    try:
        box = tuple(int(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or min(box[:2]) < 0 or min(box[2:]) < 64:
        raise argparse.ArgumentTypeError(
            f"expected left,top,width,height (whole pixels, width and height >= 64), "
            f"not {text!r}")
    return box


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m training.evaluate``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--region", choices=("held_out", "validation"), default="held_out")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timing", action="store_true", help="also time 256 and 1024 px tiles")
    p.add_argument("--robustness", action="store_true",
                   help="also the agreement under shifts, JPEG re-encodes and an ROI shift")
    p.add_argument("--flips", type=int, default=1, choices=FLIP_COUNTS,
                   help="test-time flips averaged (1: none; 4: the CLI's --test-time-flips; "
                        "8: and the transposed images)")
    p.add_argument("--shifts", type=int, default=1, choices=SHIFT_COUNTS,
                   help="test-time shifts averaged (1: none; 4: the CLI's --test-time-shifts; "
                        "16: 0-3 pixels each way)")
    p.add_argument("--cmu-region", type=_box, default=CMU_REGION, metavar="L,T,W,H",
                   help="the CMU slide's region for --robustness (base pixels; default "
                        "the measured one; EXPERIMENTS.md's selection regions A and B are "
                        + " and ".join(",".join(map(str, box)) for box in SELECTION_REGIONS)
                        + ")")
    p.add_argument("--grid-anchor", action=argparse.BooleanOptionalAction, default=True,
                   help="each image on a network grid placed by its tissue (the CLI's "
                        "--grid-anchor, on by default; the baseline too); --no-grid-anchor: "
                        "the image's own grid")
    p.add_argument("--windows", action="store_true",
                   help="also the agreement under shifts and re-encodes on ~100 windows of the "
                        "real images off the reserved boxes (robustness.stability_windows)")
    p.add_argument("--baseline", type=Path,
                   help="also this model minus the one of BASELINE on the same nuclei, with "
                        "paired intervals (a comparison far sharper than two intervals)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="the graph on the CPU (the CLI's --precision): auto (the model's int8 "
                        "graph where it ships one), float or int8")
    p.add_argument("--selection", action="store_true",
                   help="also the model rules' selection data: the validation block over 12 "
                        "grid phases, the worst copies on CMU selection regions A and B")
    p.add_argument("--json", type=Path, help="write the metrics here too")
    args = p.parse_args(argv)
    box = HELD_OUT if args.region == "held_out" else VALIDATION
    result = evaluate(args.model_dir, box, args.threads, args.flips, args.shifts,
                      args.baseline, args.grid_anchor, args.precision)
    if args.timing:
        result["timing_cpu"] = time_inference(args.model_dir, threads=args.threads,
                                              precision=args.precision)
    if args.robustness:
        result["agreement"] = robustness(args.model_dir, box, args.threads, args.flips,
                                         args.shifts, args.region, args.cmu_region,
                                         args.grid_anchor, args.precision)
    if args.windows:
        with LocalBackend(args.model_dir, threads=args.threads,
                          precision=args.precision) as backend:
            result["windows"] = windows_agreement(
                Averaged(backend, args.flips, args.shifts, args.grid_anchor),
                stability_windows())
    if args.selection:
        result["selection"] = selection(args.model_dir, args.threads, args.flips, args.shifts,
                                        args.grid_anchor, args.precision)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
