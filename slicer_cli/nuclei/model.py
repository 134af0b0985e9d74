"""The model contract: one source of truth, the Triton model repository in ``models/``.

A model honours the contract when its ``config.pbtxt`` declares

* input ``IMAGE``: ``TYPE_UINT8``, dims ``[-1, -1, 3]`` (``[N, H, W, 3]`` RGB with batching);
  any normalisation happens inside the graph;
* output ``FOREGROUND``: ``TYPE_FP32`` ``[N, H, W]``, nucleus probability in [0, 1];
* output ``DISTANCE``: ``TYPE_FP32`` ``[N, H, W]``, distance to the nucleus border normalised
  per nucleus (0 on the border and background, 1 at the nucleus centre); it separates
  touching nuclei;
* output ``CLASS_PROB``: ``TYPE_FP32`` ``[N, H, W, C]``, per-pixel class probabilities
  (softmax over the C classes, meaningful where ``FOREGROUND`` is high);
* ``parameters``: ``classes`` (comma-separated names, C of them), ``class_colors``
  (comma-separated ``rgb(r,g,b)``), ``mpp`` (um/px the network expects), ``tile_size`` and
  ``overlap`` (pixels at ``mpp``), ``size_multiple`` (H and W must be multiples of it),
  ``version``, and post-processing thresholds ``fg_threshold``, ``seed_threshold``,
  ``min_area_px``; optionally ``fg_peak_threshold`` (a nucleus must reach it somewhere;
  :func:`~slicer_cli.nuclei.instances.extract_instances`), ``uncertain_below`` (nuclei
  whose class probability is lower are shown as the group ``uncertain``, in
  ``uncertain_color``) and ``class_scope`` (where the classes hold, shown next to them).

The same :class:`ModelInfo` is built from a local ``config.pbtxt`` (in-process ONNX Runtime)
or from the config a Triton server returns, so both backends read the same facts.
"""
from __future__ import annotations

import importlib.resources
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError

INPUT_NAME = "IMAGE"
#: the group of nuclei whose class probability is below the model's ``uncertain_below``
UNCERTAIN = "uncertain"
OUTPUT_NAMES = ("FOREGROUND", "DISTANCE", "CLASS_PROB")
#: the post-processing settings of a model (``ModelInfo`` fields, ``config.pbtxt``
#: parameters and the keywords of ``extract_instances``)
THRESHOLDS = ("fg_threshold", "seed_threshold", "min_area_px", "fg_peak_threshold")
#: the shipped model: package data of ``slicer_cli`` (``slicer_cli/models`` links to the
#: repository's Triton model repository ``models/``; a wheel holds a copy)
MODEL_REPOSITORY = Path(os.fspath(importlib.resources.files("slicer_cli") / "models"))
DEFAULT_MODEL_DIR = MODEL_REPOSITORY / "nucleus_unet"

