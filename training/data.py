"""Training data: the hgsc_nest tile, its split, targets and augmented crops
(augmentations: ``training/augment.py``).

Split (rows, cols of the 1500 x 1500 tile):

* ``HELD_OUT``   rows 750:1500, cols 750:1500 -- evaluation only (``training/evaluate.py``);
* ``VALIDATION`` rows 494:750,  cols 750:1262 -- threshold tuning only (never trained on);
* training       everything else (the other three quadrants minus the validation block).

A random crop is a warp of *source* pixels (``CropSampler.warp``) and is rejected unless
every source pixel it reads lies outside both reserved rectangles, so no training pixel ever
comes from the held-out quadrant or the validation block (nuclei cut by a split line
contribute their visible part only). ``--split all`` (the shipped model, trained once the
held-out figures are measured) reserves nothing.

The histolytics stroma tile (``hgsc_stromal_*``) is never read here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from slicer_cli.nuclei.stain import REFERENCE_STAINS

from .augment import SCALE_RANGE, Warp, appearance, photometric, random_warp, storage

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
CLASSES = ("connective", "inflammatory", "neoplastic")

Box = tuple[int, int, int, int]  # row0, row1, col0, col1
HELD_OUT: Box = (750, 1500, 750, 1500)
VALIDATION: Box = (494, 750, 750, 1262)
RESERVED: tuple[Box, ...] = (HELD_OUT, VALIDATION)

@dataclass(frozen=True)
class Tile:
    """The labelled tile and its dense training targets (all full size)."""

    image: np.ndarray      # uint8 H x W x 3
    instances: np.ndarray  # int32 H x W, 0 background
    classes: np.ndarray    # int64 H x W, 0 background, 1..3 = CLASSES
    distance: np.ndarray   # float32 H x W, per-nucleus normalised distance (0 border, 1 centre)
    #: bool H x W or None: pixels whose foreground is not known (pseudo-labels' uncertain
    #: pixels off their nuclei, ``training/pseudo.py``); crops mark them class -1
    ignore: np.ndarray | None = None


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


def nucleus_centres(tile: Tile, reserved: tuple[Box, ...] = RESERVED
                    ) -> list[np.ndarray]:
    """Per class, the (row, col) centroids of the nuclei outside ``reserved``."""
    labels = tile.instances
    n = int(labels.max())
    index = np.arange(1, n + 1)
    cy, cx = (np.asarray(c) for c in zip(*ndi.center_of_mass(labels > 0, labels, index)))
    cls = np.asarray(ndi.maximum(tile.classes, labels, index), dtype=np.int64)
    keep = np.array([not overlaps((int(y), int(y) + 1, int(x), int(x) + 1), reserved)
                     for y, x in zip(cy, cx)], dtype=bool) if n else np.zeros(0, bool)
    return [np.column_stack([cy, cx])[keep & (cls == c)] for c in range(1, len(CLASSES) + 1)]


@dataclass
class CropSampler:
    """Augmented training crops of the labelled tile that never touch a reserved rectangle.

    Half of the crops are centred near a nucleus of a class drawn uniformly (connective is
    under-represented in the tile: class-balanced sampling), the others anywhere.
    """

    tile: Tile
    reserved: tuple[Box, ...] = RESERVED
    balance: float = 0.5
    #: real stain vectors to re-stain crops with (``training/unlabelled.py:stain_bank``)
    stains: np.ndarray | None = None
    #: probability of that re-staining per crop
    p_stain: float = 0.7
    #: source pixels per crop pixel, log-uniform (``training/augment.py:random_warp``)
    scale_range: tuple[float, float] = SCALE_RANGE
    #: probability of a JPEG re-compression per crop or view (``augment.storage``)
    p_jpeg: float = 0.5

    def __post_init__(self) -> None:
        self.centres = nucleus_centres(self.tile, self.reserved)

    def _centre(self, size: int, rng: np.random.Generator) -> tuple[float, float]:
        h, w = self.tile.instances.shape
        classes = [c for c in self.centres if len(c)]
        if classes and rng.random() < self.balance:
            pick = classes[int(rng.integers(len(classes)))]
            y, x = pick[int(rng.integers(len(pick)))]
            return (y + rng.uniform(-size / 3, size / 3), x + rng.uniform(-size / 3, size / 3))
        return rng.uniform(0, h), rng.uniform(0, w)

    def warp(self, size: int, rng: np.random.Generator) -> Warp:
        """A random warp whose source pixels lie in the image, off every reserved box."""
        h, w = self.tile.instances.shape
        for _ in range(1000):
            warp = random_warp(size, self._centre(size, rng), rng, self.scale_range)
            r0, r1, c0, c1 = warp.bounds()
            if r0 >= 0 and c0 >= 0 and r1 <= h and c1 <= w and \
                    not overlaps((r0, r1, c0, c1), self.reserved):
                return warp
        raise RuntimeError("no admissible crop found")  # pragma: no cover

    def crop(self, size: int, rng: np.random.Generator, augment: bool = True
             ) -> tuple[np.ndarray, ...]:
        """One crop: (image uint8 HxWx3, fg float32, distance float32, class int64)."""
        warp = self.warp(size, rng)
        image, inst, cls, dist = warp_labelled(self.tile, warp)
        if augment:
            image = self._degrade(image, rng)
        return image, (inst > 0).astype(np.float32), dist, cls

    def _degrade(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return photometric(image, rng, self.stains, REFERENCE_STAINS, self.p_stain,
                           self.p_jpeg)

    def _appearance(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return appearance(image, rng, self.stains, REFERENCE_STAINS, self.p_stain)

    def pair(self, size: int, shift: int, rng: np.random.Generator, rescan: bool = False
             ) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...], tuple[int, int]]:
        """The same crop seen twice: shifted by up to ``shift - 1`` px, degraded separately.

        Independent views (``rescan`` false, 5.0.0-5.3.0) each get their own whole chain of
        degradations, stain included. ``rescan``: one slide looked at twice, as a re-scan or
        a re-encoded copy shows it: the stain, colour and focus (``augment.appearance``) and
        the slide's own file (``augment.storage`` on the whole crop, JPEG blocks from its
        corner) are shared; each view then adds its own sensor noise and file, whose JPEG
        blocks start at the view's own corner.

        Returns views A and B as :meth:`crop` does (image, fg, distance, class) and the
        offset ``(dy, dx)``: B's pixel ``(y, x)`` shows A's ``(y + dy, x + dx)``.
        """
        image, inst, cls, dist = warp_labelled(self.tile, self.warp(size + shift, rng))
        views = []
        corners = rng.integers(0, shift, (2, 2))
        if rescan:
            image = storage(self._appearance(image, rng), rng, self.p_jpeg)
        for y0, x0 in corners:
            cut = (slice(y0, y0 + size), slice(x0, x0 + size))
            view = np.ascontiguousarray(image[cut])
            views.append((storage(view, rng, self.p_jpeg) if rescan else
                          self._degrade(view, rng),
                          (inst[cut] > 0).astype(np.float32), np.ascontiguousarray(dist[cut]),
                          np.ascontiguousarray(cls[cut])))
        (ya, xa), (yb, xb) = corners
        return views[0], views[1], (int(yb - ya), int(xb - xa))

    def image(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """The geometrically augmented image of a crop (no labels, no degradation)."""
        return self.warp(size, rng).image(self.tile.image)


def mirror_edges(view: tuple[np.ndarray, ...], band: tuple[int, int, int, int]
                 ) -> tuple[np.ndarray, ...]:
    """``view`` (image, fg, distance, class; H x W each) with its edge bands ``(top, bottom,
    left, right)`` replaced by the mirror image of the pixels next to them (NumPy's
    ``reflect``), labels alike: the edges a lone tile meets the network with, where the
    grid anchor widens its window (``slicer_cli/nuclei/backends/grid_anchor.py``)."""
    top, bottom, left, right = band
    h, w = view[0].shape[:2]
    inner = (slice(top, h - bottom), slice(left, w - right))
    out = []
    for a in view:
        pad = ((top, bottom), (left, right)) + ((0, 0),) * (a.ndim - 2)
        out.append(np.ascontiguousarray(np.pad(a[inner], pad, mode="reflect")))
    return tuple(out)


def warp_labelled(tile: Tile, warp: Warp) -> tuple[np.ndarray, ...]:
    """Image, instances, classes and distance target of a warped crop, still aligned."""
    inst = warp.labels(tile.instances)
    cls = warp.labels(tile.classes.astype(np.int32)).astype(np.int64)
    dist = cv2.remap(tile.distance, warp.map_x, warp.map_y, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT_101)
    dist = np.where(inst > 0, dist, 0.0).astype(np.float32)
    cls = np.where(inst > 0, cls, 0)
    if tile.ignore is not None:
        cls = np.where((inst == 0) & (warp.labels(tile.ignore.astype(np.int32)) > 0), -1, cls)
    return warp.image(tile.image), inst, cls, dist


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
