"""Serve a Triton model repository (default ``models/``) locally on CPU, for development and tests.

Runs the real ``tritonserver`` (2.51) that nvidia-pytriton 0.7.0 bundles, with the Python
backend running the SAME ``model.onnx`` through ONNX Runtime. Each served model keeps the
source ``config.pbtxt``'s name, inputs, outputs, ``max_batch_size``, dynamic batching and
``parameters`` (so :func:`slicer_cli.nuclei.model.info_from_config` on the served config gives
the same ``ModelInfo``); only the backend (``python`` instead of ``onnxruntime``) and the
instance group (CPU) change. pytriton's own ``Triton().bind()`` API cannot set config
``parameters``, so the binary runs directly on a generated repository.

Usage (after ``bash scripts/setup_triton_env.sh``)::

    python scripts/serve_triton.py --http-port 8000 --grpc-port 8001 --metrics-port 8002

Any Python may start it: it re-executes itself under ``./.venv-triton/bin/python`` (numpy<2,
pytriton, onnxruntime). Once every model is ready it prints::

    http_url: http://127.0.0.1:8000
    grpc_url: grpc://127.0.0.1:8001
    metrics_url: http://127.0.0.1:8002/metrics
    models: nucleus_unet
    server_pid: 12345

and serves until SIGTERM or SIGINT, which stop the server and remove the generated repository.
Exit status: 0 after a signal, 1 when the server fails or dies, 2 for a usage/setup error.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ENV = ROOT / ".venv-triton"
MODEL_PY = Path(__file__).resolve().with_name("triton_onnx_model.py")
SETUP_HINT = "run: bash scripts/setup_triton_env.sh"


def _fail(message: str) -> None:
    """Usage or set-up error: one line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-repository", type=Path, default=ROOT / "models",
                   help="Triton-layout repository: <model>/config.pbtxt, <model>/<v>/model.onnx")
    p.add_argument("--models", nargs="*", default=None,
                   help="serve only these models (default: every model in the repository)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--address", default="127.0.0.1",
                   help="interface to listen on (0.0.0.0 exposes the server to the network)")
    p.add_argument("--threads", type=int, default=0,
                   help="ONNX Runtime intra-op threads per model (default: all usable cores)")
    p.add_argument("--instances", type=int, default=1, help="model instances (CPU) per model")
    p.add_argument("--ready-timeout", type=float, default=120.0,
                   help="seconds to wait for the server and every model to be ready")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where to generate the served repository (default: a temporary folder)")
    p.add_argument("--log-file", type=Path, default=None,
                   help="tritonserver log (default: this process's stderr)")
    p.add_argument("--env", type=Path, default=DEFAULT_ENV,
                   help="the Triton virtual environment (scripts/setup_triton_env.sh)")
    return p.parse_args(argv)


def _reexec_in_env(env: Path) -> None:
    """Run this script under the Triton venv's Python unless already there."""
    python = env / "bin" / "python"
    if Path(sys.prefix).resolve() == env.resolve():
        return
    if not python.is_file():
        _fail(f"no Triton environment at {env}; {SETUP_HINT}")
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


def _served_config(source: Path, instances: int) -> str:
    """The source config.pbtxt with the Python backend on CPU instead of ONNX Runtime."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(source.read_text(), model_config_pb2.ModelConfig())
    config.name = config.name or source.parent.name
    config.ClearField("platform")
    config.ClearField("default_model_filename")
    config.ClearField("optimization")  # onnxruntime/TensorRT accelerators do not apply
    config.backend = "python"
    del config.instance_group[:]
    config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, count=instances)
    return text_format.MessageToString(config)


def build_repository(source: Path, target: Path, models: list[str] | None, threads: int,
                     instances: int) -> list[str]:
    """Generate the Python-backend repository under ``target``; return the served names."""
    names = []
    for model_dir in sorted(p for p in source.iterdir() if (p / "config.pbtxt").is_file()):
        if models is not None and model_dir.name not in models:
            continue
        versions = [v for v in model_dir.iterdir()
                    if v.name.isdigit() and (v / "model.onnx").is_file()]
        if not versions:
            _fail(f"{model_dir} has no <version>/model.onnx")
        served = target / model_dir.name
        served.mkdir(parents=True)
        (served / "config.pbtxt").write_text(_served_config(model_dir / "config.pbtxt",
                                                           instances))
        (served / "onnx_serving.json").write_text(json.dumps({"threads": threads}))
        for version in versions:
            (served / version.name).mkdir()
            shutil.copy(MODEL_PY, served / version.name / "model.py")
            (served / version.name / "model.onnx").symlink_to(
                (version / "model.onnx").resolve())
        names.append(model_dir.name)
    missing = sorted(set(models or []) - set(names))
    if missing or not names:
        _fail(f"no model {missing or ''} with a config.pbtxt under {source}")
    return names


def _backend_directory(target: Path) -> tuple[Path, Path, Path]:
    """Python backend with this interpreter's stub; returns (server, backends, caches)."""
    import pytriton

    dist = Path(pytriton.__file__).parent / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        _fail(f"pytriton ships no Python backend stub for Python {version}")
    python = target / "python"
    python.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy(dist / "backends" / "python" / name, python / name)
    shutil.copy(stub, python / "triton_python_backend_stub")
    return dist / "bin" / "tritonserver", target, dist / "caches"


