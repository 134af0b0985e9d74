"""The network itself, in PyTorch: one definition for training and for the PyTorch backend.

A small fully-convolutional U-Net honouring the model contract (:mod:`.model`). Input uint8
``[N, H, W, 3]`` RGB (H, W multiples of 32); normalisation happens in the graph. Outputs
``FOREGROUND`` (sigmoid) ``[N, H, W]``, ``DISTANCE`` (sigmoid) ``[N, H, W]`` and
``CLASS_PROB`` (softmax over C classes) ``[N, H, W, C]``.

The ONNX file (``<version>/model.onnx``) is the source of truth that Triton and ONNX Runtime
serve; ``<version>/model.pt`` holds the same network for the PyTorch backend as plain
weights plus the architecture's arguments (:func:`save_weights`, :func:`load_exported`),
read with ``torch.load(weights_only=True)``: no pickled code, and no TorchScript format that
ties it to one torch version. Only the PyTorch backend and training import this module.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# Per-channel statistics of H&E RGB in [0, 1] (rough, fixed; only centres the input).
MEAN = (0.70, 0.55, 0.70)
STD = (0.17, 0.20, 0.15)
_MEAN = torch.tensor(MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(STD).view(1, 3, 1, 1)


#: the binomial low-pass filters :class:`Blur` offers, by side
BINOMIAL = {3: (1.0, 2.0, 1.0), 5: (1.0, 4.0, 6.0, 4.0, 1.0)}


class Blur(nn.Module):
    """Fixed binomial low-pass per channel: 3 x 3 ([1, 2, 1] x [1, 2, 1] / 16, the default)
    or 5 x 5 ([1, 4, 6, 4, 1] x [1, 4, 6, 4, 1] / 256, a stronger one).

    Before the stride-2 stem it removes what the stem would alias (Zhang 2019, "Making
    convolutional networks shift-invariant again"): an odd shift of the input no longer
    changes the stem's output beyond interpolation. The 3 x 3 filter halves what lies at
    the half-resolution grid's Nyquist frequency, the 5 x 5 one quarters it.
    """

    def __init__(self, channels: int, size: int = 3) -> None:
        super().__init__()
        if size not in BINOMIAL:
            raise ValueError(f"Blur size must be one of {sorted(BINOMIAL)}, not {size}")
        k = torch.tensor(BINOMIAL[size])
        k = (k[:, None] * k[None, :]) / float(k.sum()) ** 2
        self.register_buffer("kernel", k.expand(channels, 1, size, size).clone())
        self.channels = channels
        self.pad = size // 2

    def forward(self, x: torch.Tensor, stride: int = 1,
                channels: int | None = None) -> torch.Tensor:
        """Low-pass ``x``; with ``stride`` 2 only every other row and column is computed (the
        same values as the full low-pass subsampled, a quarter of the work). ``channels``:
        ``x`` has that many instead of the module's own (the same filter on each)."""
        pad = (self.pad,) * 4
        kernel, groups = self.kernel, self.channels
        if channels is not None and channels != self.channels:
            kernel, groups = self.kernel[:1].expand(channels, -1, -1, -1), channels
        return F.conv2d(F.pad(x, pad, mode="replicate"), kernel, stride=stride, groups=groups)


#: BT.601 (JPEG) chroma rows: Cb, Cr of RGB, and the RGB change of a unit Cb, Cr change
_CHROMA = ((-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
_CHROMA_TO_RGB = ((0.0, 1.402), (-0.344136, -0.714136), (1.772, 0.0))


class ChromaBlur(nn.Module):
    """Gaussian low-pass (``sigma`` px) of the input's chroma; its luma passes untouched.

    A JPEG keeps chroma (Cb, Cr) at half resolution and quantises it per 8 x 8 block, so the
    fine chroma detail of a slide is mostly its compression's, and a re-encode changes it
    most. The network sees only the smooth colour (what tells haematoxylin from eosin) and
    the full-resolution luma (where the nuclei's edges are). On the normalised input
    ``x = (rgb - MEAN) / STD``: ``x + C (G * x - x)``, ``G`` the Gaussian (edges replicated)
    and ``C`` the matrix that keeps a normalised pixel's chroma and sets its luma to 0
    (:meth:`mix`; the Gaussian commutes with mixing channels and keeps constants, so the
    means drop out), so the luma is exactly the input's. For inference it is folded into the
    stem (:meth:`UNet._chroma_stem`).
    """

    def __init__(self, sigma: float) -> None:
        super().__init__()
        if not 0.0 < sigma <= 8.0:
            raise ValueError(f"chroma blur sigma must be in (0, 8] px, not {sigma}")
        radius = max(1, int(-(-3.0 * sigma // 1)))  # ceil(3 sigma)
        t = torch.arange(-radius, radius + 1, dtype=torch.float64)
        g = torch.exp(-0.5 * (t / sigma) ** 2)
        g = (g / g.sum()).float()
        std = torch.tensor(STD, dtype=torch.float64)
        to_chroma = torch.tensor(_CHROMA, dtype=torch.float64) * std[None, :]
        to_input = torch.tensor(_CHROMA_TO_RGB, dtype=torch.float64) / std[:, None]
        self.register_buffer("to_chroma", to_chroma.float().view(2, 3, 1, 1))
        self.register_buffer("to_input", to_input.float().view(3, 2, 1, 1))
        # (two channels each: the first network trained with it stored them so)
        self.register_buffer("rows", g.view(1, 1, -1, 1).expand(2, 1, -1, 1).clone())
        self.register_buffer("cols", g.view(1, 1, 1, -1).expand(2, 1, 1, -1).clone())
        self.radius = radius

    def mix(self) -> torch.Tensor:
        """The 3 x 3 matrix ``C`` that keeps the chroma of a normalised pixel, its luma set
        to 0: ``ChromaBlur(x) = x + C (G * x - x)`` (``G`` commutes with mixing channels)."""
        return self.to_input.view(3, 2) @ self.to_chroma.view(2, 3)

    def smooth(self, x: torch.Tensor, channels: int = 3, stride: int = 1) -> torch.Tensor:
        """``G * x``: the Gaussian of each of the ``channels`` channels of ``x`` (edges
        replicated; the count a constant, as the ONNX export needs). With ``stride`` 2 only
        every other row and column is computed (pixel (2i, 2j) of the full output; half of
        the rows' pass and a quarter of the columns')."""
        r, k = self.radius, 2 * self.radius + 1
        rows = self.rows[:1].expand(channels, 1, k, 1)
        cols = self.cols[:1].expand(channels, 1, 1, k)
        x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), rows, stride=(stride, 1),
                     groups=channels)
        return F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), cols, stride=(1, stride),
                        groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the order training uses: chroma out, smoothed, back (5.3.0 was trained so)
        c = F.conv2d(x, self.to_chroma)
        return x + F.conv2d(self.smooth(c, channels=2) - c, self.to_input)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True))


class UNet(nn.Module):
    """U-Net with a stride-32 bottleneck.

    Parameters
    ----------
    width : int
        Channels of the first level; doubled at every level.
    n_classes : int
        Number of nucleus classes.
    max_mult : int
        Cap on the channel multiplier of the deep levels (keeps the file small).
    stem : bool
        ``False``: six levels, the first at full resolution (model 2.0.0). ``True``: a
        stride-2 convolution first, five levels from half resolution down, and a 2x
        transposed convolution back to full resolution before the 1x1 head (model 3.0.0):
        no 3x3 convolution runs at full resolution, where most of the time went.
    antialias : bool
        Low-pass the input (:class:`Blur`) before the stride-2 stem (model 4.0.0).
    stem_blur : int
        Side of that low-pass: 3 (every shipped model so far) or 5 (stronger).
    head_width : int, optional
        Channels of the full-resolution head (default: the first level's).
    blur_pools : int
        The first ``blur_pools`` max-poolings become anti-aliased (max over 2 x 2 at stride
        1, then :class:`Blur` and subsampling: "MaxBlurPool", Zhang 2019).
    bilinear_head : bool
        With the stem: the logits are computed at half resolution and brought to full
        resolution by bilinear interpolation, instead of a 2 x 2 stride-2 transposed
        convolution whose even and odd output pixels come from different weights (an input
        shifted by one pixel then meets other weights everywhere).
    bilinear_up : bool
        The decoder's upsamplings become a 1 x 1 convolution at the coarse level followed by
        bilinear 2x interpolation, instead of 2 x 2 stride-2 transposed convolutions (the
        same phase dependence as above, at every level; a quarter of their work).
    refine : int
        With the bilinear head: ``refine`` channels of a full-resolution path (a 3 x 3
        convolution of the input) mixed with the interpolated logits by a 3 x 3 convolution
        and added to them (it starts at zero), so the boundaries are drawn at full
        resolution. 0 (every shipped model so far): none.
    chroma_blur : float
        Sigma in px of a Gaussian low-pass of the input's chroma (:class:`ChromaBlur`),
        before everything else; 0 (every model before 5.3.0): none.
    chroma_half : bool
        With ``chroma_blur``, the stem, and the input blur: the low-passed chroma enters at
        half resolution instead (:meth:`_half_chroma_stem`): the stem convolves the input's
        luma only (its weights times the luma-keeping matrix), and a second 3 x 3
        convolution at half resolution adds the chroma, smoothed by the Gaussian and taken
        at every other pixel. No full-resolution pass beyond 5.2.0's but the Gaussian's,
        itself at stride 2. Tried with width 10 (run N of EXPERIMENTS.md), not shipped.

    ``forward`` takes a float NCHW batch already normalised and returns raw logits
    ``(fg [N,1,H,W], dist [N,1,H,W], cls [N,C,H,W])``.
    """

    def __init__(self, width: int = 16, n_classes: int = 3, max_mult: int = 8,
                 stem: bool = False, antialias: bool = False, head_width: int | None = None,
                 blur_pools: int = 0, bilinear_head: bool = False, bilinear_up: bool = False,
                 refine: int = 0, stem_blur: int = 3, chroma_blur: float = 0.0,
                 chroma_half: bool = False):
        super().__init__()
        #: the constructor's arguments (saved with the weights)
        self.arch = {"width": width, "n_classes": n_classes, "max_mult": max_mult,
                     "stem": stem, "antialias": antialias, "head_width": head_width,
                     "blur_pools": blur_pools, "bilinear_head": bilinear_head,
                     "bilinear_up": bilinear_up, "refine": refine}
        if stem_blur != 3:
            # only then, so a 3 x 3 model's model.pt stays readable by older code
            self.arch["stem_blur"] = stem_blur
        if chroma_blur:
            self.arch["chroma_blur"] = float(chroma_blur)
        if chroma_half:
            if not (chroma_blur and stem and antialias) or refine:
                raise ValueError("chroma_half needs chroma_blur, the stem and antialias, "
                                 "and no refine")
            self.arch["chroma_half"] = True
        self.chroma = ChromaBlur(chroma_blur) if chroma_blur else None
        levels = 5 if stem else 6
        chans = [width * min(2**k, max_mult) for k in range(levels)]
        self.blur = Blur(3, stem_blur) if antialias else None
        self.stem = nn.Sequential(
            nn.Conv2d(3, chans[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(chans[0]), nn.ReLU(inplace=True)) if stem else None
        #: whether the chroma low-pass, input blur and stem can be computed as one
        #: (:meth:`_chroma_stem`); :class:`Exported` (inference, the ONNX file) does so,
        #: training keeps the plain order, so its runs repeat bit for bit
        self.can_fold_chroma = bool(chroma_blur and stem and antialias and not refine
                                    and not chroma_half)
        #: the half-resolution chroma path's convolution (:meth:`_half_chroma_stem`)
        self.stem_chroma = (nn.Conv2d(3, chans[0], 3, padding=1, bias=False)
                            if chroma_half else None)
        first = chans[0] if stem else 3
        self.down = nn.ModuleList([_block(first, chans[0])] + [
            _block(chans[k], chans[k + 1]) for k in range(levels - 1)])
        self.bilinear_up = bool(bilinear_up)
        self.up = nn.ModuleList([
            nn.Conv2d(chans[k + 1], chans[k], 1) if bilinear_up else
            nn.ConvTranspose2d(chans[k + 1], chans[k], 2, stride=2) for k in range(levels - 1)])
        self.dec = nn.ModuleList([_block(2 * chans[k], chans[k]) for k in range(levels - 1)])
        self.pool_blurs = nn.ModuleList([Blur(chans[k]) for k in range(min(blur_pools,
                                                                             levels - 1))])
        self.bilinear_head = bool(bilinear_head and stem)
        if self.bilinear_head:
            self.head = nn.Conv2d(chans[0], 2 + n_classes, 1)
        else:
            # with the stem, the head's first layer brings half resolution back to full
            head = head_width or chans[0]
            to_full = (nn.ConvTranspose2d(chans[0], head, 2, stride=2) if stem
                       else nn.Conv2d(chans[0], head, 3, padding=1))
            self.head = nn.Sequential(to_full, nn.ReLU(inplace=True),
                                      nn.Conv2d(head, 2 + n_classes, 1))
        self.refine_in = self.refine_out = None
        if refine:
            if not self.bilinear_head:
                raise ValueError("refine needs the stem and the bilinear head")
            self.refine_in = nn.Sequential(nn.Conv2d(3, refine, 3, padding=1),
                                           nn.ReLU(inplace=True))
            self.refine_out = nn.Conv2d(refine + 2 + n_classes, 2 + n_classes, 3, padding=1)
            nn.init.zeros_(self.refine_out.weight)
            nn.init.zeros_(self.refine_out.bias)

    def _chroma_stem(self, x: torch.Tensor) -> torch.Tensor:
        """``stem(blur(chroma(x)))`` without mixing colours at full resolution.

        Everything before the stem's batch norm is linear, and the low-passes treat every
        channel alike, so with ``C`` the chroma-keeping matrix of :class:`ChromaBlur` and
        ``W`` the stem's weights: ``W * B * (x + C (G * x - x)) = (W - W C) * B * x +
        W C * B * G * x``: one stem convolution over the six channels ``[x, G * x]``,
        equal to the plain order up to rounding. The two 1 x 1 colour mixes at full
        resolution it saves cost ONNX Runtime more than the whole rest of the filter.
        """
        conv = self.stem[0]
        wc = torch.einsum("ojhw,ji->oihw", conv.weight, self.chroma.mix())
        both = self.blur(torch.cat([x, self.chroma.smooth(x)], dim=1), channels=6)
        x = F.conv2d(both, torch.cat([conv.weight - wc, wc], dim=1), stride=conv.stride,
                     padding=conv.padding)
        return self.stem[1:](x)

    def _half_chroma_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The stem with the chroma at half resolution (``chroma_half``): ``(W (I - C)) * B *
        x`` at stride 2 plus ``(V C) * (G * x)`` taken at every other pixel, ``C`` the
        chroma-keeping matrix of :class:`ChromaBlur`, ``W`` the stem's weights, ``V`` the
        half-resolution convolution's. Both colour mixes act on the weights, so no pass
        mixes colours at full resolution."""
        mix = self.chroma.mix()
        eye = torch.eye(3, dtype=mix.dtype, device=mix.device)
        conv = self.stem[0]
        luma = torch.einsum("ojhw,ji->oihw", conv.weight, eye - mix)
        y = F.conv2d(self.blur(x), luma, stride=conv.stride, padding=conv.padding)
        chroma = torch.einsum("ojhw,ji->oihw", self.stem_chroma.weight, mix)
        y = y + F.conv2d(self.chroma.smooth(x, stride=2), chroma, padding=1)
        return self.stem[1:](y)

    def _pool(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """The k-th 2x downsampling (k = 0 first): max-pool, anti-aliased for the first few."""
        if k < len(self.pool_blurs):
            x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, stride=1)
            return self.pool_blurs[k](x, stride=2)
        return F.max_pool2d(x, 2)

    def forward(self, x: torch.Tensor, fold_chroma: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits of a normalised batch; ``fold_chroma``: the chroma low-pass folded into the
        stem (:meth:`_chroma_stem`; the same maps up to rounding, less time)."""
        if self.stem_chroma is not None:
            full, x = None, self._half_chroma_stem(x)
        elif fold_chroma and self.can_fold_chroma:
            full, x = None, self._chroma_stem(x)
        else:
            if self.chroma is not None:
                x = self.chroma(x)
            full = x
            if self.blur is not None:
                x = self.blur(x)
            if self.stem is not None:
                x = self.stem(x)
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else self._pool(k - 1, x))
            skips.append(x)
        x = skips.pop()
        for k in reversed(range(len(self.down) - 1)):
            x = self.up[k](x)
            if self.bilinear_up:
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = self.dec[k](torch.cat([x, skips[k]], dim=1))
        out = self.head(x)
        if self.bilinear_head:
            out = F.interpolate(out, scale_factor=2.0, mode="bilinear", align_corners=False)
        if self.refine_in is not None:
            out = out + self.refine_out(torch.cat([self.refine_in(full), out], dim=1))
        return out[:, :1], out[:, 1:2], out[:, 2:]


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC RGB -> float NCHW, centred and scaled (the same op is inside the export)."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    # the constants follow the batch (a CUDA batch; .to is a no-op on the CPU)
    return (x - _MEAN.to(x.device)) / _STD.to(x.device)


class Exported(nn.Module):
    """The contract's graph: uint8 NHWC in, probabilities out (what ships as ONNX).

    ``temperature`` divides the class logits before the softmax (calibration: the class
    probability of a nucleus then means what it says, see ``training/calibrate.py``).
    """

    def __init__(self, net: UNet, temperature: float = 1.0):
        super().__init__()
        self.net = net
        self.inv_temperature = 1.0 / float(temperature)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fg, dist, cls = self.net(normalise(image), fold_chroma=True)
        if self.inv_temperature != 1.0:
            cls = cls * self.inv_temperature
        # softmax over the few class channels spelt out as element-wise ops: ONNX Runtime's
        # Softmax over a 3-long axis took 10 % of a 1024 x 1024 tile's CPU time
        e = torch.exp(cls - cls.amax(dim=1, keepdim=True))
        prob = e / e.sum(dim=1, keepdim=True)
        return torch.sigmoid(fg[:, 0]), torch.sigmoid(dist[:, 0]), prob.permute(0, 2, 3, 1)


#: format tag of ``model.pt``
WEIGHTS_FORMAT = "nucleus_unet-weights-1"


def save_weights(net: UNet, path, temperature: float = 1.0) -> None:
    """Write ``net``'s weights, architecture and class temperature to ``path`` (model.pt)."""
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    torch.save({"format": WEIGHTS_FORMAT, "arch": dict(net.arch),
                "temperature": float(temperature), "state_dict": state}, str(path))


def load_exported(path, device: str = "cpu") -> Exported:
    """The contract's graph (uint8 NHWC in, probabilities out) from ``model.pt``, in eval mode.

    Raises
    ------
    ValueError
        When the file is not a weights file of this format.
    """
    saved = torch.load(str(path), map_location=device, weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a {WEIGHTS_FORMAT} file")
    net = UNet(**saved["arch"])
    net.load_state_dict(saved["state_dict"])
    model = Exported(net, saved.get("temperature", 1.0)).to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model
