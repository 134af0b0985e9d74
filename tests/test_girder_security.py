"""Attacks on the DSA integration, tried as a hostile user would: real Girder (HTTP), a real
girder_worker over a real Redis broker, the real CLI on the real CMU slide.

Each test here is one attack or integrity failure that was found by reading the code or by
trying it against the dev stack; every one must fail for the attacker.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from girder_client import GirderClient, HttpError
from girder_nucleus_analysis.job_tokens import WORKER_TOKEN_GRACE_S

from tests.girder_stack import CANCELED, ERROR, SUCCESS, TERMINAL, Stack, free_port

pytestmark = [pytest.mark.girder, pytest.mark.security]

REPO = Path(__file__).resolve().parents[1]
CMU = REPO / "data" / "cmu_small_region.svs"
MALLORY = {"login": "mallory", "password": "mallorypass", "email": "mallory@example.com",
           "firstName": "Mallory", "lastName": "Hostile"}
#: a small analysis: the worker finishes it in seconds
SMALL = {"region": [1000, 1000, 400, 400]}
NAMED_ROUTE = "slicer_cli_web/dsa_nucleus-analysis_local/NucleusAnalysis"


class Listener:
    """A TCP socket on a free local port that records every connection made to it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.connections: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(1)
            try:
                self.connections.append(conn.recv(256))
            except OSError:
                self.connections.append(b"")
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not CMU.is_file():
        pytest.fail(f"{CMU} is missing: run scripts/fetch_data.py")
    with Stack(tmp_path_factory.mktemp("girder_security")) as running:
        running.provision(slide=CMU)
        yield running


@pytest.fixture(scope="module")
def mallory(stack) -> GirderClient:
    """A non-admin user; her own Private folder is all the write access she has."""
    stack.client().post("user", parameters=MALLORY)
    return stack.client(MALLORY["login"], MALLORY["password"])


@pytest.fixture(scope="module")
def mallory_item(stack, mallory) -> dict:
    me = mallory.get("user/me")
    private = mallory.get("folder", parameters={"parentType": "user", "parentId": me["_id"],
                                                "name": "Private"})[0]
    file = mallory.uploadFileToFolder(private["_id"], str(CMU))
    return mallory.getItem(file["itemId"])


@pytest.fixture(scope="module")
def cli_id(stack) -> str:
    return stack.admin.get("nucleus_analysis/cli")[0]["_id"]


def _jobs(stack) -> int:
    return len(stack.admin.get("job", parameters={"limit": 0}))


def _refused(call, status=400) -> str:
    with pytest.raises(HttpError) as refused:
        call()
    assert refused.value.status == status, refused.value.responseText
    return json.loads(refused.value.responseText)["message"]


def _file_of(gc, item) -> str:
    """The slide file of an item (results are files of the same item)."""
    return next(f["_id"] for f in gc.get(f"item/{item['_id']}/files", parameters={"limit": 0})
                if f["name"].endswith(".svs"))


def _log(job: dict) -> str:
    return "".join(job.get("log") or [])


def _token_client(stack, token: str) -> GirderClient:
    gc = GirderClient(apiUrl=stack.api_url)
    gc.setToken(token)
    return gc


def _queued_token(stack, job_id: str) -> str:
    """The data token of a queued job, as anyone reading the broker would find it."""
    for message in stack.queued_messages():
        headers = message.get("headers", {})
        if headers.get("jobInfoSpec", {}).get("reference") == job_id:
            return headers["girder_client_token"]
    raise AssertionError(f"job {job_id} is not waiting in the broker")


