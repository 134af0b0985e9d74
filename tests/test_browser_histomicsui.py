"""HistomicsUI in a real browser: log in, open the CMU slide, Analyses -> Nucleus Analysis,
Submit, wait for the job, see the nuclei drawn and the class legend.

Playwright drives Debian's Chromium (``/usr/bin/chromium``, headless, no browser download) on a
real stack (Girder HTTP + girder_worker + Redis, see tests/girder_stack). Needs the built web
client (``scripts/setup_girder.sh``). The screenshot lands in ``out/browser/`` (or
``$BROWSER_SCREENSHOT_DIR``).
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from io import StringIO
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest

from tests.girder_stack import ADMIN, SUCCESS, TERMINAL, Stack

pytestmark = [pytest.mark.browser, pytest.mark.girder]

REPO = Path(__file__).resolve().parents[1]
CMU = REPO / "data" / "cmu_small_region.svs"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BUNDLE = Path(sys.prefix) / "share/girder/static/built/plugins/nucleus_analysis/plugin.min.js"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"]
SHOTS = Path(os.environ.get("BROWSER_SCREENSHOT_DIR", REPO / "out" / "browser"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    for need, why in ((CMU, "run scripts/fetch_data.py"), (Path(CHROMIUM), "apt chromium"),
                      (BUNDLE, "build the web client: scripts/setup_girder.sh")):
        if not need.exists():
            pytest.fail(f"{need} is missing: {why}")
    with Stack(tmp_path_factory.mktemp("browser_stack")) as running:
        running.provision(slide=CMU)
        yield running


@pytest.fixture(scope="module")
def page(stack):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=FLAGS)
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        messages: list[str] = []
        page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
        page.console_messages = messages
        yield page
        context.close()
        browser.close()


@pytest.fixture(autouse=True)
def _page_checks(request):
    """Every browser test also fails on an uncaught script error in the page; a failed one
    leaves a screenshot (``<test>_failure.png``) and prints the page's last console lines."""
    if "page" not in request.fixturenames:
        yield
        return
    page = request.getfixturevalue("page")
    start = len(page.console_messages)
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        _shot(page, f"{request.node.name}_failure.png")
        print("\n".join(page.console_messages[-30:]))
    errors = [m for m in page.console_messages[start:] if m.startswith("pageerror")]
    assert not errors, errors[:5]


def _shot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    page.screenshot(path=str(path))
    return path


def _open_analysis_menu(page) -> None:
    # bootstrap-submenu opens a submenu on click of its anchor (hover does nothing)
    page.click(".h-analyses-dropdown-link")
    page.click('.h-analyses-dropdown a[data-name="dsa/nucleus-analysis"]')
    page.click('.h-analyses-dropdown a:text-is("local")')
    page.click('a.h-analysis-item[data-cli="NucleusAnalysis"]')


def _login(page, root: str) -> None:
    """Log in through the HistomicsUI header (once per browser context)."""
    page.goto(f"{root}/histomics")
    page.wait_for_selector("a.g-login, .h-user-dropdown-link")
    if page.locator(".h-user-dropdown-link").count():
        return
    page.click("a.g-login")
    page.fill("#g-login", ADMIN["login"])
    page.fill("#g-password", ADMIN["password"])
    page.click("#g-login-button")
    page.wait_for_selector(".h-user-dropdown-link")


def _open_slide(page, root: str, item_id: str) -> None:
    """Log in and open a slide in HistomicsUI from a fresh page load (a hash-only change
    does not load a new page; the login cookie stays)."""
    _login(page, root)
    page.goto(f"{root}/histomics#?image={item_id}")
    page.reload()


#: the Nuclei panel counts ``n`` outlines drawn
_DRAWN_IS = ("n => Number(document.querySelector('.h-nl-drawn-count')"
             ".getAttribute('data-drawn-count')) === n")