_REQUIRED_PARAMS = ("classes", "class_colors", "mpp", "tile_size", "overlap", "version")
_RGB = re.compile(r"rgb\(\s*\d{1,3}\s*,\s*\d{1,3}\s*,\s*\d{1,3}\s*\)")


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a model that every stage reads (from ``config.pbtxt`` parameters)."""

    name: str
    version: str
    classes: tuple[str, ...]
    class_colors: tuple[str, ...]
    mpp: float
    tile_size: int
    overlap: int
    size_multiple: int = 32
    max_batch_size: int = 8
    fg_threshold: float = 0.5
    seed_threshold: float = 0.5
    min_area_px: int = 16
    fg_peak_threshold: float = 0.0
    uncertain_below: float = 0.0
    uncertain_color: str = "rgb(150,150,150)"
    class_scope: str = ""

    @property
    def thresholds(self) -> dict:
        """The post-processing keywords of
        :func:`~slicer_cli.nuclei.instances.extract_instances`."""
        return {name: getattr(self, name) for name in THRESHOLDS}

    def group_of(self, class_index: int, probability: float) -> str:
        """The group a nucleus is shown in: its class, or ``uncertain``."""
        if probability < self.uncertain_below:
            return UNCERTAIN
        return self.classes[class_index]

    def color_of(self, class_index: int, probability: float) -> str:
        """The colour of that group."""
        if probability < self.uncertain_below:
            return self.uncertain_color
        return self.class_colors[class_index]


def info_from_config(config: dict) -> ModelInfo:
    """Validate a model config (Triton's JSON form) against the contract.

    Parameters
    ----------
    config : dict
        The model configuration as Triton's ``get_model_config`` returns it in JSON
        (``input``, ``output``, ``parameters`` with ``string_value`` entries, ...).

    Returns
    -------
    ModelInfo

    Raises
    ------
    ModelError
        When an input, output, dtype, shape or parameter does not honour the contract.
    """
    name = config.get("name", "?")
    inputs = {i["name"]: i for i in config.get("input", [])}
    outputs = {o["name"]: o for o in config.get("output", [])}
    if set(inputs) != {INPUT_NAME}:
        raise ModelError(f"model {name!r}: expected one input {INPUT_NAME!r}, got {sorted(inputs)}")
    image = inputs[INPUT_NAME]
    channels = [int(d) for d in image.get("dims", [])][-1:]
    if image.get("data_type") != "TYPE_UINT8" or channels != [3]:
        raise ModelError(f"model {name!r}: input {INPUT_NAME} must be TYPE_UINT8 [N, H, W, 3]")
    missing = [o for o in OUTPUT_NAMES if o not in outputs]
    if missing:
        raise ModelError(f"model {name!r}: missing outputs {missing} (has {sorted(outputs)})")
    for out in OUTPUT_NAMES:
        if outputs[out].get("data_type") != "TYPE_FP32":
            raise ModelError(f"model {name!r}: output {out} must be TYPE_FP32")
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    absent = [p for p in _REQUIRED_PARAMS if not params.get(p)]
    if absent:
        raise ModelError(f"model {name!r}: config parameters missing {absent}")
    classes = tuple(c.strip() for c in params["classes"].split(",") if c.strip())
    colors = tuple(_RGB.findall(params["class_colors"]))
    if not classes or len(colors) != len(classes):
        raise ModelError(f"model {name!r}: {len(classes)} classes but {len(colors)} colours")
    n_class = [int(d) for d in outputs["CLASS_PROB"].get("dims", [])][-1:]
    if n_class and n_class[0] not in (-1, len(classes)):
        raise ModelError(
            f"model {name!r}: CLASS_PROB has {n_class[0]} channels for {len(classes)} classes")
    try:
        info = ModelInfo(
            name=name,
            version=params["version"],
            classes=classes,
            class_colors=colors,
            mpp=float(params["mpp"]),
            tile_size=int(params["tile_size"]),
            overlap=int(params["overlap"]),
            size_multiple=int(params.get("size_multiple") or 32),
            max_batch_size=int(config.get("max_batch_size") or 8),
            fg_threshold=float(params.get("fg_threshold") or 0.5),
            seed_threshold=float(params.get("seed_threshold") or 0.5),
            min_area_px=int(params.get("min_area_px") or 16),
            fg_peak_threshold=float(params.get("fg_peak_threshold") or 0.0),
            uncertain_below=float(params.get("uncertain_below") or 0.0),
            uncertain_color=(_RGB.findall(params.get("uncertain_color") or "") or
                             ["rgb(150,150,150)"])[0],
            class_scope=params.get("class_scope", ""),
        )
    except ValueError as e:
        raise ModelError(f"model {name!r}: bad numeric parameter: {e}") from e
    if info.mpp <= 0 or info.tile_size <= 2 * info.overlap or info.overlap < 0:
        raise ModelError(f"model {name!r}: need mpp > 0 and tile_size > 2 * overlap >= 0")
    if not (0.0 < info.fg_threshold < 1.0 and 0.0 < info.seed_threshold < 1.0
            and 0.0 <= info.fg_peak_threshold <= 1.0 and info.min_area_px >= 0):
        raise ModelError(f"model {name!r}: need 0 < fg_threshold, seed_threshold < 1, "
                         f"0 <= fg_peak_threshold <= 1 and min_area_px >= 0")
    if not 0.0 <= info.uncertain_below <= 1.0:
        raise ModelError(f"model {name!r}: uncertain_below must be within [0, 1]")
    if UNCERTAIN in info.classes:
        raise ModelError(f"model {name!r}: {UNCERTAIN!r} is reserved, not a class name")
    return info


def read_config(model_dir: str | Path) -> dict:
    """Parse ``<model_dir>/config.pbtxt`` with Triton's own protobuf schema into JSON form."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    path = Path(model_dir) / "config.pbtxt"
    if not path.is_file():
        raise ModelError(f"no model config at {path}")
    try:
        msg = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ModelError(f"{path}: not a valid Triton model config: {e}") from e
    config = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    config.setdefault("name", Path(model_dir).name)
    return config


def load_model_info(model_dir: str | Path = DEFAULT_MODEL_DIR) -> ModelInfo:
    """Read and validate the model contract of a local Triton model directory."""
    return info_from_config(read_config(model_dir))


def version_file(model_dir: str | Path, name: str) -> Path:
    """Path of ``<newest version holding it>/<name>`` in a Triton model directory.

    Raises
    ------
    ModelError
        When no version holds ``name``.
    """
    versions = sorted((p for p in Path(model_dir).iterdir() if p.name.isdigit()),
                      key=lambda p: int(p.name)) if Path(model_dir).is_dir() else []
    for version in reversed(versions):
        if (version / name).is_file():
            return version / name
    raise ModelError(f"no <version>/{name} under {model_dir}")


#: what a model's name may be: one folder name of the model repository, never a path
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def repository_models(repository: str | Path = MODEL_REPOSITORY) -> list[str]:
    """Names of the models in a Triton model repository (its folders with a config.pbtxt)."""
    root = Path(repository)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if _MODEL_NAME.fullmatch(p.name) and (p / "config.pbtxt").is_file())


def repository_model_dir(name: str, repository: str | Path = MODEL_REPOSITORY) -> Path:
    """The folder of the model called ``name`` in a model repository (the in-process twin of
    choosing a model by name on Triton).

    Raises
    ------
    ModelError
        When ``name`` is not one of :func:`repository_models` (a path, ``..``, an unknown
        name): the message lists the names there are.
    """
    names = repository_models(repository)
    if name not in names:
        shown = name if _MODEL_NAME.fullmatch(name) else "(not a model name)"
        raise ModelError(f"no model named {shown} in the model repository; there are: "
                         + (", ".join(names) or "none"))
    return Path(repository) / name


def onnx_path(model_dir: str | Path = DEFAULT_MODEL_DIR) -> Path:
    """Path of the newest version's ``model.onnx`` in a Triton model directory."""
    return version_file(model_dir, "model.onnx")