# -- 1. endpoints chosen by a user ------------------------------------------------------------
def test_user_chosen_endpoints_never_cause_a_connection(stack, mallory, mallory_item, cli_id):
    """Through every launch route, a user naming a host, a model or a path gets 400, nothing
    is queued, and nothing connects to the address she named."""
    file_id = _file_of(mallory, mallory_item)
    base = mallory.post(f"nucleus_analysis/item/{mallory_item['_id']}/run",
                        parameters={"fileId": file_id}, json=SMALL)
    listener = Listener()
    try:
        url = f"127.0.0.1:{listener.port}"
        attacks = {"triton_url": f"http://{url}", "scheduler": f"tcp://{url}",
                   "model_name": "../../etc", "model_dir": "/tmp", "max_slide_px": "1e12"}
        before = _jobs(stack)
        for name, value in attacks.items():
            routes = {
                "ours": (f"nucleus_analysis/item/{mallory_item['_id']}/run",
                         {"fileId": file_id}, {name: value}),
                "slicer_cli_web run": (f"slicer_cli_web/cli/{cli_id}/run",
                                       {"inputImageFile": file_id, name: value}, None),
                "slicer_cli_web rerun": (f"slicer_cli_web/cli/{cli_id}/rerun",
                                         {"jobId": base["_id"], name: value}, None),
                "named route": (f"{NAMED_ROUTE}/run",
                                {"inputImageFile": file_id, name: value}, None),
            }
            for route, (path, params, body) in routes.items():
                message = _refused(lambda p=path, q=params, b=body: mallory.post(
                    p, parameters=q, json=b))
                assert "deployment settings" in message, (route, name, message)
                assert str(listener.port) not in message
        assert _jobs(stack) == before, "a refused request queued a job"
        # the legitimate job of the same user, and the named route itself, still work
        legit = mallory.post(f"{NAMED_ROUTE}/run", parameters={
            "inputImageFile": file_id, "region": json.dumps(SMALL["region"])})
        assert legit["type"] == "nucleus_analysis"
        for job in (base, legit):
            done = stack.wait_job(job["_id"], timeout_s=300, client=mallory)
            assert done["status"] == SUCCESS, _log(done)
        time.sleep(3)  # the hostile runs took seconds to connect; nothing came late
        assert listener.connections == []
    finally:
        listener.close()


# -- 2. numbers -------------------------------------------------------------------------------
@pytest.mark.parametrize("body, message", [
    (b'{"slide_mpp": 1e6}', "slide_mpp must be within [0, 5]"),
    (b'{"slide_mpp": 0.001}', "--slide-mpp must be within [0.05, 5]"),
    (b'{"tile_size": 1e400}', "tile_size must be finite"),
    (b'{"tile_size": 1e9}', "tile_size must be within [256, 4096]"),
    (b'{"tile_size": NaN}', "is not valid JSON"),  # Girder's own parser
    (b'{"workers": 100000}', "workers must be within [0, 64]"),
    (b'{"workers": -1}', "workers must be within [0, 64]"),
    (b'{"batch_size": Infinity}', "is not valid JSON"),
    (b'{"region": "[NaN, 0, 100, 100]"}', "region must be four finite numbers"),
    (b'{"region": [0, 0, 1e400, 10]}', "region must be four finite numbers"),
    (b'{"region": [5000, 5000, 10, 10]}', "lies outside the slide"),
])
def test_out_of_range_and_non_finite_numbers_answer_400(stack, body, message):
    before = _jobs(stack)
    item = stack.slide_item
    # raw bytes: a JSON library would refuse to write 1e400 or NaN, a hostile client does not
    response = requests.post(f"{stack.api_url}/nucleus_analysis/item/{item['_id']}/run",
                             data=body, headers={"Girder-Token": stack.admin.token,
                                                 "Content-Type": "application/json"},
                             timeout=60)
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]
    assert _jobs(stack) == before


@pytest.mark.parametrize("params, message", [
    ({"region": "[NaN, 0, 100, 100]"}, "region must be four finite numbers"),
    ({"region": "nan,0,100,100"}, "region must be four finite numbers"),
    ({"workers": "-1"}, "workers must be within [0, 64]"),
    ({"tile_size": "1e400"}, "tile_size must be finite"),
])
def test_histomicsui_submit_is_checked_the_same(stack, cli_id, params, message):
    before = _jobs(stack)
    text = _refused(lambda: stack.admin.post(f"slicer_cli_web/cli/{cli_id}/run", parameters={
        "inputImageFile": stack.slide_item["largeImage"]["fileId"], **params}))
    assert message in text
    assert _jobs(stack) == before