def test_submit_in_histomicsui_draws_nuclei_and_legend(stack, page):
    root = stack.api_url.rsplit("/api/v1", 1)[0]
    item = stack.slide_item
    try:
        # open the real slide; our Nuclei panel is there, empty
        _open_slide(page, root, item["_id"])
        page.wait_for_selector(".h-image-view-container .geojs-layer", state="attached")
        page.wait_for_selector("#h-nucleus-legend-panel .h-nl-empty")
        # Analyses -> dsa/nucleus-analysis -> local -> NucleusAnalysis, then Submit
        _open_analysis_menu(page)
        page.wait_for_selector("#h-analysis-panel .s-info-panel-submit")
        assert "Nucleus Analysis" in page.inner_text("#h-analysis-panel")
        page.click("#h-analysis-panel .s-info-panel-submit")
        deadline = time.monotonic() + 90
        jobs = []
        clicked = time.monotonic()
        while not jobs and time.monotonic() < deadline:
            jobs = [j for j in stack.admin.get("job", parameters={"limit": 0})
                    if j["type"] == "nucleus_analysis"]
            if not jobs and time.monotonic() - clicked > 20:
                # on a loaded machine the panel may still have been building its form
                page.click("#h-analysis-panel .s-info-panel-submit")
                clicked = time.monotonic()
            time.sleep(0.5)
        jobs.sort(key=lambda j: j["created"])
        for extra in jobs[1:]:  # a second click that also got through: let it finish first
            stack.wait_job(extra["_id"], timeout_s=900)
        assert jobs, "Submit queued no Nucleus Analysis job: " + \
            "\n".join(page.console_messages[-10:])
        job = stack.wait_job(jobs[0]["_id"], timeout_s=900)
        assert job["status"] == SUCCESS, "".join(job.get("log") or [])
        summary = stack.admin.get(f"nucleus_analysis/item/{item['_id']}")
        # the legend refreshes on the job's SUCCESS event (reload if the event was missed)
        try:
            page.wait_for_selector("#h-nucleus-legend-panel .h-nl-row", timeout=30_000)
        except Exception:
            page.reload()
            page.wait_for_selector("#h-nucleus-legend-panel .h-nl-row")
        legend = page.locator("#h-nucleus-legend-panel")
        assert int(legend.get_attribute("data-nuclei")) == summary["nuclei"] > 0
        # the default: one network call per tile, on the grid anchor (no averaging)
        assert legend.locator(".h-nl-averaging").inner_text() == "(grid anchored to the tissue)"
        rows = page.locator("#h-nucleus-legend-panel .h-nl-row")
        shown = {rows.nth(i).get_attribute("data-class"): int(rows.nth(i).get_attribute(
            "data-count")) for i in range(rows.count())}
        assert shown == {c["name"]: c["count"] for c in summary["classes"]}
        # make every class visible and wait until GeoJS holds the outlines
        page.wait_for_function("() => window.girder && document.querySelectorAll("
                               "'#h-nucleus-legend-panel .h-nl-toggle').length > 0")
        page.click("#h-nucleus-legend-panel .h-nl-show-all")
        # (the classes' annotations load one after the other: wait for all of them)
        try:
            page.wait_for_function(_DRAWN_IS, arg=summary["nuclei"], timeout=120_000)
        except pytest.importorskip("playwright.sync_api").TimeoutError:
            pass  # the assertion below says how many were drawn
        drawn = int(page.get_attribute(".h-nl-drawn-count", "data-drawn-count"))
        assert drawn == summary["nuclei"], (drawn, summary["nuclei"])
        assert int(page.get_attribute(".h-nl-shown-count", "data-shown-count")) == drawn
        assert page.get_attribute(".h-nl-status", "data-loading") == "false"
        shot = _shot(page, "histomicsui_nuclei.png")
        # per-class hide: unchecking the largest class removes its outlines
        largest = max(summary["classes"], key=lambda c: c["count"])
        page.uncheck(f'.h-nl-toggle[data-annotation-id="{largest["annotationId"]}"]')
        page.wait_for_function(
            f"() => Number(document.querySelector('.h-nl-drawn-count')"
            f".getAttribute('data-drawn-count')) === {drawn - largest['count']}")
        _shot(page, "histomicsui_nuclei_class_hidden.png")
        # the feature table is reachable from the slide
        links = page.locator("#h-nucleus-legend-panel a.h-nl-file")
        assert sorted(links.nth(i).get_attribute("data-kind")
                      for i in range(links.count())) == ["CSV", "GEOJSON", "PARQUET"]
        # its own collapsible panel: the title bar hides and shows the content
        assert page.inner_text("#h-nucleus-legend-panel .s-panel-title").strip().startswith(
            "Nuclei")
        page.click("#h-nucleus-legend-panel .s-panel-title-container")
        page.wait_for_selector("#h-nucleus-legend-panel .s-panel-content", state="hidden")
        page.click("#h-nucleus-legend-panel .s-panel-title-container")
        page.wait_for_selector("#h-nucleus-legend-panel .s-panel-content.in")
        page.wait_for_function("() => !document.querySelector("
                               "'#h-nucleus-legend-panel .collapsing')")
        page.click("#h-nucleus-legend-panel .h-nl-preview-toggle")
        page.wait_for_selector("#h-nucleus-legend-panel .h-nl-preview table")
        assert "nucleus_id" in page.inner_text("#h-nucleus-legend-panel .h-nl-preview")
        print(f"\nbrowser: {drawn} outlines drawn, legend {shown}; screenshot {shot}")
    finally:
        for job in stack.admin.get("job", parameters={"limit": 0}):
            if job["status"] not in TERMINAL:
                stack.admin.put(f"job/{job['_id']}/cancel")


