"""50,000 real nuclei (an evenly spread subset of histolytics' 592,349) through the DSA:
written by the project's writers, ingested by the plugin's result path, read back as
HistomicsUI reads them, and shown in Chromium: every one counted by the per-class density
layers at whole-slide zoom, the outlines of every nucleus in view on the densest 1 mm field.

The full-size run is ``python -m benchmarks.scale_dsa --browser`` (BENCHMARKS.md)."""
from __future__ import annotations

import pytest

from benchmarks.scale_dsa import FIXTURE, run

pytestmark = [pytest.mark.girder, pytest.mark.browser, pytest.mark.slow]


def test_50k_real_nuclei_are_stored_and_shown_at_every_zoom(tmp_path):
    if not FIXTURE.is_file():
        pytest.fail(f"{FIXTURE} is missing: run scripts/fetch_data.py")
    report = run(50_000, browser=True, workdir=tmp_path, pan_fault=True)
    print(f"\n{report}")
    assert sum(report["stored"].values()) == 50_000
    assert set(report["stored"]) == {"neoplastic", "connective", "inflammatory",
                                     "macrophage_cell", "dead", "macrophage_nucleus"}
    largest = report["centroids_get"]
    # large_image's binary centroids: a fixed header and 28 bytes per element
    assert largest["bytes"] >= 28 * largest["elements"]
    assert report["field_1mm_get"]["elements"] > 0
    shown = report["browser"]
    # whole slide: the density layers, every nucleus counted once, no outline fetched
    assert shown["whole_slide"]["mode"] == "density", shown
    assert shown["whole_slide"]["density"] == 50_000, shown
    assert shown["whole_slide"]["drawn"] == 0, shown
    # the panel says which classes Metadata Plot cannot show per nucleus (over 25,000)
    assert shown["whole_slide"]["plot_note_classes"] == sum(
        1 for n in report["stored"].values() if n > 25_000), shown
    # 1 mm field: outlines, at least every nucleus meeting the view (the viewer fetches a
    # margin around it), no density
    zoomed = shown["field_zoom"]
    assert zoomed["drawn_s"] is not None, shown
    assert zoomed["mode"] == "detail" and zoomed["density"] == 0, shown
    assert zoomed["drawn"] >= zoomed["nuclei_in_view"] > 50, shown
    field = shown["field"]
    assert field["mode"] == "detail" and field["density"] == 0, shown
    assert field["nuclei_in_view"] > 50 and field["drawn"] >= field["nuclei_in_view"], shown
    assert field["drawn"] < 50_000, shown
    # a pan whose region request fails (the connection dropped): the panel fetches that
    # class's region again, and what it got is what is drawn
    pan = shown["pan_after_failed_fetch"]
    assert len(pan["dropped"]) == 1 and pan["class"], pan
    assert pan["drawn_s"] is not None and pan["loading"] == "false", pan
    assert pan["retries"] >= 1 and pan["retried"], pan
    last, view = pan["retried"][-1], pan["view_on_slide"]
    region = last["region"]
    assert region["left"] <= view["left"] + 1 and region["top"] <= view["top"] + 1, pan
    assert region["right"] >= view["right"] - 1 and region["bottom"] >= view["bottom"] - 1, pan
    assert pan["class_drawn"] == last["elements"] >= pan["class_in_view"] > 0, pan
