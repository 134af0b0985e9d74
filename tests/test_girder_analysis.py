"""The analysis inside the DSA: real Girder (HTTP) + real girder_worker + real Redis.

Everything goes through REST as a user would, on the real CMU Aperio slide; the worker runs
the real CLI as a local process. The database is mongomock (shims) unless MONGO_URI is set.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import pytest
from girder_client import HttpError

from tests.girder_stack import CANCELED, ERROR, SUCCESS, TERMINAL, Stack, StackError

pytestmark = pytest.mark.girder

REPO = Path(__file__).resolve().parents[1]
CMU = REPO / "data" / "cmu_small_region.svs"
#: a Girder token: 64 letters/digits standing alone
TOKEN_RE = re.compile(r"(?<![A-Za-z0-9])[A-Za-z0-9]{64}(?![A-Za-z0-9])")
READER = {"login": "reader", "password": "readerpass", "email": "reader@example.com",
          "firstName": "Rita", "lastName": "Reader"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not CMU.is_file():
        pytest.fail(f"{CMU} is missing: run scripts/fetch_data.py")
    with Stack(tmp_path_factory.mktemp("girder_stack")) as running:
        running.provision(slide=CMU)
        yield running


@pytest.fixture(scope="module")
def reader(stack):
    stack.client().post("user", parameters=READER)
    return stack.client(READER["login"], READER["password"])


@pytest.fixture(scope="module")
def cli_id(stack) -> str:
    return stack.admin.get("nucleus_analysis/cli")[0]["_id"]


@pytest.fixture(scope="module")
def full_run(stack) -> dict:
    """The whole CMU slide, launched through our REST route, awaited."""
    item = stack.slide_item
    started = time.monotonic()
    job = stack.admin.post(f"nucleus_analysis/item/{item['_id']}/run", json={})
    job = stack.wait_job(job["_id"], timeout_s=900)
    job["_wall_s"] = time.monotonic() - started
    return job


def _annotations(gc, item_id: str) -> list[dict]:
    return gc.get("annotation", parameters={"itemId": item_id, "limit": 0})


def _ours(annotations: list[dict]) -> list[dict]:
    return [a for a in annotations if "nucleusAnalysis" in a["annotation"].get("attributes", {})]


def _files(gc, item_id: str) -> list[dict]:
    return gc.get(f"item/{item_id}/files", parameters={"limit": 0})


def _log(job: dict) -> str:
    return "".join(job.get("log") or [])


def test_docker_image_listing_includes_our_cli(stack, reader, cli_id):
    listing = reader.get("slicer_cli_web/docker_image")
    entry = listing["dsa/nucleus-analysis"]["local"]["NucleusAnalysis"]
    assert entry["run"] == f"/slicer_cli_web/cli/{cli_id}/run"
    xml = reader.get(f"slicer_cli_web/cli/{cli_id}/xml", jsonResp=False).text
    assert "<title>Nucleus Analysis</title>" in xml
    # registering again refreshes the same item (no duplicate in the menu)
    again = stack.admin.put("nucleus_analysis/register")
    assert [c["_id"] for c in again] == [cli_id]
    assert list(reader.get("slicer_cli_web/docker_image")["dsa/nucleus-analysis"]) == ["local"]


def test_rest_job_on_real_slide_posts_results(stack, full_run):
    assert full_run["status"] == SUCCESS, _log(full_run)
    item_id = stack.slide_item["_id"]
    meta = stack.admin.getItem(item_id)["meta"]["nucleusAnalysis"]
    ours = _ours(_annotations(stack.admin, item_id))
    assert sorted(a["_id"] for a in ours) == sorted(meta["annotationIds"])
    counts = {a["annotation"]["attributes"]["nucleusAnalysis"]["class"]: a["_elementCount"]
              for a in ours}
    assert sum(counts.values()) > 0
    assert counts == {c["name"]: c["count"] for c in meta["classes"]}
    assert meta["nuclei"] == sum(counts.values())
    assert meta["jobId"] == full_run["_id"]
    assert meta["model"] == "nucleus_unet" and meta["modelVersion"]
    # the elements drawn are the CLI's: closed polylines, group = class, user.id
    first = stack.admin.get(f"annotation/{ours[0]['_id']}")
    element = first["annotation"]["elements"][0]
    assert element["type"] == "polyline" and element["closed"] is True
    assert element["group"] == first["annotation"]["attributes"]["nucleusAnalysis"]["class"]
    assert "id" in element["user"]
    # feature table attached to the slide item, one CSV row per nucleus
    names = sorted(f["name"] for f in _files(stack.admin, item_id))
    assert names == ["cmu_small_region-nuclei.csv", "cmu_small_region-nuclei.geojson",
                     "cmu_small_region-nuclei.parquet", "cmu_small_region.svs"]
    csv = next(f for f in meta["files"] if f["name"].endswith(".csv"))
    text = stack.admin.get(f"file/{csv['_id']}/download", jsonResp=False).text
    assert len(text.strip().splitlines()) - 1 == meta["nuclei"]
    # the item's CSV is the plottable one (bounding box names HistomicsUI joins on)
    assert text.split("\n", 1)[0].startswith("nucleus_id,class,class_probability,min_x,")
    # per-class statistics for comparing slides (keys without dots: Girder metadata)
    for c in meta["classes"]:
        stats = meta["statistics"][c["name"]]
        assert stats["count"] == c["count"] and stats["Size_Area"]["mean"] > 0
    # progress and log streamed from the CLI
    assert full_run["progress"]["current"] == pytest.approx(1.0)
    assert "batch" in _log(full_run) and "Posted" in _log(full_run)
    print(f"\nwhole CMU slide: {meta['nuclei']} nuclei {counts} in {full_run['_wall_s']:.1f} s")


def test_metadata_plot_joins_every_row_to_its_own_nucleus(stack, full_run, reader):
    """The request HistomicsUI's Metadata Plot sends (two features, the bounding box and the
    element ids), answered by large_image: one point per nucleus, each carrying the values
    of that nucleus' row (its element's ``user.id`` equals the row's ``nucleus_id``)."""
    item_id = stack.slide_item["_id"]
    meta = stack.admin.getItem(item_id)["meta"]["nucleusAnalysis"]
    x, y = "data.size.area", "data.shape.circularity"
    keys = [x, y, "item.name", "item.id", "bbox.x0", "bbox.y0", "bbox.x1", "bbox.y1",
            "annotation.id", "annotationelement.id", "data.id", "data.nucleus_id"]
    listed = {c["key"] for c in reader.post(
        f"annotation/item/{item_id}/plot/list", data={"annotations": json.dumps(["__all__"])})}
    assert {x, y, "data.nucleus_id", "annotationelement.id"} <= listed
    answer = reader.post(f"annotation/item/{item_id}/plot/data", data={
        "annotations": json.dumps(["__all__"]), "keys": ",".join(keys),
        "requiredKeys": f"{x},{y}"})
    col = {c["key"]: c["index"] for c in answer["columns"]}
    rows = answer["data"]
    assert len(rows) == meta["nuclei"]
    assert len({r[col["annotationelement.id"]] for r in rows}) == meta["nuclei"]
    assert all(r[col["data.id"]] == r[col["data.nucleus_id"]] for r in rows)
    assert {r[col["annotation.id"]] for r in rows} <= set(meta["annotationIds"])
    # the values are the rows' own (not one row's values repeated)
    assert len({r[col[x]] for r in rows}) > meta["nuclei"] // 20


