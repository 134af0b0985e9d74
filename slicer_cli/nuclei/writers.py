"""Writers: the DSA annotation (JSON), the per-nucleus feature table (CSV + Parquet), a
plottable table (the columns HistomicsUI's Metadata Plot reads) and a QuPath GeoJSON.

Both stream: nuclei are appended batch by batch and never all sit in memory.  Both write to
``<final>.part`` and rename only on :meth:`commit`, so a failed run leaves no final-named file
(and never touches an existing one until the new result is complete).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import OutputError
from .outlines import on_whole_pixels


def _open_part(path: str | Path, mode: str = "w"):
    path = Path(path)
    part = path.with_name(path.name + ".part")
    try:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)  # a fresh clone has no out/
        if "b" in mode:
            return part, open(part, mode)
        return part, open(part, mode, encoding="utf-8", newline="")
    except OSError as e:
        raise OutputError(f"cannot write output {path}: {e.strerror or e}") from e


class AnnotationWriter:
    """Stream one large_image annotation document: a closed polyline per nucleus.

    Parameters
    ----------
    path : path
        Final file name (``.anot`` / ``.json``).
    name, description : str
        Annotation name and description as HistomicsUI lists them.
    attributes : dict
        Model, version and parameters of the run (never a token). Written after the
        elements, on :meth:`commit`, with what the run measured added (JSON objects have no
        order).
    """

    def __init__(self, path: str | Path, name: str, description: str, attributes: dict):
        self.path = Path(path)
        self._part, self._fh = _open_part(self.path)
        self._first = True
        self.attributes = dict(attributes)
        head = json.dumps({"name": name, "description": description,
                           "display": {"visible": True}})
        self._fh.write(head[:-1] + ', "elements": [\n')

    def write(self, ids: np.ndarray, contours: list[np.ndarray], groups: list[str],
              colors: list[str], probs: np.ndarray) -> None:
        """Append nuclei: ids, base-pixel ``(k, 2)`` contours, class names/colours, probs.

        Vertices are stored on whole base pixels (:func:`~.outlines.on_whole_pixels`), so
        HistomicsUI can join each outline to its row of the plottable table."""
        parts = []
        for nid, pts, group, color, prob in zip(ids.tolist(), on_whole_pixels(contours),
                                                groups, colors, probs.tolist()):
            coords = ",".join(f"[{x},{y},0]" for x, y in pts.tolist())
            parts.append(
                f'{{"type":"polyline","closed":true,"points":[{coords}],'
                f'"group":{json.dumps(group)},"lineColor":"{color}","lineWidth":1,'
                f'"user":{{"id":{nid},"class":{json.dumps(group)},"probability":{prob:.4f}}}}}')
        if not parts:
            return
        text = ",\n".join(parts)
        self._fh.write(text if self._first else ",\n" + text)
        self._first = False

    def commit(self, **more_attributes) -> Path:
        """Close the document (attributes last, ``more_attributes`` added) and move it to its
        final name."""
        attributes = {**self.attributes, **more_attributes}
        self._fh.write(f"\n], \"attributes\": {json.dumps(attributes)}}}\n")
        self._fh.close()
        os.replace(self._part, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file."""
        self._fh.close()
        self._part.unlink(missing_ok=True)


