"""Large-image numbers of issue 21 on the pyramid of benchmarks/make_pyramid.py.

    python benchmarks/bench_large_image.py /tmp/pyramid/slide.ome.zarr [--labels-folder /tmp/pyramid]
    python benchmarks/bench_large_image.py /tmp/pyramid/slide.ome.tif

Prints: time to first view (imports + `read_image` + the lowest level + one full-resolution 1024^2 tile; the
imports, shown apart, are cold only for the first file of the process), the process's resident memory (RSS) at its peak while
browsing (60 views: full-resolution 1024^2 tiles and 2048^2 views of the coarser levels, as napari reads them
when panning and zooming), and for OME-Zarr labels on the same grid: the share of the label pyramid's bytes
written by a save after editing one region (targets: <= 3 s, <= 1.5 GB, <= 5 %).
"""
from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def first_view(path: Path):
    """(image, seconds to first view, of which imports): the imports (zarr, dask: napari itself loads dask at
    start) are paid by the first file of the process only."""
    start = time.perf_counter()
    import dask.array  # noqa: F401
    import zarr  # noqa: F401

    from napari_medseg.io import read_image

    imports = time.perf_counter() - start
    image = read_image(path)
    levels = image.metadata["levels"]
    np.asarray(levels[-1])
    h, w = image.spatial_shape
    tile = np.asarray(image.array[h // 2:h // 2 + 1024, w // 2:w // 2 + 1024])
    seconds = time.perf_counter() - start
    assert tile.shape[:2] == (1024, 1024)
    return image, seconds, imports


def browse(image, views: int = 60, seed: int = 0) -> float:
    """Peak RSS (MiB) over ``views`` reads at random places and levels."""
    rng = np.random.default_rng(seed)
    levels = image.metadata["levels"]
    peak = rss_mb()
    for i in range(views):
        level = levels[0] if i % 2 == 0 else levels[int(rng.integers(1, len(levels)))]
        side = 1024 if level is levels[0] else 2048
        h, w = level.shape[:2]
        y, x = int(rng.integers(max(h - side, 1))), int(rng.integers(max(w - side, 1)))
        np.asarray(level[y:y + side, x:x + side])
        peak = max(peak, rss_mb())
    return peak


def label_edit(image, folder: Path) -> None:
    from napari_medseg.io.omezarr import write_zarr_labels

    out = folder / "bench_labels.zarr"
    shutil.rmtree(out, ignore_errors=True)
    h, w = image.spatial_shape
    labels = np.zeros((h, w), np.uint8)  # what a napari labels layer holds
    rng = np.random.default_rng(1)
    yy, xx = np.ogrid[-40:41, -40:41]
    disc = (yy ** 2 + xx ** 2) <= 40 ** 2
    for _ in range(200):  # earlier annotations scattered over the slide
        y, x = int(rng.integers(100, h - 100)), int(rng.integers(100, w - 100))
        labels[y - 40:y + 41, x - 40:x + 41][disc] = 1
    start = time.perf_counter()
    first = write_zarr_labels(labels, image, out, {1: "nucleus", 2: "tumour"}, label_colors={2: (255, 0, 0)})
    print(f"labels first save: {time.perf_counter() - start:.1f} s, {first.chunks_written} chunks, "
          f"{first.chunk_bytes / 2**20:.1f} MiB stored")
    y, x = h // 3, w // 3
    labels[y:y + 600, x:x + 900] = 2  # one edited region (a tumour outline filled in)
    start = time.perf_counter()
    second = write_zarr_labels(labels, image, out, {1: "nucleus", 2: "tumour"}, label_colors={2: (255, 0, 0)})
    total_chunks = sum(1 for p in out.rglob("*") if p.is_file() and not p.name.startswith(".z"))
    print(f"labels save after editing one 600x900 region: {time.perf_counter() - start:.1f} s (every chunk compared), "
          f"{second.chunks_written} chunks written of {total_chunks} stored, "
          f"{second.changed_voxels_bytes / 2**20:.1f} MiB of the {second.total_bytes / 2**20:.0f} MiB label pyramid "
          f"= {100 * second.fraction:.2f} % (target <= 5 %); {second.chunk_bytes / 1024:.0f} KiB stored bytes")
    start = time.perf_counter()
    third = write_zarr_labels(labels, image, out, {1: "nucleus", 2: "tumour"}, label_colors={2: (255, 0, 0)},
                              regions=[(slice(y, y + 600), slice(x, x + 900))])
    print(f"labels save of the same edit with its dirty region given: {time.perf_counter() - start:.2f} s, "
          f"{third.chunks_written} chunks written (nothing changed since)")
    shutil.rmtree(out, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, help="slide.ome.zarr and/or slide.ome.tif")
    parser.add_argument("--labels-folder", type=Path, help="where the label benchmark writes (default: beside the "
                        "first image); no label benchmark with --no-labels")
    parser.add_argument("--no-labels", action="store_true")
    args = parser.parse_args(argv)
    for index, path in enumerate(args.images):
        image, seconds, imports = first_view(path)
        print(f"{path.name}: {image.spatial_shape[0]}x{image.spatial_shape[1]}x{image.array.shape[-1]}, "
              f"{len(image.metadata['levels'])} levels; time to first view {seconds:.2f} s, of which imports "
              f"{imports:.2f} s ({'cold' if index == 0 else 'warm'}); target <= 3 s")
        peak = browse(image)
        print(f"{path.name}: peak RSS while browsing 60 views {peak:.0f} MiB (target <= 1536 MiB)")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process max RSS so far (getrusage): {maxrss:.0f} MiB")
    if not args.no_labels:
        label_edit(image, args.labels_folder or args.images[0].parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
