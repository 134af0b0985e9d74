"""The NucleusAnalysis slicer CLI end to end, through the real argument parser."""
from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

import jsonschema
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .conftest import ROOT, cli, load_annotation


def test_list_cli_and_xml():
    out = subprocess.run([sys.executable, "-m", "slicer_cli", "--list_cli"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert '"NucleusAnalysis"' in out
    xml = cli("--xml").stdout
    root = ET.fromstring(xml)
    outputs = {e.findtext("name"): e.get("reference") for e in root.iter("file")
               if e.findtext("channel") == "output"}
    assert outputs["outputNucleiAnnotationFile"] == "inputImageFile"
    assert outputs["outputFeatureFile"] == "inputImageFile"


def test_svs_end_to_end(svs_run, annotation_schema):
    proc, ann, csv = svs_run
    assert proc.returncode == 0, proc.stderr
    progress = [line for line in proc.stdout.splitlines() if line.startswith("<filter-progress>")]
    assert progress and progress[-1] == "<filter-progress>1.0000</filter-progress>"
    doc = load_annotation(ann)
    jsonschema.validate(doc, annotation_schema)
    table = pd.read_csv(csv)
    parquet = pq.read_table(csv.with_suffix(".parquet")).to_pandas()
    ids = [el["user"]["id"] for el in doc["elements"]]
    assert table["nucleus_id"].tolist() == ids == parquet["nucleus_id"].tolist()
    groups = {el["group"] for el in doc["elements"]}
    assert groups <= set(doc["attributes"]["model"]["classes"])
    assert "token" not in ann.read_text().lower()


def test_svs_count_is_plausible_for_tissue_area(svs_run):
    proc, ann, _ = svs_run
    summary = [line for line in proc.stdout.splitlines() if " nuclei (" in line][0]
    n = int(summary.split()[0])
    tissue_mpx = float(summary.split("tissue Mpx")[0].split(";")[-1])
    # hgsc_nest's labels hold 1294 nuclei in 2.25 Mpx at 0.5 um/px (575 / Mpx); tissue
    # varies from stroma to dense tumour, so accept a wide band around that density.
    assert 50 * tissue_mpx <= n <= 2000 * tissue_mpx, summary


def test_region_limits_nuclei(tmp_path, cmu_svs):
    ann, csv = tmp_path / "roi.anot", tmp_path / "roi.csv"
    proc = cli(cmu_svs, ann, csv, "--region", "600,1200,700,500", "--no-parquet", "true")
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(csv)
    assert len(table) > 0
    assert table["Identifier.CentroidX"].between(600, 1300).all()
    assert table["Identifier.CentroidY"].between(1200, 1700).all()
    assert not csv.with_suffix(".parquet").exists()


def _assert_clean_failure(proc, tmp_path, message, keep=()):
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(keep), left


def test_missing_slide(tmp_path):
    proc = cli(tmp_path / "missing.svs", tmp_path / "a.anot", tmp_path / "f.csv")
    _assert_clean_failure(proc, tmp_path, "slide not found")


def test_non_image_file(tmp_path):
    bad = tmp_path / "bad.svs"
    bad.write_text("not a slide")
    proc = cli(bad, tmp_path / "a.anot", tmp_path / "f.csv")
    _assert_clean_failure(proc, tmp_path, "cannot read slide", keep=["bad.svs"])


def test_truncated_slide(tmp_path, cmu_svs):
    bad = tmp_path / "truncated.svs"
    bad.write_bytes(cmu_svs.read_bytes()[:300_000])
    proc = cli(bad, tmp_path / "a.anot", tmp_path / "f.csv")
    _assert_clean_failure(proc, tmp_path, "slide", keep=["truncated.svs"])


def test_no_resolution(tmp_path, hgsc_image):
    proc = cli(hgsc_image, tmp_path / "a.anot", tmp_path / "f.csv")
    _assert_clean_failure(proc, tmp_path, "--slide-mpp")


def test_region_outside_image(tmp_path, cmu_svs):
    proc = cli(cmu_svs, tmp_path / "a.anot", tmp_path / "f.csv", "--region", "5000,5000,10,10")
    _assert_clean_failure(proc, tmp_path, "outside the slide")


def test_unwritable_output_keeps_previous_result(tmp_path, cmu_svs):
    previous = tmp_path / "f.csv"
    previous.write_text("previous\n")
    proc = cli(cmu_svs, tmp_path / "no_such_dir" / "a.anot", previous)
    _assert_clean_failure(proc, tmp_path, "cannot write output", keep=["f.csv"])
    assert previous.read_text() == "previous\n"


def test_terminal_run_on_slide_without_resolution_given_mpp(tmp_path, hgsc_image):
    ann, csv = tmp_path / "a.anot", tmp_path / "f.csv"
    proc = cli(hgsc_image, ann, csv, "--slide-mpp", "0.5", "--region", "0,0,600,600")
    assert proc.returncode == 0, proc.stderr
    assert np.isfinite(pd.read_csv(csv)["Size.Area"]).all()