@pytest.mark.parametrize("numbered", [True, False], ids=["numbered", "other-client"])
def test_a_late_metadata_plot_request_does_not_truncate_the_current_one(
        stack, full_run, reader, numbered):
    """HistomicsUI sends one ``uuid`` per page and aborts its previous plot/list request before
    sending the next; on a busy server the aborted one can arrive last. Such a request, arriving
    while the current one runs, must not cut the current one short: its answer still lists
    the feature table's columns (large_image alone answered 49 of 66 columns, no features).
    Numbered as the plugin's client numbers them (``seq``), or not at all (another client)."""
    item_id = stack.slide_item["_id"]
    annotations = stack.admin.getItem(item_id)["meta"]["nucleusAnalysis"]["annotationIds"]
    url = f"annotation/item/{item_id}/plot/list"
    page = f"page-{numbered}"

    def listed(which: list[str], seq: int) -> set[str]:
        data = {"annotations": json.dumps(which), "uuid": page}
        if numbered:
            data["seq"] = str(seq)
        return {c["key"] for c in reader.post(url, data=data)}

    # the server starts plot requests through plot_requests.claim (large_image is the known one)
    assert "will not cancel each other" not in (stack.workdir / "girder.log").read_text(
        errors="replace")
    alone = listed(annotations, 1)
    assert {"data.size.area", "data.shape.circularity"} <= alone
    for trial in range(3):
        sent_last = 10 * trial + 12  # the current one; the late ones were sent before it
        current: dict = {}
        thread = threading.Thread(target=lambda answer=current, seq=sent_last: answer.update(
            keys=listed(annotations, seq)))
        thread.start()
        late = 0
        while thread.is_alive() and late < 3:  # the aborted ones, arriving while it runs
            listed(annotations[:1], sent_last - 1 - late)
            late += 1
        thread.join()
        assert current["keys"] == alone, sorted(alone - current["keys"])


