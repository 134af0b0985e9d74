"""Read an uploaded annotation file as a stream into staged per-class annotations.

Memory is bounded independently of the nucleus count: the JSON is parsed incrementally
(``ijson``, its C backend), every element is validated as it arrives (large_image's element
schema once per distinct element shape, the points of every element), routed to the staged
annotation of its class, and written to large_image's element collection in chunks of
:data:`CHUNK` elements with large_image's own chunk writer. Nothing is visible to readers:
the staged annotations belong to no item until the ingest swaps them in, and a failure
anywhere removes them (``ingest.py``).

Alongside, each class's nuclei are counted on a coarse grid of the slide (:class:`Density`):
what the viewer draws at whole-slide zoom instead of fetching every element (``ingest.py``
stages it as one ``griddata`` heatmap annotation per class).
"""
from __future__ import annotations

import datetime
import math
import threading
from dataclasses import dataclass, field

import jsonschema
import numpy as np
from girder.exceptions import ValidationException
from girder.models.file import File

#: elements buffered per class before they are written (large_image's own chunk size)
CHUNK = 10_000
#: cells along the slide's long side of the density grid (at most this squared per class)
DENSITY_CELLS = 256
#: smallest density cell, base pixels
DENSITY_MIN_CELL = 64


class Density:
    """Nuclei per cell of a coarse grid over the slide, per class.

    The grid covers ``[0, size_x) x [0, size_y)`` in cells of ``cell`` base pixels (the long
    side in at most :data:`DENSITY_CELLS` cells); a nucleus counts in the cell of the mean of
    its outline points, clipped to the grid, so every nucleus is counted exactly once. Memory
    is the grid, whatever the number of nuclei.
    """

    def __init__(self, size_x: int, size_y: int) -> None:
        self.size_x, self.size_y = max(1, int(size_x)), max(1, int(size_y))
        self.cell = max(DENSITY_MIN_CELL, math.ceil(max(self.size_x, self.size_y)
                                                    / DENSITY_CELLS))
        self.width = math.ceil(self.size_x / self.cell)
        self.height = math.ceil(self.size_y / self.cell)
        self.counts: dict[str, np.ndarray] = {}

    def add(self, name: str, points) -> None:
        n = len(points)
        x = sum(p[0] for p in points) / n
        y = sum(p[1] for p in points) / n
        ix = min(self.width - 1, max(0, int(x // self.cell)))
        iy = min(self.height - 1, max(0, int(y // self.cell)))
        grid = self.counts.get(name)
        if grid is None:
            grid = self.counts[name] = np.zeros((self.height, self.width), np.int64)
        grid[iy, ix] += 1

    def element(self, name: str, color: str | None) -> dict:
        """The class's counts as a large_image ``griddata`` heatmap element (cell centres)."""
        grid = self.counts[name]
        nonzero = grid[grid > 0]
        top = float(np.percentile(nonzero, 95)) if nonzero.size else 1.0
        r, g, b = _rgb(color)
        return {
            "type": "griddata", "interpretation": "heatmap", "group": name,
            "label": {"value": f"{name}: nuclei per {self.cell} px cell"},
            "origin": [self.cell / 2, self.cell / 2, 0], "dx": self.cell, "dy": self.cell,
            "gridWidth": self.width, "values": grid.ravel().tolist(),
            "radius": float(self.cell), "scaleWithZoom": True,
            "colorRange": [f"rgba({r}, {g}, {b}, 0)", f"rgba({r}, {g}, {b}, 0.85)"],
            "rangeValues": [0, max(1.0, top)],
            "user": {"nuclei": int(grid.sum()), "cell": self.cell},
        }


def _rgb(color) -> tuple[int, int, int]:
    """``(r, g, b)`` of an ``rgb(...)``/``rgba(...)``/``#rrggbb`` colour; grey otherwise."""
    import re

    text = color.strip() if isinstance(color, str) else ""
    m = re.fullmatch(r"rgba?\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*(,[^)]*)?\)", text)
    if m:
        return tuple(min(255, int(v)) for v in m.groups()[:3])
    m = re.fullmatch(r"#([0-9a-fA-F]{2})([0-9a-fA-F]{2})([0-9a-fA-F]{2})([0-9a-fA-F]{2})?", text)
    if m:
        return tuple(int(v, 16) for v in m.groups()[:3])
    return (128, 128, 128)


@dataclass
class StagedClass:
    """One class's staged annotation and what went into it."""

    name: str
    annotation: dict
    color: str | None = None
    count: int = 0
    details: int = 0
    buffer: list = field(default_factory=list)
    #: its ``Nuclei density`` annotation, when the result has one
    density_id: str | None = None


def _points_ok(points) -> bool:
    try:
        return len(points) >= 2 and all(
            len(p) == 3 and math.isfinite(p[0] + p[1] + p[2]) for p in points)
    except TypeError:
        return False


def _signature(element: dict) -> tuple:
    """What must match for two polylines to pass or fail large_image's schema alike."""
    user = element.get("user")
    user_sig = tuple(sorted((k, type(v).__name__) for k, v in user.items())) \
        if isinstance(user, dict) else type(user).__name__
    return (tuple(sorted(element)), element.get("type"), element.get("closed"),
            element.get("group"), element.get("lineColor"), element.get("lineWidth"),
            element.get("label") if isinstance(element.get("label"), str) else None, user_sig)


class ElementValidator:
    """large_image's element schema, validated once per distinct polyline signature.

    large_image validates every element unless consecutive ones look alike, and an integer
    ``user.id`` (our nucleus id) defeats its look-alike test: 12 ms per nucleus. Here each
    distinct polyline signature (keys, type, closed, group, colours, width, ``user`` keys and
    types) is validated once with large_image's own element schema, and every element's
    points are checked to be finite ``[x, y, z]`` triples (what the schema asks of them);
    elements of other types are validated one by one.
    """

    def __init__(self, model, why) -> None:
        self.model = model
        self.why = why
        self.seen: set = set()
        self.ids: set = set()

    def check(self, index: int, element) -> None:
        """Raise ``ValidationException`` naming element ``index`` when it is not valid."""
        if not isinstance(element, dict):
            raise ValidationException(f"element {index} is not an object")
        if any(key.startswith("_") for key in element):
            raise ValidationException(f"element {index} has a key starting with '_'")
        if "id" in element:
            if element["id"] in self.ids:
                raise ValidationException(f"element {index}: duplicate id {element['id']}")
            self.ids.add(element["id"])
        polyline = element.get("type") == "polyline" and "id" not in element
        if polyline and not _points_ok(element.get("points")):
            raise ValidationException(f"element {index}: points must be two or more "
                                      "finite [x, y, z] triples")
        signature = _signature(element) if polyline else None
        if signature is None or signature not in self.seen:
            try:
                self.model.validatorAnnotationElement.validate(element)
            except jsonschema.ValidationError as e:
                raise ValidationException(f"element {index}: {self.why(e)}") from e
            if signature is not None:
                self.seen.add(signature)


def parse(handle, on_element) -> dict:
    """Stream one annotation document: ``on_element(index, element)`` for each element;
    returns the other top-level keys.

    Raises
    ------
    ValidationException
        When the file is not JSON or not one annotation document (an object with an
        ``elements`` list).
    """
    import ijson

    not_one = ("annotation file must hold ONE annotation document (an object with an "
               "'elements' list)")
    header: dict = {}
    state = "start"        # start | key | value | elements
    key = None
    builder = None
    depth = 0
    index = 0
    seen_elements = False
    try:
        for _prefix, event, value in ijson.parse(handle, use_float=True):
            if state == "start":
                if event != "start_map":
                    raise ValidationException(not_one)
                state = "key"
            elif state == "key":
                if event == "map_key":
                    key = value
                elif event == "end_map":
                    break
                elif key == "elements":
                    if event != "start_array":
                        raise ValidationException("annotation 'elements' must be a list")
                    seen_elements, state = True, "elements"
                elif event in _SCALAR_EVENTS:
                    header[key] = value
                else:
                    builder, depth, state = ijson.ObjectBuilder(), 1, "value"
                    builder.event(event, value)
            elif state == "value":
                builder.event(event, value)
                depth += _DEPTH.get(event, 0)
                if depth == 0:
                    header[key], state = builder.value, "key"
            else:  # elements
                if depth == 0:
                    if event == "end_array":
                        state = "key"
                    elif event in _SCALAR_EVENTS:
                        on_element(index, value)
                        index += 1
                    else:
                        builder, depth = ijson.ObjectBuilder(), 1
                        builder.event(event, value)
                    continue
                builder.event(event, value)
                depth += _DEPTH.get(event, 0)
                if depth == 0:
                    on_element(index, builder.value)
                    index += 1
    except ijson.JSONError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValidationException(f"annotation file is not JSON: {first}") from e
    if not seen_elements:
        raise ValidationException(not_one)
    return header


_SCALAR_EVENTS = ("null", "boolean", "integer", "double", "number", "string")
_DEPTH = {"start_map": 1, "start_array": 1, "end_map": -1, "end_array": -1}


class Stager:
    """Route validated elements to one staged annotation per class; write them in chunks."""

    def __init__(self, stage, base_name: str = "Nuclei", density: Density | None = None
                 ) -> None:
        from girder_large_image_annotation.models.annotationelement import Annotationelement

        self._stage = stage            # document -> staged annotation (ingest._stage)
        self.density = density
        self._elements = Annotationelement()
        self._lock = threading.Lock()
        self._now = datetime.datetime.now(datetime.timezone.utc)
        self.classes: dict[str, StagedClass] = {}
        self.base_name = base_name

    def add(self, element: dict) -> None:
        group = element.get("group")
        name = group if isinstance(group, str) and group else "unclassified"
        staged = self.classes.get(name)
        if staged is None:
            annotation = self._stage({"name": f"{self.base_name}: {name}", "elements": []})
            staged = self.classes[name] = StagedClass(name, annotation,
                                                      color=element.get("lineColor"))
        staged.buffer.append(element)
        if self.density is not None and element.get("type") == "polyline":
            self.density.add(name, element["points"])
        if len(staged.buffer) >= CHUNK:
            self._flush(staged)

    def _flush(self, staged: StagedClass) -> None:
        if not staged.buffer:
            return
        count, details = self._elements.updateElementChunk(
            staged.buffer, 0, len(staged.buffer), staged.annotation, self._now, self._lock)
        staged.count += count
        staged.details += details
        staged.buffer = []

    def finish(self) -> list[StagedClass]:
        """Write what is buffered; the staged classes in first-seen order."""
        for staged in self.classes.values():
            self._flush(staged)
        return list(self.classes.values())


def stage_file(file: dict, validator: ElementValidator, stager: Stager, limit_bytes: int
               ) -> dict:
    """Parse, validate and stage an uploaded annotation file; returns its top-level keys.

    Raises
    ------
    ValidationException
        When the file is too large, not JSON, not one document, or an element is invalid.
    """
    if file["size"] > limit_bytes:
        raise ValidationException(f"annotation file is {file['size']} bytes, more than this "
                                  f"server reads ({limit_bytes}, large_image's "
                                  "max_annotation_input_file_length)")

    def on_element(index: int, element) -> None:
        validator.check(index, element)
        stager.add(element)

    with File().open(file) as handle:
        return parse(handle, on_element)
