"""A real whole slide's nuclei inside the DSA: ingest, annotation GETs and the viewer.

The fixture is histolytics' ``hgsc_nuclei_wsi.parquet`` (592,349 nucleus polygons with their
classes, from one whole-slide image; no image), laid on a generated slide of the same size
at 0.5 um/px (``make_wsi40x.make_wsi``: real tissue tiles sharing their bytes). The nuclei
are written through the project's own writers (annotation, Parquet table, plottable CSV),
posted through the plugin's real result path on the dev stack (real Girder over HTTP, real
broker; the job is queued while no worker runs, so nothing else computes), then read back as
HistomicsUI reads them, and optionally drawn by HistomicsUI in Chromium.

Prints (and writes as JSON with ``--json``): ingest wall seconds, the Girder process's RSS
before and its peak during the ingest, the centroid GET of the largest class (what the viewer
asks at whole-slide zoom), a 1 mm field's region GET (what it asks zoomed in), Metadata
Plot's ``plot/list`` of every class, and with ``--browser`` the seconds to the first drawing
at whole-slide zoom and until every nucleus is represented there (the per-class density
layers), then on the densest 1 mm field the seconds until the outlines of every nucleus in
view are drawn.

Usage: ``python -m benchmarks.scale_dsa [--nuclei 50000] [--browser] [--json out.json]``
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "data" / "hgsc_nuclei_wsi.parquet"
MPP = 0.5
#: large_image's default minElements: a class with more elements is fetched by region
PAGE_ABOVE = 5000
COLORS = {"neoplastic": "rgb(220,20,60)", "connective": "rgb(0,160,0)",
          "inflammatory": "rgb(255,200,0)", "macrophage_cell": "rgb(0,120,255)",
          "dead": "rgb(90,90,90)", "macrophage_nucleus": "rgb(150,0,200)"}


def load_nuclei(n: int | None = None):
    """``(contours, classes)`` of the fixture; ``n`` keeps an evenly spread subset."""
    import pyarrow.parquet as pq
    import shapely

    table = pq.read_table(FIXTURE)
    keep = np.arange(table.num_rows)
    if n and n < table.num_rows:
        keep = np.linspace(0, table.num_rows - 1, n).astype(np.int64)
    geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False)[keep])
    classes = np.asarray(table.column("class_name").to_pylist(), dtype=object)[keep]
    contours = [np.asarray(g.exterior.coords)[:-1] if g.geom_type == "Polygon"
                else np.asarray(max(g.geoms, key=lambda p: p.area).exterior.coords)[:-1]
                for g in geoms]
    return contours, classes


def write_outputs(contours, classes, workdir: Path, stem: str) -> dict:
    """The annotation, Parquet table and plottable CSV, through the project's writers."""
    import pandas as pd
    import shapely

    from slicer_cli.nuclei.outlines import on_whole_pixels
    from slicer_cli.nuclei.writers import AnnotationWriter, FeatureTableWriter

    names = sorted(set(classes))
    t0 = time.perf_counter()
    ann = AnnotationWriter(workdir / f"{stem}-nuclei.anot", name="Nuclei (hgsc_nuclei_wsi)",
                           description="histolytics 0.3.0 hgsc_nuclei_wsi.parquet",
                           attributes={"model": {"name": "hgsc_nuclei_wsi fixture",
                                                 "version": "histolytics-0.3.0",
                                                 "classes": names}})
    table = FeatureTableWriter(workdir / f"{stem}-nuclei-full.csv",
                               workdir / f"{stem}-nuclei.parquet")
    plot = FeatureTableWriter(workdir / f"{stem}-nuclei-plot.csv")
    step = 20_000
    for lo in range(0, len(contours), step):
        part = contours[lo:lo + step]
        groups = [str(c) for c in classes[lo:lo + step]]
        ids = np.arange(lo + 1, lo + len(part) + 1)
        ann.write(ids, part, groups, [COLORS.get(g, "rgb(0,0,0)") for g in groups],
                  np.ones(len(part)))
        polys = np.array([shapely.Polygon(p) for p in part], dtype=object)
        # the stored outline's own box (whole pixels), as the pipeline's plottable table has
        stored = on_whole_pixels(part)
        lo_xy = np.array([p.min(axis=0) for p in stored])
        hi_xy = np.array([p.max(axis=0) for p in stored])
        cent = shapely.get_coordinates(shapely.centroid(polys))
        frame = pd.DataFrame({"nucleus_id": ids, "class": groups,
                              "min_x": lo_xy[:, 0], "min_y": lo_xy[:, 1], "max_x": hi_xy[:, 0],
                              "max_y": hi_xy[:, 1], "centroid_x": cent[:, 0],
                              "centroid_y": cent[:, 1], "Size.Area": shapely.area(polys),
                              "Size.Perimeter": shapely.length(polys)})
        table.write(frame)
        plot.write(frame)
    ann.commit()
    table.commit()
    plot.commit()
    return {"write_s": round(time.perf_counter() - t0, 1),
            "annotation_bytes": (workdir / f"{stem}-nuclei.anot").stat().st_size}


