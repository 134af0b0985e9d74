"""The model contract: every way a config can break it gives a named, readable ModelError."""
from __future__ import annotations

import copy
import shutil

import pytest

from slicer_cli.nuclei.backends import open_backend
from slicer_cli.nuclei.errors import BackendError, ModelError
from slicer_cli.nuclei.model import (
    DEFAULT_MODEL_DIR,
    info_from_config,
    load_model_info,
    onnx_path,
    read_config,
    repository_model_dir,
    repository_models,
)


def _param(v):
    return {"string_value": v}


GOOD = {
    "name": "m",
    "max_batch_size": 8,
    "input": [{"name": "IMAGE", "data_type": "TYPE_UINT8", "dims": ["-1", "-1", "3"]}],
    "output": [{"name": "FOREGROUND", "data_type": "TYPE_FP32", "dims": ["-1", "-1"]},
               {"name": "DISTANCE", "data_type": "TYPE_FP32", "dims": ["-1", "-1"]},
               {"name": "CLASS_PROB", "data_type": "TYPE_FP32", "dims": ["-1", "-1", "3"]}],
    "parameters": {"classes": _param("a,b,c"),
                   "class_colors": _param("rgb(1,2,3),rgb(4,5,6),rgb(7,8,9)"),
                   "mpp": _param("0.5"), "tile_size": _param("512"), "overlap": _param("64"),
                   "version": _param("1")},
}


def _broken(edit):
    cfg = copy.deepcopy(GOOD)
    edit(cfg)
    return cfg


def test_good_config():
    info = info_from_config(GOOD)
    assert info.classes == ("a", "b", "c") and info.mpp == 0.5 and info.max_batch_size == 8
    assert info.fg_peak_threshold == 0.0  # optional: no peak check in older configs
    peaked = _broken(lambda c: c["parameters"].__setitem__("fg_peak_threshold", _param("0.7")))
    assert info_from_config(peaked).thresholds == {
        "fg_threshold": 0.5, "seed_threshold": 0.5, "min_area_px": 16, "fg_peak_threshold": 0.7}


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["input"].__setitem__(0, {**c["input"][0], "name": "INPUT"}), "one input"),
    (lambda c: c["input"][0].__setitem__("data_type", "TYPE_FP32"), "TYPE_UINT8"),
    (lambda c: c["input"][0].__setitem__("dims", ["-1", "-1", "4"]), "TYPE_UINT8"),
    (lambda c: c["output"].pop(1), "missing outputs ['DISTANCE']"),
    (lambda c: c["output"][0].__setitem__("name", "FG"), "missing outputs ['FOREGROUND']"),
    (lambda c: c["output"][2].__setitem__("data_type", "TYPE_FP16"), "must be TYPE_FP32"),
    (lambda c: c["output"][2].__setitem__("dims", ["-1", "-1", "4"]), "4 channels"),
    (lambda c: c["parameters"].pop("mpp"), "parameters missing ['mpp']"),
    (lambda c: c["parameters"].__setitem__("class_colors", _param("rgb(1,2,3)")), "colours"),
    (lambda c: c["parameters"].__setitem__("mpp", _param("half")), "bad numeric"),
    (lambda c: c["parameters"].__setitem__("overlap", _param("400")), "tile_size > 2"),
    (lambda c: c["parameters"].__setitem__("fg_threshold", _param("nan")), "0 < fg_threshold"),
    (lambda c: c["parameters"].__setitem__("seed_threshold", _param("1.5")), "seed_threshold"),
    (lambda c: c["parameters"].__setitem__("fg_peak_threshold", _param("1.2")),
     "fg_peak_threshold"),
    (lambda c: c["parameters"].__setitem__("fg_peak_threshold", _param("-inf")),
     "fg_peak_threshold"),
    (lambda c: c["parameters"].__setitem__("min_area_px", _param("-3")), "min_area_px"),
])
def test_broken_configs(edit, message):
    with pytest.raises(ModelError, match=message.replace("[", r"\[").replace("]", r"\]")):
        info_from_config(_broken(edit))


def test_shipped_model_honours_contract():
    info = load_model_info()
    assert info.classes == ("connective", "inflammatory", "neoplastic")
    assert len(info.class_colors) == 3 and info.mpp == pytest.approx(0.5)
    assert onnx_path().stat().st_size <= 30 * 2**20


def test_missing_and_unparsable_config(tmp_path):
    with pytest.raises(ModelError, match="no model config"):
        read_config(tmp_path)
    (tmp_path / "config.pbtxt").write_text("input [ { name: ")
    with pytest.raises(ModelError, match="not a valid Triton model config"):
        read_config(tmp_path)
    with pytest.raises(ModelError, match="no <version>/model.onnx"):
        onnx_path(tmp_path)


def test_local_backend_rejects_corrupt_onnx(tmp_path):
    model = tmp_path / "nucleus_unet"
    shutil.copytree(DEFAULT_MODEL_DIR, model, ignore=shutil.ignore_patterns("*.onnx"))
    (model / "1").mkdir(exist_ok=True)
    (model / "1" / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ModelError, match="cannot load"):
        open_backend(None, model)


def _repository(tmp_path):
    """A model repository: two models, and folders and files that are not models."""
    for name in ("fast", "accurate"):
        shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / name)
    (tmp_path / "no_config").mkdir()
    shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / ".hidden")
    (tmp_path / "config.pbtxt").write_text("")
    return tmp_path


def test_models_are_chosen_by_name_from_the_repository(tmp_path):
    repo = _repository(tmp_path)
    assert repository_models(repo) == ["accurate", "fast"]
    assert repository_model_dir("accurate", repo) == repo / "accurate"
    assert repository_models(tmp_path / "absent") == []


@pytest.mark.security
@pytest.mark.parametrize("name", ["no_config", ".hidden", "..", "../fast", "fast/..",
                                  "fast/1", "/etc", str(DEFAULT_MODEL_DIR), "fast\\..",
                                  "Fast", "fast ", "x" * 300])
def test_a_model_name_is_never_a_path(tmp_path, name):
    repo = _repository(tmp_path)
    with pytest.raises(ModelError, match="no model named .* there are: accurate, fast$"):
        repository_model_dir(name, repo)


def test_in_process_backend_runs_the_named_shipped_model():
    with open_backend(None, "/nonexistent", model_name="nucleus_unet") as backend:
        assert backend.info.name == "nucleus_unet"
    with pytest.raises(ModelError, match="no model named nucleus_unet_other in the model "
                                         "repository; there are: .*nucleus_unet"):
        open_backend(None, model_name="nucleus_unet_other")


def test_unknown_backend_scheme():
    with pytest.raises(BackendError, match="unknown backend URL"):
        open_backend("ftp://example")


def test_local_backend_checks_batches():
    import numpy as np

    with open_backend(None) as backend:
        out = backend.infer(np.full((2, 64, 64, 3), 200, dtype=np.uint8))
        assert out["FOREGROUND"].shape == (2, 64, 64)
        assert out["CLASS_PROB"].shape == (2, 64, 64, 3)
        with pytest.raises(BackendError, match="uint8"):
            backend.infer(np.zeros((1, 64, 64, 3), dtype=np.float32))
