"""A real Girder + girder_worker + Redis stack for tests and local development.

FOR TESTS AND DEVELOPMENT ONLY - NOT FOR PRODUCTION: by default the database is mongomock
inside the Girder process (see :mod:`tests.girder_stack.shims`), lost when it stops. Set
``MONGO_URI`` (e.g. ``mongodb://localhost:27017``) to use a real MongoDB: each stack then
gets its own database, dropped when the stack stops. Production is ``docker/docker-compose.yml``.
Nothing in the plugin or the CLI imports this package.

What runs, each as its own process on 127.0.0.1 and a free port:

* ``redis-server`` (Debian package): the celery broker and result backend;
* Girder over HTTP (cherrypy, ``python -m tests.girder_stack.serve``) with the
  ``nucleus_analysis`` and ``histomicsui`` plugins (and their dependencies);
* a girder_worker (``celery -A girder_worker.app worker``) that runs our task.

Usage::

    with Stack(workdir) as stack:
        stack.provision(slide="data/cmu_small_region.svs")
        job = stack.admin.post(f"nucleus_analysis/item/{stack.slide_item['_id']}/run")
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from girder_client import GirderClient

REPO = Path(__file__).resolve().parents[2]
ADMIN = {"login": "admin", "password": "password", "email": "admin@example.com",
         "firstName": "Ada", "lastName": "Admin"}
#: job statuses
SUCCESS, ERROR, CANCELED = 3, 4, 5
TERMINAL = {SUCCESS, ERROR, CANCELED}


class StackError(RuntimeError):
    """A service of the stack did not start (the message names its log file)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """One child process with its log file; stopped by process group, by its own id."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict | None = None,
                 cwd: Path = REPO) -> None:
        self.name, self.cmd, self.log = name, cmd, log
        self._log_handle = open(log, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})},
                                     stdout=self._log_handle, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def fail(self, why: str) -> StackError:
        """A :class:`StackError` quoting the end of the log."""
        tail = self.log.read_text(errors="replace").splitlines()[-15:]
        return StackError(f"{self.name} {why}; log {self.log}:\n" + "\n".join(tail))

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL after ``grace_s``."""
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self._log_handle.close()


