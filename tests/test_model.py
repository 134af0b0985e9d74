"""The shipped models (every folder of models/: the CPU default nucleus_unet and the accurate
nucleus_unet_accurate) honour the contract and find real nuclei."""
from __future__ import annotations

import re

import numpy as np
import pytest

from slicer_cli.nuclei.instances import extract_instances
from slicer_cli.nuclei.model import (
    DEFAULT_MODEL_DIR,
    MODEL_REPOSITORY,
    load_model_info,
    onnx_path,
    repository_models,
)

MAX_BYTES = 30 * 1024 * 1024
SHIPPED = repository_models()


def test_the_repository_ships_a_fast_default_and_an_accurate_model():
    assert SHIPPED == ["nucleus_unet", "nucleus_unet_accurate"]
    assert MODEL_REPOSITORY / "nucleus_unet" == DEFAULT_MODEL_DIR


@pytest.fixture(scope="module", params=SHIPPED)
def shipped(request):
    """Each shipped model in-process (ONNX Runtime, 2 threads, its default precision)."""
    from slicer_cli.nuclei.backends.local import LocalBackend

    with LocalBackend(MODEL_REPOSITORY / request.param, threads=2) as b:
        yield b


@pytest.mark.parametrize("name", SHIPPED)
def test_each_model_has_its_card_naming_its_version(name):
    """Each model folder carries its MODEL.md, and the card names the version that ships."""
    info = load_model_info(MODEL_REPOSITORY / name)
    card = (MODEL_REPOSITORY / name / "MODEL.md").read_text()
    assert card.startswith(f"# {name}:")
    assert re.search(rf"Shipped: {re.escape(info.version)}\b", card), info.version


@pytest.mark.parametrize("name", SHIPPED)
def test_config_honours_the_contract(name):
    info = load_model_info(MODEL_REPOSITORY / name)
    assert info.name == name  # Triton serves a folder under the name its config gives
    assert info.classes == ("connective", "inflammatory", "neoplastic")
    assert len(info.class_colors) == 3 and len(set(info.class_colors)) == 3
    assert info.mpp == pytest.approx(0.5)
    assert info.size_multiple == 32
    assert info.tile_size % info.size_multiple == 0
    assert 0 < info.fg_threshold < 1 and 0 < info.seed_threshold < 1 and info.min_area_px >= 1
    assert info.fg_threshold < info.fg_peak_threshold <= 1  # 5.2.0: the hysteresis is on


@pytest.mark.parametrize("name", SHIPPED)
def test_onnx_file_is_small_with_dynamic_axes(name):
    import onnx

    path = onnx_path(MODEL_REPOSITORY / name)
    assert path.stat().st_size <= MAX_BYTES
    model = onnx.load(str(path))
    assert any(op.domain in ("", "ai.onnx") and op.version == 17 for op in model.opset_import)
    (image,) = model.graph.input
    assert image.name == "IMAGE"
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = image.type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][-1] == 3
    assert all(d.dim_param for d in dims[:3])  # N, H, W are symbolic


def test_runs_on_a_real_256_tile(shipped, hgsc_rgb):
    tile = np.ascontiguousarray(hgsc_rgb[None, 100:356, 200:456])
    out = shipped.infer(tile)
    assert out["FOREGROUND"].shape == (1, 256, 256)
    assert out["DISTANCE"].shape == (1, 256, 256)
    assert out["CLASS_PROB"].shape == (1, 256, 256, 3)
    for name in ("FOREGROUND", "DISTANCE", "CLASS_PROB"):
        assert out[name].dtype == np.float32
        assert np.isfinite(out[name]).all()
        assert out[name].min() >= 0 and out[name].max() <= 1
    np.testing.assert_allclose(out["CLASS_PROB"].sum(-1), 1.0, atol=1e-4)
    assert 0.02 < (out["FOREGROUND"] > 0.5).mean() < 0.6  # some nuclei, not everything


def test_batch_and_non_square_shapes(backend, hgsc_rgb):
    batch = np.stack([hgsc_rgb[:64, :96], hgsc_rgb[64:128, 96:192]])
    out = backend.infer(np.ascontiguousarray(batch))
    assert out["FOREGROUND"].shape == (2, 64, 96)
    single = backend.infer(np.ascontiguousarray(batch[1:]))
    np.testing.assert_allclose(out["FOREGROUND"][1], single["FOREGROUND"][0], atol=1e-4)


def test_cpu_batch_runs_tile_by_tile_with_the_same_maps(backend, hgsc_rgb):
    batch = np.ascontiguousarray(np.stack([hgsc_rgb[:128, :128], hgsc_rgb[200:328, 300:428],
                                           hgsc_rgb[500:628, 40:168]]))
    on_gpu = backend._session.get_providers()[0] == "CUDAExecutionProvider"
    assert backend.tiles_per_call == (0 if on_gpu else 1)
    before = backend.tiles_per_call
    try:
        backend.tiles_per_call = 1  # one tile per session call (the CPU default)
        tiled = backend.infer(batch)
        backend.tiles_per_call = 0  # the whole batch in one call (the GPU default)
        whole = backend.infer(batch)
    finally:
        backend.tiles_per_call = before
    for name, want in whole.items():
        assert tiled[name].shape == want.shape
        np.testing.assert_allclose(tiled[name], want, atol=1e-5, err_msg=name)


def test_nucleus_count_on_a_real_quadrant_is_plausible(shipped, hgsc_rgb, hgsc_labels):
    # The held-out quadrant of the twins (the shipped networks learnt every labelled pixel,
    # so this checks plausibility, not accuracy); 750 px reflect-padded to 768.
    image = hgsc_rgb[750:, 750:]
    n_true = len(np.unique(hgsc_labels[750:, 750:])) - 1
    padded = np.pad(image, ((0, 18), (0, 18), (0, 0)), mode="reflect")[None]
    out = {k: v[0, :750, :750] for k, v in shipped.infer(padded).items()}
    info = shipped.info
    inst = extract_instances(out["FOREGROUND"], out["DISTANCE"], out["CLASS_PROB"],
                             **info.thresholds)
    n_pred = int(inst.labels.max())
    assert 0.6 * n_true <= n_pred <= 1.5 * n_true, (n_pred, n_true)
    # every class of the model is used somewhere in this mixed region
    assert set(np.unique(inst.class_index).tolist()) == {0, 1, 2}
