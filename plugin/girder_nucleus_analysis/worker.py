"""girder_worker side: run the slicer CLI as a local process and hand its outputs to Girder.

girder_worker imports it through :mod:`girder_nucleus_analysis.worker_plugin` (the
``girder_worker_plugins`` entry point). The task
talks to Girder only through REST: data (slide, outputs) with the job's data token, which
girder_worker passes in the message headers (``girder_client_token``; scoped to data read and
write, expiring at the job's deadline, revoked by the server when the job ends), and status,
progress and log with girder_worker's own per-job token. Neither token is an argument of the
task or of the CLI, and neither is logged.

Endpoints are the worker's deployment settings, read from this process's environment and
handed to the CLI in its environment (never on its command line, where ``ps`` and logs would
show credentials): ``NUCLEUS_ANALYSIS_TRITON_URL`` (Triton; unset runs ONNX Runtime
in-process), ``NUCLEUS_ANALYSIS_TRITON_MODEL`` and ``NUCLEUS_ANALYSIS_SCHEDULER`` (dask).
"""
from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from girder_worker.app import app

from .constants import (
    CLI_NAME,
    ENV_SCHEDULER,
    ENV_TRITON_URL,
    STATUS_CANCELED,
    STATUS_CANCELING,
    TASK_NAME,
)

_PROGRESS = "<filter-progress>"
#: seconds between two looks at the job status (cancel)
POLL_S = 1.0
#: seconds a canceled CLI gets to unwind after SIGTERM before SIGKILL
KILL_GRACE_S = 10.0
#: suffix of uploaded outputs until the ingest has validated and swapped them in
PENDING = ".pending-"


class AnalysisFailed(Exception):
    """The CLI or the result upload failed; the message is what the user reads."""


class Canceled(Exception):
    """The job was canceled while it ran."""


class OutOfTime(AnalysisFailed):
    """The job ran past its deadline (``nucleus_analysis.job_time_limit_s``)."""


def cli_command() -> list[str]:
    """Command prefix of the slicer CLI entry point (``NUCLEUS_ANALYSIS_CLI`` overrides)."""
    override = os.environ.get("NUCLEUS_ANALYSIS_CLI", "").strip()
    return shlex.split(override) if override else [sys.executable, "-m", "slicer_cli"]


def deployment_summary() -> str:
    """What the job log may say of the deployment's endpoints (scheme, host and port only)."""
    from slicer_cli.nuclei.options import safe_address

    triton = os.environ.get(ENV_TRITON_URL, "").strip()
    scheduler = os.environ.get(ENV_SCHEDULER, "").strip()
    return (f"network: {'Triton ' + safe_address(triton) if triton else 'ONNX Runtime'}"
            f"; tiles on: {'dask ' + safe_address(scheduler) if scheduler else 'this worker'}")