def _wait(check, service: Service, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not service.alive():
            raise service.fail(f"exited with {service.proc.returncode} before {what}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise service.fail(f"not {what} after {timeout_s:.0f} s")


def start_redis(workdir: Path) -> tuple[Service, str]:
    """Start ``redis-server`` on a free port; return it and its ``redis://`` URL.

    Raises
    ------
    StackError
        When redis-server is not installed (``scripts/setup_girder.sh``) or does not answer.
    """
    exe = shutil.which("redis-server")
    if exe is None:
        raise StackError("redis-server is not installed: run scripts/setup_girder.sh")
    port = free_port()
    service = Service("redis", [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(workdir)],
                      workdir / "redis.log")

    def ping() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    _wait(ping, service, 20, "answering PING")
    return service, f"redis://127.0.0.1:{port}/0"


def _mongo_uri() -> tuple[str, str | None]:
    """``(uri, database)`` of a fresh database on ``MONGO_URI``; ``("", None)`` for mongomock."""
    base = os.environ.get("MONGO_URI", "").strip()
    if not base:
        return "", None
    name = f"nucleus_test_{uuid.uuid4().hex[:10]}"
    head, _, query = base.partition("?")
    scheme, _, rest = head.partition("://")
    host = rest.split("/", 1)[0]
    return f"{scheme}://{host}/{name}" + (f"?{query}" if query else ""), name


def start_girder(workdir: Path, broker: str, port: int | None = None,
                 mongo_uri: str = "") -> tuple[Service, str]:
    """Start Girder over HTTP with our plugins; return it and its API URL.

    ``mongo_uri`` empty runs on mongomock (the shims), else on that MongoDB database.
    """
    port = port or free_port()
    env = {"GIRDER_WORKER_BROKER": broker, "GIRDER_WORKER_BACKEND": broker,
           "PYTHONUNBUFFERED": "1", "MONGO_URI": mongo_uri}
    service = Service("girder", [sys.executable, "-m", "tests.girder_stack.serve",
                                 "--port", str(port)], workdir / "girder.log", env=env)
    api = f"http://127.0.0.1:{port}/api/v1"

    def answers() -> bool:
        with urllib.request.urlopen(f"{api}/system/version", timeout=2) as response:
            return response.status == 200

    _wait(answers, service, 120, "serving HTTP")
    return service, api


def start_worker(workdir: Path, broker: str, env: dict | None = None) -> Service:
    """Start a girder_worker (celery, one prefork child) consuming from ``broker``."""
    name = f"nucleus-{uuid.uuid4().hex[:6]}@%h"
    service = Service("girder_worker", [
        sys.executable, "-m", "celery", "-A", "girder_worker.app", "worker", "-l", "info",
        "--concurrency=1", "-Ofair", "--prefetch-multiplier=1", "-n", name,
        "--without-gossip", "--without-mingle"], workdir / "worker.log",
        env={"GIRDER_WORKER_BROKER": broker, "GIRDER_WORKER_BACKEND": broker,
             "PYTHONUNBUFFERED": "1", "TMPDIR": str(workdir),
             # girder_worker's celery config accepts pickle; celery refuses root then unless
             # told (dev machines here run as root; production runs the worker as a user)
             **({"C_FORCE_ROOT": "1"} if os.geteuid() == 0 else {}), **(env or {})})
    _wait(lambda: b"ready." in service.log.read_bytes(), service, 120, "ready")
    return service


class Stack:
    """Redis + Girder + girder_worker, started together and stopped in reverse order."""

    def __init__(self, workdir: str | Path, port: int | None = None,
                 worker_env: dict | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.worker_env = port, worker_env
        self.services: list[Service] = []
        self.api_url = ""
        self.broker = ""
        self.admin: GirderClient | None = None
        self.slide_item: dict | None = None
        self.folder: dict | None = None
        self._mongo: tuple[str, str | None] = ("", None)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> Stack:
        """Start Redis, Girder (with the broker in its environment) and the worker."""
        try:
            redis, self.broker = start_redis(self.workdir)
            self.services.append(redis)
            self._mongo = _mongo_uri()
            girder, self.api_url = start_girder(self.workdir, self.broker, self.port,
                                                self._mongo[0])
            self.services.append(girder)
            self.services.append(start_worker(self.workdir, self.broker, self.worker_env))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the services (worker, Girder, Redis); drop the MongoDB database if any."""
        failures = []
        for service in reversed(self.services):
            try:
                service.stop()
            except Exception as e:  # stop the others anyway: no process outlives the stack
                failures.append(f"{service.name}: {e}")
        self.services = []
        uri, name = self._mongo
        if name:
            import pymongo

            client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
            client.drop_database(name)
            client.close()
        if failures:
            raise StackError("stopping the stack: " + "; ".join(failures))

    def stop_worker(self) -> None:
        """Stop the girder_worker: jobs launched now wait in the broker (status QUEUED)."""
        worker = self.services.pop()
        assert worker.name == "girder_worker"
        worker.stop()

    def start_worker(self, env: dict | None = None) -> None:
        """Start a girder_worker again (``env`` adds to the stack's worker environment)."""
        assert self.services[-1].name != "girder_worker", "a worker is running"
        self.services.append(start_worker(self.workdir, self.broker,
                                          {**(self.worker_env or {}), **(env or {})}))

    def queued_messages(self) -> list[dict]:
        """The celery messages waiting in the broker (Redis list ``celery``), decoded.

        What anyone with access to the broker reads: the headers hold the job's data token
        (``girder_client_token``) and girder_worker's job spec.
        """
        import redis

        client = redis.Redis.from_url(self.broker)
        try:
            return [json.loads(raw) for raw in client.lrange("celery", 0, -1)]
        finally:
            client.close()

    @property
    def worker_log(self) -> Path:
        """The girder_worker log file."""
        return self.workdir / "worker.log"

    def client(self, login: str | None = None, password: str | None = None) -> GirderClient:
        """A girder_client on this stack, authenticated when credentials are given."""
        gc = GirderClient(apiUrl=self.api_url)
        if login:
            gc.authenticate(login, password)
        return gc

    def provision(self, slide: str | Path | None = None) -> dict:
        """Admin user, filesystem assetstore, worker settings, CLI, a slide collection.

        The first user created is the admin; the plugin registers the CLI when it appears
        (this checks it and registers explicitly otherwise).

        Parameters
        ----------
        slide : path, optional
            Slide uploaded into collection ``Nucleus Analysis`` / folder ``Slides`` and made a
            large_image item.

        Returns
        -------
        dict
            ``{"api_url", "admin", "folder", "slide_item", "cli"}``.
        """
        gc = self.client()
        gc.post("user", parameters={**ADMIN, "admin": "true"})
        gc.authenticate(ADMIN["login"], ADMIN["password"])
        self.admin = gc
        root = self.workdir / "assetstore"
        root.mkdir(exist_ok=True)
        if not gc.get("assetstore"):
            gc.post("assetstore", parameters={"name": "Assetstore", "type": 0,
                                              "root": str(root)})
        gc.put("system/setting", parameters={"list": json.dumps([
            {"key": "worker.broker", "value": self.broker},
            {"key": "worker.backend", "value": self.broker},
            {"key": "worker.api_url", "value": self.api_url},
            {"key": "worker.direct_path", "value": True},
        ])})
        clis = gc.get("nucleus_analysis/cli") or gc.put("nucleus_analysis/register")
        collection = gc.createCollection("Nucleus Analysis", public=True)
        self.folder = gc.createFolder(collection["_id"], "Slides", parentType="collection",
                                      public=True)
        if slide is not None:
            self.slide_item = self.upload_slide(slide)
        return {"api_url": self.api_url, "admin": ADMIN, "folder": self.folder,
                "slide_item": self.slide_item, "cli": clis}

    def upload_slide(self, path: str | Path, name: str | None = None,
                     large_image: bool = True) -> dict:
        """Upload a file into the Slides folder; make it a large image; return the item."""
        gc = self.admin
        file = gc.uploadFileToFolder(self.folder["_id"], str(path), filename=name)
        item = gc.getItem(file["itemId"])
        if large_image and "largeImage" not in item:
            gc.post(f"item/{item['_id']}/tiles", parameters={"fileId": file["_id"]})
            item = gc.getItem(item["_id"])
        return item

    def wait_job(self, job_id: str, timeout_s: float = 600, client: GirderClient | None = None,
                 until=None) -> dict:
        """Poll ``GET job/{id}`` until it ends (or ``until(job)`` holds); return the job.

        Raises
        ------
        TimeoutError
            When the job has not ended in ``timeout_s``.
        """
        gc = client or self.admin
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = gc.get(f"job/{job_id}")
            if (until(job) if until else job["status"] in TERMINAL):
                return job
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s:.0f} s; "
                           f"worker log {self.worker_log}")
