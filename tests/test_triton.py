"""Triton backend against a real tritonserver (2.51, CPU, Python backend on the shipped ONNX).

Tests marked ``triton`` start servers through ``scripts/serve_triton.py`` and skip only when
``./.venv-triton`` is absent (``bash scripts/setup_triton_env.sh`` creates it; CI does). The
rest check URL handling, fault classification and metadata validation without a server.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from slicer_cli.nuclei.backends import open_backend
from slicer_cli.nuclei.backends.local import LocalBackend
from slicer_cli.nuclei.backends.triton import TritonBackend, _classify, check_metadata
from slicer_cli.nuclei.errors import BackendError, ModelError
from slicer_cli.nuclei.model import (
    DEFAULT_MODEL_DIR,
    MODEL_REPOSITORY,
    load_model_info,
    read_config,
)

from .conftest import ROOT as REPO
from .conftest import cli, load_annotation, rasterise, run_whole_slide
from .triton_server import (
    SERVE_SCRIPT,
    SKIP_REASON,
    TRITON_ENV_MISSING,
    TritonServerProcess,
    free_ports,
)


def needs_triton(test):
    """Mark a test ``triton``; skip it only when ./.venv-triton is absent."""
    return pytest.mark.triton(pytest.mark.skipif(TRITON_ENV_MISSING, reason=SKIP_REASON)(test))


MODEL = DEFAULT_MODEL_DIR.name
ACCURATE = "nucleus_unet_accurate"  # the second shipped model, served beside the default
BAD_OUTPUT = f"{MODEL}_bad_output"  # FOREGROUND renamed FG
NO_BATCH = f"{MODEL}_no_batching"  # max_batch_size 0
BATCH2 = f"{MODEL}_batch2"  # max_batch_size 2
HOLD = f"{MODEL}_hold"  # holds requests in the server while a file exists (fault tests)


def _variant(repo: Path, name: str, edit) -> None:
    """A copy of the shipped model under ``name`` with its config edited (ONNX linked)."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    config = read_config(DEFAULT_MODEL_DIR)
    config["name"] = name
    edit(config)
    msg = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    (repo / name).mkdir()
    (repo / name / "config.pbtxt").write_text(text_format.MessageToString(msg))
    for version in DEFAULT_MODEL_DIR.iterdir():
        if version.name.isdigit():
            (repo / name / version.name).symlink_to(version.resolve())


def _max_batch_2(config: dict) -> None:
    config["max_batch_size"] = 2
    # a preferred batch above the maximum is an invalid config
    config.get("dynamic_batching", {})["preferred_batch_size"] = [2]


def _rename_foreground(config: dict) -> None:
    for out in config["output"]:
        if out["name"] == "FOREGROUND":
            out["name"] = "FG"


@pytest.fixture(scope="session")
def hold_file(tmp_path_factory) -> Path:
    """While this file exists, the HOLD model keeps every request inside the server."""
    return tmp_path_factory.mktemp("triton_hold") / "hold"


@pytest.fixture(scope="session")
def triton_repo(tmp_path_factory, hold_file) -> Path:
    """The shipped models (linked, unchanged) plus four deliberately different variants."""
    repo = tmp_path_factory.mktemp("triton_repo")
    for name in (MODEL, ACCURATE):
        (repo / name).symlink_to((MODEL_REPOSITORY / name).resolve())
    _variant(repo, BAD_OUTPUT, _rename_foreground)
    _variant(repo, NO_BATCH, lambda c: (c.__setitem__("max_batch_size", 0),
                                        c.pop("dynamic_batching", None)))
    _variant(repo, BATCH2, _max_batch_2)
    _variant(repo, HOLD, lambda c: c["parameters"].__setitem__(
        "test_hold_while_exists", {"string_value": str(hold_file)}))
    return repo


@pytest.fixture(scope="session")
def triton(triton_repo) -> TritonServerProcess:
    """One real server for the session, torn down at the end."""
    if TRITON_ENV_MISSING:
        pytest.skip(SKIP_REASON)
    server = TritonServerProcess(triton_repo).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiles(hgsc_image) -> np.ndarray:
    """Two real 512 x 512 H&E tiles (hgsc_nest, about 0.5 um/px, the model's resolution)."""
    from PIL import Image

    image = np.asarray(Image.open(hgsc_image).convert("RGB"))
    return np.ascontiguousarray(np.stack([image[:512, :512], image[700:1212, 900:1412]]))