def _pump(stream, kind: str, lines: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.put((kind, line))
    lines.put((kind, None))


class _JobView:
    """Progress, log and cancel for one job (girder_worker's job manager + our REST client)."""

    def __init__(self, task, job_id: str | None, deadline: float | None = None) -> None:
        self.manager = getattr(task, "job_manager", None)
        self.client = getattr(task, "girder_client", None)
        self.job_id = job_id
        self.deadline = deadline
        self._last_poll = 0.0
        self._message = ""

    def log(self, text: str) -> None:
        if self.manager is not None:
            self.manager.write(text if text.endswith("\n") else text + "\n")

    def progress(self, fraction: float, message: str | None = None) -> None:
        if message:
            self._message = message
        if self.manager is not None:
            self.manager.updateProgress(total=1, current=min(max(fraction, 0.0), 1.0),
                                        message=self._message)

    def note(self, message: str) -> None:
        self._message = message[:200]
        if self.manager is not None:
            self.manager.updateProgress(message=self._message)

    def check_deadline(self) -> None:
        """Raise :class:`OutOfTime` once the job's deadline has passed."""
        if self.deadline is not None and time.time() > self.deadline:
            raise OutOfTime("the job ran past this server's time limit "
                            "(nucleus_analysis.job_time_limit_s); nothing was posted")

    def canceled(self, force: bool = False) -> bool:
        """Whether the job was asked to cancel (read with girder_worker's job token)."""
        now = time.monotonic()
        if self.manager is None or (not force and now - self._last_poll < POLL_S):
            return False
        self._last_poll = now
        try:
            status = self.manager.refreshStatus()
        except Exception:  # a transient REST error must not kill a long run
            return False
        return status in (STATUS_CANCELING, STATUS_CANCELED)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the CLI's process group (it drops partial outputs), SIGKILL after a grace."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def run_cli(cmd: list[str], view: _JobView, cwd: str) -> None:
    """Run the CLI, streaming progress and log lines into the job; honour Cancel.

    Raises
    ------
    Canceled
        The job was canceled; the process group was terminated.
    OutOfTime
        The job's deadline passed; the process group was terminated.
    AnalysisFailed
        The CLI exited non-zero; the message is its last ``error:`` line on stderr.
    """
    lines: queue.Queue = queue.Queue()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, bufsize=1,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, "out", lines), daemon=True),
             threading.Thread(target=_pump, args=(proc.stderr, "err", lines), daemon=True)]
    for pump in pumps:
        pump.start()
    open_streams, errors = 2, []
    try:
        while open_streams:
            try:
                kind, line = lines.get(timeout=POLL_S)
            except queue.Empty:
                kind, line = "tick", ""
            if line is None:
                open_streams -= 1
            elif kind == "out" and _PROGRESS in line:
                try:
                    value = float(line.split(_PROGRESS, 1)[1].split("<", 1)[0])
                except ValueError:
                    view.log(line)
                else:
                    view.progress(value)
            elif line:
                if kind == "err":
                    errors.append(line.strip())
                else:
                    view.note(line.strip())
                view.log(line)
            if view.canceled():
                raise Canceled()
            view.check_deadline()
        proc.wait()
    except BaseException:
        _stop(proc)
        raise
    if proc.returncode != 0:
        reason = next((e for e in reversed(errors) if e.lower().startswith("error")),
                      errors[-1] if errors else f"exit status {proc.returncode}")
        raise AnalysisFailed(f"{CLI_NAME} failed (exit {proc.returncode}): {reason}")


def _slide(view: _JobView, file_id: str, slide_name: str, direct_path: str | None,
           workdir: str) -> str:
    if direct_path and os.path.isfile(direct_path) and os.access(direct_path, os.R_OK):
        view.log(f"Reading the slide in place ({slide_name})")
        return direct_path
    target = os.path.join(workdir, "input", os.path.basename(slide_name) or "slide")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    view.log(f"Downloading the slide {slide_name}")
    view.client.downloadFile(file_id, target)
    return target


def _post_results(view: _JobView, item_id: str, outdir: Path, stem: str) -> dict:
    """Upload outputs into the item as new pending files and ask Girder to ingest them.

    Every upload creates a new file named ``<final name>.pending-<job id>`` (never replacing
    a file of the previous result); the ingest validates, swaps the result in and renames
    them, or removes them.
    """
    gc = view.client
    anot = outdir / f"{stem}-nuclei.anot"
    # into the item: the plottable CSV (what HistomicsUI's Metadata Plot reads; the full
    # table is the Parquet file) and the QuPath GeoJSON; the full CSV stays behind
    outputs = [(outdir / f"{stem}-nuclei-plot.csv", f"{stem}-nuclei.csv", "text/csv"),
               (outdir / f"{stem}-nuclei.parquet", f"{stem}-nuclei.parquet",
                "application/vnd.apache.parquet"),
               (outdir / f"{stem}-nuclei.geojson", f"{stem}-nuclei.geojson",
                "application/geo+json")]
    if not anot.is_file():
        raise AnalysisFailed(f"{CLI_NAME} exited 0 but wrote no annotation file")
    files = [(anot, anot.name, "application/json")] + [o for o in outputs if o[0].is_file()]
    uploaded = []
    try:
        for path, name, mime in files:
            with open(path, "rb") as stream:
                file = gc.uploadFile(item_id, stream, f"{name}{PENDING}{view.job_id}",
                                     path.stat().st_size, parentType="item", mimeType=mime)
            uploaded.append(file["_id"])
    except Exception as e:
        for file_id in uploaded:
            try:
                gc.delete(f"file/{file_id}")
            except Exception:
                pass
        raise AnalysisFailed(f"uploading the results failed: {_http_message(e)}") from e
    try:
        return gc.post(f"nucleus_analysis/item/{item_id}/result", parameters={
            "jobId": view.job_id, "annotationFileId": uploaded[0],
            "tableFileIds": json.dumps(uploaded[1:])})
    except Exception as e:
        raise AnalysisFailed(_http_message(e)) from e