def test_slide_over_the_configured_maximum_is_refused(stack):
    key = "nucleus_analysis.max_slide_pixels"
    stack.admin.put("system/setting", parameters={"key": key, "value": "1e6"})
    try:
        before = _jobs(stack)
        message = _refused(lambda: stack.admin.post(
            f"nucleus_analysis/item/{stack.slide_item['_id']}/run", json={}))
        assert "declares 2220 x 2967 pixels" in message
        assert _jobs(stack) == before
    finally:
        stack.admin.put("system/setting", parameters={"key": key, "value": "5e10"})
    for bad in ("nan", "1e400", "-5", "x"):
        _refused(lambda bad=bad: stack.admin.put("system/setting", parameters={
            "key": key, "value": bad}))


# -- 3. the job's token -----------------------------------------------------------------------
def test_job_token_is_data_only_and_dies_with_the_job(stack, mallory, mallory_item):
    """Queued jobs' tokens as the broker holds them: data scope only; revoked the moment the
    job is canceled (still queued: the worker never sees it) or ends."""
    item_id = mallory_item["_id"]
    file_id = _file_of(mallory, mallory_item)
    stack.stop_worker()
    try:
        to_cancel = mallory.post(f"nucleus_analysis/item/{item_id}/run",
                                 parameters={"fileId": file_id}, json=SMALL)
        to_finish = mallory.post(f"nucleus_analysis/item/{item_id}/run",
                                 parameters={"fileId": file_id}, json=SMALL)
        tokens = {job["_id"]: _queued_token(stack, job["_id"]) for job in (to_cancel, to_finish)}
        for token in tokens.values():
            gc = _token_client(stack, token)
            assert gc.get(f"item/{item_id}")["_id"] == item_id  # data read: yes
            assert gc.get("user/me") is None                     # not a login
            _refused(lambda gc=gc: gc.post("api_key", parameters={"name": "x"}), 401)
            _refused(lambda gc=gc: gc.put(f"user/{mallory_item['creatorId']}", parameters={
                "firstName": "x", "lastName": "y", "email": "mallory@example.com"}), 401)
        # girder_worker's own job token is not shown to the job's user
        shown = mallory.get(f"job/{to_cancel['_id']}")
        assert "jobInfoSpec" not in shown
        assert all("jobInfoSpec" not in j for j in mallory.get("job", parameters={"limit": 0}))
        worker_token_days = _days_left(stack, _worker_token(stack, to_finish["_id"]))
        mallory.put(f"job/{to_cancel['_id']}/cancel")
        dead = _token_client(stack, tokens[to_cancel["_id"]])
        _refused(lambda: dead.get(f"item/{item_id}"), 401)
    finally:
        stack.start_worker()
    canceled = stack.wait_job(to_cancel["_id"], timeout_s=120, client=mallory)
    assert canceled["status"] == CANCELED, _log(canceled)
    done = stack.wait_job(to_finish["_id"], timeout_s=300, client=mallory)
    assert done["status"] == SUCCESS, _log(done)
    finished = _token_client(stack, tokens[to_finish["_id"]])
    _refused(lambda: finished.get(f"item/{item_id}"), 401)
    # girder_worker's own job token (7 days from girder_jobs) expires minutes after the end
    # (the token itself stays out of assertion messages)
    worker_token_days_after = _days_left(stack, _worker_token(stack, to_finish["_id"]))
    assert worker_token_days > 6
    assert worker_token_days_after <= (WORKER_TOKEN_GRACE_S + 60) / 86400


def _worker_token(stack, job_id: str) -> str:
    """girder_worker's per-job token (scope ``jobs.job_<id>``), as an admin reads it."""
    return stack.admin.get(f"job/{job_id}")["jobInfoSpec"]["headers"]["Girder-Token"]


