"""Pseudo-labels on real unlabelled H&E (``--pseudo-labels TEACHER``; run M of EXPERIMENTS.md, off
by default).

A trained model, the *teacher* (a twin: it never saw the validation block or the held-out
quadrant), outlines the nuclei of the unlabelled images of ``training/unlabelled.py`` with
its test-time average (4 flips x 4 one-pixel phases, the CLI's steadiest setting) and its
own post-processing (5.2.0: hysteresis). The CMU slide's evaluation and selection regions
are painted out as glass first (``unlabelled.paint_out``), so no pixel of them is ever a
training pixel. Those outlines become fixed foreground and distance targets ("noisy
student"): the student sees them shifted, re-stained, blurred and re-encoded like any
labelled crop, in labelled pairs with their consistency loss, so it learns on the tissue
where it is least steady that those changes leave the nuclei where they are.

Their classes are not learnt from: the three classes come from one carcinoma, and the
teacher's classes on skin or prostate are unverified (MODEL.md, "Where the classes hold"),
so a pseudo-labelled nucleus has class 0, which the class loss ignores.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from slicer_cli.nuclei.backends.local import LocalBackend
from slicer_cli.nuclei.instances import extract_instances

from .data import CropSampler, Tile, normalised_distance
from .evaluate import Averaged
from .tune import predict_maps

#: off the teacher's nuclei, pixels whose averaged foreground reaches this are not taught as
#: background (faint nuclei the hysteresis dropped, the rims of kept ones): left out of the
#: foreground loss, still in the pair consistency
UNSURE = 0.25


def pseudo_tiles(teacher_dir: Path, pool, threads: int = 2, flips: int = 4,
                 shifts: int = 4) -> list[Tile]:
    """One :class:`~training.data.Tile` per image of ``pool`` (already painted out): its
    pixels, the teacher's nuclei as instances, class 0 everywhere, their distance target,
    and as ``ignore`` the pixels off them where the teacher is unsure (:data:`UNSURE`)."""
    tiles = []
    with LocalBackend(teacher_dir, threads=threads, precision="float") as backend:
        info = backend.info
        averaged = Averaged(backend, flips, shifts)
        for image in pool.images:
            maps = predict_maps(averaged, image, info.size_multiple)
            inst = extract_instances(maps["FOREGROUND"], maps["DISTANCE"], maps["CLASS_PROB"],
                                     **info.thresholds).labels.astype(np.int32)
            tiles.append(Tile(image=image, instances=inst,
                              classes=np.zeros(inst.shape, dtype=np.int64),
                              distance=normalised_distance(inst),
                              ignore=(inst == 0) & (maps["FOREGROUND"] >= UNSURE)))
    return tiles


@dataclass
class PseudoSampler(CropSampler):
    """Crops of a pseudo-labelled image: half centred near one of its nuclei, half anywhere
    (nothing reserved: the painted-out regions are glass)."""

    def __post_init__(self) -> None:
        labels = self.tile.instances
        n = int(labels.max())
        centres = ndi.center_of_mass(labels > 0, labels, np.arange(1, n + 1)) if n else []
        self.centres = [np.asarray(centres, dtype=float).reshape(-1, 2)]


def choose(samplers: list[PseudoSampler], rng: np.random.Generator) -> PseudoSampler:
    """One sampler, drawn with probability proportional to the square root of its nuclei
    (as ``UnlabelledPool`` draws by tissue area: the small images still count)."""
    weights = np.sqrt([len(s.centres[0]) for s in samplers])
    return samplers[int(rng.choice(len(samplers), p=weights / weights.sum()))]