def _result(stack) -> dict:
    """The slide's settled Nucleus Analysis summary: no job of an earlier test still running
    (a late one would replace the result under the page); runs the analysis through REST if
    the slide has none."""
    item = stack.slide_item
    for job in stack.admin.get("job", parameters={"limit": 0}):
        if job["status"] not in TERMINAL:
            stack.wait_job(job["_id"], timeout_s=900)
    if "nucleusAnalysis" not in (stack.admin.getItem(item["_id"]).get("meta") or {}):
        job = stack.admin.post(f"nucleus_analysis/item/{item['_id']}/run", json={})
        assert stack.wait_job(job["_id"], timeout_s=900)["status"] == SUCCESS
    return stack.admin.get(f"nucleus_analysis/item/{item['_id']}")


#: in the page: the scatter's points in page pixels, and one with no other point within
#: ``gap`` pixels (so a small box around it selects it alone)
_ISOLATED_POINT = """gap => {
    const gd = document.querySelector('#h-metadata-plot');
    const trace = gd.data[0], L = gd._fullLayout, box = gd.getBoundingClientRect();
    const px = (ax, v) => (ax.c2p ? ax.c2p(v) : ax.l2p(v));
    const pts = trace.x.map((x, i) => [box.left + L._size.l + px(L.xaxis, x),
                                       box.top + L._size.t + px(L.yaxis, trace.y[i])]);
    const inside = ([u, v]) => u > box.left + L._size.l + gap && v > box.top + L._size.t + gap &&
        u < box.left + L._size.l + L._size.w - gap && v < box.top + L._size.t + L._size.h - gap;
    for (let i = 0; i < pts.length; i += 1) {
        if (inside(pts[i]) && pts.every((q, j) => j === i ||
                Math.hypot(q[0] - pts[i][0], q[1] - pts[i][1]) > gap)) {
            return {index: i, x: trace.x[i], y: trace.y[i], u: pts[i][0], v: pts[i][1],
                    n: pts.length, type: trace.type};
        }
    }
    return {index: -1, n: pts.length, type: trace.type};
}"""


