"""The PyTorch backend runs the network the ONNX file holds, and the device option.

On the CPU (here and in CI) the PyTorch maps are compared with ONNX Runtime's on real tiles;
the ``gpu`` tests do the same on a CUDA device and run the whole pipeline there, and skip
cleanly without one.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from slicer_cli.nuclei.backends import open_backend, resolve_device
from slicer_cli.nuclei.backends.local import LocalBackend
from slicer_cli.nuclei.errors import BackendError, ModelError
from slicer_cli.nuclei.instances import extract_instances
from slicer_cli.nuclei.metrics import agreement_pq
from slicer_cli.nuclei.model import DEFAULT_MODEL_DIR

torch = pytest.importorskip("torch")

from slicer_cli.nuclei.backends.pytorch import TorchBackend, weights_path  # noqa: E402

# Both backends compute the same fp32 network; they differ in the order of the
# multiply-adds (BatchNorm folded into the convolutions in the ONNX graph, other convolution
# algorithms). A 3 x 3 x 192 convolution sums about 1700 products, each accumulating with a
# relative rounding of about 6e-8 (fp32) times sqrt(1700) ~ 2.5e-6; some twenty layers in
# depth make about 5e-5 on the logits, and the sigmoid/softmax outputs move at most a quarter
# of that. 2e-4 on the probabilities leaves a margin of ten.
ATOL = 2e-4


def _labels(maps: dict, i: int, info) -> np.ndarray:
    return extract_instances(maps["FOREGROUND"][i], maps["DISTANCE"][i], maps["CLASS_PROB"][i],
                             **info.thresholds).labels


@pytest.fixture(scope="module")
def tiles(hgsc_image) -> np.ndarray:
    image = np.asarray(Image.open(hgsc_image).convert("RGB"))
    return np.ascontiguousarray(np.stack([image[:512, :512], image[700:1212, 900:1412]]))


@pytest.fixture(scope="module")
def onnx_maps(tiles):
    with LocalBackend(threads=1, precision="float") as backend:
        return backend.infer(tiles), backend.info


def _assert_same(maps: dict, onnx_maps) -> None:
    ref, info = onnx_maps
    for name, want in ref.items():
        got = maps[name]
        got = got.get() if hasattr(got, "get") else got
        assert got.dtype == np.float32 and got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=name)
    for i in range(len(ref["FOREGROUND"])):
        got = {k: (v.get() if hasattr(v, "get") else v) for k, v in maps.items()}
        assert agreement_pq(_labels(ref, i, info), _labels(got, i, info))["pq"] >= 0.99


def test_shipped_weights_are_the_onnx_network_on_the_cpu(tiles, onnx_maps):
    assert weights_path(DEFAULT_MODEL_DIR).name == "model.pt"
    with TorchBackend(device="cpu", threads=1) as backend:
        assert backend.info == onnx_maps[1]
        maps = backend.infer(tiles)
    _assert_same(maps, onnx_maps)


def test_the_shipped_network_runs_wherever_its_weights_are():
    """Every constant of the graph follows the batch's device: run on PyTorch's ``meta``
    device (shapes, no data), where a constant left on the CPU fails exactly as it would in a
    CUDA run (the input normalisation's mean and std once did)."""
    from slicer_cli.nuclei.network import load_exported

    model = load_exported(weights_path(DEFAULT_MODEL_DIR)).to("meta")
    batch = torch.zeros((2, 64, 96, 3), dtype=torch.uint8, device="meta")
    with torch.no_grad():
        fg, dist, prob = model(batch)
    assert fg.device.type == dist.device.type == prob.device.type == "meta"
    assert fg.shape == dist.shape == (2, 64, 96) and prob.shape == (2, 64, 96, 3)


def test_bad_inputs_and_weights_are_refused(tmp_path, tiles):
    with TorchBackend(device="cpu") as backend:
        with pytest.raises(BackendError, match="uint8"):
            backend.infer(tiles.astype(np.float32))
    model = tmp_path / "nucleus_unet"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text((DEFAULT_MODEL_DIR / "config.pbtxt").read_text())
    with pytest.raises(ModelError, match="no <version>/model.pt under"):
        TorchBackend(model, device="cpu")
    torch.save({"something": "else"}, str(model / "1" / "model.pt"))
    with pytest.raises(ModelError, match="is not a nucleus_unet-weights-1 file"):
        TorchBackend(model, device="cpu")


def test_device_resolution(monkeypatch):
    import slicer_cli.nuclei.backends as backends

    monkeypatch.delenv("NUCLEUS_ANALYSIS_DEVICE", raising=False)
    monkeypatch.setattr(backends, "cuda_usable", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(BackendError, match="no CUDA device is usable"):
        resolve_device("cuda")
    with pytest.raises(BackendError, match="unknown device"):
        resolve_device("tpu")
    monkeypatch.setenv("NUCLEUS_ANALYSIS_DEVICE", "cpu")  # the deployment decides "auto"
    monkeypatch.setattr(backends, "cuda_usable", lambda: True)
    assert resolve_device("auto") == "cpu"
    monkeypatch.delenv("NUCLEUS_ANALYSIS_DEVICE")
    assert resolve_device("auto") == "cuda"
    assert isinstance(open_backend(None, device="cpu"), LocalBackend)


def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return pytest.importorskip("cupy")


@pytest.mark.gpu
def test_cuda_maps_stay_on_the_device_and_match_onnx(tiles, onnx_maps):
    cupy = _cuda()
    with TorchBackend(device="cuda") as backend:
        maps = backend.infer(tiles)
    assert all(isinstance(m, cupy.ndarray) for m in maps.values())
    _assert_same(maps, onnx_maps)


@pytest.mark.gpu
def test_cuda_maps_averaged_over_flips_and_shifts_match_onnx(tiles):
    """The test-time flips and shifts flip, pad and crop CuPy maps on the device."""
    cupy = _cuda()
    from slicer_cli.nuclei.backends.test_time import infer_averaged

    with LocalBackend(threads=1, precision="float") as backend:
        want, info = infer_averaged(backend, tiles, flips=4, shifts=4), backend.info
    with TorchBackend(device="cuda") as backend:
        maps = infer_averaged(backend, tiles, flips=4, shifts=4)
    assert all(isinstance(m, cupy.ndarray) for m in maps.values())
    _assert_same(maps, (want, info))  # a mean of 16 maps each within ATOL is within ATOL


@pytest.mark.gpu
def test_cuda_pipeline_finds_the_cpu_nuclei(tmp_path, cmu_svs):
    _cuda()
    import json

    from slicer_cli.nuclei.options import AnalysisOptions
    from slicer_cli.nuclei.pipeline import run_analysis

    from .conftest import rasterise

    docs = {}
    for device in ("cpu", "cuda"):  # the GPU runs the float graph: the CPU's, not its int8
        result = run_analysis(str(cmu_svs), str(tmp_path / f"{device}.anot"),
                              str(tmp_path / f"{device}.csv"),
                              AnalysisOptions(device=device, precision="float"))
        docs[device] = json.loads((tmp_path / f"{device}.anot").read_text())
        assert docs[device]["attributes"]["params"]["device"] == device
        assert docs[device]["attributes"]["params"]["precision"] == "float"
    assert result.nuclei > 0
    shape = (2967, 2220)
    pq = agreement_pq(rasterise(docs["cpu"], shape), rasterise(docs["cuda"], shape))["pq"]
    assert pq >= 0.98, pq
