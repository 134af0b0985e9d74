"""Benchmark our CLI against HistomicsTK's NucleiDetection on the same real-tissue slide.

Builds the benchmark slide (``make_slide.py``) when missing, then runs in one invocation:

* ours: ``python -m slicer_cli NucleusAnalysis`` (local ONNX Runtime backend by default, or
  ``--triton-url``), which also classifies and computes features;
* HistomicsTK 1.4.0 ``NucleiDetection`` CLI at its defaults (detection only).

For each run it prints wall seconds, tissue megapixels per second (tissue area at 0.5 um/px
from our tissue mask, the same number for both), peak RSS of the whole process tree (sampled
every 0.1 s), nuclei found, and for ours the fraction of wall time spent inside the model's
inference calls (measured by the engine around each call).

Usage: ``python benchmarks/run_benchmark.py [--size 8192] [--skip-htk] [--out out/bench]``
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def machine() -> str:
    """One line naming the machine the figures come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    gpu = ""
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return (f"{len(os.sched_getaffinity(0))} cores ({cpu}), {mem:.0f} GiB RAM"
            + (f", GPU {gpu}" if gpu else ", no GPU"))


def run_measured(cmd: list[str], log: Path) -> tuple[float, float, int, str]:
    """Run ``cmd``; return wall s, peak RSS (MiB, whole process tree), exit code, stdout."""
    peak = 0
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=fh, text=True)
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
        reader.start()
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                procs = [root] + root.children(recursive=True)
                peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)
        reader.join()
    return time.perf_counter() - t0, peak / 2**20, proc.returncode, "".join(out)


def tissue_mpx(slide: Path) -> float:
    """Tissue area in megapixels at 0.5 um/px, from the engine's tissue mask."""
    from slicer_cli.nuclei.slide import open_slide, read_thumbnail
    from slicer_cli.nuclei.tissue import detect_tissue

    s, src = open_slide(str(slide))
    mask = detect_tissue(read_thumbnail(src, 2048), s.size_x, s.size_y)
    return mask.mask.mean() * s.size_x * s.size_y * (s.mpp / 0.5) ** 2 / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench")
    parser.add_argument("--skip-htk", action="store_true", help="only run ours")
    parser.add_argument("--triton-url", default="")
    parser.add_argument("--extra", default="", help="extra arguments for our CLI")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    slide = args.out / f"bench{args.size}.tiff"
    if not slide.exists():
        from benchmarks.make_slide import make_slide

        make_slide(slide, args.size)
    mpx = tissue_mpx(slide)
    print(f"machine: {machine()}")
    print(f"slide: {slide.name} {args.size}x{args.size} at 0.5 um/px, {mpx:.1f} tissue Mpx")
    results = {}

    cmd = [sys.executable, "-m", "slicer_cli", "NucleusAnalysis", str(slide),
           str(args.out / "ours.anot"), str(args.out / "ours.csv")]
    if args.triton_url:
        cmd += ["--triton-url", args.triton_url]
    cmd += args.extra.split()
    wall, rss, rc, stdout = run_measured(cmd, args.out / "ours.log")
    if rc:
        print(f"ours failed (exit {rc}); see {args.out / 'ours.log'}")
        return 1
    summary = [line for line in stdout.splitlines() if " nuclei (" in line][-1]
    n = int(summary.split()[0])
    infer_s = float(re.search(r"([\d.]+) s inside inference", summary).group(1))
    results["ours"] = dict(wall_s=wall, tissue_mpx_per_s=mpx / wall, peak_rss_mib=rss,
                           nuclei=n, inference_fraction=infer_s / wall, summary=summary)

    if not args.skip_htk:
        import histomicstk

        script = Path(histomicstk.__file__).parent / "cli" / "NucleiDetection" / \
            "NucleiDetection.py"
        cmd = [sys.executable, str(script), str(slide), str(args.out / "htk.anot")]
        wall, rss, rc, _ = run_measured(cmd, args.out / "htk.log")
        if rc:
            print(f"HistomicsTK failed (exit {rc}); see {args.out / 'htk.log'}")
            return 1
        with open(args.out / "htk.anot") as fh:
            doc = json.load(fh)
        docs = doc if isinstance(doc, list) else [doc]
        n = sum(len(d.get("elements", [])) for d in docs)
        results["histomicstk"] = dict(wall_s=wall, tissue_mpx_per_s=mpx / wall,
                                      peak_rss_mib=rss, nuclei=n)

    for name, r in results.items():
        extra = (f", {100 * r['inference_fraction']:.0f}% of wall inside inference"
                 if "inference_fraction" in r else "")
        print(f"{name}: {r['wall_s']:.1f} s wall, {r['tissue_mpx_per_s']:.3f} tissue Mpx/s, "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB, {r['nuclei']} nuclei{extra}")
    if "histomicstk" in results:
        ratio = results["ours"]["tissue_mpx_per_s"] / results["histomicstk"]["tissue_mpx_per_s"]
        print(f"speed-up (tissue Mpx/s, ours / HistomicsTK): {ratio:.2f}x")
    with open(args.out / f"results{args.size}.json", "w") as fh:
        json.dump(dict(machine=machine(), slide=slide.name, tissue_mpx=mpx, **results), fh,
                  indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