def _open_plot_settings(page, panel: str, option: str, timeout_s: float = 180.0) -> None:
    """Open Metadata Plot's settings once they offer ``option``.

    The dialog lists what the panel's last ``plot/list`` answered when it opened, and never
    updates; each change of the shown annotations aborts that request and asks again, so on
    a slow machine a dialog opened too early is empty. Wait for the panel to finish loading,
    and close and reopen a dialog without the option, as a user would.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        page.wait_for_function(
            "p => { const el = document.querySelector(p);"
            " return !!el && !el.classList.contains('loading'); }",
            arg=panel, timeout=max(1.0, deadline - time.monotonic()) * 1000)
        page.click(f"{panel} .g-widget-metadata-plot-settings")
        try:
            page.wait_for_selector(f'#h-plot-series-x option[value="{option}"]',
                                   state="attached", timeout=5_000)
            return
        except pytest.importorskip("playwright.sync_api").TimeoutError:
            if time.monotonic() > deadline:
                offered = page.eval_on_selector_all("#h-plot-series-x option",
                                                    "os => os.map(o => o.value)")
                raise AssertionError(f"Metadata Plot never offered {option!r} in "
                                     f"{timeout_s:.0f} s; it offered {offered}") from None
        page.click("#g-dialog-container .modal-header .close")
        page.wait_for_selector("#g-dialog-container .modal-dialog", state="hidden")


def test_metadata_plot_scatters_two_features_and_a_point_selects_its_nucleus(stack, page):
    """Metadata Plot, as a user sets it: area against circularity, one point per nucleus; a
    box drawn around one point selects that nucleus in the viewer (the Nuclei panel names
    it), and the point's values are that nucleus' row of the item's feature table."""
    root = stack.api_url.rsplit("/api/v1", 1)[0]
    item = stack.slide_item
    summary = _result(stack)
    x, y = "data.size.area", "data.shape.circularity"
    plot_lists: list[str] = []  # the bodies of Metadata Plot's column requests

    def on_request(request):
        if request.method == "POST" and urlparse(request.url).path.endswith("/plot/list"):
            plot_lists.append(request.post_data or "")

    page.on("request", on_request)
    _open_slide(page, root, item["_id"])
    page.wait_for_selector("#h-nucleus-legend-panel .h-nl-row")
    page.click("#h-nucleus-legend-panel .h-nl-show-all")
    page.wait_for_function(_DRAWN_IS, arg=summary["nuclei"], timeout=120_000)
    panel = "#h-metadataplot-panel"
    _open_plot_settings(page, panel, x)
    page.remove_listener("request", on_request)
    # each carries its number in the page's sending order (client/plotRequests.js)
    numbers = [int(parse_qs(body).get("seq", ["0"])[0]) for body in plot_lists]
    assert numbers and all(n > 0 for n in numbers), plot_lists
    assert numbers == sorted(set(numbers)), numbers
    page.select_option("#h-plot-series-x", x)
    page.select_option("#h-plot-series-y", y)
    page.uncheck("#h-plot-folder")  # this slide's nuclei only
    page.click("#g-dialog-container .h-submit")
    if not page.locator(f"{panel} .s-panel-content.in").count():
        page.click(f"{panel} .s-panel-title-container")
    page.wait_for_function(
        "() => { const gd = document.querySelector('#h-metadata-plot');"
        " return !!(gd && gd._fullLayout && gd.data && gd.data[0] && gd.data[0].x.length); }",
        timeout=120_000)
    page.wait_for_timeout(500)  # plotly lays the axes out after the first draw
    point = page.evaluate(_ISOLATED_POINT, 8)
    # a scatter of every nucleus (WebGL above 100 points, as HistomicsUI draws it)
    assert point["n"] == summary["nuclei"] and point["type"] == "scattergl", point
    assert point["index"] >= 0, "no point stands apart from the others"
    _shot(page, "histomicsui_metadata_plot.png")
    # box select: the plot's own tool, a small box around the point
    page.locator(f'{panel} .modebar-btn[data-val="select"]').dispatch_event("click")
    u, v = point["u"], point["v"]
    page.mouse.move(u - 6, v - 6)
    page.mouse.down()
    page.mouse.move(u + 6, v + 6, steps=6)
    page.mouse.up()
    page.wait_for_function(
        "() => !!document.querySelector('.h-nl-selected').getAttribute('data-nucleus-ids')",
        timeout=30_000)
    selected = page.locator("#h-nucleus-legend-panel .h-nl-selected")
    nucleus = int(selected.get_attribute("data-nucleus-ids"))
    element_id = selected.get_attribute("data-element-ids")
    _shot(page, "histomicsui_metadata_plot_selected.png")
    # that nucleus is the point's: its feature-table row holds the point's two values
    csv = next(f for f in summary["files"] if f["name"].endswith(".csv"))
    text = stack.admin.get(f"file/{csv['_id']}/download", jsonResp=False).text
    table = pd.read_csv(StringIO(text)).set_index("nucleus_id")
    row = table.loc[nucleus]
    # (the CSV holds float32 text; plot/data reads the same text)
    assert row["Size.Area"] == pytest.approx(point["x"], rel=1e-6)
    assert row["Shape.Circularity"] == pytest.approx(point["y"], rel=1e-6)
    # and the element selected is that nucleus' outline: its box is the row's
    element = None
    for c in summary["classes"]:
        for e in stack.admin.get(f"annotation/{c['annotationId']}")["annotation"]["elements"]:
            if e["id"] == element_id:
                element = e
    assert element is not None and element["user"]["id"] == nucleus
    pts = [p[:2] for p in element["points"]]
    assert [min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts),
            max(p[1] for p in pts)] == [row["min_x"], row["min_y"], row["max_x"],
                                        row["max_y"]]
    assert f"nucleus {nucleus} ({row['class']})" in selected.inner_text()
    print(f"\nmetadata plot: {point['n']} points; point ({point['x']}, {point['y']}) "
          f"selected nucleus {nucleus}")