def test_no_token_in_job_logs_annotations_metadata_or_worker_log(stack, full_run, reader):
    known = {stack.admin.token, reader.token}
    item_id = stack.slide_item["_id"]
    texts = {
        "job log": _log(full_run),
        "job arguments": json.dumps([full_run.get("args"), full_run.get("kwargs")]),
        "item metadata": json.dumps(stack.admin.getItem(item_id)["meta"]),
        "worker log": stack.worker_log.read_text(errors="replace"),
    }
    for annotation in _ours(_annotations(stack.admin, item_id)):
        full = stack.admin.get(f"annotation/{annotation['_id']}")
        texts[f"annotation {annotation['_id']}"] = json.dumps(full, default=str)
    for where, text in texts.items():
        assert not TOKEN_RE.findall(text), f"token-like string in {where}"
        assert not any(token in text for token in known), f"token in {where}"


def test_histomicsui_submit_runs_locally_and_replaces_previous_result(stack, full_run, cli_id):
    """What HistomicsUI's Submit posts to slicer_cli_web; then slicer_cli_web's rerun."""
    item = stack.slide_item
    before = stack.admin.getItem(item["_id"])["meta"]["nucleusAnalysis"]
    private = stack.admin.get("folder", parameters={
        "parentType": "user", "parentId": stack.admin.get("user/me")["_id"],
        "name": "Private"})[0]
    job = stack.admin.post(f"slicer_cli_web/cli/{cli_id}/run", parameters={
        "inputImageFile": item["largeImage"]["fileId"],
        "outputNucleiAnnotationFile": "nuclei.anot",
        "outputNucleiAnnotationFile_folder": private["_id"],
        "outputFeatureFile": "features.csv", "outputFeatureFile_folder": private["_id"],
        "region": "[1000, 1000, 700, 700]", "batch_size": "2", "stain_normalize": "false"})
    assert job["type"] == "nucleus_analysis" and "jobInfoSpec" not in job
    job = stack.wait_job(job["_id"], timeout_s=600)
    assert job["status"] == SUCCESS, _log(job)
    rerun = stack.admin.post(f"slicer_cli_web/cli/{cli_id}/rerun",
                             parameters={"jobId": job["_id"], "region": "[1000,1000,500,500]"})
    rerun = stack.wait_job(rerun["_id"], timeout_s=600)
    assert rerun["status"] == SUCCESS, _log(rerun)
    assert "--region=1000,1000,500,500" in _log(rerun)
    meta = stack.admin.getItem(item["_id"])["meta"]["nucleusAnalysis"]
    assert meta["jobId"] == rerun["_id"] and meta["parameters"]["region"] == [1000, 1000, 500, 500]
    assert meta["nuclei"] < before["nuclei"]
    # replaced, not piled up: only the last run's annotations and files remain
    ours = _ours(_annotations(stack.admin, item["_id"]))
    assert sorted(a["_id"] for a in ours) == sorted(meta["annotationIds"])
    assert sum(a["_elementCount"] for a in ours) == meta["nuclei"]
    names = sorted(f["name"] for f in _files(stack.admin, item["_id"]))
    assert names.count("cmu_small_region-nuclei.csv") == 1
    assert names.count("cmu_small_region-nuclei.parquet") == 1
    assert not [f for f in _files(stack.admin, item["_id"]) if f["name"].endswith(".anot")]


