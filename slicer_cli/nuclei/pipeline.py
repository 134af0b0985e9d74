"""The whole-slide pipeline: the only module that imports the stages.

slide -> tissue mask -> tile plan -> [read -> (stain) -> infer -> instances -> ownership ->
outlines + features] per batch of tiles -> writers (in tile order, streamed).

Batches run on a local thread pipeline by default (reading and post-processing of one batch
overlap inference of another), or on a ``dask.distributed`` cluster when a scheduler address
is given (``local:N`` starts a LocalCluster of N worker processes on this machine).
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import backends
from .arrays import array_module, to_host
from .backends.test_time import infer_averaged
from .errors import BackendError
from .features import compute_features
from .instances import extract_instances
from .model import DEFAULT_MODEL_DIR, UNCERTAIN, ModelInfo
from .options import AnalysisOptions, check_slide_size, safe_address
from .outlines import trace_outlines
from .records import Tile, TileNuclei, TilePlan
from .seams import SEAM_MARGIN_PX, SeamIndex, keep_owned, unused_edges
from .slide import Slide, open_slide, read_thumbnail, read_tile
from .stain import normalize_stain
from .tiling import plan_tiles
from .tissue import detect_tissue
from .writers import (
    PLOT_COLUMNS,
    AnnotationWriter,
    FeatureTableWriter,
    GeoJSONWriter,
    plot_rows,
)

THUMBNAIL_PX = 2048


@dataclass(frozen=True)
class AnalysisResult:
    """What a run did, measured."""

    nuclei: int
    class_counts: dict[str, int]
    tiles: int
    skipped_tiles: int
    tissue_mpx: float
    wall_s: float
    inference_s: float
    outputs: list[str] = field(default_factory=list)
    model: dict = field(default_factory=dict)
    #: seconds spent per stage, summed over the worker threads (local runs): read, stain,
    #: network, instances, outlines, features, write
    timings: dict = field(default_factory=dict)


@dataclass
class _Context:
    """What a worker needs to analyse batches (built once per process or run)."""

    slide: Slide
    source: object
    backend: object
    info: ModelInfo
    options: AnalysisOptions
    region: tuple[int, int, int, int]
    infer_gate: threading.Semaphore
    inference_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    timings: dict = field(default_factory=dict)

    def add_time(self, stage: str, seconds: float) -> None:
        with self.lock:
            self.timings[stage] = self.timings.get(stage, 0.0) + seconds


#: columns summarised per class in the annotation's attributes (and the item's metadata)
SUMMARY_COLUMNS = ("Size.Area", "Shape.Circularity", "Shape.Eccentricity",
                   "Nucleus.Intensity.Mean", "class_probability")


class _Summary:
    """Per class: count, mean, standard deviation, min and max of :data:`SUMMARY_COLUMNS`,
    accumulated batch by batch (so folders of slides can be compared from metadata)."""

    def __init__(self) -> None:
        self.acc: dict[str, dict[str, list[float]]] = {}

    def add(self, rows: pd.DataFrame) -> None:
        for group, part in rows.groupby("class", sort=False):
            entry = self.acc.setdefault(str(group), {})
            entry.setdefault("n", [0.0])[0] += len(part)
            for column in SUMMARY_COLUMNS:
                v = part[column].to_numpy(np.float64)
                v = v[np.isfinite(v)]
                s = entry.setdefault(column, [0.0, 0.0, 0.0, np.inf, -np.inf])
                s[0] += len(v)
                s[1] += float(v.sum())
                s[2] += float((v * v).sum())
                if len(v):
                    s[3], s[4] = min(s[3], float(v.min())), max(s[4], float(v.max()))

    def result(self, mpp: float) -> dict:
        out = {}
        for group, entry in self.acc.items():
            stats: dict = {"count": int(entry["n"][0])}
            for column in SUMMARY_COLUMNS:
                n, total, squares, lo, hi = entry[column]
                if n:
                    mean = total / n
                    std = float(np.sqrt(max(squares / n - mean * mean, 0.0)))
                    stats[column] = {"mean": round(mean, 6), "std": round(std, 6),
                                     "min": round(lo, 6), "max": round(hi, 6)}
            if "Size.Area" in stats:
                stats["area_um2_mean"] = round(stats["Size.Area"]["mean"] * mpp * mpp, 4)
            out[group] = stats
        return out


@dataclass
class _Outputs:
    """The writers of one run: committed together, or all aborted."""

    ann: AnnotationWriter | None = None
    table: FeatureTableWriter | None = None
    plot: FeatureTableWriter | None = None
    geo: GeoJSONWriter | None = None

    def commit(self, **attributes) -> list[str]:
        done = [str(self.ann.commit(**attributes))] + [str(p) for p in self.table.commit()]
        done += [str(p) for p in self.plot.commit()] if self.plot else []
        done += [str(self.geo.commit())] if self.geo else []
        return done

    def abort(self) -> None:
        for writer in (self.ann, self.table, self.plot, self.geo):
            if writer is not None:
                writer.abort()


def run_analysis(slide_path: str, annotation_path: str, table_path: str,
                 options: AnalysisOptions | None = None,
                 progress: Callable[[float, str], None] | None = None, *,
                 plot_table_path: str | None = None,
                 qupath_path: str | None = None) -> AnalysisResult:
    """Analyse every nucleus of a slide and write the annotation and feature table.

    Parameters
    ----------
    slide_path : str
        Any slide large_image opens.
    annotation_path : str
        Output annotation JSON (one document).
    table_path : str
        Output feature table CSV; a Parquet copy is written beside it (``.parquet``) unless
        ``options.parquet`` is false.
    options : AnalysisOptions, optional
        Default: every option at its default.
    plot_table_path : str, optional
        Also write the plottable table (CSV: bounding box as ``min_x``... , class and the
        features worth plotting; :data:`~slicer_cli.nuclei.writers.PLOT_COLUMNS`).
    qupath_path : str, optional
        Also write a QuPath GeoJSON of the nuclei (``.gz``: compressed).
    progress : callable, optional
        Called with ``(fraction, message)`` as batches complete.

    Raises
    ------
    AnalysisError
        Any bad input or backend failure, with a one-line message; no final-named output is
        left behind.
    """
    t0 = time.perf_counter()
    options = options or AnalysisOptions()
    report = progress or (lambda f, m: None)
    slide, source = open_slide(slide_path, options.slide_mpp)
    check_slide_size(slide.size_x, slide.size_y, options.max_slide_px)
    device = backends.resolve_device(options.device)
    backend = backends.open_backend(options.triton_url, options.model_dir or DEFAULT_MODEL_DIR,
                                    options.model_name, device, options.precision)
    with backend:
        info = backend.info
        tile_size = _round_up(options.tile_size_px or info.tile_size, info.size_multiple)
        overlap = options.overlap_px if options.overlap_px is not None else info.overlap
        area = options.region or (0, 0, slide.size_x, slide.size_y)
        check_slide_size(min(area[2], slide.size_x), min(area[3], slide.size_y),
                         options.max_slide_px, slide.mpp / info.mpp,
                         what="at the model's resolution the analysis covers")
        thumb = read_thumbnail(source, THUMBNAIL_PX)
        tissue = detect_tissue(thumb, slide.size_x, slide.size_y)
        plan = plan_tiles(slide, info.mpp, tile_size, overlap, options.region, tissue,
                          options.min_tissue_fraction, info.size_multiple)
        report(0.0, f"{len(plan.tiles)} tiles with tissue ({plan.skipped_tiles} skipped)")
        ctx = _Context(slide=slide, source=source, backend=backend, info=info, options=options,
                       region=plan.region,
                       infer_gate=threading.Semaphore(max(1, backend.concurrency)))
        attributes = _attributes(info, plan, options, backend, device)
        out = _Outputs()
        try:
            out.ann = AnnotationWriter(annotation_path,
                                       name=f"Nuclei ({info.name} {info.version})",
                                       description="Nuclei segmented and classified by "
                                                   f"{info.name} {info.version}",
                                       attributes=attributes)
            parquet = Path(table_path).with_suffix(".parquet") if options.parquet else None
            out.table = FeatureTableWriter(table_path, parquet)
            out.plot = FeatureTableWriter(plot_table_path) if plot_table_path else None
            out.geo = GeoJSONWriter(qupath_path) if qupath_path else None
            summary = _Summary()
            counts, inference_s = _run_batches(ctx, plan, out, report, summary)
            # um per model pixel: the model's, or the slide's own when read at its pixels
            outputs = out.commit(statistics=summary.result(
                plan.slide_mpp * plan.base_per_px))
        except BaseException:
            out.abort()
            raise
    tissue_mpx = plan.tissue_fraction * plan.region[2] * plan.region[3] * (
        slide.mpp / info.mpp) ** 2 / 1e6
    report(1.0, f"{sum(counts)} nuclei")
    return AnalysisResult(
        nuclei=int(sum(counts)),
        class_counts={c: int(n) for c, n in zip((*info.classes, UNCERTAIN), counts)
                      if c != UNCERTAIN or info.uncertain_below > 0},
        tiles=len(plan.tiles), skipped_tiles=plan.skipped_tiles, tissue_mpx=tissue_mpx,
        wall_s=time.perf_counter() - t0, inference_s=inference_s, outputs=outputs,
        model={"name": info.name, "version": info.version},
        timings={k: round(v, 3) for k, v in ctx.timings.items()})


def _run_batches(ctx: _Context, plan: TilePlan, out: _Outputs, report, summary: _Summary
                 ) -> tuple[np.ndarray, float]:
    """Run every batch and write results in tile order; return class counts, inference s."""
    info = ctx.info
    batches = [plan.tiles[i:i + ctx.options.batch_size]
               for i in range(0, len(plan.tiles), ctx.options.batch_size)]
    # per group: the model's classes, then "uncertain" (class probability < uncertain_below)
    counts = np.zeros(len(info.classes) + 1, dtype=np.int64)
    next_id = 1
    pending: dict[int, list[TileNuclei]] = {}
    done = 0
    empty = _empty_table(info)
    out.table.write(empty)
    if out.plot is not None:
        ints = ("nucleus_id", "min_x", "min_y", "max_x", "max_y")
        out.plot.write(pd.DataFrame({c: pd.Series(dtype="object" if c == "class" else
                                                  "int64" if c in ints else "float64")
                                     for c in PLOT_COLUMNS}))
    # a nucleus near a seam may be kept by two tiles (ownership margin): write it once
    seams = SeamIndex(reach_px=(plan.overlap_px + SEAM_MARGIN_PX) * plan.base_per_px)

    def emit(results: list[TileNuclei]) -> None:
        nonlocal next_id
        started = time.perf_counter()
        for nuc in results:
            nuc = nuc.take(seams.drop_duplicates(nuc, plan.tiles[nuc.tile_index]))
            n = len(nuc)
            if not n:
                continue
            ids = np.arange(next_id, next_id + n)
            next_id += n
            uncertain = nuc.class_prob < info.uncertain_below
            group_index = np.where(uncertain, len(info.classes), nuc.class_index)
            groups = [info.group_of(c, p) for c, p in zip(nuc.class_index.tolist(),
                                                          nuc.class_prob.tolist())]
            colors = [info.color_of(c, p) for c, p in zip(nuc.class_index.tolist(),
                                                          nuc.class_prob.tolist())]
            out.ann.write(ids, nuc.contours, groups, colors, nuc.class_prob)
            rows = _table_rows(ids, nuc, groups, [info.classes[c] for c in nuc.class_index],
                               empty.columns)
            out.table.write(rows)
            summary.add(rows)
            if out.plot is not None:
                out.plot.write(plot_rows(ids, nuc.contours, groups, rows))
            if out.geo is not None:
                out.geo.write(ids, nuc.contours, groups, colors,
                              rows[_feature_columns(nuc.features)])
            np.add.at(counts, group_index, 1)
        ctx.add_time("write", time.perf_counter() - started)

    def on_result(index: int, results: list[TileNuclei]) -> None:
        nonlocal done
        pending[index] = results
        while done in pending:
            emit(pending.pop(done))
            done += 1
            report(done / len(batches), f"batch {done}/{len(batches)}")

    if ctx.options.scheduler:
        inference_s = _run_distributed(ctx, plan, batches, on_result)
    else:
        _run_local(ctx, batches, on_result)
        inference_s = ctx.inference_s
    return counts, inference_s


def _run_local(ctx: _Context, batches: list, on_result) -> None:
    # enough threads that a batch is always read and waiting for the network while the
    # others are post-processed (4 on 2 cores)
    cores = len(os.sched_getaffinity(0))
    workers = ctx.options.workers or ctx.backend.concurrency + max(3, cores)
    window = 2 * workers
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nuclei") as pool:
        futures: dict = {}
        it = iter(enumerate(batches))
        try:
            for index, batch in it:
                futures[pool.submit(analyse_batch, ctx, batch)] = index
                if len(futures) >= window:
                    _drain(futures, on_result, FIRST_COMPLETED)
            _drain(futures, on_result, None)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def _drain(futures: dict, on_result, until) -> None:
    while futures:
        finished, _ = wait(list(futures), return_when=until or "ALL_COMPLETED")
        for fut in finished:
            index = futures.pop(fut)
            on_result(index, fut.result())
        if until is not None:
            return


def analyse_batch(ctx: _Context, tiles: tuple[Tile, ...]) -> list[TileNuclei]:
    """Read, infer and post-process one batch of tiles (the unit of scheduling).

    Tiles fitted to the tissue differ in size: each size goes to the network as one batch.
    """
    t0 = time.perf_counter()
    images = [read_tile(ctx.source, ctx.slide, t) for t in tiles]
    ctx.add_time("read", time.perf_counter() - t0)
    if ctx.options.stain_normalize:
        t0 = time.perf_counter()
        images = [normalize_stain(im) for im in images]
        ctx.add_time("stain", time.perf_counter() - t0)
    results: list = [None] * len(tiles)
    shapes: dict[tuple, list[int]] = {}
    for k, im in enumerate(images):
        shapes.setdefault(im.shape, []).append(k)
    for group in shapes.values():
        with ctx.infer_gate:
            t0 = time.perf_counter()
            batch = np.stack([images[k] for k in group])
            maps = infer_averaged(ctx.backend, batch,
                                  flips=4 if ctx.options.test_time_flips else 1,
                                  shifts=4 if ctx.options.test_time_shifts else 1,
                                  anchor=ctx.options.grid_anchor,
                                  unused=[unused_edges(tiles[k]) for k in group])
            dt = time.perf_counter() - t0
        with ctx.lock:
            ctx.inference_s += dt
        ctx.add_time("network", dt)
        for j, k in enumerate(group):
            results[k] = _tile_nuclei(ctx, tiles[k], images[k], maps["FOREGROUND"][j],
                                      maps["DISTANCE"][j], maps["CLASS_PROB"][j])
    return results


def _tile_nuclei(ctx: _Context, tile: Tile, image: np.ndarray, fg, dist, cls) -> TileNuclei:
    """Instances, ownership, outlines and features of one tile's maps.

    The maps may live on a GPU (CuPy, from a device backend): instances, classes, centroids
    and the per-pixel feature work then run there; what comes back to the host is the label
    tile (outlines and the features' label geometry are traced on the CPU) and per-nucleus
    values.
    """
    info = ctx.info
    xp = array_module(fg)
    t0 = time.perf_counter()
    inst = extract_instances(fg, dist, cls, **info.thresholds, xp=xp)
    labels = inst.labels
    n = int(labels.max()) if labels.size else 0
    ctx.add_time("instances", time.perf_counter() - t0)
    if n == 0:
        return _empty_nuclei(tile.index)
    # centroids (for ownership) from the nucleus pixels only: the same exact integer sums as
    # the features' Identifier.Centroid*, without tile-sized index images
    flat = labels.ravel()
    inside = xp.flatnonzero(flat)
    lab = flat[inside]
    area = xp.bincount(lab, minlength=n + 1)[1:].astype(xp.float64)
    cy = to_host(xp.bincount(lab, inside // labels.shape[1], minlength=n + 1)[1:] / area)
    cx = to_host(xp.bincount(lab, inside % labels.shape[1], minlength=n + 1)[1:] / area)
    base_x, base_y = tile.to_base(cx, cy)
    own = keep_owned(base_x, base_y, tile, margin_px=SEAM_MARGIN_PX * tile.base_per_px,
                     region=ctx.region)
    if not own.any():
        return _empty_nuclei(tile.index)
    # Relabel the owned nuclei 1..m, in their original order.
    remap = np.zeros(n + 1, dtype=np.int32)
    remap[1:][own] = np.arange(1, int(own.sum()) + 1)
    owned = xp.asarray(remap)[labels]
    t0 = time.perf_counter()
    owned_host = to_host(owned)
    contours = [np.column_stack(tile.to_base(pts[:, 0], pts[:, 1]))
                for pts in trace_outlines(owned_host)]
    t1 = time.perf_counter()
    ctx.add_time("outlines", t1 - t0)
    feats = compute_features(owned, xp.asarray(image), xp=xp)
    ctx.add_time("features", time.perf_counter() - t1)
    # bounding boxes as the features measured them (tile pixels, max exclusive)
    x0, y0 = tile.edges_to_base(feats["Identifier.Xmin"].to_numpy(np.float64),
                                feats["Identifier.Ymin"].to_numpy(np.float64))
    x1, y1 = tile.edges_to_base(feats["Identifier.Xmax"].to_numpy(np.float64),
                                feats["Identifier.Ymax"].to_numpy(np.float64))
    return TileNuclei(tile_index=tile.index, centroid_x=base_x[own], centroid_y=base_y[own],
                      bbox=np.column_stack([x0, y0, x1, y1]),
                      class_index=to_host(inst.class_index)[own],
                      class_prob=to_host(inst.class_prob)[own], contours=contours,
                      features=feats)


def _empty_nuclei(index: int) -> TileNuclei:
    z = np.zeros(0)
    return TileNuclei(tile_index=index, centroid_x=z, centroid_y=z, bbox=np.zeros((0, 4)),
                      class_index=np.zeros(0, dtype=np.int64), class_prob=z, contours=[],
                      features=None)


_ID_COLUMNS = ["nucleus_id", "class", "predicted_class", "class_probability",
               "Identifier.CentroidX",
               "Identifier.CentroidY", "Identifier.Xmin", "Identifier.Ymin", "Identifier.Xmax",
               "Identifier.Ymax"]


def _feature_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c != "Label" and not c.startswith("Identifier.")]


def _empty_table(info: ModelInfo) -> pd.DataFrame:
    feats = compute_features(np.zeros((8, 8), dtype=np.int32), np.zeros((8, 8, 3), np.uint8))
    cols = _ID_COLUMNS + _feature_columns(feats)
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in cols})
    frame["nucleus_id"] = frame["nucleus_id"].astype("int64")
    frame["class"] = frame["class"].astype("object")
    frame["predicted_class"] = frame["predicted_class"].astype("object")
    return frame


def _table_rows(ids: np.ndarray, nuc: TileNuclei, groups: list[str], predicted: list[str],
                columns) -> pd.DataFrame:
    head = pd.DataFrame({
        "nucleus_id": ids.astype(np.int64), "class": groups, "predicted_class": predicted,
        "class_probability": nuc.class_prob.astype(np.float64),
        "Identifier.CentroidX": nuc.centroid_x, "Identifier.CentroidY": nuc.centroid_y,
        "Identifier.Xmin": nuc.bbox[:, 0], "Identifier.Ymin": nuc.bbox[:, 1],
        "Identifier.Xmax": nuc.bbox[:, 2], "Identifier.Ymax": nuc.bbox[:, 3]})
    feats = nuc.features[_feature_columns(nuc.features)].reset_index(drop=True)
    frame = pd.concat([head, feats.astype("float64")], axis=1)
    return frame[list(columns)]


def _attributes(info: ModelInfo, plan: TilePlan, options: AnalysisOptions, backend,
                device: str) -> dict:
    params = {k: v for k, v in asdict(options).items()
              if k in ("region", "slide_mpp", "batch_size", "tile_size_px", "overlap_px",
                       "stain_normalize", "test_time_flips", "test_time_shifts", "grid_anchor",
                       "min_tissue_fraction")}
    params["backend"] = {"TritonBackend": "triton", "TorchBackend": "pytorch"}.get(
        type(backend).__name__, "onnxruntime")
    params["device"] = device
    # the graph that ran: int8 only in-process on the CPU (--precision auto or int8)
    params["precision"] = getattr(backend, "precision", "float")
    return {"model": {"name": info.name, "version": info.version, "mpp": info.mpp,
                      "classes": list(info.classes), "class_colors": list(info.class_colors),
                      "uncertain_below": info.uncertain_below,
                      "class_scope": info.class_scope},
            "params": params,
            "plan": {"tiles": len(plan.tiles), "skipped_tiles": plan.skipped_tiles,
                     "tile_size_px": plan.tile_size_px, "overlap_px": plan.overlap_px,
                     "slide_mpp": plan.slide_mpp, "region": list(plan.region)}}


def _round_up(value: int, multiple: int) -> int:
    return int(-(-int(value) // multiple) * multiple)


# --- dask.distributed -------------------------------------------------------------------

_WORKER_CONTEXTS: dict[tuple, _Context] = {}
_WORKER_LOCK = threading.Lock()


def _worker_context(key: tuple) -> _Context:
    """Open the slide and backend once per worker process (cached by run parameters)."""
    with _WORKER_LOCK:
        ctx = _WORKER_CONTEXTS.get(key)
        if ctx is None:
            slide_path, slide_mpp, opts_items, region = key
            options = AnalysisOptions(**dict(opts_items))
            slide, source = open_slide(slide_path, slide_mpp)
            backend = backends.open_backend(options.triton_url,
                                            options.model_dir or DEFAULT_MODEL_DIR,
                                            options.model_name,
                                            backends.resolve_device(options.device),
                                            options.precision)
            ctx = _Context(slide=slide, source=source, backend=backend, info=backend.info,
                           options=options, region=region,
                           infer_gate=threading.Semaphore(max(1, backend.concurrency)))
            _WORKER_CONTEXTS.clear()  # one run at a time per worker keeps memory bounded
            _WORKER_CONTEXTS[key] = ctx
        return ctx


def _analyse_remote(key: tuple, tiles: tuple[Tile, ...]) -> tuple[list[TileNuclei], float]:
    ctx = _worker_context(key)
    before = ctx.inference_s
    results = analyse_batch(ctx, tiles)
    return results, ctx.inference_s - before


def _run_distributed(ctx: _Context, plan: TilePlan, batches: list, on_result) -> float:
    from distributed import Client, LocalCluster, as_completed

    address = ctx.options.scheduler
    cluster = None
    if address.startswith("local:"):
        n = int(address.split(":", 1)[1] or os.cpu_count())
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        address = cluster.scheduler_address
    opts = {k: v for k, v in asdict(ctx.options).items() if k != "scheduler"}
    key = (plan.slide_path, ctx.slide.mpp, tuple(sorted(opts.items())), plan.region)
    inference_s = 0.0
    try:
        client = Client(address, timeout="10s")
    except (OSError, ValueError) as e:
        if cluster is not None:
            cluster.close()
        raise BackendError(f"cannot reach dask scheduler {safe_address(address)}: "
                           f"{type(e).__name__}") from e
    try:
        window = 2 * max(1, len(client.nthreads()))
        it = iter(enumerate(batches))
        active = as_completed()
        index_of = {}
        for index, batch in it:
            fut = client.submit(_analyse_remote, key, batch, pure=False)
            index_of[fut.key] = index
            active.add(fut)
            if active.count() >= window:
                fut = next(active)
                results, dt = fut.result()
                inference_s += dt
                on_result(index_of.pop(fut.key), results)
        for fut in active:
            results, dt = fut.result()
            inference_s += dt
            on_result(index_of.pop(fut.key), results)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return inference_s
