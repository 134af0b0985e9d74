"""Writers: schema-valid annotation, streamed table, nothing left under a final name on failure."""
from __future__ import annotations

import os

import jsonschema
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from slicer_cli.nuclei.errors import OutputError
from slicer_cli.nuclei.writers import AnnotationWriter, FeatureTableWriter

from .conftest import load_annotation


def _square(x, y, s=10):
    return np.array([[x, y], [x + s, y], [x + s, y + s], [x, y + s]], dtype=float)


def test_annotation_is_schema_valid_and_streamed(tmp_path, annotation_schema):
    path = tmp_path / "nuclei.anot"
    w = AnnotationWriter(path, "Nuclei", "test", {"model": {"name": "m", "version": "1"}})
    assert not path.exists()
    w.write(np.array([1, 2]), [_square(0, 0), _square(20, 0)], ["a", "b"],
            ["rgb(0,160,0)", "rgb(220,20,60)"], np.array([0.9, 0.8]))
    w.write(np.array([], dtype=int), [], [], [], np.array([]))
    w.write(np.array([3]), [_square(40, 0)], ["a"], ["rgb(0,160,0)"], np.array([0.7]))
    w.commit()
    doc = load_annotation(path)
    jsonschema.validate(doc, annotation_schema)
    assert [e["user"]["id"] for e in doc["elements"]] == [1, 2, 3]
    el = doc["elements"][1]
    assert el["type"] == "polyline" and el["closed"] is True and "fillColor" not in el
    assert el["group"] == "b" and el["lineColor"] == "rgb(220,20,60)"
    assert el["points"][1] == [30.0, 0.0, 0]
    assert not (tmp_path / "nuclei.anot.part").exists()


def test_empty_annotation_is_valid(tmp_path, annotation_schema):
    path = tmp_path / "empty.anot"
    AnnotationWriter(path, "Nuclei", "", {}).commit()
    doc = load_annotation(path)
    jsonschema.validate(doc, annotation_schema)
    assert doc["elements"] == []


def test_abort_leaves_existing_output_untouched(tmp_path):
    path = tmp_path / "nuclei.anot"
    path.write_text("previous result")
    w = AnnotationWriter(path, "Nuclei", "", {})
    w.write(np.array([1]), [_square(0, 0)], ["a"], ["rgb(1,2,3)"], np.array([0.5]))
    w.abort()
    assert path.read_text() == "previous result"
    assert os.listdir(tmp_path) == ["nuclei.anot"]


def test_unwritable_output(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OutputError, match="cannot write output"):
        AnnotationWriter(tmp_path / "a_file" / "x.anot", "Nuclei", "", {})
    with pytest.raises(OutputError, match="cannot write output"):
        FeatureTableWriter(tmp_path, None)  # a directory


def test_missing_output_folders_are_created(tmp_path):
    w = AnnotationWriter(tmp_path / "out" / "deeper" / "x.anot", "Nuclei", "", {})
    assert w.commit() == tmp_path / "out" / "deeper" / "x.anot"


def test_table_csv_and_parquet_agree(tmp_path):
    csv, parquet = tmp_path / "f.csv", tmp_path / "f.parquet"
    w = FeatureTableWriter(csv, parquet)
    a = pd.DataFrame({"nucleus_id": [1, 2], "class": ["x", "y"],
                      "Size.Area": [10.0, 12.5], "Shape.Ratio": [1 / 3, np.nan]})
    b = pd.DataFrame({"nucleus_id": [3], "class": ["x"], "Size.Area": [7.0],
                      "Shape.Ratio": [123456.789]})
    w.write(a.iloc[:0])
    w.write(a)
    w.write(b)
    assert not csv.exists() and not parquet.exists()
    w.commit()
    expected = pd.concat([a, b], ignore_index=True)
    # Parquet keeps float64 exactly; the CSV keeps float32 precision, NaN as an empty field
    pd.testing.assert_frame_equal(pq.read_table(parquet).to_pandas(), expected)
    lines = csv.read_text().splitlines()
    assert lines == ["nucleus_id,class,Size.Area,Shape.Ratio", "1,x,10,0.33333334",
                     "2,y,12.5,", "3,x,7,123456.79"]
    pd.testing.assert_frame_equal(pd.read_csv(csv), expected, rtol=1e-7)


def test_table_rejects_changing_columns(tmp_path):
    w = FeatureTableWriter(tmp_path / "f.csv")
    w.write(pd.DataFrame({"a": [1]}))
    with pytest.raises(ValueError, match="share their columns"):
        w.write(pd.DataFrame({"b": [1]}))
    w.abort()
    assert os.listdir(tmp_path) == []