def _days_left(stack, token: str) -> float:
    """Days until ``token`` expires, as Girder tells its holder (``GET token/current``)."""
    seen = _token_client(stack, token).get("token/current")
    expires = datetime.datetime.fromisoformat(seen["expires"])
    return (expires - datetime.datetime.now(datetime.timezone.utc)).total_seconds() / 86400


def test_key_without_data_write_scope_cannot_launch(stack, mallory, mallory_item, cli_id):
    key = mallory.post("api_key", parameters={"name": "read only",
                                              "scope": json.dumps(["core.data.read"])})
    token = mallory.post("api_key/token", parameters={"key": key["key"]})["authToken"]["token"]
    reader = _token_client(stack, token)
    file_id = _file_of(mallory, mallory_item)
    before = _jobs(stack)
    for call in (
        lambda: reader.post(f"nucleus_analysis/item/{mallory_item['_id']}/run",
                            parameters={"fileId": file_id}, json=SMALL),
        lambda: reader.post(f"slicer_cli_web/cli/{cli_id}/run",
                            parameters={"inputImageFile": file_id}),
    ):
        with pytest.raises(HttpError) as refused:
            call()
        assert refused.value.status in (401, 403)
    assert _jobs(stack) == before


def test_job_past_its_time_limit_ends_in_error(stack, mallory, mallory_item):
    key = "nucleus_analysis.job_time_limit_s"
    stack.admin.put("system/setting", parameters={"key": key, "value": "10"})
    stack.stop_worker()
    try:
        job = mallory.post(f"nucleus_analysis/item/{mallory_item['_id']}/run",
                           parameters={"fileId": _file_of(mallory, mallory_item)}, json=SMALL)
        token = _queued_token(stack, job["_id"])
        time.sleep(11)  # queued past the limit: provably over, whatever the machine's speed
    finally:
        stack.admin.put("system/setting", parameters={"key": key, "value": str(6 * 3600)})
        stack.start_worker()
    done = stack.wait_job(job["_id"], timeout_s=120, client=mallory)
    assert done["status"] == ERROR
    assert "time limit" in done["progress"]["message"], _log(done)
    _refused(lambda: _token_client(stack, token).get(f"item/{mallory_item['_id']}"), 401)


# -- 4. ingest integrity ----------------------------------------------------------------------
def _nuclei_doc(n: int, tag: str) -> bytes:
    elements = [{"type": "polyline", "closed": True, "group": "neoplastic",
                 "lineColor": "rgb(220,20,60)", "lineWidth": 1,
                 "points": [[x := 20.0 * i, 10.0, 0], [x + 8, 10, 0], [x + 8, 18, 0]],
                 "user": {"id": i + 1, "class": "neoplastic", "probability": 0.9}}
                for i in range(n)]
    return json.dumps({"name": f"Nuclei ({tag})", "attributes": {
        "model": {"name": "nucleus_unet", "version": tag}}, "elements": elements}).encode()


def _upload_pending(gc, workdir: Path, item_id: str, job_id: str, anot: bytes,
                    csv: bytes) -> tuple[str, list[str]]:
    ids = []
    for name, data in (("x-nuclei.anot", anot), ("x-nuclei.csv", csv)):
        path = workdir / f"{job_id}-{name}"
        path.write_bytes(data)
        with open(path, "rb") as stream:
            ids.append(gc.uploadFile(item_id, stream, f"{name}.pending-{job_id}",
                                     len(data), parentType="item")["_id"])
    return ids[0], ids[1:]


def _post(gc, item_id, job_id, anot_id, table_ids):
    try:
        return gc.post(f"nucleus_analysis/item/{item_id}/result", parameters={
            "jobId": job_id, "annotationFileId": anot_id, "tableFileIds": json.dumps(table_ids)})
    except HttpError as e:
        return e


def _ours(gc, item_id):
    return [a for a in gc.get("annotation", parameters={"itemId": item_id, "limit": 0})
            if "nucleusAnalysis" in a["annotation"].get("attributes", {})]


