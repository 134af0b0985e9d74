"""The network as the ONNX file runs it: the same maps as :class:`Exported`, less CPU time.

:class:`~slicer_cli.nuclei.network.Exported` (the PyTorch backend's graph) written out as it
is spends nearly half of a tile's ONNX Runtime time outside convolutions: layout
changes in and out of ONNX Runtime's blocked channel format (``NCHWc``, blocks of 16
channels with AVX-512, 8 with AVX2), padding, copies of the full-resolution input and
output. :class:`InferenceGraph` computes the same function in an order that avoids most of
that, every change exact but for float rounding:

* **Batch norms folded** into the convolutions, the class temperature into the head's class
  rows, the input's scaling (``/ 255 / STD``) into the stem's weights (everything before
  the stem is linear and treats channels alike; the mean is taken off first, so the stem's
  zero padding still pads with the normalised zero).
* **Channels padded to a multiple of 16** with zero weights and zero biases: level 0 of the
  shipped U-Net has 12 channels and level 1 24, which ONNX Runtime cannot concatenate or
  pad in its blocked format, so each skip connection and pooling went out of it and back.
  The padded channels stay exactly 0 (ReLU(0), max-pooling and blurring of 0, bilinear
  interpolation of 0), and the next layer's weights for them are 0.
* **The anti-aliased poolings' edge** (replicate one row and column, then 2 x 2 at stride
  1) becomes the max-pooling's own end padding: a padded position never wins a max, and the
  replicated one equalled its neighbour: the same values (:class:`_MaxPoolPadEnd`).
* **The input padded once**, as uint8 before the cast: the Gaussian of the chroma low-pass
  runs unpadded (``valid``) on it, and the blur's one replicated pixel comes from it too,
  instead of three float pads and a six-channel concatenation. The stem is two
  convolutions (the blurred input and its blurred Gaussian) summed.
* **The output stays small until the end**: the fg / distance logits are interpolated in
  plain NCHW (two channels, not a padded block of 16), the class logits are interpolated
  channels-last and softmaxed along their last axis, so ``CLASS_PROB`` needs no
  full-resolution transpose (:class:`_ResizeChannelsLast`).

:func:`supports` says which architectures it covers (every shipped one since 5.0.0); others
are exported as :class:`Exported`. ``tests/test_training.py`` holds the two to each other on
a real tile, and ``tests/test_backends_torch.py`` the shipped ``model.onnx`` to ``model.pt``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from slicer_cli.nuclei.network import MEAN, STD, UNet

#: channels of every tensor inside the U-Net are padded to a multiple of this (ONNX
#: Runtime's channel block: 16 with AVX-512, 8 with AVX2; 16 serves both)
CHANNEL_BLOCK = 16


class _ResizeChannelsLast(torch.autograd.Function):
    """Bilinear 2x of an NHWC tensor (``align_corners=False``), written to ONNX as one
    ``Resize`` with scales ``[1, 2, 2, 1]``: ONNX Runtime's channels-last kernel, no
    transpose of the full-resolution result."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - see the class
        return F.interpolate(x.permute(0, 3, 1, 2), scale_factor=2.0, mode="bilinear",
                             align_corners=False).permute(0, 2, 3, 1)

    @staticmethod
    def symbolic(g, x):  # noqa: D102 - the ONNX node of forward
        roi = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
        scales = g.op("Constant", value_t=torch.tensor([1.0, 2.0, 2.0, 1.0]))
        return g.op("Resize", x, roi, scales, mode_s="linear",
                    coordinate_transformation_mode_s="half_pixel")


class _MaxPoolPadEnd(torch.autograd.Function):
    """``max_pool2d(pad(x, (0, 1, 0, 1), "replicate"), 2, stride=1)`` (the anti-aliased
    pooling's max), written to ONNX as one ``MaxPool`` padded at the end: ONNX's max-pooling
    never picks a padded position, and the replicated one equalled its neighbour."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - see the class
        return F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, stride=1)

    @staticmethod
    def symbolic(g, x):  # noqa: D102 - the ONNX node of forward
        return g.op("MaxPool", x, kernel_shape_i=[2, 2], strides_i=[1, 1], pads_i=[0, 0, 1, 1])


def supports(net: UNet) -> bool:
    """Whether :class:`InferenceGraph` computes ``net`` (stem, bilinear head and decoder, no
    refinement path, no half-resolution chroma); the others export as ``Exported``."""
    return bool(net.stem is not None and net.bilinear_head and net.bilinear_up
                and net.refine_in is None and net.stem_chroma is None)


def _padded(channels: int) -> int:
    return -(-channels // CHANNEL_BLOCK) * CHANNEL_BLOCK


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """A convolution's weight and bias with the batch norm after it (eval mode) folded in."""
    weight = conv.weight.detach().double()
    bias = (conv.bias.detach().double() if conv.bias is not None
            else torch.zeros(weight.shape[0], dtype=torch.float64))
    if bn is not None:
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        weight = weight * scale[:, None, None, None]
        bias = (bias - bn.running_mean.double()) * scale + bn.bias.double()
    return weight, bias


