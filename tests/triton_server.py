"""Start a real (CPU) Triton Inference Server for tests: reusable by any test module.

::

    from tests.triton_server import TRITON_ENV_MISSING, serve_models

    @pytest.mark.triton
    @pytest.mark.skipif(TRITON_ENV_MISSING, reason=SKIP_REASON)
    def test_something():
        with serve_models(ROOT / "models") as (http_url, grpc_url):
            ...

The server is ``scripts/serve_triton.py`` (tritonserver 2.51 from nvidia-pytriton, Python
backend running the shipped ONNX file) on free ports, in ``./.venv-triton``.
"""
from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRITON_ENV = ROOT / ".venv-triton"
SERVE_SCRIPT = ROOT / "scripts" / "serve_triton.py"
TRITON_ENV_MISSING = not (TRITON_ENV / "bin" / "python").is_file()
SKIP_REASON = f"no Triton environment at {TRITON_ENV}: run `bash scripts/setup_triton_env.sh`"


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that were free a moment ago."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_is_closed(port: int) -> bool:
    """True when nothing accepts TCP connections on ``127.0.0.1:port``."""
    with closing(socket.socket()) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


class TritonServerProcess:
    """A running ``scripts/serve_triton.py``; ``http_url`` / ``grpc_url`` once started.

    Parameters
    ----------
    model_dir : path
        Triton-layout model repository to serve.
    ports : tuple of int, optional
        HTTP, gRPC and metrics ports (default: free ones).
    threads : int
        ONNX Runtime threads in the server (1 keeps a shared 2-core machine usable).
    log_path : path, optional
        Where tritonserver's log goes (default: a temporary file, removed by :meth:`stop`).
    """

    def __init__(self, model_dir: Path, *, ports: tuple[int, int, int] | None = None,
                 threads: int = 1, log_path: Path | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.http_port, self.grpc_port, self.metrics_port = ports or free_ports(3)
        self.threads = threads
        self._own_log = log_path is None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"triton_{self.http_port}_", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = Path(log_path)
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_url = f"grpc://127.0.0.1:{self.grpc_port}"
        self.server_pid: int | None = None
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180.0) -> TritonServerProcess:
        """Start the server and wait until every model is ready.

        Raises
        ------
        RuntimeError
            When the server exits or is not ready within ``timeout_s`` (with its log tail).
        """
        cmd = [sys.executable, str(SERVE_SCRIPT), "--model-repository", str(self.model_dir),
               "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
               "--metrics-port", str(self.metrics_port), "--threads", str(self.threads),
               "--log-file", str(self.log_path), "--ready-timeout", str(timeout_s)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        seen: list[str] = []
        deadline = time.monotonic() + timeout_s + 10
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            seen.append(line)
            if line.startswith("server_pid:"):
                self.server_pid = int(line.split(":", 1)[1])
                return self
        self._stop()
        log = self.log_path.read_text()[-4000:] if self.log_path.is_file() else ""
        self.stop()
        raise RuntimeError(f"Triton did not start: {''.join(seen)[-2000:]}\n{log}")

    def kill_server(self) -> None:
        """SIGKILL tritonserver itself (a crash); the serve script then exits with 1."""
        assert self.server_pid is not None
        os.kill(self.server_pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM the serve script (it stops tritonserver and cleans up) and wait."""
        try:
            self._stop()
        finally:
            if self._own_log:
                self.log_path.unlink(missing_ok=True)

    def _stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            if self.server_pid is not None:
                try:
                    os.kill(self.server_pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@contextmanager
def serve_models(model_dir: Path = ROOT / "models", *, threads: int = 1,
                 ports: tuple[int, int, int] | None = None) -> Iterator[tuple[str, str]]:
    """Serve ``model_dir`` on free ports; yield ``(http_url, grpc_url)``; stop on exit."""
    server = TritonServerProcess(model_dir, ports=ports, threads=threads).start()
    try:
        yield server.http_url, server.grpc_url
    finally:
        server.stop()