def test_concurrent_ingests_leave_exactly_the_newer_result(stack, mallory, mallory_item):
    item_id = mallory_item["_id"]
    file_id = _file_of(mallory, mallory_item)
    workdir = Path(stack.workdir)
    stack.stop_worker()
    jobs = []
    try:
        for _ in range(6):
            jobs.append(mallory.post(f"nucleus_analysis/item/{item_id}/run",
                                     parameters={"fileId": file_id}, json=SMALL)["_id"])
        rounds = [(jobs[0], jobs[1], "together"), (jobs[2], jobs[3], "newer first"),
                  (jobs[4], jobs[5], "older first")]
        for older, newer, how in rounds:
            uploads = {j: _upload_pending(mallory, workdir, item_id, j,
                                          _nuclei_doc(3 if j == older else 5, j),
                                          f"nucleus_id\n{j}\n".encode()) for j in (older, newer)}
            if how == "together":
                with ThreadPoolExecutor(2) as pool:
                    results = list(pool.map(
                        lambda j, up=uploads: _post(mallory, item_id, j, *up[j]),
                        [newer, older]))
            else:
                order = [newer, older] if how == "newer first" else [older, newer]
                results = [_post(mallory, item_id, j, *uploads[j]) for j in order]
            meta = mallory.getItem(item_id)["meta"]["nucleusAnalysis"]
            assert meta["jobId"] == newer, (how, results)
            ours = _ours(mallory, item_id)
            assert [a["annotation"]["attributes"]["nucleusAnalysis"]["jobId"] for a in ours] \
                == [newer], how
            assert sum(a["_elementCount"] for a in ours) == 5
            names = sorted(f["name"] for f in mallory.get(f"item/{item_id}/files"))
            assert names == ["cmu_small_region.svs", "x-nuclei.csv"], (how, names)
            table = mallory.get(f"file/{meta['files'][0]['_id']}/download", jsonResp=False)
            assert table.text == f"nucleus_id\n{newer}\n"
            if how == "newer first":
                older_result = results[1]
                assert isinstance(older_result, HttpError) and older_result.status == 409
                assert "newer Nucleus Analysis" in older_result.responseText
    finally:
        for job in jobs:
            mallory.put(f"job/{job}/cancel")
        stack.start_worker()


def test_rejected_rerun_keeps_the_previous_result_and_foreign_files(stack, mallory,
                                                                    mallory_item):
    item_id = mallory_item["_id"]
    file_id = _file_of(mallory, mallory_item)
    before = mallory.getItem(item_id)["meta"]["nucleusAnalysis"]
    before_table = mallory.get(f"file/{before['files'][0]['_id']}/download",
                               jsonResp=False).text
    before_ours = sorted(a["_id"] for a in _ours(mallory, item_id))
    stack.stop_worker()
    try:
        job = mallory.post(f"nucleus_analysis/item/{item_id}/run",
                           parameters={"fileId": file_id}, json=SMALL)["_id"]
        anot, tables = _upload_pending(mallory, Path(stack.workdir), item_id, job,
                                       b'{"elements": [{"type": "polyline"}]}',
                                       b"nucleus_id\nnew\n")
        error = _post(mallory, item_id, job, anot, tables)
        assert isinstance(error, HttpError) and error.status == 400
        # naming the slide itself as an output must not delete it
        error = _post(mallory, item_id, job, file_id, [])
        assert isinstance(error, HttpError) and error.status == 400
        assert "not a pending output" in error.responseText
        mallory.put(f"job/{job}/cancel")
    finally:
        stack.start_worker()
    assert mallory.getItem(item_id)["meta"]["nucleusAnalysis"] == before
    names = sorted(f["name"] for f in mallory.get(f"item/{item_id}/files"))
    assert names == ["cmu_small_region.svs", "x-nuclei.csv"]
    assert mallory.get(f"file/{before['files'][0]['_id']}/download",
                       jsonResp=False).text == before_table
    assert sorted(a["_id"] for a in _ours(mallory, item_id)) == before_ours


