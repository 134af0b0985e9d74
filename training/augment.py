"""Augmentations for what real slides do to a tile: geometry and image degradations.

Geometry (one ``cv2.remap`` per crop, applied alike to the image and its labels): a
quarter turn plus up to 15 degrees, a flip, scale 0.7-1.4 around the training resolution
(0.5 um/px), a sub-pixel position (the crop centre is continuous), and a smooth elastic
deformation.

Image (the labels are untouched): a re-staining with another lab's H&E stain vectors
(measured on real unlabelled slides), H&E stain jitter in optical-density space (Tellez et
al. 2018), brightness / contrast / saturation / hue, Gaussian blur (focus), Gaussian noise
(sensor), and JPEG re-compression at quality 40-95 (how slides are stored), in that order,
as a scanner would apply them.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SCALE_RANGE = (0.7, 1.4)
#: elastic deformation: displacement amplitude (px) and control-point spacing (px)
ELASTIC_PX = 2.0
ELASTIC_GRID_PX = 48
JPEG_QUALITY = (40, 95)

# HED stain matrix (Ruifrok & Johnston, as in skimage.color.hed_from_rgb).
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = (_RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
                 ).astype(np.float32)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)


@dataclass(frozen=True)
class Warp:
    """Where each output pixel samples the source: ``map_x``, ``map_y`` (float32, size^2)."""

    map_x: np.ndarray
    map_y: np.ndarray

    def bounds(self) -> tuple[int, int, int, int]:
        """Source rows/cols the warp reads: ``(row0, row1, col0, col1)`` (half-open)."""
        return (int(np.floor(self.map_y.min())) - 1, int(np.ceil(self.map_y.max())) + 2,
                int(np.floor(self.map_x.min())) - 1, int(np.ceil(self.map_x.max())) + 2)

    def image(self, image: np.ndarray) -> np.ndarray:
        """Warp an image (bilinear; mirrored beyond the source's edges)."""
        return cv2.remap(image, self.map_x, self.map_y, cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT_101)

    def labels(self, labels: np.ndarray) -> np.ndarray:
        """Warp a label image (nearest neighbour, so ids stay ids)."""
        src = labels.astype(np.int32) if labels.dtype != np.int32 else labels
        return cv2.remap(src, self.map_x, self.map_y, cv2.INTER_NEAREST,
                         borderMode=cv2.BORDER_REFLECT_101)


def random_warp(size: int, centre: tuple[float, float], rng: np.random.Generator,
                scale_range: tuple[float, float] = SCALE_RANGE, rotate: bool = True,
                elastic_px: float = ELASTIC_PX) -> Warp:
    """A random rotation + flip + scale + elastic warp of a ``size`` x ``size`` crop.

    ``centre`` = (row, col) in source pixels (continuous: sub-pixel positions); the scale
    ``s`` is source pixels per output pixel, log-uniform in ``scale_range``.
    """
    s = float(np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]))))
    # a quarter turn plus up to 15 degrees: every orientation, mostly near the pixel grid
    theta = (int(rng.integers(4)) * np.pi / 2 + rng.uniform(-np.pi / 12, np.pi / 12)
             if rotate else 0.0)
    flip = -1.0 if (rotate and rng.integers(2)) else 1.0
    c, si = np.cos(theta) * s, np.sin(theta) * s
    v, u = np.mgrid[0:size, 0:size].astype(np.float32)
    v -= (size - 1) / 2
    u = (u - (size - 1) / 2) * flip
    map_x = centre[1] + c * u - si * v
    map_y = centre[0] + si * u + c * v
    if elastic_px > 0:
        n = max(2, size // ELASTIC_GRID_PX + 2)
        for m in (map_x, map_y):
            coarse = rng.normal(0.0, elastic_px * s, (n, n)).astype(np.float32)
            m += cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return Warp(map_x.astype(np.float32), map_y.astype(np.float32))


def hed_jitter(image: np.ndarray, rng: np.random.Generator, sigma: float = 0.08,
               bias: float = 0.03) -> np.ndarray:
    """Stain jitter in HED optical-density space (per-stain scale and shift)."""
    od = -np.log((image.astype(np.float32) + 1.0) / 256.0)
    hed = od @ _HED_FROM_RGB
    hed = hed * rng.uniform(1 - sigma, 1 + sigma, 3).astype(np.float32) + \
        rng.uniform(-bias, bias, 3).astype(np.float32)
    out = np.exp(-(hed @ _RGB_FROM_HED)) * 256.0 - 1.0
    return np.clip(out, 0, 255).astype(np.uint8)


def stain_transfer(image: np.ndarray, rng: np.random.Generator, bank: np.ndarray,
                   source: np.ndarray, conc_range: tuple[float, float] = (0.6, 1.6),
                   vector_noise: float = 0.03) -> np.ndarray:
    """Re-stain ``image`` as another lab's H&E would show it (labels untouched).

    The pixels' optical density is split into hematoxylin and eosin concentrations along
    the ``source`` stain vectors (3 x 2, OD space, Macenko's; what is left over is kept as a
    residual), each concentration is scaled (log-uniform in ``conc_range``), and the image is
    rebuilt with stain vectors part-way between the source's and one drawn from ``bank``
    (K x 3 x 2: vectors measured on real H&E of other labs, ``training/unlabelled.py``), with
    a little noise (``vector_noise``). Hue, darkness and the balance of the two stains then
    vary as they do between slides, which a per-stain jitter along fixed vectors
    (:func:`hed_jitter`) cannot reach: the CMU slide's black-purple nuclei, say.
    """
    src = source.astype(np.float32)
    lam = rng.uniform(0.0, 1.0)
    target = (1.0 - lam) * src + lam * bank[int(rng.integers(len(bank)))]
    target = np.abs(target + rng.normal(0.0, vector_noise, target.shape)).astype(np.float32)
    lo, hi = np.log(conc_range[0]), np.log(conc_range[1])
    return restain(image, src, target, np.exp(rng.uniform(lo, hi, 2)))


def restain(image: np.ndarray, source: np.ndarray, target: np.ndarray,
            scale: np.ndarray | tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """``image`` stained along ``source`` (3 x 2 H&E vectors, OD space) rebuilt along
    ``target`` (normalised here), the two concentrations multiplied by ``scale``; the optical
    density the two stains do not explain is kept as it is."""
    od = -np.log((image.reshape(-1, 3).astype(np.float32) + 1.0) / 256.0)
    src = np.asarray(source, dtype=np.float32)
    conc = od @ np.linalg.pinv(src).T                        # N x 2
    residual = od - conc @ src.T
    target = np.asarray(target, dtype=np.float32)
    target = target / np.linalg.norm(target, axis=0, keepdims=True)
    conc = conc * np.asarray(scale, dtype=np.float32)
    out = np.exp(-(conc @ target.T + residual)) * 256.0 - 1.0
    return np.clip(out + 0.5, 0, 255).astype(np.uint8).reshape(image.shape)


def hsv_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness / contrast / saturation / hue jitter."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-5, 5)) % 180
    hsv[..., 1] = hsv[..., 1] * rng.uniform(0.8, 1.2)
    hsv[..., 2] = hsv[..., 2] * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
    mean = out.mean(axis=(0, 1), keepdims=True)
    return np.clip((out - mean) * rng.uniform(0.85, 1.15) + mean, 0, 255).astype(np.uint8)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (a slide slightly out of focus)."""
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma,
                            borderType=cv2.BORDER_REFLECT_101)


def noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise of ``sigma`` grey levels."""
    out = image.astype(np.float32) + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Write as JPEG of ``quality`` (4:2:0 chroma, as slide scanners do) and read back."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB
        raise RuntimeError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def photometric(image: np.ndarray, rng: np.random.Generator, stains: np.ndarray | None = None,
                stain_source: np.ndarray | None = None, p_stain: float = 0.7,
                p_jpeg: float = 0.5) -> np.ndarray:
    """One random chain of image degradations (labels unaffected): :func:`appearance`, then
    :func:`storage` (JPEG with probability ``p_jpeg``).

    With a bank of real stain vectors (``stains``, K x 3 x 2) and the image's own
    (``stain_source``, 3 x 2), a :func:`stain_transfer` comes first with probability
    ``p_stain``.
    """
    return storage(appearance(image, rng, stains, stain_source, p_stain), rng, p_jpeg)


def appearance(image: np.ndarray, rng: np.random.Generator, stains: np.ndarray | None = None,
               stain_source: np.ndarray | None = None, p_stain: float = 0.7) -> np.ndarray:
    """What the slide itself looks like: stain (re-staining, HED jitter, colour) and focus;
    the first part of :func:`photometric`, the same for two scans of one slide."""
    if stains is not None and stain_source is not None and rng.random() < p_stain:
        image = stain_transfer(image, rng, stains, stain_source)
    image = hed_jitter(image, rng)
    if rng.random() < 0.5:
        image = hsv_jitter(image, rng)
    if rng.random() < 0.25:
        image = blur(image, rng.uniform(0.3, 1.2))
    return image


def storage(image: np.ndarray, rng: np.random.Generator, p_jpeg: float = 0.5) -> np.ndarray:
    """What one scan and its file add: sensor noise, then with probability ``p_jpeg`` JPEG
    re-compression at quality 40-95 (blocks from the image's first pixel); the second part of
    :func:`photometric`."""
    if rng.random() < 0.25:
        image = noise(image, rng.uniform(1.0, 8.0), rng)
    if rng.random() < p_jpeg:
        image = jpeg(image, int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)))
    return image
