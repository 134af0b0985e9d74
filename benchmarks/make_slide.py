"""Build a real-tissue benchmark slide: a pyramidal tiled-JPEG TIFF at 0.5 um/px.

Pieces of the real H&E images of docs/DESIGN.md section 6 (hgsc_nest.jpg and the CMU Aperio
slide, both at about 0.5 um/px) are flipped/rotated and laid out on glass in a regular grid
with gaps, so that tissue masking matters (about half of the slide is glass).  Deterministic
for a given size and seed.

Usage: ``python benchmarks/make_slide.py OUT.tiff [--size 8192] [--seed 0]``
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MPP = 0.5
CELL = 2048


def _sources() -> list[np.ndarray]:
    import large_image
    from PIL import Image

    hgsc = np.asarray(Image.open(ROOT / "data" / "hgsc_nest.jpg").convert("RGB"))
    ts = large_image.open(str(ROOT / "data" / "cmu_small_region.svs"))
    cmu, _ = ts.getRegion(format=large_image.constants.TILE_FORMAT_NUMPY)
    cmu = cmu[:, :, :3]
    # the tissue-rich part of the CMU slide (its top is glass)
    return [hgsc, np.ascontiguousarray(cmu[700:2700, 100:2100])]


def make_slide(out: Path, size: int = 8192, seed: int = 0, fill: float = 0.6) -> Path:
    """Compose the slide and write it; return its path."""
    import tifffile

    rng = np.random.default_rng(seed)
    glass = rng.integers(236, 246, size=(size, size, 1), dtype=np.uint8)
    canvas = np.repeat(glass, 3, axis=2)
    canvas[..., 2] = np.minimum(canvas[..., 2] + 3, 255)
    sources = _sources()
    cells = size // CELL
    for cy in range(cells):
        for cx in range(cells):
            if rng.random() > fill:
                continue
            src = sources[rng.integers(len(sources))]
            piece = np.rot90(src, k=int(rng.integers(4)))
            if rng.random() < 0.5:
                piece = piece[:, ::-1]
            h, w = min(piece.shape[0], CELL - 64), min(piece.shape[1], CELL - 64)
            y0 = int(rng.integers(0, piece.shape[0] - h + 1))
            x0 = int(rng.integers(0, piece.shape[1] - w + 1))
            oy = cy * CELL + (CELL - h) // 2
            ox = cx * CELL + (CELL - w) // 2
            canvas[oy:oy + h, ox:ox + w] = piece[y0:y0 + h, x0:x0 + w]
    levels = [canvas]
    while max(levels[-1].shape[:2]) > 512:
        a = levels[-1]
        a = a[: a.shape[0] // 2 * 2, : a.shape[1] // 2 * 2].astype(np.uint16)
        levels.append(((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2] + 2)
                       // 4).astype(np.uint8))
    part = out.with_name(out.name + ".part")
    opts = dict(tile=(256, 256), compression="jpeg", compressionargs={"level": 90},
                photometric="rgb", resolutionunit="CENTIMETER")
    # Levels as successive top-level pages (as Aperio SVS and OpenSlide's generic tiled TIFF
    # have them): in SubIFDs OpenSlide sees only the base level, and every thumbnail then
    # decodes the whole slide (27 s and a 1 GiB spike at 16384 x 16384).
    with tifffile.TiffWriter(part, bigtiff=True) as tif:
        for i, level in enumerate(levels):
            res = 1e4 / (MPP * 2 ** i)
            tif.write(level, subfiletype=0 if i == 0 else 1, resolution=(res, res), **opts)
    part.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_slide(args.out, args.size, args.seed)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