def test_submit_twice_then_rerun_keeps_a_pathologists_edit(stack, cli_id):
    """Identical submits both succeed (the second's result stays); an annotation a person
    edited survives a rerun, renamed, while the unedited ones are replaced."""
    item = stack.upload_slide(CMU, name="twice.svs")
    params = {"inputImageFile": item["largeImage"]["fileId"],
              "region": json.dumps(SMALL["region"])}
    first = stack.admin.post(f"slicer_cli_web/cli/{cli_id}/run", parameters=params)
    second = stack.admin.post(f"slicer_cli_web/cli/{cli_id}/run", parameters=params)
    for job in (first, second):
        done = stack.wait_job(job["_id"], timeout_s=300)
        assert done["status"] == SUCCESS, _log(done)
    meta = stack.admin.getItem(item["_id"])["meta"]["nucleusAnalysis"]
    assert meta["jobId"] == second["_id"]
    ours = _ours(stack.admin, item["_id"])
    assert sorted(a["_id"] for a in ours) == sorted(meta["annotationIds"])
    names = sorted(f["name"] for f in stack.admin.get(f"item/{item['_id']}/files"))
    assert names == ["twice-nuclei.csv", "twice-nuclei.geojson", "twice-nuclei.parquet",
                     "twice.svs"]
    # a pathologist edits one class's annotation (HistomicsUI saves the whole document)
    edited = stack.admin.get(f"annotation/{ours[0]['_id']}")
    document = edited["annotation"]
    document["elements"] = document["elements"][:1]
    stack.admin.put(f"annotation/{edited['_id']}", json=document)
    rerun = stack.admin.post(f"slicer_cli_web/cli/{cli_id}/rerun",
                             parameters={"jobId": second["_id"]})
    done = stack.wait_job(rerun["_id"], timeout_s=300)
    assert done["status"] == SUCCESS, _log(done)
    kept = stack.admin.get(f"annotation/{edited['_id']}")
    assert kept["annotation"]["name"].endswith("(edited, kept)")
    assert "nucleusAnalysis" not in kept["annotation"]["attributes"]
    assert len(kept["annotation"]["elements"]) == 1
    meta = stack.admin.getItem(item["_id"])["meta"]["nucleusAnalysis"]
    assert meta["jobId"] == rerun["_id"] and meta["keptEditedAnnotationIds"] == [edited["_id"]]
    assert sorted(a["_id"] for a in _ours(stack.admin, item["_id"])) == \
        sorted(meta["annotationIds"])
    assert not set(meta["annotationIds"]) & {a["_id"] for a in ours}


# -- 5. credentials in deployment URLs ----------------------------------------------------------
def test_credentials_in_the_deployment_url_never_appear(stack, mallory, mallory_item):
    port = free_port()  # nothing listens there
    secret_url = f"http://alice:s3cret-pw@127.0.0.1:{port}/v2?key=s3cret-key"
    stack.stop_worker()
    stack.start_worker(env={"NUCLEUS_ANALYSIS_TRITON_URL": secret_url})
    try:
        job = mallory.post(f"nucleus_analysis/item/{mallory_item['_id']}/run",
                           parameters={"fileId": _file_of(mallory, mallory_item)}, json=SMALL)
        done = stack.wait_job(job["_id"], timeout_s=300, client=mallory)
    finally:
        stack.stop_worker()
        stack.start_worker()
    assert done["status"] == ERROR
    assert f"Triton http://127.0.0.1:{port}" in _log(done)
    texts = [json.dumps(stack.admin.get(f"job/{job['_id']}")),
             json.dumps(mallory.getItem(mallory_item["_id"])),
             stack.worker_log.read_text(errors="replace"),
             (Path(stack.workdir) / "girder.log").read_text(errors="replace")]
    assert not any("s3cret" in text or "alice" in text for text in texts)
    assert done["status"] in TERMINAL
    assert os.environ.get("NUCLEUS_ANALYSIS_TRITON_URL") is None