@pytest.fixture(scope="session")
def local_maps(tiles) -> dict[str, np.ndarray]:
    with LocalBackend(threads=1, precision="float") as local:
        return local.infer(tiles)


def _assert_same(maps: dict, expected: dict) -> None:
    assert set(maps) == set(expected)
    for name, want in expected.items():
        assert maps[name].dtype == np.float32 and maps[name].shape == want.shape, name
        np.testing.assert_allclose(maps[name], want, atol=1e-4, rtol=1e-4, err_msg=name)


# -- against a real server ----------------------------------------------------------------------
@needs_triton
@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_triton_matches_local_backend(triton, tiles, local_maps, scheme):
    url = triton.http_url if scheme == "http" else triton.grpc_url
    with open_backend(url, DEFAULT_MODEL_DIR) as backend:
        assert isinstance(backend, TritonBackend) and backend.concurrency == 4
        _assert_same(backend.infer(tiles), local_maps)


@needs_triton
@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_served_info_equals_local(triton, scheme):
    url = triton.http_url if scheme == "http" else triton.grpc_url
    with TritonBackend(url, MODEL) as backend:
        assert backend.info == load_model_info()
        assert backend.max_batch_size == read_config(DEFAULT_MODEL_DIR)["max_batch_size"]


@needs_triton
def test_the_accurate_model_is_served_by_name(triton, tiles):
    """One server, two shipped models: the name alone picks the accurate one, and its maps
    are the in-process float graph's (and not the default model's)."""
    model_dir = MODEL_REPOSITORY / ACCURATE
    with LocalBackend(model_dir, threads=1, precision="float") as local:
        expected = local.infer(tiles[:1, :256, :256])
    with open_backend(triton.grpc_url, DEFAULT_MODEL_DIR, model_name=ACCURATE) as backend:
        assert backend.info == load_model_info(model_dir) != load_model_info()
        maps = backend.infer(tiles[:1, :256, :256])
    _assert_same(maps, expected)
    with LocalBackend(threads=1, precision="float") as default:
        other = default.infer(tiles[:1, :256, :256])["FOREGROUND"]
    assert np.abs(other - maps["FOREGROUND"]).max() > 1e-2


@needs_triton
def test_batches_split_at_max_batch_size(triton, tiles, local_maps):
    batch = np.concatenate([tiles, tiles[:1]])  # 3 tiles, the served model takes 2
    with TritonBackend(triton.grpc_url, BATCH2) as backend:
        assert backend.max_batch_size == 2
        maps = backend.infer(batch)
    expected = {k: np.concatenate([v, v[:1]]) for k, v in local_maps.items()}
    _assert_same(maps, expected)


@needs_triton
def test_threads_share_one_backend(triton, tiles, local_maps):
    """HTTP clients are not thread-safe: each thread gets its own, results stay right."""
    crops = tiles[:, :128, :128]
    with LocalBackend(threads=1, precision="float") as local:
        expected = local.infer(crops)
    with TritonBackend(triton.http_url, MODEL, max_in_flight=3) as backend:
        assert backend.concurrency == 3
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: backend.infer(crops), range(8)))
    for maps in results:
        _assert_same(maps, expected)


@needs_triton
def test_empty_batch_and_bad_batch(triton):
    with TritonBackend(triton.grpc_url, MODEL) as backend:
        maps = backend.infer(np.zeros((0, 64, 64, 3), np.uint8))
        assert maps["CLASS_PROB"].shape == (0, 64, 64, 3)
        with pytest.raises(BackendError, match="uint8"):
            backend.infer(np.zeros((1, 64, 64, 3), np.float32))


@needs_triton
@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_wrong_output_name_is_a_model_error(triton, scheme):
    url = triton.http_url if scheme == "http" else triton.grpc_url
    with pytest.raises(ModelError, match=r"missing outputs \['FOREGROUND'\]"):
        TritonBackend(url, BAD_OUTPUT)


@needs_triton
def test_model_without_batching_is_a_model_error(triton):
    with pytest.raises(ModelError, match="max_batch_size must be >= 1"):
        TritonBackend(triton.http_url, NO_BATCH)


@needs_triton
@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_unknown_model_is_a_model_error(triton, scheme):
    url = triton.http_url if scheme == "http" else triton.grpc_url
    with pytest.raises(ModelError, match=rf"does not serve model 'nope'.*'{MODEL}'"):
        TritonBackend(url, "nope", retry_s=30)