def _http_message(e: Exception) -> str:
    """The server's own message of a failed REST call (or the exception's first line)."""
    message = getattr(getattr(e, "response", None), "text", "") or str(e)
    try:
        message = json.loads(message).get("message", message)
    except (ValueError, AttributeError):
        pass
    return (str(message).strip().splitlines() or [type(e).__name__])[0][:500]


@app.task(name=TASK_NAME, bind=True, acks_late=True)
def run_nucleus_analysis(self, item_id: str, file_id: str, slide_name: str, cli_name: str,
                         cli_args: list[str], direct_path: str | None = None,
                         deadline: float | None = None) -> dict | None:
    """Analyse one slide: fetch it, run the CLI, post the results onto the item.

    Parameters
    ----------
    item_id, file_id : str
        The slide item and file.
    slide_name : str
        The file name (for logs and output names).
    cli_name : str
        CLI to run (``NucleusAnalysis``).
    cli_args : list of str
        Validated ``--flag=value`` arguments (no token ever).
    direct_path : str, optional
        Path of the slide in a filesystem assetstore, read in place when visible here.
    deadline : float, optional
        Epoch seconds by which the job must end (submission + the server's time limit).

    Returns
    -------
    dict or None
        The ingested summary (counts per class); None when canceled.

    Raises
    ------
    AnalysisFailed
        The CLI failed or the results were rejected (the job ends ERROR with that message).
    """
    job_id = None
    spec = getattr(self.request, "jobInfoSpec", None)
    if isinstance(spec, dict):
        job_id = spec.get("reference")
    view = _JobView(self, job_id, deadline)
    try:
        with tempfile.TemporaryDirectory(prefix="nucleus-analysis-") as workdir:
            # canceled while queued (a revoke sent while no worker ran is not remembered)
            if view.canceled(force=True):
                raise Canceled()
            view.progress(0.0, "starting")
            view.check_deadline()
            slide = _slide(view, file_id, slide_name, direct_path, workdir)
            outdir = Path(workdir) / "out"
            outdir.mkdir()
            stem = Path(slide_name).stem or "slide"
            cmd = [*cli_command(), cli_name, slide, str(outdir / f"{stem}-nuclei.anot"),
                   str(outdir / f"{stem}-nuclei.csv"), *cli_args,
                   f"--plot-table={outdir / f'{stem}-nuclei-plot.csv'}",
                   f"--qupath-file={outdir / f'{stem}-nuclei.geojson'}"]
            view.log("Running " + " ".join([cli_name, *cli_args]))
            view.log(deployment_summary())
            run_cli(cmd, view, workdir)
            if view.canceled(force=True):
                raise Canceled()
            view.check_deadline()
            view.progress(1.0, "posting results")
            summary = _post_results(view, item_id, outdir, stem)
            counts = ", ".join(f"{c['name']} {c['count']}" for c in summary.get("classes", []))
            view.log(f"Posted {summary.get('nuclei', 0)} nuclei ({counts}) onto the item")
            return {"nuclei": summary.get("nuclei"), "classes": summary.get("classes")}
    except Canceled:
        view.log("Canceled: the analysis was stopped and nothing was posted")
        return None
    except AnalysisFailed as e:
        view.note(str(e))
        raise
    finally:
        if view.manager is not None:
            view.manager._flush()
        if view.client is not None:  # the server revokes it too, when the status changes
            try:
                view.client.delete("token/session")
            except Exception:
                pass
