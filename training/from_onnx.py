"""Rebuild a shipped model's PyTorch network from its ONNX file, calibrate it, ship it again.

Model 3.0.0's training checkpoint was not kept, only its ONNX graph (BatchNorm folded into
the convolutions). Its weights load into :class:`slicer_cli.nuclei.network.UNet` of the same
architecture (each folded bias goes to the BatchNorm that follows the convolution, set to
the identity); the rebuilt network reproduces the ONNX maps to about 2e-6. Then the class
temperature is fitted on the validation block (``training/calibrate.py``), and the model is
written again: ``model.onnx`` (the same network, the temperature inside), ``model.pt`` (for
the PyTorch backend) and ``config.pbtxt`` (the same thresholds, ``uncertain_below``).

Usage (from the repository root)::

    .venv/bin/python -m training.from_onnx --version 3.1.0
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from slicer_cli.nuclei.model import DEFAULT_MODEL_DIR, load_model_info, onnx_path
from slicer_cli.nuclei.network import UNet, save_weights

from .calibrate import calibrate
from .data import VALIDATION, load_tile, region
from .export import export_onnx, write_config
from .train import UNCERTAIN_BELOW


def network_from_onnx(path: Path, **arch) -> UNet:
    """The UNet of ``arch`` with the weights of an exported ONNX graph."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    convs = [[inits.get(x) for x in node.input[1:]] for node in graph.node
             if node.op_type in ("Conv", "ConvTranspose")]
    net = UNet(**arch).eval()
    order: list = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in net.modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        net(torch.zeros(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    # the Blur buffers are convolutions too, but fixed: they hold no ONNX initializer to map
    order = [m for m in order if m.weight.requires_grad]
    if len(order) != len(convs):
        raise ValueError(f"{path}: {len(convs)} convolutions, the network has {len(order)}")
    followed = {}
    for seq in net.modules():
        if isinstance(seq, nn.Sequential):
            for a, b in zip(list(seq), list(seq)[1:]):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    followed[a] = b
    with torch.no_grad():
        for (weight, bias), module in zip(convs, order):
            if tuple(module.weight.shape) != weight.shape:
                raise ValueError(f"{path}: weight {weight.shape} for {module}")
            module.weight.copy_(torch.from_numpy(weight.copy()))
            bn = followed.get(module)
            if bn is not None:  # folded: the BatchNorm becomes the identity plus the bias
                bn.weight.fill_(1.0)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
                bn.bias.copy_(torch.from_numpy(bias.copy()))
            else:
                module.bias.copy_(torch.from_numpy(bias.copy()))
    return net


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--version", required=True)
    p.add_argument("--arch", default='{"width": 12, "n_classes": 3, "max_mult": 16, '
                                      '"stem": true}', help="UNet arguments (JSON)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    info = load_model_info(args.model_dir)
    source = onnx_path(args.model_dir)
    net = network_from_onnx(source, **json.loads(args.arch))
    tile = load_tile()
    image, labels, classes = region(tile, VALIDATION)
    result = calibrate(net, image, labels, classes, info.thresholds)
    temperature = result["temperature"]
    target = source.with_name("model.onnx")
    export_onnx(net, target, temperature)
    save_weights(net, target.with_name("model.pt"), temperature)
    write_config(args.model_dir, version=args.version, uncertain_below=UNCERTAIN_BELOW,
                 temperature=temperature, **info.thresholds)
    print(json.dumps({"version": args.version, **result}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
