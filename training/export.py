"""Export the trained network as the contract's ONNX graph and write Triton's config.pbtxt
(``python -m training.export --version V``: a model's ONNX file again from its model.pt)."""
from __future__ import annotations

from pathlib import Path

import torch

from slicer_cli.nuclei.backends.local import INT8_NAME
from slicer_cli.nuclei.network import Exported, UNet

from .data import CLASSES
from .onnx_graph import InferenceGraph, supports
from .quantize import quantize_model_dir

CLASS_COLORS = ("rgb(0,160,0)", "rgb(255,200,0)", "rgb(220,20,60)")
OPSET = 17


#: what the classes were learnt from, shown next to them (MODEL.md, the Nuclei panel)
CLASS_SCOPE = ("Classes learnt from one ovarian high-grade serous carcinoma H&E image: "
               "they hold there; elsewhere (other organs, skin, lymph node) treat them as "
               "unverified. Nuclei whose calibrated class probability is below "
               "{uncertain:g} are shown as uncertain.")
UNCERTAIN_COLOR = "rgb(150,150,150)"


def export_onnx(net: UNet, path: Path, temperature: float = 1.0) -> Path:
    """Write ``net`` (uint8 NHWC in, probabilities out) as ONNX opset 17, dynamic N/H/W.

    ``temperature`` (calibration) divides the class logits inside the graph. The graph is
    :class:`~training.onnx_graph.InferenceGraph` (the same maps as
    :class:`~slicer_cli.nuclei.network.Exported`, less CPU time) where it covers ``net``'s
    architecture, ``Exported`` otherwise.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # an int8 graph beside it was made from the float graph this one replaces
    path.with_name(INT8_NAME).unlink(missing_ok=True)
    net = net.eval()
    model = (InferenceGraph(net, temperature) if supports(net)
             else Exported(net, temperature)).eval()
    example = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
    tmp = path.with_suffix(".onnx.tmp")
    with torch.no_grad():
        torch.onnx.export(
            model, (example,), str(tmp), opset_version=OPSET, dynamo=False,
            input_names=["IMAGE"], output_names=["FOREGROUND", "DISTANCE", "CLASS_PROB"],
            dynamic_axes={"IMAGE": {0: "N", 1: "H", 2: "W"}, "FOREGROUND": {0: "N", 1: "H", 2: "W"},
                          "DISTANCE": {0: "N", 1: "H", 2: "W"},
                          "CLASS_PROB": {0: "N", 1: "H", 2: "W"}},
            do_constant_folding=True)
    tmp.replace(path)
    return path


def write_config(model_dir: Path, *, version: str, fg_threshold: float, seed_threshold: float,
                 min_area_px: int, fg_peak_threshold: float = 0.0, max_batch_size: int = 16,
                 uncertain_below: float = 0.0,
                 temperature: float = 1.0) -> Path:
    """Write ``<model_dir>/config.pbtxt`` (Triton layout; metadata in ``parameters``).

    The serving part is for a GPU (the reasoning is in docs/GPU.md, "Serving on a GPU"): ONNX
    Runtime with the TensorRT execution accelerator in FP16 (engines cached), two instances
    per GPU so that one copies while the other computes, preferred batches of 4 and 8 tiles.
    The CPU development server (``scripts/serve_triton.py``) drops the accelerator.

    ``uncertain_below``: nuclei whose class probability is below it are shown as
    ``uncertain`` (0 never); ``temperature``: the calibration baked into the graph (recorded).
    """
    params = {
        "classes": ",".join(CLASSES),
        "class_colors": ",".join(CLASS_COLORS),
        "mpp": "0.5",
        "tile_size": "1024",
        "overlap": "128",
        "size_multiple": "32",
        "version": version,
        "fg_threshold": f"{fg_threshold:g}",
        "seed_threshold": f"{seed_threshold:g}",
        "min_area_px": str(int(min_area_px)),
        "fg_peak_threshold": f"{fg_peak_threshold:g}",
        "uncertain_below": f"{uncertain_below:g}",
        "uncertain_color": UNCERTAIN_COLOR,
        "class_temperature": f"{temperature:.4g}",
        "class_scope": CLASS_SCOPE.format(uncertain=uncertain_below),
        "output_semantics": ("FOREGROUND nucleus probability; DISTANCE per-nucleus normalised "
                             "distance to the border (0 border, 1 centre); CLASS_PROB softmax "
                             "over classes"),
    }
    body = "\n".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items())
    text = f"""name: "{model_dir.name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{ name: "IMAGE" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] }}
]
output [
  {{ name: "FOREGROUND" data_type: TYPE_FP32 dims: [ -1, -1 ] }},
  {{ name: "DISTANCE" data_type: TYPE_FP32 dims: [ -1, -1 ] }},
  {{ name: "CLASS_PROB" data_type: TYPE_FP32 dims: [ -1, -1, {len(CLASSES)} ] }}
]
dynamic_batching {{
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 2000
  default_queue_policy {{ max_queue_size: 64 }}
}}
instance_group [ {{ count: 2 kind: KIND_GPU }} ]
optimization {{
  execution_accelerators {{
    gpu_execution_accelerator: [ {{
      name: "tensorrt"
      parameters {{ key: "precision_mode" value: "FP16" }}
      parameters {{ key: "max_workspace_size_bytes" value: "4294967296" }}
      parameters {{ key: "trt_engine_cache_enable" value: "1" }}
      parameters {{ key: "trt_engine_cache_path" value: "/tmp/{model_dir.name}_trt" }}
    }} ]
  }}
}}
{body}
"""
    path = model_dir / "config.pbtxt"
    path.write_text(text)
    return path


def reexport(model_dir: Path, version: str) -> Path:
    """Write ``model_dir``'s ``model.onnx`` again from its ``model.pt`` (the same weights and
    temperature, today's graph: :func:`export_onnx`) and its ``config.pbtxt`` with
    ``version`` (every other setting as it was). Returns the ONNX file."""
    from slicer_cli.nuclei.model import load_model_info, version_file
    from slicer_cli.nuclei.network import load_exported

    info = load_model_info(model_dir)
    weights = version_file(model_dir, "model.pt")
    temperature = float(torch.load(str(weights), weights_only=True).get("temperature", 1.0))
    path = export_onnx(load_exported(weights).net, weights.with_name("model.onnx"), temperature)
    quantize_model_dir(model_dir)  # the CPU's int8 graph of the new float one
    write_config(model_dir, version=version, max_batch_size=info.max_batch_size,
                 uncertain_below=info.uncertain_below, temperature=temperature,
                 **info.thresholds)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m training.export --model-dir DIR --version V``: :func:`reexport`."""
    import argparse

    from slicer_cli.nuclei.model import DEFAULT_MODEL_DIR

    p = argparse.ArgumentParser(description="Export a model's ONNX graph again from its "
                                            "model.pt (same weights), with a new version")
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--version", required=True)
    args = p.parse_args(argv)
    print(reexport(args.model_dir, args.version))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
