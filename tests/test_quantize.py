"""The int8 CPU graph: which convolutions it quantizes, that it is made the same way every
time, that it finds the float graph's nuclei on real tissue, and that the in-process backend
runs it on the CPU by default (``--precision auto``; ``training/quantize.py``,
``LocalBackend``)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from slicer_cli.nuclei.backends.local import INT8_NAME, LocalBackend
from slicer_cli.nuclei.errors import ModelError, OptionsError
from slicer_cli.nuclei.instances import extract_instances
from slicer_cli.nuclei.metrics import agreement_pq
from slicer_cli.nuclei.model import DEFAULT_MODEL_DIR, onnx_path
from slicer_cli.nuclei.options import AnalysisOptions
from slicer_cli.nuclei.pipeline import run_analysis
from training.data import HELD_OUT, RESERVED, load_tile
from training.quantize import (
    CALIBRATION_CROPS,
    CROP,
    FLOAT_CHANNELS,
    calibration_images,
    quantize,
    quantized_nodes,
)
from training.robustness import SELECTION_REGIONS, cmu_region

SHIPPED_INT8 = onnx_path(DEFAULT_MODEL_DIR).with_name(INT8_NAME)


def _weights(model) -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(t.dims) for t in model.graph.initializer}


def _float_copy(tmp_path: Path, with_int8: bool) -> Path:
    """A model directory with the shipped config and float graph (and its int8 graph)."""
    model_dir = tmp_path / ("with_int8" if with_int8 else "float_only") / "nucleus_unet"
    (model_dir / "1").mkdir(parents=True)
    shutil.copy(DEFAULT_MODEL_DIR / "config.pbtxt", model_dir)
    shutil.copy(onnx_path(DEFAULT_MODEL_DIR), model_dir / "1" / "model.onnx")
    if with_int8:
        shutil.copy(SHIPPED_INT8, model_dir / "1" / INT8_NAME)
    return model_dir


def _assert_same_quantization(a, b) -> None:
    from onnx import numpy_helper

    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    tb = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    for t in a.graph.initializer:
        x, y = numpy_helper.to_array(t), tb[t.name]
        assert x.shape == y.shape and x.dtype == y.dtype, t.name
        if np.issubdtype(x.dtype, np.floating):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7, err_msg=t.name)
        else:
            assert np.abs(x.astype(np.int64) - y.astype(np.int64)).max(initial=0) <= 1, t.name


def test_calibration_crops_stay_off_the_reserved_boxes():
    """The twin and the shipped model are calibrated on the same pixels, none of them from
    the held-out quadrant or the validation block."""
    for r, c in CALIBRATION_CROPS:
        for r0, r1, c0, c1 in RESERVED:
            assert r + CROP <= r0 or r >= r1 or c + CROP <= c0 or c >= c1, (r, c)
    images = calibration_images(load_tile().image)
    assert len(images) == len(CALIBRATION_CROPS)
    assert all(im.shape == (1, CROP, CROP, 3) and im.dtype == np.uint8 for im in images)


def test_levels_2_to_4_in_int8_the_rest_float(tmp_path):
    """Quantized: every convolution with more than 32 output channels (levels 2-4), nothing
    else; the shipped file is what the code makes from the shipped float graph."""
    float_model = onnx.load(str(onnx_path(DEFAULT_MODEL_DIR)))
    weights = _weights(float_model)
    chosen = quantized_nodes(float_model)
    convs = [n for n in float_model.graph.node if n.op_type == "Conv"]
    assert 0 < len(chosen) < len(convs)
    for node in convs:
        out_channels = weights[node.input[1]][0]
        assert (node.name in chosen) == (out_channels > FLOAT_CHANNELS), node.name
    assert not any(part in name for name in chosen for part in ("low_pass", "stem", "head"))

    made = quantize(onnx_path(DEFAULT_MODEL_DIR), calibration_images(load_tile().image),
                    tmp_path / "a.onnx")
    again = quantize(onnx_path(DEFAULT_MODEL_DIR), calibration_images(load_tile().image),
                     tmp_path / "b.onnx")
    assert made.read_bytes() == again.read_bytes()
    # the shipped file, made on another CPU: its calibration ranges are float sums whose
    # last bits depend on the CPU's vector width, so scales agree to rounding and an integer
    # zero point or weight may differ by one step
    _assert_same_quantization(onnx.load(str(made)), onnx.load(str(SHIPPED_INT8)))
    int8 = onnx.load(str(made))
    ops = [n.op_type for n in int8.graph.node]
    assert ops.count("QLinearConv") == len(chosen)
    assert ops.count("Conv") == len(convs) - len(chosen)
    float_weights = _weights(int8)
    assert all(float_weights[n.input[1]][0] <= FLOAT_CHANNELS
               for n in int8.graph.node if n.op_type == "Conv")


@pytest.mark.parametrize("where", ["hgsc_held_out", "cmu_region_a"])
def test_int8_graph_finds_the_float_graphs_nuclei(where):
    """On real tissue the int8 graph's nuclei are the float graph's: agreement PQ 0.990 and
    0.986 measured (the held-out quadrant of hgsc_nest, CMU selection region A; 0.986 on
    region B), nucleus counts within 0.5 %; 0.96 and 5 % asked."""
    if where == "hgsc_held_out":
        r0, _, c0, _ = HELD_OUT
        image = np.ascontiguousarray(load_tile().image[r0:r0 + 736, c0:c0 + 736])
    else:
        image = np.ascontiguousarray(cmu_region(SELECTION_REGIONS[0])[:992, :1024])
    labels = {}
    for precision in ("float", "int8"):
        with LocalBackend(DEFAULT_MODEL_DIR, threads=2, precision=precision) as backend:
            assert backend.precision == precision
            maps = {k: v[0] for k, v in backend.infer(image[None]).items()}
            labels[precision] = extract_instances(maps["FOREGROUND"], maps["DISTANCE"],
                                                  maps["CLASS_PROB"],
                                                  **backend.info.thresholds).labels
    stats = agreement_pq(labels["float"], labels["int8"])
    assert stats["pq"] >= 0.96, stats
    assert 0.95 <= labels["int8"].max() / labels["float"].max() <= 1.05


def test_backend_runs_int8_on_the_cpu_unless_told(tmp_path):
    """``auto`` (the default): the int8 graph where the model ships one, the float graph
    where it does not; ``float`` and ``int8`` as asked."""
    with_int8, float_only = _float_copy(tmp_path, True), _float_copy(tmp_path, False)
    with LocalBackend(with_int8, threads=1) as backend:
        assert backend.precision == "int8"
    with LocalBackend(with_int8, threads=1, precision="float") as backend:
        assert backend.precision == "float"
    with LocalBackend(float_only, threads=1) as backend:
        assert backend.precision == "float"
    with LocalBackend(with_int8, threads=1, precision="int8") as backend:
        assert backend.precision == "int8"
    with pytest.raises(ModelError, match="no int8 graph"):
        LocalBackend(float_only, threads=1, precision="int8")
    with pytest.raises(ValueError, match="precision"):
        LocalBackend(with_int8, threads=1, precision="fp16")
    for bad in ("fp16", "INT8", "", None):
        with pytest.raises(OptionsError, match="--precision"):
            AnalysisOptions(precision=bad)


def test_the_annotation_names_the_graph_it_ran(cmu_svs, tmp_path):
    """A run records which graph made its nuclei (``params.precision``)."""
    region = (1424, 1943, 512, 512)
    for precision, ran in (("auto", "int8"), ("float", "float"), ("int8", "int8")):
        ann = tmp_path / f"{precision}.anot"
        run_analysis(str(cmu_svs), str(ann), str(tmp_path / f"{precision}.csv"),
                     AnalysisOptions(region=region, precision=precision, parquet=False))
        assert json.loads(ann.read_text())["attributes"]["params"]["precision"] == ran