def _server_env() -> dict[str, str]:
    """LD_LIBRARY_PATH for tritonserver's bundled libs and the stub's libpython; PATH so the
    embedded interpreter finds this venv (numpy<2, onnxruntime)."""
    import pytriton

    libs = Path(pytriton.__file__).parents[1] / "nvidia_pytriton.libs"
    env = os.environ.copy()
    paths = [str(libs), sysconfig.get_config_var("LIBDIR") or ""]
    if env.get("LD_LIBRARY_PATH"):
        paths.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(p for p in paths if p)
    env["PATH"] = f"{Path(sys.prefix) / 'bin'}:{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    return env


def _die_with_parent() -> None:
    """In the child: get SIGTERM if this script dies, even by SIGKILL (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _reap(server_pid: int, shm_prefix: str) -> None:
    """After tritonserver is gone: kill its Python backend stubs (a crashed server leaves them
    running, idle, forever) and remove their shared-memory files."""
    try:
        os.killpg(server_pid, signal.SIGKILL)  # the server led its own process group
    except (ProcessLookupError, PermissionError):
        pass
    for leftover in Path("/dev/shm").glob(f"{shm_prefix}*"):
        leftover.unlink(missing_ok=True)


def _ready(http: str, names: list[str]) -> bool:
    urls = [f"{http}/v2/health/ready"] + [f"{http}/v2/models/{n}/ready" for n in names]
    try:
        for url in urls:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status != 200:
                    return False
    except (urllib.error.URLError, OSError):
        return False
    return True


def serve(args: argparse.Namespace) -> int:
    """Generate the repository, run tritonserver until a signal; return the exit status."""
    stop = {"signal": None}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    work = Path(tempfile.mkdtemp(prefix="serve_triton_", dir=args.workdir))
    shm_prefix = f"serve_triton_{os.getpid()}_"  # distinct per server: several may run
    log = open(args.log_file, "ab") if args.log_file else None  # noqa: SIM115
    proc = None
    try:
        names = build_repository(args.model_repository.resolve(), work / "models", args.models,
                                 args.threads, args.instances)
        server, backends, caches = _backend_directory(work / "backends")
        cmd = [
            str(server),
            f"--model-repository={work / 'models'}",
            f"--backend-directory={backends}",
            f"--cache-directory={caches}",
            f"--http-address={args.address}", f"--http-port={args.http_port}",
            f"--grpc-address={args.address}", f"--grpc-port={args.grpc_port}",
            f"--metrics-address={args.address}", f"--metrics-port={args.metrics_port}",
            "--allow-gpu-metrics=false",
            "--exit-on-error=true", "--strict-readiness=true", "--exit-timeout-secs=10",
            "--log-verbose=0",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
            "--backend-config=python,shm-default-byte-size=16777216",
            "--backend-config=python,shm-growth-byte-size=67108864",
        ]
        proc = subprocess.Popen(cmd, env=_server_env(), stdout=log or sys.stderr,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)
        host = "127.0.0.1" if args.address in ("0.0.0.0", "") else args.address
        http = f"http://{host}:{args.http_port}"
        deadline = time.monotonic() + args.ready_timeout
        while not _ready(http, names):
            if stop["signal"] is not None:
                return 0
            if proc.poll() is not None:
                print(f"error: tritonserver exited with status {proc.returncode} before it was "
                      f"ready (its log: {args.log_file or 'above'})", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"error: tritonserver not ready after {args.ready_timeout:.0f} s",
                      file=sys.stderr)
                return 1
            time.sleep(0.2)
        print(f"http_url: {http}", flush=True)
        print(f"grpc_url: grpc://{host}:{args.grpc_port}", flush=True)
        print(f"metrics_url: http://{host}:{args.metrics_port}/metrics", flush=True)
        print(f"models: {', '.join(names)}", flush=True)
        print(f"server_pid: {proc.pid}", flush=True)
        while stop["signal"] is None:
            if proc.poll() is not None:
                print(f"error: tritonserver died with status {proc.returncode}", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            _reap(proc.pid, shm_prefix)
        if log:
            log.close()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    _reexec_in_env(args.env)
    try:
        import pytriton  # noqa: F401
    except ImportError:
        _fail(f"{sys.prefix} has no nvidia-pytriton; {SETUP_HINT}")
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
