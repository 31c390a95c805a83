"""Zoomed box prompts vs the full-image recipe (issue 21): mask quality on small objects, and one cell of a
20,000 x 20,000 x 3 lazy image, with the real LiteMedSAM weights on this CPU.

    python benchmarks/bench_zoom.py [--objects 24] [--tiles 4] [--side 20000] [--threads N]

Quality: synthetic nuclei of known outline pasted into a mosaic of scikit-image's IHC photograph
(tests/inference/zoom_set.py); boxes are their bounding boxes with 0-2 px of jitter; Dice against the
pasted outline for zoom "off" (the whole image at the model's 256 px) and "auto" (crops around each box).
Speed: a dask array made lazily from a 512 px tile (mirrored), nothing of it on disk; a box around one
nucleus through ``napari_medseg.segment``; wall and process-CPU time, resident memory before and after
(target: mask in <= 1.5 s, growth <= 300 MB). The load average is printed: other processes on a shared
machine inflate wall times.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "inference"))
import zoom_set  # noqa: E402


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def quality(loaded, objects: int, tiles: int) -> None:
    from napari_medseg.inference.box2d import BoxPredictor
    from napari_medseg.inference.zoom import predict_box

    image, nuclei = zoom_set.paste_nuclei(zoom_set.tissue(tiles), objects)
    hw = image.shape[:2]
    fractions = np.array([n.mask.sum() / image[..., 0].size for n in nuclei])
    predictor = BoxPredictor(loaded, device="cpu")
    predictor.set_image(image)
    full = np.array([zoom_set.dice(predictor.predict(box=n.box), n.full(hw)) for n in nuclei])
    start = time.perf_counter()
    zoomed = np.array([zoom_set.dice(predict_box(predictor, image, n.box, "auto"), n.full(hw)) for n in nuclei])
    seconds = (time.perf_counter() - start) / len(nuclei)
    print(f"## Quality: {len(nuclei)} synthetic nuclei in a {hw[1]}x{hw[0]} IHC mosaic, LiteMedSAM (256 px input)")
    print(f"object area: {100 * fractions.min():.3f}-{100 * fractions.max():.3f} % of the image "
          f"(all < 1 %: {bool((fractions < 0.01).all())})")
    print("| recipe | mean Dice | min | median |")
    print("|---|---|---|---|")
    for name, scores in (("full image (zoom off)", full), ("zoomed (zoom auto)", zoomed)):
        print(f"| {name} | {scores.mean():.3f} | {scores.min():.3f} | {np.median(scores):.3f} |")
    print(f"zoomed better on {int((zoomed > full).sum())}/{len(nuclei)} objects; {seconds:.2f} s per zoomed box\n")


def lazy_cell(loaded, side: int) -> None:
    import dask.array as da

    from napari_medseg.segmentation import segment

    tile, nuclei = zoom_set.paste_nuclei(zoom_set.tissue(1), 4, radius=(12, 18), seed=3)
    source = zoom_set.MirroredTissue(tile, side, side)
    image = da.from_array(source, chunks=(1024, 1024, 3), meta=np.empty((0, 0, 0), np.uint8))
    copies = side // 1024 - 1
    segment(image, loaded, box=source.at(nuclei[1].box, 1, 1))  # warm: first calls, another cell's crop
    source.read = 0
    before, peak_before = rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    nucleus = nuclei[0]
    box = source.at(nucleus.box, copies // 2, copies // 2)
    wall, cpu = time.perf_counter(), time.process_time()
    labels = segment(image, loaded, box=box)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after, peak_after = rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    dy, dx = (copies // 2) * 2 * tile.shape[0], (copies // 2) * 2 * tile.shape[1]
    rows, cols = slice(nucleus.rows.start + dy, nucleus.rows.stop + dy), slice(nucleus.cols.start + dx, nucleus.cols.stop + dx)
    found = labels[rows, cols] == 1
    outside = int(np.count_nonzero(labels[rows.start - 300:rows.stop + 300, cols.start - 300:cols.stop + 300])) - int(found.sum())
    print(f"## One cell of a {side}x{side}x3 lazy image (dask, {image.nbytes / 2**30:.1f} GiB if read whole)")
    print("| mask | wall | process CPU | RSS growth | peak RSS growth | pixels read | Dice |")
    print("|---|---|---|---|---|---|---|")
    print(f"| box {tuple(round(v) for v in box)} | {wall:.2f} s | {cpu:.2f} s | {after - before:.0f} MB | "
          f"{peak_after - peak_before:.0f} MB | {source.read:,} ({100 * source.read / (side * side):.4f} %) | "
          f"{zoom_set.dice(found, nucleus.mask):.3f} (outside the nucleus: {outside} px) |")
    from napari_medseg.inference.box2d import BoxPredictor

    predictor, crop = BoxPredictor(loaded, device="cpu"), np.asarray(source[:256, 512:768])
    predictor.set_image(crop[::-1])
    wall_e, cpu_e = time.perf_counter(), time.process_time()
    predictor.set_image(crop)
    print(f"of which the image encoder alone on a 256 px crop takes {time.perf_counter() - wall_e:.2f} s wall, "
          f"{time.process_time() - cpu_e:.2f} s CPU now (benchmarks/bench_lite_medsam_cpu.py tracks it)")
    print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=24)
    parser.add_argument("--tiles", type=int, default=4, help="the quality mosaic is 512 x tiles px square")
    parser.add_argument("--side", type=int, default=20000)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    import torch

    from napari_medseg.models import load_checkpoint
    from napari_medseg.models.sam_family import bundled_lite_medsam_path

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_checkpoint(bundled_lite_medsam_path())
    lazy_cell(loaded, args.side)
    print()
    if not args.skip_quality:
        quality(loaded, args.objects, args.tiles)


if __name__ == "__main__":
    main()
