"""LiteMedSAM propagation through 100 axial slices of the MNI152 template on the CPU, cold and warm cache.

    python benchmarks/bench_propagation_cpu.py [--slices 100] [--precision faithful]

Cold: a fresh predictor with an empty on-disk embedding store (every slice runs the image encoder).
Warm: another fresh predictor (empty memory cache, as after a restart) reading the same store.
The template ships with nilearn (no download). Prints nproc, the load average and process CPU time,
since on a shared machine other processes inflate wall times.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def run(predictor, volume, start, seed, count):
    from napari_medseg.inference.propagation import UP, propagate_slices

    wall, cpu, done = time.perf_counter(), time.process_time(), 0
    window = (float(volume.min()), float(volume.max()))  # one intensity mapping for every slice
    for _ in propagate_slices(predictor, volume.__getitem__, len(volume), start, seed, directions=UP, display_range=window,
                              min_area_fraction=0.0, max_intensity_change=float("inf")):
        done += 1
        if done == count:
            break
    return done, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--precision", default="faithful", choices=["faithful", "fast"])
    args = parser.parse_args()

    import torch
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    from napari_medseg.inference.box2d import BoxPredictor
    from napari_medseg.inference.embedding_cache import EmbeddingStore
    from napari_medseg.models import load_checkpoint
    from napari_medseg.models.sam_family import bundled_lite_medsam_path

    # nibabel's (x, y, z) to axial slices (z, y, x), head up
    volume = np.ascontiguousarray(np.asarray(load_mni152_template(resolution=1).dataobj).transpose(2, 1, 0)[:, ::-1])
    brain = np.asarray(load_mni152_brain_mask(resolution=1).dataobj).transpose(2, 1, 0)[:, ::-1] > 0
    start = int(np.nonzero(brain.reshape(len(brain), -1).any(1))[0][0]) + 10
    loaded = load_checkpoint(bundled_lite_medsam_path())
    print(f"nproc {os.cpu_count()}  torch threads {torch.get_num_threads()}  load average {os.getloadavg()}")
    print(f"MNI152 {volume.shape} {volume.dtype}; propagating the brain mask up from axial slice {start}")
    with tempfile.TemporaryDirectory() as folder:
        rows = []
        for name in ("cold", "warm"):
            predictor = BoxPredictor(loaded, device="cpu", precision=args.precision, store=EmbeddingStore(folder))
            done, wall, cpu = run(predictor, volume, start, brain[start], args.slices)
            rows.append((name, predictor.precision, done, wall / done, cpu / done, predictor.store.hits))
        print(f"{'cache':6} {'precision':9} {'slices':>6} {'total s':>8} {'s/slice wall':>12} {'s/slice cpu':>11} "
              f"{'disk hits':>9}")  # target (issue 16): 100 slices cold in <= 40 s
        for name, precision, done, wall, cpu, hits in rows:
            print(f"{name:6} {precision:9} {done:6d} {wall * done:8.1f} {wall:12.3f} {cpu:11.3f} {hits:9d}")
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