@pytest.mark.parametrize("drop", ["first", "every"])
def test_a_failed_annotation_request_is_fetched_again(stack, page, drop):
    """A class's annotation request that fails (here the browser drops the connection) would
    leave that class undrawn for good (large_image fetches once): the Nuclei panel fetches it
    again and every nucleus gets drawn; the panel says it retried. When every request fails
    it gives up after 3 and says the layer could not be loaded."""
    root = stack.api_url.rsplit("/api/v1", 1)[0]
    item = stack.slide_item
    summary = _result(stack)
    largest = max(summary["classes"], key=lambda c: c["count"])
    path = f"/api/v1/annotation/{largest['annotationId']}"
    dropped: list[str] = []

    def drop_first(route):
        if not dropped or drop == "every":
            dropped.append(route.request.url)
            route.abort("connectionreset")
        else:
            route.continue_()

    def matcher(url: str) -> bool:
        return urlparse(url).path == path

    page.route(matcher, drop_first)
    try:
        _open_slide(page, root, item["_id"])
        page.wait_for_selector("#h-nucleus-legend-panel .h-nl-row")
        page.click("#h-nucleus-legend-panel .h-nl-show-all")
        if drop == "every":
            page.wait_for_function(
                "() => document.querySelector('.h-nl-status').textContent"
                ".includes('could not be loaded')", timeout=120_000)
            assert len(dropped) == 4  # the first request and 3 more
            assert page.get_attribute(".h-nl-status", "data-retries") == "3"
            drawn = int(page.get_attribute(".h-nl-drawn-count", "data-drawn-count"))
            assert drawn == summary["nuclei"] - largest["count"]
            return
        page.wait_for_function(_DRAWN_IS, arg=summary["nuclei"], timeout=120_000)
        assert dropped, "the class's annotation was never requested"
        assert int(page.get_attribute(".h-nl-status", "data-retries")) >= 1
        assert page.get_attribute(".h-nl-status", "data-loading") == "false"
    finally:
        page.unroute(matcher, drop_first)


def test_classes_shown_before_the_viewer_exists_are_drawn(stack, page):
    """HistomicsUI ignores an annotation shown while its viewer is still being made (it
    neither fetches nor draws it, and never marks it loading): with a slow tile server the
    Nuclei panel could show its classes in that window and they stayed undrawn for good.
    Here the slide's tile metadata is held back while the panel loads and all classes are
    shown; once the viewer exists every nucleus gets drawn."""
    root = stack.api_url.rsplit("/api/v1", 1)[0]
    item = stack.slide_item
    summary = _result(stack)
    path = f"/api/v1/item/{item['_id']}/tiles"
    held: list = []
    holding = [True]

    def hold(route):
        if holding[0]:
            held.append(route)
        else:
            route.continue_()

    def matcher(url: str) -> bool:
        return urlparse(url).path == path

    _login(page, root)
    page.route(matcher, hold)
    try:
        page.goto(f"{root}/histomics#?image={item['_id']}")
        page.reload()
        page.wait_for_selector("#h-nucleus-legend-panel .h-nl-row")
        page.wait_for_function("() => document.querySelectorAll("
                               "'#h-nucleus-legend-panel .h-nl-row').length > 0")
        assert held, "the viewer asked for the tiles before the panel loaded"
        assert not page.locator(".geojs-map").count(), "the viewer exists already"
        page.click("#h-nucleus-legend-panel .h-nl-show-all")
        page.wait_for_timeout(2000)  # the panel applies its level of detail (every 0.5 s)
        holding[0] = False
        for route in held:
            route.continue_()
        page.wait_for_function(_DRAWN_IS, arg=summary["nuclei"], timeout=120_000)
        assert page.get_attribute(".h-nl-status", "data-loading") == "false"
    finally:
        page.unroute(matcher, hold)


