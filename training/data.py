"""Training data: the hgsc_nest tile, its split, targets and augmented crops.

Split (rows, cols of the 1500 x 1500 tile):

* ``HELD_OUT``   rows 750:1500, cols 750:1500 -- evaluation only (``training/evaluate.py``);
* ``VALIDATION`` rows 494:750,  cols 750:1262 -- threshold tuning only (never trained on);
* training       everything else (the other three quadrants minus the validation block).

A random crop is drawn in *source* pixels and is rejected unless it lies entirely outside
both reserved rectangles, so no training pixel ever comes from the held-out quadrant or the
validation block.  (Nuclei cut by a split line contribute their visible part only.)

The histolytics stroma tile (``hgsc_stromal_*``) is never read here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
CLASSES = ("connective", "inflammatory", "neoplastic")

Box = tuple[int, int, int, int]  # row0, row1, col0, col1
HELD_OUT: Box = (750, 1500, 750, 1500)
VALIDATION: Box = (494, 750, 750, 1262)
RESERVED: tuple[Box, ...] = (HELD_OUT, VALIDATION)

# HED stain matrix (Ruifrok & Johnston, as in skimage.color.hed_from_rgb).
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


@dataclass(frozen=True)
class Tile:
    """The labelled tile and its dense training targets (all full size)."""

    image: np.ndarray      # uint8 H x W x 3
    instances: np.ndarray  # int32 H x W, 0 background
    classes: np.ndarray    # int64 H x W, 0 background, 1..3 = CLASSES
    distance: np.ndarray   # float32 H x W, per-nucleus normalised distance (0 border, 1 centre)


def load_tile(data_dir: Path = DATA) -> Tile:
    """Load hgsc_nest with its instance and type rasters and build the distance target."""
    image = np.asarray(Image.open(data_dir / "hgsc_nest.jpg").convert("RGB"))
    inst = np.load(data_dir / "hgsc_nest_inst_mask.npz")["nuc_raster"].astype(np.int32)
    types = np.load(data_dir / "hgsc_nest_type_mask.npz")["nuc_raster"].astype(np.int64)
    return Tile(image=image, instances=inst, classes=types, distance=normalised_distance(inst))


def normalised_distance(instances: np.ndarray) -> np.ndarray:
    """Per-nucleus Euclidean distance to its border, divided by its own maximum.

    Touching nuclei are separated: the distance is measured to the nearest pixel that is not
    part of the *same* nucleus, so it is 0 on background, small on every border and 1 at each
    nucleus centre.
    """
    out = np.zeros(instances.shape, dtype=np.float32)
    for lab, sl in enumerate(ndi.find_objects(instances), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        mask = instances[sl] == lab
        d = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        out[sl][mask] = (d / d.max())[mask]
    return out


def overlaps(box: Box, reserved: tuple[Box, ...] = RESERVED) -> bool:
    """Whether ``box`` intersects any reserved rectangle."""
    r0, r1, c0, c1 = box
    return any(r0 < b1 and b0 < r1 and c0 < d1 and d0 < c1 for b0, b1, d0, d1 in reserved)


def hed_jitter(image: np.ndarray, rng: np.random.Generator, sigma: float = 0.05,
               bias: float = 0.02) -> np.ndarray:
    """Colour augmentation in HED optical-density space (Tellez et al. 2018)."""
    rgb = image.astype(np.float32)
    od = -np.log((rgb + 1.0) / 256.0)
    hed = od @ _HED_FROM_RGB.astype(np.float32)
    alpha = rng.uniform(1 - sigma, 1 + sigma, 3).astype(np.float32)
    beta = rng.uniform(-bias, bias, 3).astype(np.float32)
    hed = hed * alpha + beta
    out = np.exp(-(hed @ _RGB_FROM_HED.astype(np.float32))) * 256.0 - 1.0
    return np.clip(out, 0, 255).astype(np.uint8)


def hsv_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small brightness / contrast / saturation / hue jitter."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-4, 4)) % 180
    hsv[..., 1] = hsv[..., 1] * rng.uniform(0.85, 1.15)
    hsv[..., 2] = hsv[..., 2] * rng.uniform(0.9, 1.1) + rng.uniform(-10, 10)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
    contrast = rng.uniform(0.9, 1.1)
    mean = out.mean(axis=(0, 1), keepdims=True)
    return np.clip((out - mean) * contrast + mean, 0, 255).astype(np.uint8)


def sample_crop(tile: Tile, size: int, rng: np.random.Generator, scale_jitter: float = 0.15,
                augment: bool = True) -> tuple[np.ndarray, ...]:
    """One augmented training crop (image, fg, distance, class) of ``size`` x ``size``.

    The crop is drawn in source pixels of side ``size * s`` (``s`` uniform in
    ``1 +- scale_jitter``), resized to ``size`` and never touches a reserved rectangle.
    """
    h, w = tile.instances.shape
    for _ in range(1000):
        s = rng.uniform(1 - scale_jitter, 1 + scale_jitter) if augment else 1.0
        src = int(round(size * s))
        r0 = int(rng.integers(0, h - src + 1))
        c0 = int(rng.integers(0, w - src + 1))
        if not overlaps((r0, r0 + src, c0, c0 + src)):
            break
    else:  # pragma: no cover - the training area is large
        raise RuntimeError("no admissible crop found")
    sl = (slice(r0, r0 + src), slice(c0, c0 + src))
    image, inst, cls, dist = (tile.image[sl], tile.instances[sl], tile.classes[sl],
                              tile.distance[sl])
    if src != size:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
        dist = cv2.resize(dist, (size, size), interpolation=cv2.INTER_LINEAR)
        inst = cv2.resize(inst, (size, size), interpolation=cv2.INTER_NEAREST)
        cls = cv2.resize(cls.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
        dist = np.where(inst > 0, dist, 0.0).astype(np.float32)
    cls = cls.astype(np.int64)
    fg = (inst > 0).astype(np.float32)
    if augment:
        k = int(rng.integers(4))
        flip = bool(rng.integers(2))
        arrays = []
        for a in (image, fg, dist, cls):
            a = np.rot90(a, k)
            arrays.append(np.ascontiguousarray(a[:, ::-1] if flip else a))
        image, fg, dist, cls = arrays
        image = hed_jitter(image, rng)
        if rng.random() < 0.5:
            image = hsv_jitter(image, rng)
    return image, fg, dist, cls


def sample_batch(tile: Tile, n: int, size: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stack ``n`` augmented crops: uint8 images NHWC and fg / distance / class targets."""
    crops = [sample_crop(tile, size, rng) for _ in range(n)]
    return tuple(np.stack(c) for c in zip(*crops))  # type: ignore[return-value]


def region(tile: Tile, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image, instance labels (relabelled 1..n) and per-instance class (0-based) of a box."""
    r0, r1, c0, c1 = box
    image = tile.image[r0:r1, c0:c1]
    inst = tile.instances[r0:r1, c0:c1]
    ids, inv = np.unique(inst, return_inverse=True)
    labels = inv.reshape(inst.shape).astype(np.int32)
    if ids[0] != 0:
        labels += 1
        ids = np.concatenate([[0], ids])
    types = ndi.maximum(tile.classes[r0:r1, c0:c1], labels, np.arange(1, len(ids)))
    return image, labels, np.asarray(types, dtype=np.int64) - 1
