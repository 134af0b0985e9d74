"""A 40x-equivalent whole slide of real tissue in a small file: tiles that share their bytes.

A 2048 x 2048 patch of real H&E (the tissue-richest 1024 x 1024 of the CMU Aperio slide,
83 % tissue, at 0.5 um/px, upsampled 2x to 0.25 um/px, the resolution of a 40x scan) is
cut into 16 tiles of 512 x 512, each
JPEG-compressed once (OpenCV, quality 90, YCbCr 4:2:0 as scanners write it). The slide
repeats that patch over its whole area: every tile entry of the base level points at one of
the 16 compressed tiles, so a 5-gigapixel slide is a few megabytes on disk, while reading it
decodes every tile for real (real tissue, real decode cost). Lower levels follow Aperio's 4x
steps (0.25, 1, 4, 16 ... um/px), so an analysis at 0.5 um/px must decode the base level.

The file is a BigTIFF written field by field here (no TIFF writer deduplicates tiles), with
the levels as successive top-level pages, which OpenSlide and large_image read as a pyramid.
Needs only NumPy and OpenCV (what the GPU machine has).

Usage: ``python benchmarks/make_wsi40x.py OUT.tiff [--width 86016 --height 65536]``
"""
from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TILE = 512
PATCH = 2048
MPP = 0.25
QUALITY = 90


def tissue_patch(source: Path | None = None) -> np.ndarray:
    """2048 x 2048 RGB of real tissue at 0.25 um/px (the CMU slide's, upsampled 2x)."""
    source = source or ROOT / "data" / "cmu_small_region.svs"
    if source.suffix == ".npy":
        region = np.load(source)
    else:
        import large_image

        ts = large_image.open(str(source))
        region, _ = ts.getRegion(region=dict(left=704, top=1920, width=1024, height=1024,
                                             units="base_pixels"),
                                 format=large_image.constants.TILE_FORMAT_NUMPY)
        region = np.ascontiguousarray(region[:, :, :3])
    return cv2.resize(region, (PATCH, PATCH), interpolation=cv2.INTER_CUBIC)


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    if not ok:  # pragma: no cover
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _levels(width: int, height: int) -> list[tuple[int, int, int]]:
    """``(width, height, downsample)`` of each level: 4x steps down to <= 2048 px."""
    out, d = [], 1
    while True:
        out.append((-(-width // d), -(-height // d), d))
        if max(out[-1][:2]) <= PATCH:
            return out
        d *= 4


def _level_tiles(patch: np.ndarray, downsample: int) -> tuple[list[bytes], int]:
    """The distinct compressed tiles of one level, and the pattern's period in tiles."""
    if downsample == 1:
        n = PATCH // TILE
        return [_jpeg(np.ascontiguousarray(patch[r * TILE:(r + 1) * TILE,
                                                 c * TILE:(c + 1) * TILE]))
                for r in range(n) for c in range(n)], n
    small = cv2.resize(patch, (PATCH // downsample, PATCH // downsample),
                       interpolation=cv2.INTER_AREA)
    reps = -(-TILE // small.shape[0])
    tile = np.tile(small, (reps, reps, 1))[:TILE, :TILE]
    return [_jpeg(np.ascontiguousarray(tile))], 1


def make_wsi(out: Path, width: int = 86016, height: int = 65536,
             source: Path | None = None, mpp: float = MPP) -> dict:
    """Write the slide (base resolution ``mpp``); return its facts (size, levels, tiles,
    file bytes)."""
    patch = tissue_patch(source)
    levels = _levels(width, height)
    blobs: list[bytes] = []
    pages = []
    for w, h, d in levels:
        tiles, period = _level_tiles(patch, d)
        first = len(blobs)
        blobs.extend(tiles)
        across, down = -(-w // TILE), -(-h // TILE)
        index = [first + (r % period) * period + (c % period)
                 for r in range(down) for c in range(across)]
        pages.append((w, h, d, index))
    part = out.with_name(out.name + ".part")
    with open(part, "wb") as fh:
        fh.write(b"II" + struct.pack("<HHHQ", 43, 8, 0, 0))  # BigTIFF header, IFD patched
        offsets = []
        for blob in blobs:
            offsets.append(fh.tell())
            fh.write(blob)
        ifd_link = 8                                      # where the next IFD offset goes
        for k, (w, h, d, index) in enumerate(pages):
            res = 1e4 / (mpp * d)                         # pixels per centimetre
            tile_offsets = np.array([offsets[i] for i in index], dtype="<u8")
            tile_counts = np.array([len(blobs[i]) for i in index], dtype="<u8")
            arrays = {324: tile_offsets.tobytes(), 325: tile_counts.tobytes()}
            # values of up to 8 bytes live in the entry itself (BigTIFF), longer ones after it
            inline = {tag: data for tag, data in arrays.items() if len(data) <= 8}
            array_at = {}
            for tag, data in arrays.items():
                if tag not in inline:
                    array_at[tag] = fh.tell()
                    fh.write(data)
            rational = struct.pack("<II", int(round(res * 1000)), 1000)
            entries = [
                (254, 4, 1, struct.pack("<II", 0 if k == 0 else 1, 0)),
                (256, 4, 1, struct.pack("<II", w, 0)), (257, 4, 1, struct.pack("<II", h, 0)),
                (258, 3, 3, struct.pack("<HHHH", 8, 8, 8, 0)),
                (259, 3, 1, struct.pack("<HHHH", 7, 0, 0, 0)),     # JPEG
                (262, 3, 1, struct.pack("<HHHH", 6, 0, 0, 0)),     # YCbCr
                (277, 3, 1, struct.pack("<HHHH", 3, 0, 0, 0)),
                (282, 5, 1, rational), (283, 5, 1, rational),
                (284, 3, 1, struct.pack("<HHHH", 1, 0, 0, 0)),
                (296, 3, 1, struct.pack("<HHHH", 3, 0, 0, 0)),     # centimetre
                (322, 3, 1, struct.pack("<HHHH", TILE, 0, 0, 0)),
                (323, 3, 1, struct.pack("<HHHH", TILE, 0, 0, 0)),
                (324, 16, len(index), inline.get(324) or struct.pack("<Q", array_at.get(324))),
                (325, 16, len(index), inline.get(325) or struct.pack("<Q", array_at.get(325))),
                (530, 3, 2, struct.pack("<HHHH", 2, 2, 0, 0)),     # 4:2:0
            ]
            if fh.tell() % 2:
                fh.write(b"\0")
            ifd_at = fh.tell()
            fh.write(struct.pack("<Q", len(entries)))
            for tag, typ, count, value in entries:
                fh.write(struct.pack("<HHQ", tag, typ, count) + value)
            next_link = fh.tell()
            fh.write(struct.pack("<Q", 0))
            fh.seek(ifd_link)
            fh.write(struct.pack("<Q", ifd_at))
            fh.seek(0, 2)
            ifd_link = next_link
    part.replace(out)
    return {"width": width, "height": height, "mpp": mpp, "levels": len(pages),
            "base_tiles": len(pages[0][3]), "distinct_tiles": len(blobs),
            "gigapixels": round(width * height / 1e9, 3), "bytes": out.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=86016)
    parser.add_argument("--height", type=int, default=65536)
    args = parser.parse_args(argv)
    print(make_wsi(args.out, args.width, args.height))
    return 0


if __name__ == "__main__":
    sys.exit(main())