def _placed(weight: torch.Tensor, bias: torch.Tensor, inputs: list[int], n_in: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` and ``bias`` in a layer of padded size: output channels ``0..n-1`` of
    ``_padded(n)``, input channel ``j`` at position ``inputs[j]`` of ``n_in``; zeros elsewhere."""
    n = weight.shape[0]
    out = torch.zeros((_padded(n), n_in) + tuple(weight.shape[2:]), dtype=torch.float64)
    out[:n, torch.tensor(inputs)] = weight
    b = torch.zeros(_padded(n), dtype=torch.float64)
    b[:n] = bias
    return out.float(), b.float()


class _LowPass(nn.Module):
    """The full-resolution input work: uint8 NHWC to the centred float image, edge-padded
    once, and the low-passes the stem convolves: the input blurred, and the chroma
    Gaussian of the input blurred (``UNet._chroma_stem``'s ``B * x`` and ``B * G * x``)."""

    def __init__(self, net: UNet):
        super().__init__()
        self.blur_pad = net.blur.pad if net.blur is not None else 0
        self.radius = net.chroma.radius if net.chroma is not None else 0
        self.edge = max(self.radius, self.blur_pad)  # pixels of edge the input gets, once
        self.has_blur, self.has_chroma = net.blur is not None, net.chroma is not None
        # the fixed filters as plain constants, one per channel
        if self.has_blur:
            self.register_buffer("blur", net.blur.kernel[:1].expand(3, -1, -1, -1).clone())
        if self.has_chroma:
            self.register_buffer("rows", net.chroma.rows[:1].expand(3, -1, -1, -1).clone())
            self.register_buffer("cols", net.chroma.cols[:1].expand(3, -1, -1, -1).clone())
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        e, p = self.edge, self.blur_pad
        x = image.permute(0, 3, 1, 2)
        if e:
            x = F.pad(x, (e, e, e, e), mode="replicate")  # uint8: a quarter of the bytes
        x = x.float() - self.mean
        # the input edge-padded by the blur's reach (the plain order's replicate pad)
        out = [x[:, :, e - p:x.shape[2] - e + p, e - p:x.shape[3] - e + p] if e > p else x]
        if self.has_chroma:
            # the Gaussian unpadded on the edge-padded input: the plain order's values on
            # the image's own pixels; the blur then replicates the Gaussian's edge, as there
            g = F.conv2d(F.conv2d(x, self.rows, groups=3), self.cols, groups=3)
            d = e - self.radius
            g = g[:, :, d:g.shape[2] - d, d:g.shape[3] - d] if d else g
            out.append(F.pad(g, (p, p, p, p), mode="replicate") if p else g)
        if self.has_blur:
            out = [F.conv2d(t, self.blur, groups=3) for t in out]
        return out


class _Stem(nn.Module):
    """The stride-2 stem over what :class:`_LowPass` gives: ``[x, G * x]``'s weights as
    ``UNet._chroma_stem`` folds them, scaled from the centred 0..255 input to the normalised
    one, batch norm folded, output channels padded; two convolutions summed."""

    def __init__(self, net: UNet):
        super().__init__()
        weight, bias = _folded(net.stem[0], net.stem[1])
        parts = [weight]
        if net.chroma is not None:
            wc = torch.einsum("ojhw,ji->oihw", weight, net.chroma.mix().double())
            parts = [weight - wc, wc]
        scale = (1.0 / (255.0 * torch.tensor(STD, dtype=torch.float64))).view(1, 3, 1, 1)
        placed = [_placed(w * scale, bias if k == 0 else torch.zeros_like(bias), [0, 1, 2], 3)
                  for k, w in enumerate(parts)]
        self.weights = nn.ParameterList(nn.Parameter(w, requires_grad=False) for w, _ in placed)
        self.register_buffer("bias", placed[0][1])  # one bias, on the first
        self.channels = weight.shape[0]

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x = F.conv2d(inputs[0], self.weights[0], self.bias, stride=2, padding=1)
        for t, w in zip(inputs[1:], self.weights[1:]):
            x = x + F.conv2d(t, w, stride=2, padding=1)
        return F.relu(x)


class _Head(nn.Module):
    """The 1 x 1 head at half resolution (the class rows divided by the temperature), then
    the full-resolution output: foreground and distance logits bilinear in NCHW and
    sigmoid; class logits bilinear channels-last and softmax over the last axis."""

    def __init__(self, net: UNet, temperature: float, layout: tuple[list[int], int]):
        super().__init__()
        w, b = _folded(net.head)
        inv = torch.ones(w.shape[0], dtype=torch.float64)
        inv[2:] = 1.0 / float(temperature)
        w, b = _placed(w * inv[:, None, None, None], b * inv, *layout)
        n = net.head.out_channels
        self.weight = nn.Parameter(w[:n], requires_grad=False)
        self.register_buffer("bias", b[:n].clone())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = F.conv2d(x, self.weight, self.bias)
        maps = torch.sigmoid(F.interpolate(out[:, :2], scale_factor=2.0, mode="bilinear",
                                           align_corners=False))
        cls = _ResizeChannelsLast.apply(out[:, 2:].permute(0, 2, 3, 1))
        return maps[:, 0], maps[:, 1], torch.softmax(cls, dim=-1)


class InferenceGraph(nn.Module):
    """The contract's graph (uint8 NHWC in, probabilities out) of ``net``: :class:`Exported`'s
    function (with ``fold_chroma``) computed for ONNX Runtime's CPU kernels (module doc).
    Its parts are named as the profiler shows them (``benchmarks/onnx_profile.py``): the
    input work ``low_pass``, the ``stem``, the U-Net's ``down``/``up``/``dec`` weights, and
    the ``head`` with the full-resolution output.

    Parameters
    ----------
    net : UNet
        :func:`supports` must hold (read in eval mode: batch norms use running statistics).
    temperature : float
        Divides the class logits before the softmax (calibration).
    """

    def __init__(self, net: UNet, temperature: float = 1.0):
        super().__init__()
        if not supports(net):
            raise ValueError("InferenceGraph covers the stem + bilinear U-Net without "
                             "refinement or half-resolution chroma (supports())")
        self.low_pass, self.stem = _LowPass(net), _Stem(net)
        layout = (list(range(self.stem.channels)), _padded(self.stem.channels))

        def block(seq: nn.Sequential, layout):
            """A U-Net block's two convolutions, batch norms folded, placed; its output."""
            convs = []
            for conv, bn in ((seq[0], seq[1]), (seq[3], seq[4])):
                w, b = _folded(conv, bn)
                convs += _placed(w, b, *layout)
                layout = (list(range(w.shape[0])), _padded(w.shape[0]))
            return [nn.Parameter(t, requires_grad=False) for t in convs], layout

        self.down, skips = nn.ParameterList(), []
        for seq in net.down:
            convs, layout = block(seq, layout)
            self.down.extend(convs)
            skips.append(layout)
        for k, blur in enumerate(net.pool_blurs):
            self.register_buffer(f"pool_blur{k}", blur.kernel[:1].expand(
                skips[k][1], -1, -1, -1).clone())
        self.blur_pools = len(net.pool_blurs)
        self.up, self.dec = nn.ParameterList(), nn.ParameterList()
        layout = skips[-1]
        for k in reversed(range(len(net.down) - 1)):
            w, b = _folded(net.up[k])
            self.up.extend(nn.Parameter(t, requires_grad=False) for t in _placed(w, b, *layout))
            n = w.shape[0]
            # the skip connection's channels follow the upsampled ones' padded block
            joined = (list(range(n)) + [_padded(n) + i for i in skips[k][0]],
                      _padded(n) + skips[k][1])
            convs, layout = block(net.dec[k], joined)
            self.dec.extend(convs)
        self.head = _Head(net, temperature, layout)

    @staticmethod
    def _block(x: torch.Tensor, params) -> torch.Tensor:
        x = F.relu(F.conv2d(x, params[0], params[1], padding=1))
        return F.relu(F.conv2d(x, params[2], params[3], padding=1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.stem(self.low_pass(image))
        skips = []
        for k in range(len(self.down) // 4):
            if k:
                if k - 1 < self.blur_pools:  # anti-aliased: UNet._pool
                    kernel = getattr(self, f"pool_blur{k - 1}")
                    x = F.conv2d(F.pad(_MaxPoolPadEnd.apply(x), (1, 1, 1, 1), mode="replicate"),
                                 kernel, stride=2, groups=kernel.shape[0])
                else:
                    x = F.max_pool2d(x, 2)
            x = self._block(x, self.down[4 * k:4 * k + 4])
            skips.append(x)
        x = skips.pop()
        for i, k in enumerate(reversed(range(len(skips)))):
            x = F.conv2d(x, self.up[2 * i], self.up[2 * i + 1])
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = self._block(torch.cat([x, skips[k]], dim=1), self.dec[4 * i:4 * i + 4])
        return self.head(x)
