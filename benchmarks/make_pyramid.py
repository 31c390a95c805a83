"""Build a large RGB pyramid from real tiles, as OME-Zarr and as pyramidal OME-TIFF, chunk by chunk (issue 21).

    python benchmarks/make_pyramid.py /tmp/pyramid [--size 20000] [--tile 512]

writes /tmp/pyramid/slide.ome.zarr and /tmp/pyramid/slide.ome.tif. Every 1024^2 block of the full resolution is a
crop of one of scikit-image's bundled real images (IHC stain, retina fundus, the grey `cell` micrograph shown as
RGB; cells3d needs a download and is used when skimage has it cached), flipped, rotated by a multiple of 90
degrees and jittered in brightness/contrast per channel, seeded by the block's position (the same file every
run). Nothing holds the full image: level 0 is written block by block, each coarser level is the 2x2 mean of the
previous one read back block by block, and the OME-TIFF's tiles are streamed from the OME-Zarr levels.
Pixel size 0.5 micrometre. Never write into the repository.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

BLOCK = 1024
PIXEL_UM = 0.5


def sources() -> list[np.ndarray]:
    """Real RGB uint8 images bundled with scikit-image (cells3d too when it is cached locally)."""
    from skimage import data

    images = [data.immunohistochemistry(), data.retina()]
    cell = data.cell()
    images.append(np.stack([255 - cell, 255 - cell // 2, 255 - cell // 3], axis=-1).astype(np.uint8))
    from skimage.data import _fetchers

    if (Path(_fetchers._image_fetcher.path) / "data" / "cells3d.tif").is_file():  # cached: no download
        cells = data.cells3d()[30]  # (2, 256, 256): membranes, nuclei
        rgb = np.stack([cells[0], cells[1], cells[0] // 2 + cells[1] // 2], axis=-1).astype(np.float32)
        images.append((255 * rgb / rgb.max()).astype(np.uint8))
    return images


def block(images: list[np.ndarray], by: int, bx: int, shape: tuple[int, int], seed: int = 21) -> np.ndarray:
    """The full-resolution block at block row ``by``, column ``bx``: a varied crop of one source image."""
    rng = np.random.default_rng([seed, by, bx])
    src = images[int(rng.integers(len(images)))]
    crop = min(BLOCK, src.shape[0], src.shape[1])
    y0 = int(rng.integers(src.shape[0] - crop + 1))
    x0 = int(rng.integers(src.shape[1] - crop + 1))
    tile = src[y0:y0 + crop, x0:x0 + crop]
    tile = np.rot90(tile, int(rng.integers(4)))
    if rng.random() < 0.5:
        tile = tile[:, ::-1]
    if crop < BLOCK:  # small sources (IHC 512^2) are mirrored up to the block size
        reps = math.ceil(BLOCK / crop)
        tile = np.concatenate([tile if i % 2 == 0 else tile[::-1] for i in range(reps)], axis=0)
        tile = np.concatenate([tile if i % 2 == 0 else tile[:, ::-1] for i in range(reps)], axis=1)
    gain = rng.uniform(0.85, 1.15, 3)
    offset = rng.uniform(-12, 12, 3)
    out = np.clip(tile[:BLOCK, :BLOCK].astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
    return out[:shape[0], :shape[1]]


def level_shapes(size: int, tile: int) -> list[tuple[int, int]]:
    shapes = [(size, size)]
    while max(shapes[-1]) > tile:
        shapes.append(tuple((s + 1) // 2 for s in shapes[-1]))
    return shapes


def write_zarr(folder: Path, size: int, tile: int) -> Path:
    import zarr
    from numcodecs import Blosc

    images = sources()
    path = folder / "slide.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    shapes = level_shapes(size, tile)
    compressor = Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE)
    arrays = [root.create_array(str(i), shape=(3, *s), chunks=(3, tile, tile), dtype=np.uint8,
                                compressors=compressor, chunk_key_encoding={"name": "v2", "separator": "/"})
              for i, s in enumerate(shapes)]
    for by in range(math.ceil(size / BLOCK)):
        for bx in range(math.ceil(size / BLOCK)):
            y, x = by * BLOCK, bx * BLOCK
            h, w = min(BLOCK, size - y), min(BLOCK, size - x)
            arrays[0][:, y:y + h, x:x + w] = np.moveaxis(block(images, by, bx, (h, w)), -1, 0)
        print(f"\rlevel 0: row {by + 1}/{math.ceil(size / BLOCK)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    step = 4 * tile  # finer-level rows read per block
    for level in range(1, len(shapes)):
        finer, coarser = arrays[level - 1], arrays[level]
        for y in range(0, finer.shape[1], step):
            for x in range(0, finer.shape[2], step):
                part = finer[:, y:y + step, x:x + step].astype(np.float32)
                ph, pw = part.shape[1] + part.shape[1] % 2, part.shape[2] + part.shape[2] % 2
                part = np.pad(part, ((0, 0), (0, ph - part.shape[1]), (0, pw - part.shape[2])), mode="edge")
                mean = part.reshape(3, ph // 2, 2, pw // 2, 2).mean(axis=(2, 4))
                coarser[:, y // 2:y // 2 + mean.shape[1], x // 2:x // 2 + mean.shape[2]] = np.round(mean)
    axes = [{"name": "c", "type": "channel"}] + [{"name": a, "type": "space", "unit": "micrometer"} for a in "yx"]
    datasets = [{"path": str(i), "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, PIXEL_UM * size / s[0], PIXEL_UM * size / s[1]]}]}
        for i, s in enumerate(shapes)]
    root.attrs.update({
        "multiscales": [{"version": "0.4", "name": "slide", "axes": axes, "datasets": datasets}],
        "omero": {"version": "0.4", "channels": [
            {"label": name, "color": color, "window": {"start": 0, "end": 255, "min": 0, "max": 255}, "active": True}
            for name, color in (("R", "FF0000"), ("G", "00FF00"), ("B", "0000FF"))], "rdefs": {"model": "color"}},
    })
    return path


def write_ome_tiff(folder: Path, zarr_path: Path, tile: int) -> Path:
    """Pyramidal OME-TIFF (levels as SubIFDs), tiles streamed from the OME-Zarr levels."""
    import tifffile
    import zarr

    root = zarr.open_group(str(zarr_path), mode="r")
    levels = [root[str(i)] for i in range(len(list(root.array_keys())))]
    path = folder / "slide.ome.tif"

    def tiles(array):
        for y in range(0, array.shape[1], tile):
            for x in range(0, array.shape[2], tile):
                yield np.ascontiguousarray(np.moveaxis(array[:, y:y + tile, x:x + tile], 0, -1))

    options = {"tile": (tile, tile), "photometric": "rgb", "compression": "zlib", "compressionargs": {"level": 3},
               "dtype": np.uint8}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        shape = levels[0].shape
        tif.write(tiles(levels[0]), shape=(shape[1], shape[2], 3), subifds=len(levels) - 1,
                  resolution=(1e4 / PIXEL_UM, 1e4 / PIXEL_UM), resolutionunit="CENTIMETER",
                  metadata={"axes": "YXS", "PhysicalSizeX": PIXEL_UM, "PhysicalSizeXUnit": "µm",
                            "PhysicalSizeY": PIXEL_UM, "PhysicalSizeYUnit": "µm"}, **options)
        for level in levels[1:]:
            tif.write(tiles(level), shape=(level.shape[1], level.shape[2], 3), subfiletype=1, metadata=None,
                      **options)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="output folder (outside the repository, e.g. /tmp/pyramid)")
    parser.add_argument("--size", type=int, default=20000, help="side of the square image in pixels")
    parser.add_argument("--tile", type=int, default=512, help="chunk/tile side")
    parser.add_argument("--no-tiff", action="store_true", help="only the OME-Zarr")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if (Path(__file__).resolve().parents[1] / ".git").exists() and \
            Path(__file__).resolve().parents[1] in folder.resolve().parents:
        print("make_pyramid: write outside the repository (e.g. /tmp/pyramid)", file=sys.stderr)
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    zarr_path = write_zarr(folder, args.size, args.tile)
    print(f"{zarr_path}: {time.perf_counter() - start:.0f} s")
    if not args.no_tiff:
        start = time.perf_counter()
        tiff_path = write_ome_tiff(folder, zarr_path, args.tile)
        print(f"{tiff_path}: {time.perf_counter() - start:.0f} s, {tiff_path.stat().st_size / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
