"""``pip install .`` (not editable) gives a working CLI and plugin, away from the checkout.

The wheel is built from this checkout and installed into a fresh virtual environment whose
dependencies come from ``./.venv`` (a ``.pth`` line; nothing is downloaded), then the CLI runs
from a folder outside the checkout: ``--list_cli``, ``--xml`` and a small analysis of the real
CMU slide, on the model the wheel carries.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from .conftest import ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """``(python of the fresh venv, a working folder outside the checkout)``."""
    tmp = tmp_path_factory.mktemp("wheel")
    # build from a copy of what a sdist holds (setuptools leaves build/ beside the sources)
    source = tmp / "source"
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("slicer_cli", "plugin", "models", "client"):
        shutil.copytree(ROOT / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(source)], check=True, capture_output=True,
                   timeout=600)
    wheel = next(dist.glob("*.whl"))
    env = tmp / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    python = env / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True,
                          check=True).stdout.strip()
    # the dependencies: ./.venv's site-packages, after the new venv's own
    (Path(site) / "deps_from_dev_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=600)
    work = tmp / "elsewhere"
    work.mkdir()
    return python, work, wheel


def test_wheel_carries_the_model_and_the_web_client(installed):
    _, _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in ("nucleus_unet", "nucleus_unet_accurate"):  # the CPU default, the accurate
        assert f"slicer_cli/models/{model}/config.pbtxt" in names
        assert f"slicer_cli/models/{model}/MODEL.md" in names
        assert any(n.startswith(f"slicer_cli/models/{model}/") and n.endswith("/model.onnx")
                   for n in names)
    assert "slicer_cli/NucleusAnalysis/NucleusAnalysis.xml" in names
    assert "girder_nucleus_analysis/web_client/package.json" in names
    assert "girder_nucleus_analysis/web_client/NucleusLegend.js" in names


def test_installed_cli_runs_outside_the_checkout(installed, cmu_svs):
    python, work, _ = installed

    def run(*args, timeout=600):
        return subprocess.run([str(python), *args], cwd=work, capture_output=True, text=True,
                              timeout=timeout)

    where = run("-c", "import slicer_cli, slicer_cli.nuclei.model as m; "
                      "print(slicer_cli.__file__); print(m.DEFAULT_MODEL_DIR)")
    assert where.returncode == 0, where.stderr
    module, model_dir = where.stdout.split()
    assert str(ROOT) not in module and str(ROOT) not in model_dir, where.stdout
    listing = run("-m", "slicer_cli", "--list_cli")
    assert listing.returncode == 0 and "NucleusAnalysis" in json.loads(listing.stdout)
    xml = run("-m", "slicer_cli", "NucleusAnalysis", "--xml")
    assert xml.returncode == 0 and "<title>Nucleus Analysis</title>" in xml.stdout
    proc = run("-m", "slicer_cli", "NucleusAnalysis", str(cmu_svs), "out/n.anot",
               "out/f.csv", "--region", "600,1200,500,500")
    assert proc.returncode == 0, proc.stderr
    assert (work / "out" / "n.anot").is_file() and (work / "out" / "f.parquet").is_file()
    doc = json.loads((work / "out" / "n.anot").read_text())
    assert doc["elements"] and doc["attributes"]["model"]["name"] == "nucleus_unet"


def test_installed_plugin_finds_its_web_client(installed):
    python, work, _ = installed
    proc = subprocess.run([str(python), "-c", (
        "from girder.plugin import getPlugin; import json; "
        "print(json.dumps(getPlugin('nucleus_analysis').npmPackages()))")], cwd=work,
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    packages = json.loads(proc.stdout.strip().splitlines()[-1])
    assert list(packages) == ["@girder/nucleus_analysis"]
    folder = Path(packages["@girder/nucleus_analysis"].removeprefix("file:"))
    assert str(ROOT) not in str(folder) and (folder / "main.js").is_file()