#: hostile item metadata: every field the Nuclei panel reads, each trying to run script
XSS = "<img src=x onerror=\"window.__xss = (window.__xss || []).concat('{}')\">"


@pytest.mark.security
def test_hostile_metadata_does_not_run_in_the_nuclei_panel(stack, page):
    """Anyone with write access sets ``meta.nucleusAnalysis``; every reader opens the slide."""
    root = stack.api_url.rsplit("/api/v1", 1)[0]
    item = stack.upload_slide(CMU, name="hostile.svs")
    hostile = {
        "model": XSS.format("model") + "<script>window.__xss = ['script']</script>",
        "modelVersion": XSS.format("version"),
        # only a JSON true turns a setting on; anything else is not shown
        "parameters": {"test_time_flips": True, "test_time_shifts": XSS.format("shifts"),
                       "grid_anchor": True},
        "nuclei": XSS.format("nuclei"),
        "classes": [
            {"name": XSS.format("name"), "count": XSS.format("count"),
             "color": 'red" onmouseover="window.__xss=[\'color\']',
             "annotationId": '"><img src=x onerror="window.__xss=[\'annotationId\']">'},
            {"name": "stroma", "count": 12, "color": "rgb(0,128,0)",
             "annotationId": "0123456789abcdef01234567"},
            # over Metadata Plot's 25,000 elements: its name lands in the panel's plot note
            {"name": XSS.format("big class"), "count": 30_000, "color": "rgb(0,0,255)",
             "annotationId": "0123456789abcdef01234568"},
        ],
        "files": [{"_id": '"><img src=x onerror="window.__xss=[\'file id\']">',
                   "name": "a.csv"},
                  {"_id": "0123456789abcdef01234567",
                   "name": "t.csv" + XSS.format("file name")}],
    }
    stack.admin.put(f"item/{item['_id']}/metadata", json={"nucleusAnalysis": hostile})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    _open_slide(page, root, item["_id"])
    page.wait_for_selector("#h-nucleus-legend-panel .h-nl-row")
    page.wait_for_timeout(2000)  # image error handlers fire asynchronously
    panel = page.locator("#h-nucleus-legend-panel")
    assert page.evaluate("() => window.__xss") is None, "script ran from item metadata"
    assert dialogs == []
    assert panel.locator("img, script").count() == 0
    assert panel.locator("[onerror], [onmouseover]").count() == 0
    # the panel still renders: the hostile strings as text, the numbers coerced
    assert XSS.format("name") in panel.inner_text()
    assert panel.locator(".h-nl-averaging").inner_text() == \
        "(averaged over test-time flips, grid anchored to the tissue)"
    assert panel.get_attribute("data-nuclei") == "0"
    rows = panel.locator(".h-nl-row")
    assert [rows.nth(i).get_attribute("data-count") for i in range(rows.count())] == \
        ["0", "12", "30000"]
    note = panel.locator(".h-nl-plot-note")
    assert note.get_attribute("data-classes") == "1"
    assert XSS.format("big class") in note.inner_text()
    swatch = panel.locator(".h-nl-swatch").first.get_attribute("style")
    assert "onmouseover" not in swatch and "#000" in swatch
    links = panel.locator("a.h-nl-file")
    assert links.count() == 1  # the file with a malformed id has no link
    assert "/file/0123456789abcdef01234567/download" in links.first.get_attribute("href")
    _shot(page, "histomicsui_hostile_metadata.png")