def _cli_processes(marker: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "NucleusAnalysis" in cmd and marker in cmd:
            found.append(f"{proc.name}: {cmd}")
    return found


def test_cancel_mid_run_kills_the_cli_and_posts_nothing(stack):
    item = stack.upload_slide(CMU, name="cmu_cancel.svs")
    job = stack.admin.post(f"nucleus_analysis/item/{item['_id']}/run", json={})
    running = stack.wait_job(job["_id"], timeout_s=300, until=lambda j: j["status"] in TERMINAL
                             or (j.get("progress") or {}).get("current", 0) > 0.02)
    assert running["status"] not in TERMINAL, _log(running)
    marker = running["kwargs"]["direct_path"]
    assert _cli_processes(marker), "the CLI should be running"
    stack.admin.put(f"job/{job['_id']}/cancel")
    started = time.monotonic()
    done = stack.wait_job(job["_id"], timeout_s=120)
    assert done["status"] == CANCELED, _log(done)
    assert time.monotonic() - started < 60
    assert "Canceled" in _log(done)
    deadline = time.monotonic() + 20
    while _cli_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _cli_processes(marker)
    time.sleep(2)  # nothing arrives late either
    assert _ours(_annotations(stack.admin, item["_id"])) == []
    assert "nucleusAnalysis" not in stack.admin.getItem(item["_id"]).get("meta", {})
    assert [f["name"] for f in _files(stack.admin, item["_id"])] == ["cmu_cancel.svs"]
    # the canceled job's outputs are refused by the ingest route as well
    with pytest.raises(HttpError) as refused:
        stack.admin.post(f"nucleus_analysis/item/{item['_id']}/result", parameters={
            "jobId": job["_id"], "annotationFileId": item["largeImage"]["fileId"],
            "tableFileIds": "[]"})
    assert refused.value.status == 400 and "canceled" in refused.value.responseText


def test_corrupt_slide_ends_in_error_with_a_readable_message(stack, tmp_path):
    corrupt = tmp_path / "corrupt.svs"
    corrupt.write_bytes(b"II*\x00" + os.urandom(200_000))
    item = stack.upload_slide(corrupt, large_image=False)
    # without direct paths the worker downloads the slide through REST
    stack.admin.put("system/setting", parameters={"key": "worker.direct_path",
                                                  "value": "false"})
    try:
        job = stack.admin.post(f"nucleus_analysis/item/{item['_id']}/run")
        assert job["kwargs"]["direct_path"] is None
        done = stack.wait_job(job["_id"], timeout_s=300)
    finally:
        stack.admin.put("system/setting", parameters={"key": "worker.direct_path",
                                                      "value": "true"})
    assert done["status"] == ERROR
    log = _log(done)
    assert "Downloading the slide corrupt.svs" in log
    assert re.search(r"NucleusAnalysis failed \(exit 1\): error: .+", log), log
    assert done["progress"]["message"].startswith("NucleusAnalysis failed (exit 1): error:")
    assert _ours(_annotations(stack.admin, item["_id"])) == []
    assert [f["name"] for f in _files(stack.admin, item["_id"])] == ["corrupt.svs"]


def test_user_without_write_access_cannot_run_or_post(stack, reader, cli_id):
    item = stack.slide_item
    assert reader.getItem(item["_id"])  # can read the slide (public collection)
    before = stack.admin.get("job", parameters={"limit": 0})
    for call in (
        lambda: reader.post(f"nucleus_analysis/item/{item['_id']}/run", json={}),
        lambda: reader.post(f"slicer_cli_web/cli/{cli_id}/run", parameters={
            "inputImageFile": item["largeImage"]["fileId"]}),
        lambda: reader.post(f"nucleus_analysis/item/{item['_id']}/result", parameters={
            "jobId": "0" * 24, "annotationFileId": "0" * 24, "tableFileIds": "[]"}),
    ):
        with pytest.raises(HttpError) as refused:
            call()
        assert refused.value.status == 403
    assert reader.get("job", parameters={"limit": 0}) == []
    assert len(stack.admin.get("job", parameters={"limit": 0})) == len(before)
    with pytest.raises(HttpError) as anonymous:
        stack.client().post(f"nucleus_analysis/item/{item['_id']}/run")
    assert anonymous.value.status == 401
    with pytest.raises(HttpError) as not_admin:
        reader.put("nucleus_analysis/register")
    assert not_admin.value.status == 403


@pytest.mark.parametrize("params, message", [
    ({"bogus": 1}, "Unknown parameter(s) bogus"),
    ({"batch_size": 0}, "batch_size must be within [1, 64]"),
    ({"region": [0, 0, 10]}, "region must be four numbers"),
    ({"stain_normalize": "perhaps"}, "stain_normalize must be true or false"),
])
def test_bad_parameters_are_refused_before_queueing(stack, params, message):
    with pytest.raises(HttpError) as refused:
        stack.admin.post(f"nucleus_analysis/item/{stack.slide_item['_id']}/run", json=params)
    assert refused.value.status == 400
    assert message in json.loads(refused.value.responseText)["message"]


def test_item_without_a_slide_is_refused(stack):
    empty = stack.admin.createItem(stack.folder["_id"], "empty item")
    with pytest.raises(HttpError) as refused:
        stack.admin.post(f"nucleus_analysis/item/{empty['_id']}/run")
    assert refused.value.status == 400 and "has 0 files" in refused.value.responseText
    other = stack.upload_slide(CMU, name="other.svs")
    with pytest.raises(HttpError) as foreign:
        stack.admin.post(f"nucleus_analysis/item/{empty['_id']}/run",
                         parameters={"fileId": other["largeImage"]["fileId"]})
    assert foreign.value.status == 400 and "is not in item" in foreign.value.responseText


def _post_result(stack, item_id: str, job_id: str, payload: bytes) -> HttpError | dict:
    """Upload ``payload`` as the job's pending annotation output and ask for its ingest."""
    name = f"payload.anot.pending-{job_id}"
    path = Path(stack.workdir) / name
    path.write_bytes(payload)
    with open(path, "rb") as stream:
        file = stack.admin.uploadFile(item_id, stream, name, len(payload))
    try:
        return stack.admin.post(f"nucleus_analysis/item/{item_id}/result", parameters={
            "jobId": job_id, "annotationFileId": file["_id"], "tableFileIds": "[]"})
    except HttpError as e:
        names = [f["name"] for f in _files(stack.admin, item_id)]
        assert name not in names, "a rejected upload must be removed"
        return e


@pytest.mark.parametrize("payload, message", [
    (b"{not json", "annotation file is not JSON"),
    (b'[{"name": "a", "elements": []}, {"name": "b", "elements": []}]',
     "ONE annotation document"),
    (json.dumps({"name": "n", "elements": [{"type": "polyline", "closed": True, "points": [
        [0, 0, 0], [5, 0, 0], [5, 5, 0]], "group": "g", "lineColor": "blue-ish"}]}).encode(),
     "element 0: lineColor"),
    (json.dumps({"name": "n", "elements": [{"type": "polyline", "closed": True,
                                            "points": [[0, 0], [5, 0]]}]}).encode(),
     "element 0: points must be two or more finite [x, y, z] triples"),
])
def test_invalid_results_are_rejected_readably(stack, full_run, payload, message):
    before = stack.admin.getItem(stack.slide_item["_id"])["meta"]["nucleusAnalysis"]
    # (posted as the newest job of the item: an older one's outputs are refused with 409)
    error = _post_result(stack, stack.slide_item["_id"], before["jobId"], payload)
    assert isinstance(error, HttpError) and error.status == 400
    assert message in json.loads(error.responseText)["message"]
    assert stack.admin.getItem(stack.slide_item["_id"])["meta"]["nucleusAnalysis"] == before


def test_result_of_another_item_is_rejected(stack, full_run):
    other = stack.upload_slide(CMU, name="another.svs")
    error = _post_result(stack, other["_id"], full_run["_id"], b'{"elements": []}')
    assert isinstance(error, HttpError) and error.status == 400
    assert "is not a Nucleus Analysis of this item" in error.responseText


def test_large_result_posts_in_chunks(stack, full_run):
    """100k nuclei: chunked upload, fast schema check, chunked element insert."""
    rng = range(100_000)
    elements = [{"type": "polyline", "closed": True, "points": [
        [x := 10.0 * (i % 300), y := 10.0 * (i // 300), 0], [x + 6, y, 0], [x + 6, y + 6, 0],
        [x, y + 6, 0]], "group": "neoplastic" if i % 3 else "inflammatory",
        "lineColor": "rgb(220,20,60)" if i % 3 else "rgb(255,200,0)", "lineWidth": 1,
        "user": {"id": i + 1, "class": "x", "probability": 0.9}} for i in rng]
    payload = json.dumps({"name": "Nuclei (synthetic)", "attributes": {
        "model": {"name": "synthetic", "version": "0"}}, "elements": elements}).encode()
    started = time.monotonic()
    newest = stack.admin.getItem(stack.slide_item["_id"])["meta"]["nucleusAnalysis"]["jobId"]
    summary = _post_result(stack, stack.slide_item["_id"], newest, payload)
    took = time.monotonic() - started
    assert isinstance(summary, dict), summary
    assert summary["nuclei"] == 100_000
    assert {c["name"]: c["count"] for c in summary["classes"]} == {
        "inflammatory": 33_334, "neoplastic": 66_666}
    ours = _ours(_annotations(stack.admin, stack.slide_item["_id"]))
    marker = "nucleusAnalysis"
    outlines = [a for a in ours if not a["annotation"]["attributes"][marker].get("density")]
    density = [a for a in ours if a["annotation"]["attributes"][marker].get("density")]
    assert sorted(a["_elementCount"] for a in outlines) == [33_334, 66_666]
    # above the detail limit the outlines are hidden and one heatmap per class is shown
    assert not any(a["annotation"]["display"]["visible"] for a in outlines)
    assert sorted((a["annotation"]["attributes"][marker]["class"], a["_elementCount"],
                   a["annotation"]["attributes"][marker]["count"]) for a in density) == [
        ("inflammatory", 1, 33_334), ("neoplastic", 1, 66_666)]
    assert all(a["annotation"]["display"]["visible"] for a in density)
    assert sorted(c["densityAnnotationId"] for c in summary["classes"]) == sorted(
        a["_id"] for a in density)
    print(f"\n100k nuclei ({len(payload) / 1e6:.0f} MB) ingested in {took:.1f} s")


def test_stack_refuses_to_start_without_redis(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match="redis-server is not installed"):
        Stack(tmp_path).start()


def test_wait_job_times_out(stack, full_run):
    with pytest.raises(TimeoutError, match="still 3"):
        stack.wait_job(full_run["_id"], timeout_s=0.5, until=lambda job: False)


def test_auto_register_setting_is_validated(stack):
    with pytest.raises(HttpError) as refused:
        stack.admin.put("system/setting", parameters={"key": "nucleus_analysis.auto_register",
                                                      "value": "perhaps"})
    assert refused.value.status == 400 and "must be true or false" in refused.value.responseText
    stack.admin.put("system/setting", parameters={"key": "nucleus_analysis.auto_register",
                                                  "value": "true"})
