"""The CPU graph in int8: ``<version>/model.int8.onnx`` next to the float ``model.onnx``.

ONNX Runtime's static quantization (``onnxruntime.quantization``) of the exported float graph,
for the in-process CPU backend only (the CLI's default ``--precision auto`` runs it on the
CPU; ``float`` does not; Triton, the GPU and the PyTorch backend run the float graph):

* **Which convolutions**: those with more than :data:`FLOAT_CHANNELS` output channels, i.e.
  U-Net levels 2-4 (an eighth of the resolution and below, 48-192 channels). Levels 0 and 1
  (half and a quarter of the resolution, 12 and 24 channels padded to 16 and 32), the
  input's low-pass, the stem and the head stay float. Chosen by rules written before their
  scores (models/nucleus_unet/EXPERIMENTS.md, "int8 on the CPU"): levels 1-4 in int8 cost the
  twin's CMU selection region A 0.012 of worst agreement; levels 2-4 cost nothing there
  and still take the anchored call under 3.0.0's time.
* **How**: QOperator format (``QLinearConv``), weights int8 per output channel in 7 bits
  (``reduce_range``: AVX2's ``VPMADDUBSW`` cannot saturate, so CPUs with and without
  AVX-512 VNNI compute the same integers), activations uint8 with ranges from MinMax
  calibration.
* **Calibration**: :data:`CALIBRATION_CROPS` fixed 256 x 256 crops of hgsc_nest's top-left
  quadrant (rows and columns 0-749: apart from the held-out quadrant and the validation
  block, so the twin and the shipped model are calibrated alike), in a fixed order:
  the same file from the same float graph every time.

``python -m training.quantize MODEL_DIR`` writes it for a model directory (the export does it
as part of ``python -m training.export`` and ``python -m training.train``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from slicer_cli.nuclei.backends.local import INT8_NAME

#: convolutions with at most this many output channels stay float (levels 0-1, stem, head)
FLOAT_CHANNELS = 32
#: calibration crops: side, and their corners (row, column) in hgsc_nest's top-left quadrant
CROP = 256
CALIBRATION_CROPS = tuple((r, c) for r in (0, 247, 494) for c in (0, 247, 494))


def calibration_images(image: np.ndarray) -> list[np.ndarray]:
    """The calibration batches (``[1, 256, 256, 3]`` uint8) cut from hgsc_nest's pixels."""
    return [np.ascontiguousarray(image[r:r + CROP, c:c + CROP])[None]
            for r, c in CALIBRATION_CROPS]


def quantized_nodes(model) -> list[str]:
    """Names of the ``Conv`` nodes of a float ONNX ``model`` that run in int8: more than
    :data:`FLOAT_CHANNELS` output channels."""
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "Conv" and weights.get(n.input[1], (0,))[0] > FLOAT_CHANNELS]


def quantize(float_path: Path, images: list[np.ndarray], out_path: Path | None = None) -> Path:
    """Write the int8 CPU graph of the float graph ``float_path`` (default: ``model.int8.onnx``
    beside it), calibrated on ``images``; written under a temporary name, then renamed."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    out_path = out_path or float_path.with_name(INT8_NAME)
    model = onnx.load(str(float_path))
    chosen = set(quantized_nodes(model))
    if not chosen:
        raise ValueError(f"{float_path}: no convolution with more than {FLOAT_CHANNELS} "
                         "output channels to quantize")
    exclude = [n.name for n in model.graph.node if n.op_type == "Conv" and n.name not in chosen]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(images)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"IMAGE": batch}

    tmp = out_path.with_suffix(".onnx.tmp")
    try:
        # (the calibrator writes its augmented graph to a temporary directory of its own)
        quantize_static(str(float_path), str(tmp), Reader(), quant_format=QuantFormat.QOperator,
                        op_types_to_quantize=["Conv"], nodes_to_exclude=exclude,
                        per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        calibration_providers=["CPUExecutionProvider"])
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def quantize_model_dir(model_dir: Path) -> Path:
    """:func:`quantize` of a model directory's newest ``model.onnx``, on hgsc_nest's crops."""
    from slicer_cli.nuclei.model import onnx_path

    from .data import load_tile

    return quantize(onnx_path(model_dir), calibration_images(load_tile().image))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dir", type=Path)
    args = p.parse_args(argv)
    print(quantize_model_dir(args.model_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