@needs_triton
@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_refused_request_fails_at_once(triton, tiles, scheme):
    """A 4xx / INVALID_ARGUMENT answer is not retried, however long the retry budget."""
    url = triton.http_url if scheme == "http" else triton.grpc_url
    with TritonBackend(url, BATCH2, retry_s=60) as backend:
        start = time.monotonic()
        with pytest.raises(BackendError,
                           match=r"infer failed \(not retried\): (400|StatusCode.INVALID_ARG)"):
            backend._infer_chunk(np.concatenate([tiles[:, :64, :64]] * 2))  # 4 > 2
        assert time.monotonic() - start < 5


@needs_triton
@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_request_timeout_is_a_backend_error(triton, tiles, scheme):
    url = triton.http_url if scheme == "http" else triton.grpc_url
    with TritonBackend(url, MODEL, retry_s=0) as backend:
        # connect with a sane timeout (a loaded machine may take 5 ms to answer "ready"), then
        # infer from a new thread, whose HTTP client is made with the short timeout
        backend.timeout_s = 0.005
        with ThreadPoolExecutor(1) as pool, pytest.raises(BackendError,
                                                          match="no answer within 0.005 s"):
            pool.submit(backend.infer, tiles).result()


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_server_down_at_start(scheme, caplog):
    port = free_ports(1)[0]
    url = f"{scheme}://user:s3cret@127.0.0.1:{port}"
    caplog.set_level(logging.DEBUG, logger="slicer_cli")
    start = time.monotonic()
    with pytest.raises(BackendError) as info:
        TritonBackend(url, MODEL, retry_s=1.5)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert f"Triton {scheme}://127.0.0.1:{port}: connect failed: server unavailable" in message
    assert "attempts" in message and "s3cret" not in message and "user" not in message
    assert "s3cret" not in caplog.text
    assert 1.5 <= elapsed < 10