class GeoJSONWriter:
    """Stream a GeoJSON FeatureCollection for QuPath: one ``detection`` per nucleus.

    Each feature is the nucleus outline (a closed ``Polygon`` in base pixels) with
    ``properties`` ``objectType: "detection"``, ``classification: {name, color: [r, g, b]}``
    and ``measurements`` (every feature of the table by its HistomicsTK name; NaN left out),
    plus ``nucleus_id``. QuPath's *File > Import objects* reads it as is; a ``.gz`` name
    writes it gzip-compressed.
    """

    def __init__(self, path: str | Path):
        import gzip

        self.path = Path(path)
        self._part, fh = _open_part(self.path, "wb")
        self._fh = gzip.GzipFile(fileobj=fh, mode="wb") if self.path.suffix == ".gz" else fh
        self._raw = fh
        self._first = True
        self._fh.write(b'{"type": "FeatureCollection", "features": [\n')

    def write(self, ids: np.ndarray, contours: list[np.ndarray], groups: list[str],
              colors: list[str], measurements) -> None:
        """Append nuclei (``measurements``: a DataFrame of feature columns, one row each)."""
        names = [c for c in measurements.columns]
        values = measurements.to_numpy(np.float64)
        parts = []
        for k, (nid, pts, group, color) in enumerate(zip(ids.tolist(), contours, groups,
                                                         colors)):
            ring = _valid_ring(np.round(pts, 2))
            rgb = [int(v) for v in color[4:-1].split(",")]
            row = values[k]
            measured = {n: float(v) for n, v in zip(names, row.tolist()) if v == v}
            parts.append(json.dumps({
                "type": "Feature", "id": str(nid),
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "detection", "nucleus_id": nid,
                               "classification": {"name": group, "color": rgb},
                               "measurements": measured}}, separators=(",", ":")))
        if not parts:
            return
        text = ",\n".join(parts).encode("utf-8")
        self._fh.write(text if self._first else b",\n" + text)
        self._first = False

    def commit(self) -> Path:
        """Close the collection and move it to its final name."""
        self._fh.write(b"\n]}\n")
        self._fh.close()
        self._raw.close()
        os.replace(self._part, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file."""
        self._fh.close()
        self._raw.close()
        self._part.unlink(missing_ok=True)


def _valid_ring(pts: np.ndarray) -> list:
    """A closed, valid exterior ring for ``pts`` (QuPath's geometry library wants valid ones).

    A nucleus narrower than two pixels somewhere is traced there out and back along the same
    pixel centres, which makes a self-touching ring: its polygonal part is kept; a nucleus
    that is nothing but such a line becomes the line widened by half a pixel.
    """
    import shapely
    from shapely.geometry import LineString, Polygon

    ring = pts.tolist()
    if len(ring) >= 3:
        polygon = Polygon(ring)
        if polygon.is_valid and polygon.area > 0:
            return ring + [ring[0]]
        parts = [g for g in getattr(shapely.make_valid(polygon), "geoms",
                                    [shapely.make_valid(polygon)])
                 if g.geom_type == "Polygon" and g.area > 0]
        if parts:
            # (not rounded again: rounding could make a repaired ring touch itself)
            return np.asarray(max(parts, key=lambda g: g.area).exterior.coords).tolist()
    line = LineString(ring if len(ring) >= 2 else ring * 2)
    return np.asarray(line.buffer(0.5).exterior.coords).tolist()


#: the plottable table: what HistomicsUI's Metadata Plot reads from a CSV in the slide's item
#: (the bounding box under names it recognises joins a row to its outline) and the features
#: most worth plotting; the full table is the Parquet file
PLOT_FEATURES = ["Size.Area", "Size.Perimeter", "Size.MajorAxisLength", "Size.MinorAxisLength",
                 "Shape.Circularity", "Shape.Eccentricity", "Shape.Solidity",
                 "Shape.FractalDimension", "Nucleus.Intensity.Mean", "Nucleus.Intensity.Std",
                 "Nucleus.Gradient.Mag.Mean", "Nucleus.Haralick.Contrast.Mean",
                 "Nucleus.Haralick.Entropy.Mean"]
PLOT_COLUMNS = ["nucleus_id", "class", "class_probability", "min_x", "min_y", "max_x",
                "max_y", "centroid_x", "centroid_y", *PLOT_FEATURES]


def plot_rows(ids: np.ndarray, contours: list[np.ndarray], groups: list[str], table):
    """The plottable rows of a batch: its outline's bounding box (exactly the stored
    element's: whole pixels, so HistomicsUI joins the row to the outline), class, centroid
    and :data:`PLOT_FEATURES` of ``table``."""
    import pandas as pd

    outlines = on_whole_pixels(contours)
    lo = np.array([c.min(axis=0) for c in outlines]) if outlines else np.zeros((0, 2), int)
    hi = np.array([c.max(axis=0) for c in outlines]) if outlines else np.zeros((0, 2), int)
    frame = pd.DataFrame({
        "nucleus_id": ids.astype(np.int64), "class": groups,
        "class_probability": table["class_probability"].to_numpy(np.float64),
        "min_x": lo[:, 0], "min_y": lo[:, 1], "max_x": hi[:, 0], "max_y": hi[:, 1],
        "centroid_x": table["Identifier.CentroidX"].to_numpy(np.float64),
        "centroid_y": table["Identifier.CentroidY"].to_numpy(np.float64)})
    for name in PLOT_FEATURES:
        frame[name] = table[name].to_numpy(np.float64)
    return frame


class FeatureTableWriter:
    """Stream the feature table to CSV and, optionally, Parquet (one row group per batch).

    Both are written by Arrow from the same columns. The Parquet file keeps every float as
    float64; the CSV writes each float as the shortest text that reads back to the same
    float32 (about 7 significant digits, what ``%.8g`` gave at a sixth of the cost), and a
    NaN as an empty field.
    """

    def __init__(self, csv_path: str | Path, parquet_path: str | Path | None = None):
        self.csv_path = Path(csv_path)
        self.parquet_path = Path(parquet_path) if parquet_path else None
        self._csv_part, self._csv = _open_part(self.csv_path, "wb")
        self._pq_part = self._pq = None
        if self.parquet_path is not None:
            self._pq_part, fh = _open_part(self.parquet_path)
            fh.close()
        self._columns: list[str] | None = None
        self._schema = None
        self._csv_schema = None
        self.rows = 0

    def write(self, table) -> None:
        """Append a ``pandas.DataFrame`` batch (same columns every time)."""
        import pyarrow as pa
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        if self._columns is None:
            self._columns = list(table.columns)
            self._first = table.iloc[:0]
            self._csv.write((",".join(self._columns) + "\n").encode("utf-8"))
        elif list(table.columns) != self._columns:
            raise ValueError("feature table batches must share their columns")
        if len(table):
            # The schema comes from the first non-empty batch: an empty one types its text
            # columns as null.
            arrow = pa.Table.from_pandas(table, preserve_index=False)
            if self._schema is None:
                self._schema = arrow.schema
                self._csv_schema = pa.schema(
                    [f.with_type(pa.float32()) if pa.types.is_floating(f.type) else f
                     for f in self._schema])
            arrow = arrow.cast(self._schema)
            # class names never hold a comma, quote or newline (the model lists them
            # comma-separated), so no field needs quoting
            pcsv.write_csv(arrow.cast(self._csv_schema, safe=False), self._csv,
                           pcsv.WriteOptions(include_header=False, quoting_style="none"))
            if self._pq_part is not None:
                if self._pq is None:
                    self._pq = pq.ParquetWriter(self._pq_part, self._schema)
                self._pq.write_table(arrow)
        self.rows += len(table)

    def commit(self) -> list[Path]:
        """Close and move the files to their final names."""
        self._csv.close()
        done = [self.csv_path]
        if self._pq is not None:
            self._pq.close()
        elif self._pq_part is not None:  # no rows: an empty table with the columns
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.Schema.from_pandas(self._first, preserve_index=False)
            schema = pa.schema([f.with_type(pa.string()) if f.type == pa.null() else f
                                for f in schema])
            pq.write_table(pa.Table.from_pandas(self._first, schema=schema,
                                                preserve_index=False), self._pq_part)
        if self._pq_part is not None:
            os.replace(self._pq_part, self.parquet_path)
            done.append(self.parquet_path)
        os.replace(self._csv_part, self.csv_path)
        return done

    def abort(self) -> None:
        """Drop the partial files."""
        self._csv.close()
        self._csv_part.unlink(missing_ok=True)
        if self._pq is not None:
            self._pq.close()
        if self._pq_part is not None:
            self._pq_part.unlink(missing_ok=True)