def _rss_kib(pid: int) -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` of a process in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def run(n: int | None, browser: bool, workdir: Path, shots: Path | None = None,
        pan_fault: bool = False) -> dict:
    """Write, ingest, read back (and draw); the figures."""
    import requests

    from benchmarks.make_wsi40x import make_wsi
    from tests.girder_stack import Stack

    contours, classes = load_nuclei(n)
    report: dict = {"nuclei": len(contours)}
    hi = np.max([c.max(axis=0) for c in contours], axis=0)
    width, height = (int(-(-(v + 1) // 512) * 512) for v in hi)
    stem = "hgsc_wsi"
    report["slide"] = make_wsi(workdir / f"{stem}.tiff", width, height, mpp=MPP)
    report["writers"] = write_outputs(contours, classes, workdir, stem)
    with Stack(workdir / "stack") as stack:
        stack.provision()
        item = stack.upload_slide(workdir / f"{stem}.tiff")
        gc = stack.admin
        stack.stop_worker()  # the job stays queued: only the ingest runs
        job = gc.post(f"nucleus_analysis/item/{item['_id']}/run", json={})
        uploads = []
        for local, name in ((f"{stem}-nuclei.anot", f"{stem}-nuclei.anot"),
                            (f"{stem}-nuclei-plot.csv", f"{stem}-nuclei.csv"),
                            (f"{stem}-nuclei.parquet", f"{stem}-nuclei.parquet")):
            path = workdir / local
            with open(path, "rb") as stream:
                uploads.append(gc.uploadFile(item["_id"], stream,
                                             f"{name}.pending-{job['_id']}",
                                             path.stat().st_size)["_id"])
        girder_pid = stack.services[1].proc.pid
        rss0, _ = _rss_kib(girder_pid)
        t0 = time.perf_counter()
        summary = gc.post(f"nucleus_analysis/item/{item['_id']}/result", parameters={
            "jobId": job["_id"], "annotationFileId": uploads[0],
            "tableFileIds": json.dumps(uploads[1:])})
        report["ingest_s"] = round(time.perf_counter() - t0, 1)
        rss1, peak = _rss_kib(girder_pid)
        report["girder_rss_mib"] = {"before": rss0 // 1024, "after": rss1 // 1024,
                                    "peak_ever": peak // 1024}
        report["stored"] = {c["name"]: c["count"] for c in summary["classes"]}
        largest = max(summary["classes"], key=lambda c: c["count"])
        headers = {"Girder-Token": gc.token}
        t0 = time.perf_counter()
        r = requests.get(f"{stack.api_url}/annotation/{largest['annotationId']}",
                         params={"centroids": "true"}, headers=headers, timeout=1800)
        r.raise_for_status()
        report["centroids_get"] = {"class": largest["name"], "elements": largest["count"],
                                   "seconds": round(time.perf_counter() - t0, 2),
                                   "bytes": len(r.content)}
        cx, cy = width / 2, height / 2
        field = 1000.0 / MPP / 2  # half a millimetre
        t0 = time.perf_counter()
        r = requests.get(f"{stack.api_url}/annotation/{largest['annotationId']}", params={
            "left": cx - field, "top": cy - field, "right": cx + field, "bottom": cy + field},
            headers=headers, timeout=1800)
        r.raise_for_status()
        report["field_1mm_get"] = {"seconds": round(time.perf_counter() - t0, 2),
                                   "elements": len(r.json()["annotation"]["elements"])}
        # Metadata Plot's column list with every class shown: what one plot/list costs the
        # server (what an abandoned one that starts late still costs: the plugin lets it run
        # whole rather than cut the live one short, plot_requests.py)
        t0 = time.perf_counter()
        r = requests.post(f"{stack.api_url}/annotation/item/{item['_id']}/plot/list", data={
            "annotations": json.dumps([c["annotationId"] for c in summary["classes"]])},
            headers=headers, timeout=1800)
        r.raise_for_status()
        report["plot_list_all_classes"] = {"seconds": round(time.perf_counter() - t0, 2),
                                           "columns": len(r.json())}
        if browser:
            report["browser"] = _browser(stack, item, summary, contours, shots,
                                         classes=classes, pan_fault=pan_fault)
            if shots:  # the server's side of what the browser saw
                shutil.copy(stack.workdir / "girder.log", shots / "girder.log")
        stack.start_worker()
        gc.put(f"job/{job['_id']}/cancel")
    return report


#: the Nuclei panel's figures, read in the page
_PANEL = """() => {
    const q = (s) => document.querySelector('#h-nucleus-legend-panel ' + s);
    const a = (s, name) => (q(s) ? q(s).getAttribute(name) : null);
    return {mode: a('.h-nl-density', 'data-mode'),
            density: Number(a('.h-nl-density', 'data-density-nuclei') || 0),
            drawn: Number(a('.h-nl-drawn-count', 'data-drawn-count') || 0),
            loading: a('.h-nl-status', 'data-loading'),
            retries: Number(a('.h-nl-status', 'data-retries') || 0),
            plot_note_classes: Number(a('.h-nl-plot-note', 'data-classes') || 0)};
}"""
#: the visible bounds (base pixels), as HistomicsUI keeps them in the URL after each pan
_BOUNDS = """() => {
    const m = /[?&]bounds=([^&]*)/.exec(decodeURIComponent(window.location.hash));
    const b = m ? m[1].split(',').map(Number) : null;
    return b ? {left: b[0], top: b[1], right: b[2], bottom: b[3]} : null;
}"""


def densest_field(contours, side: float) -> tuple[float, float]:
    """Centre of the ``side``-wide square cell holding the most nuclei."""
    c = np.array([p.mean(axis=0) for p in contours])
    ij = np.floor(c / side).astype(np.int64)
    keys, counts = np.unique(ij, axis=0, return_counts=True)
    i, j = keys[np.argmax(counts)]
    return (i + 0.5) * side, (j + 0.5) * side


def in_view(lo_xy: np.ndarray, hi_xy: np.ndarray, bounds: dict) -> int:
    """Nuclei whose bounding box meets ``bounds`` (what the viewer must draw there)."""
    meets = ((hi_xy[:, 0] >= bounds["left"]) & (lo_xy[:, 0] < bounds["right"])
             & (hi_xy[:, 1] >= bounds["top"]) & (lo_xy[:, 1] < bounds["bottom"]))
    return int(np.count_nonzero(meets))


def _until(page, condition: str, timeout_ms: float = 600_000) -> None:
    """Wait until ``condition`` (JavaScript of ``p``, the panel's figures) holds."""
    page.wait_for_function(f"() => {{ const p = ({_PANEL})(); return {condition}; }}",
                           timeout=timeout_ms)


def _seconds_until(page, condition: str, t0: float) -> float | None:
    """Seconds from ``t0`` until ``condition`` holds (waiting at most 300 s), else None."""
    try:
        _until(page, condition, 300_000)
    except Exception:
        return None
    return round(time.perf_counter() - t0, 1)


def _box(view: dict) -> dict:
    return {k: round(view[k]) for k in ("left", "top", "right", "bottom")}


def _open(page, root: str, item_id: str, bounds: str = "") -> None:
    """Open the slide in HistomicsUI (at ``bounds`` if given) by its URL, in one fresh page
    load (from a blank page: a hash-only change of an open HistomicsUI page loads nothing
    new, and a reload after it would measure the old page's work too)."""
    page.goto("about:blank")
    page.goto(f"{root}/histomics#?image={item_id}" + (f"&bounds={bounds}" if bounds else ""))
    page.wait_for_selector("#h-nucleus-legend-panel .h-nl-show-all")


def _zoom_to(page, cx: float, cy: float, side: float, lo_xy, hi_xy) -> dict:
    """Wheel-zoom the viewer onto ``(cx, cy)`` until the view is at most ``side`` high; the
    seconds from the last wheel step until the outlines of every nucleus in view are drawn."""
    rect = page.evaluate("""() => { const r = document.querySelector('.geojs-map')
        .getBoundingClientRect(); return {x: r.left, y: r.top, w: r.width, h: r.height}; }""")
    heights = []
    b = page.evaluate(_BOUNDS)
    for _ in range(80):
        if b and b["bottom"] - b["top"] <= side:
            break
        if b:
            x = rect["x"] + (cx - b["left"]) / (b["right"] - b["left"]) * rect["w"]
            y = rect["y"] + (cy - b["top"]) / (b["bottom"] - b["top"]) * rect["h"]
            page.mouse.move(min(max(x, rect["x"] + 5), rect["x"] + rect["w"] - 5),
                            min(max(y, rect["y"] + 5), rect["y"] + rect["h"] - 5))
        page.mouse.wheel(0, -40)
        for _ in range(20):  # until the viewer has moved and written its new bounds
            page.wait_for_timeout(100)
            new = page.evaluate(_BOUNDS)
            if new != b:
                break
        b = new
        heights.append(round(b["bottom"] - b["top"]) if b else None)
    t0 = time.perf_counter()
    page.wait_for_timeout(500)  # the zoom animation settles and the URL has the bounds
    view = page.evaluate(_BOUNDS)
    expected = in_view(lo_xy, hi_xy, view)
    drawn_s = _seconds_until(
        page, f"p.mode === 'detail' && p.loading === 'false' && p.drawn >= {expected}", t0)
    return {"drawn_s": drawn_s, "nuclei_in_view": expected, "view_heights": heights,
            "bounds": _box(view), **page.evaluate(_PANEL)}


def _pan_with_failed_fetch(page, summary, classes, lo_xy, hi_xy) -> dict:
    """Pan by 2.5 views while the first region request of a large class fails (the browser
    drops its connection): what the panel fetched again, and what it then drew."""
    from urllib.parse import parse_qs, urlparse

    large = {f"/api/v1/annotation/{c['annotationId']}": c["name"] for c in summary["classes"]
             if c["count"] > PAGE_ABOVE}
    # the move and the class whose request fails: the direction (right or left by 2.5 views)
    # and the large class with the most nuclei in the view moved to, so that the refetched
    # region has outlines to draw (which large class asks first is up to the browser)
    start = page.evaluate(_BOUNDS)
    width = start["right"] - start["left"]
    choices = []
    for step in (2.5, -2.5):
        dest = {**start, "left": start["left"] + step * width,
                "right": start["right"] + step * width}
        for path, name in large.items():
            mine = classes == name
            choices.append((in_view(lo_xy[mine], hi_xy[mine], dest), step, path))
    _, step, target = max(choices)
    dropped: list[str] = []
    answered: list[dict] = []   # region responses of the target class after the drop

    def drop_first(route):
        if not dropped and "left" in parse_qs(urlparse(route.request.url).query):
            dropped.append(route.request.url)
            route.abort("connectionreset")
        else:
            route.continue_()

    def on_response(response):
        url = urlparse(response.url)
        query = parse_qs(url.query)
        if dropped and url.path == target and "left" in query and response.ok:
            region = {k: float(query[k][0]) for k in ("left", "top", "right", "bottom")}
            elements = response.json()["annotation"]["elements"]
            answered.append({"path": url.path, "region": region, "elements": len(elements)})

    def matcher(url: str) -> bool:
        return urlparse(url).path == target

    before = page.evaluate(_PANEL)["retries"]
    page.route(matcher, drop_first)
    page.on("response", on_response)
    try:
        # one move, by 2.5 views (right or left): out of any region fetched before (the
        # last one was asked for a view at most twice as wide, with a quarter of a view
        # around it)
        page.evaluate("""(step) => {
            const maps = [...document.querySelectorAll('.geojs-map')]
                .sort((a, b) => b.clientWidth - a.clientWidth)  // the slide view, not the overview
                .map((el) => window.geo.jQuery(el).data('data-geojs-map')).filter((m) => m);
            const map = maps[0];
            const b = map.bounds(), c = map.center();
            map.center({x: c.x + step * (b.right - b.left), y: c.y}); }""", step)
        t0 = time.perf_counter()
        page.wait_for_timeout(500)
        view = page.evaluate(_BOUNDS)
        drawn_s = _seconds_until(page, f"p.loading === 'false' && p.retries > {before}", t0)
        page.wait_for_timeout(1000)  # the retried fetch is drawn
    finally:
        page.unroute(matcher, drop_first)
        page.remove_listener("response", on_response)
    name = large[target] if dropped else None
    mine = classes == name
    retried = answered  # only the target's requests are routed, and only after the drop
    edge = hi_xy.max(axis=0)  # the slide is at least this large: regions reach it
    seen = {"left": max(0.0, view["left"]), "top": max(0.0, view["top"]),
            "right": min(view["right"], edge[0]), "bottom": min(view["bottom"], edge[1])}
    return {"dropped": dropped, "class": name, "drawn_s": drawn_s, "bounds": _box(view),
            "view_on_slide": _box(seen),
            "class_in_view": in_view(lo_xy[mine], hi_xy[mine], view) if name else 0,
            "retried": retried, **page.evaluate(_PANEL),
            "class_drawn": int(page.get_attribute(
                f"#h-nucleus-legend-panel .h-nl-row[data-class='{name}']", "data-drawn") or 0)
            if name else 0}


def _new_page(browser, errors: list[str], storage_state: dict | None = None):
    """A page in a new browser context (nothing cached; ``storage_state`` carries a login)
    whose script errors and console errors are appended to ``errors``."""
    page = browser.new_context(storage_state=storage_state,
                               viewport={"width": 1600, "height": 1000}).new_page()
    page.set_default_timeout(600_000)
    page.on("console", lambda m: errors.append(m.text[:300]) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"[:300]))
    return page


def _browser(stack, item, summary, contours, shots: Path | None = None,
             classes=None, pan_fault: bool = False) -> dict:
    """Open the slide in HistomicsUI at whole-slide zoom, then on a 1 mm field.

    Whole slide: seconds to the first drawing and until every nucleus is represented (the
    density layers count them all, or every outline for a result without density), and how
    long the page then takes to answer. Field: the densest 1 mm square, zoomed onto with the
    mouse wheel, then opened by URL in a new browser context (nothing cached); seconds until
    the outlines of every nucleus in view are drawn."""
    from playwright.sync_api import sync_playwright

    from tests.test_browser_histomicsui import CHROMIUM, FLAGS, _login

    root = stack.api_url.rsplit("/api/v1", 1)[0]
    total = summary["nuclei"]
    out: dict = {"nuclei": total}
    lo_xy = np.array([p.min(axis=0) for p in contours])
    hi_xy = np.array([p.max(axis=0) for p in contours])
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        errors: list[str] = []  # what the pages reported, in the report (nothing expected)
        page = _new_page(browser, errors)
        _login(page, root)
        t0 = time.perf_counter()
        _open(page, root, item["_id"])
        _until(page, "p.density > 0 || p.drawn > 0")
        out["first_draw_s"] = round(time.perf_counter() - t0, 1)
        out["all_shown_s"] = _seconds_until(
            page, f"p.density >= {total} || p.drawn >= {total}", t0)
        t1 = time.perf_counter()
        out["whole_slide"] = page.evaluate(_PANEL)
        out["page_answer_s"] = round(time.perf_counter() - t1, 3)
        if shots:
            page.screenshot(path=str(shots / "whole_slide.png"))
        # zoom in with the mouse wheel onto the densest 1 mm field, as a user does
        side = 1000.0 / MPP
        cx, cy = densest_field(contours, side)
        out["field_zoom"] = _zoom_to(page, cx, cy, side, lo_xy, hi_xy)
        if shots:
            page.screenshot(path=str(shots / "field_zoomed.png"))
        if pan_fault:
            out["pan_after_failed_fetch"] = _pan_with_failed_fetch(page, summary, classes,
                                                                   lo_xy, hi_xy)
        # the same field opened cold, by URL: a new browser context (nothing cached) that
        # holds only the login cookie, as a link opened in a new browser
        bounds = ",".join(f"{v:.0f}" for v in (cx - side / 2, cy - side / 2, cx + side / 2,
                                               cy + side / 2, 0))
        page = _new_page(browser, errors, page.context.storage_state())
        t0 = time.perf_counter()
        _open(page, root, item["_id"], bounds)
        _until(page, "p.mode === 'detail'")
        out["field_panel_ready_s"] = round(time.perf_counter() - t0, 1)
        page.wait_for_timeout(1000)  # HistomicsUI writes the bounds it shows after a pan
        view = page.evaluate(_BOUNDS)
        expected = in_view(lo_xy, hi_xy, view)
        out["field_drawn_s"] = _seconds_until(
            page, f"p.loading === 'false' && p.drawn >= {expected}", t0)
        out["field"] = {"bounds": _box(view), "nuclei_in_view": expected,
                        **page.evaluate(_PANEL)}
        t1 = time.perf_counter()
        page.evaluate("() => 1")
        out["field_page_answer_s"] = round(time.perf_counter() - t1, 3)
        if shots:
            page.screenshot(path=str(shots / "field_1mm.png"))
        out["console_errors"] = errors[-10:]
        browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nuclei", type=int, default=None, help="a spread subset (default all)")
    p.add_argument("--browser", action="store_true")
    p.add_argument("--json", type=Path)
    p.add_argument("--screenshots", type=Path, help="folder for the two browser views")
    args = p.parse_args(argv)
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="scale_dsa_") as tmp:
        report = run(args.nuclei, args.browser, Path(tmp), args.screenshots)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