def _group_gone(pgid: int, within_s: float) -> bool:
    """True once no process is left in process group ``pgid`` (zombies take a moment)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@needs_triton
@pytest.mark.slow
def test_server_killed_mid_run_then_back(triton_repo, hold_file, tiles, local_maps):
    """Killed: bounded retries then BackendError; restarted in time: the call succeeds.

    The in-flight calls are held inside the server (the HOLD model) until it is killed, so
    they are provably in flight however fast the machine is.
    """
    ports = tuple(free_ports(3))
    first = TritonServerProcess(triton_repo, ports=ports).start()
    second = None
    arrived = hold_file.with_name(hold_file.name + ".arrived")
    try:
        short = [TritonBackend(u, MODEL, retry_s=2) for u in (first.http_url, first.grpc_url)]
        patient = [TritonBackend(u, HOLD, retry_s=150) for u in (first.http_url,
                                                                 first.grpc_url)]
        crops = np.ascontiguousarray(tiles[:, :128, :128])
        for backend in short + patient:
            backend.infer(crops)
        hold_file.touch()
        arrived.unlink(missing_ok=True)
        with ThreadPoolExecutor(2) as pool:
            pending = [pool.submit(b.infer, tiles) for b in patient]
            deadline = time.monotonic() + 120
            while not arrived.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert arrived.exists(), "no request reached the server"
            first.kill_server()
            assert first.proc.returncode == 1  # the serve script reports its server's death
            assert _group_gone(first.server_pid, within_s=15)  # ...and reaps its stubs
            for backend in short:
                start = time.monotonic()
                with pytest.raises(BackendError, match="infer failed: server unavailable for"):
                    backend.infer(crops)
                assert 2 <= time.monotonic() - start < 15
                backend.close()
            assert not any(f.done() for f in pending)  # still retrying
            hold_file.unlink()  # the restarted server answers at once
            second = TritonServerProcess(triton_repo, ports=ports).start()
            for future in pending:
                _assert_same(future.result(timeout=180), local_maps)
        for backend in patient:
            backend.close()
    finally:
        hold_file.unlink(missing_ok=True)
        first.stop()
        if second is not None:
            second.stop()


# -- the CLI on a real slide through Triton -----------------------------------------------------
@pytest.fixture(scope="module")
def svs_run_float(tmp_path_factory, cmu_svs):
    """The CLI on the whole CMU slide in-process with the float graph, the one Triton
    serves (the CPU's default is the model's int8 graph)."""
    return run_whole_slide(tmp_path_factory, cmu_svs, "--precision", "float")


@needs_triton
@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_cli_on_real_slide_through_triton_finds_the_local_nuclei(triton, svs_run_float,
                                                                  cmu_svs, tmp_path, scheme):
    from slicer_cli.nuclei.metrics import panoptic_quality

    proc_local, ann_local, _ = svs_run_float
    assert proc_local.returncode == 0, proc_local.stderr
    url = triton.http_url if scheme == "http" else triton.grpc_url
    ann, csv = tmp_path / "triton.anot", tmp_path / "triton.csv"
    proc = cli(cmu_svs, ann, csv, "--triton-url", url)
    assert proc.returncode == 0, proc.stderr
    doc, ref = load_annotation(ann), load_annotation(ann_local)
    assert doc["attributes"]["params"]["backend"] == "triton"
    assert doc["attributes"]["params"]["precision"] == "float"
    assert load_annotation(ann_local)["attributes"]["params"]["precision"] == "float"
    assert len(doc["elements"]) == len(ref["elements"]) > 0
    shape = (2967, 2220)  # the CMU slide, rows x columns
    pq = panoptic_quality(rasterise(ref, shape), rasterise(doc, shape))
    assert pq["pq"] >= 0.99, pq
    assert [e["group"] for e in doc["elements"]] == [e["group"] for e in ref["elements"]]


@needs_triton
@pytest.mark.slow
def test_cli_fails_cleanly_when_the_server_dies_mid_run(triton_repo, cmu_svs, tmp_path):
    previous = tmp_path / "features.csv"
    previous.write_text("previous\n")
    server = TritonServerProcess(triton_repo).start()
    try:
        # small tiles, one per batch: many requests, so the run is still going at the kill
        proc = subprocess.Popen(
            [sys.executable, "-m", "slicer_cli", "NucleusAnalysis", str(cmu_svs),
             str(tmp_path / "nuclei.anot"), str(previous), "--triton-url", server.grpc_url,
             "--tile-size", "512", "--batch-size", "1"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        progress = []
        for line in proc.stdout:
            if line.startswith("<filter-progress>"):
                progress.append(float(line.split(">")[1].split("<")[0]))
                if progress[-1] > 0:
                    break
        assert progress and 0 < progress[-1] < 0.5, progress
        server.kill_server()
        _, err = proc.communicate(timeout=240)
    finally:
        server.stop()
    assert proc.returncode == 1
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: Triton grpc://"), err
    assert "server unavailable" in lines[0] and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.csv"]
    assert previous.read_text() == "previous\n"


@needs_triton
def test_server_that_cannot_load_its_model_fails_to_start(tmp_path):
    model = tmp_path / MODEL
    shutil.copytree(DEFAULT_MODEL_DIR, model, ignore=shutil.ignore_patterns("*.onnx"))
    (model / "1").mkdir(exist_ok=True)
    (model / "1" / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(RuntimeError, match="tritonserver exited with status"):
        TritonServerProcess(tmp_path).start(timeout_s=120)


@needs_triton
@pytest.mark.parametrize("layout, message", [
    ({}, "no model"),
    ({"m/config.pbtxt": 'name: "m"'}, "has no <version>/model.onnx"),
])
def test_serve_script_rejects_bad_repositories(tmp_path, layout, message):
    for rel, text in layout.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    done = subprocess.run([sys.executable, str(SERVE_SCRIPT), "--model-repository",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr


def test_serve_script_without_env_names_the_setup(tmp_path):
    done = subprocess.run([sys.executable, str(SERVE_SCRIPT), "--env", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "scripts/setup_triton_env.sh" in done.stderr


# -- without a server ---------------------------------------------------------------------------
@pytest.mark.parametrize("url, message", [
    ("ftp://host:8000", "unknown Triton URL scheme 'ftp'"),
    ("http://host:99999", "malformed Triton URL"),
    ("http://[::1:8000", "malformed Triton URL"),
    ("grpc://:8001", "has no host"),
])
def test_bad_urls(url, message):
    with pytest.raises(BackendError, match=message):
        TritonBackend(url, MODEL)


@pytest.mark.parametrize("kwargs", [{"max_in_flight": 0}, {"timeout_s": 0}, {"retry_s": -1}])
def test_bad_limits(kwargs):
    with pytest.raises(BackendError, match="max_in_flight >= 1"):
        TritonBackend("http://127.0.0.1:1", MODEL, **kwargs)


def _metadata(**changes) -> dict:
    meta = {"inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}],
            "outputs": [{"name": "FOREGROUND", "datatype": "FP32", "shape": [-1, -1, -1]},
                        {"name": "DISTANCE", "datatype": "FP32", "shape": ["-1", "-1", "-1"]},
                        {"name": "CLASS_PROB", "datatype": "FP32", "shape": [-1, -1, -1, 3]}]}
    for name, tensor in changes.items():
        for group in meta.values():
            for i, t in enumerate(group):
                if t["name"] == name:
                    group[i] = tensor
    return meta


@pytest.mark.parametrize("changes, message", [
    ({}, None),
    ({"IMAGE": {"name": "X", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}}, "no tensor 'IMAGE'"),
    ({"IMAGE": {"name": "IMAGE", "datatype": "FP32", "shape": [-1, -1, -1, 3]}},
     "IMAGE is FP32"),
    ({"DISTANCE": {"name": "DISTANCE", "datatype": "FP32", "shape": [-1, -1]}},
     "expected FP32 of rank 3"),
    ({"CLASS_PROB": {"name": "CLASS_PROB", "datatype": "FP32", "shape": [-1, -1, -1, 5]}},
     "with 3 channels"),
])
def test_check_metadata(changes, message):
    info = load_model_info()
    if message is None:
        check_metadata(_metadata(), info)
    else:
        with pytest.raises(ModelError, match=message):
            check_metadata(_metadata(**changes), info)


def test_fault_classification():
    from tritonclient.utils import InferenceServerException as E

    assert _classify(E("busy", status="503")) == "retry"
    assert _classify(E("down", status="StatusCode.UNAVAILABLE")) == "retry"
    assert _classify(E("bad", status="400")) == "fail"
    assert _classify(E("bad", status="StatusCode.INVALID_ARGUMENT")) == "fail"
    assert _classify(E("slow", status="StatusCode.DEADLINE_EXCEEDED")) == "timeout"
    assert _classify(ConnectionRefusedError()) == "retry"
    assert _classify(ConnectionResetError()) == "retry"
    from geventhttpclient.response import HTTPConnectionClosed

    assert _classify(HTTPConnectionClosed("connection closed.")) == "retry"
    assert _classify(TimeoutError()) == "timeout"
    assert _classify(ValueError()) == "fail"


@needs_triton
def test_cuda_shared_memory_requested_without_cuda_falls_back(triton, tiles, local_maps,
                                                              caplog):
    """Where CUDA shared memory cannot work, asking for it leaves it off, says so, and the
    maps still arrive (over gRPC) equal to the local backend's."""
    import slicer_cli.nuclei.backends.triton as triton_module

    if triton_module._cuda_shm_usable():
        pytest.skip("CUDA shared memory works on this machine: the GPU check covers it")
    with caplog.at_level(logging.INFO, logger=triton_module.LOG.name):
        backend = TritonBackend(triton.grpc_url, MODEL, cuda_shm=True)
    try:
        assert backend.cuda_shm_active is False
        assert "CUDA shared memory requested but no usable CUDA device; off" in caplog.text
        _assert_same(backend.infer(tiles), local_maps)
    finally:
        backend.close()


def _offline_backend(monkeypatch) -> TritonBackend:
    """A backend whose connection step is skipped (no server needed)."""
    monkeypatch.setattr(TritonBackend, "_connect", lambda self: (load_model_info(), 16))
    return TritonBackend("grpc://127.0.0.1:1", MODEL)


def test_closed_backend_refuses(monkeypatch):
    backend = _offline_backend(monkeypatch)
    backend.close()
    with pytest.raises(BackendError, match="is closed"):
        backend.infer(np.zeros((1, 32, 32, 3), np.uint8))


def test_response_without_outputs(monkeypatch):
    class Result:
        def as_numpy(self, name):
            return None

    class Client:
        def infer(self, *args, **kwargs):
            return Result()

        def close(self):
            pass

    backend = _offline_backend(monkeypatch)
    backend._local.client = Client()
    with pytest.raises(BackendError, match="response lacks one of"):
        backend.infer(np.zeros((1, 32, 32, 3), np.uint8))
