"""A 512 x 512 x 300 CT through Swin-UMamba, end to end on a GPU: read, normalise, predict, write.

    python benchmarks/bench_ct_auto2d_gpu.py [--family swin_umamba] [--batch-size 8] [--slices 300]

The CT is a synthetic HU phantom written as NIfTI (0.8 x 0.8 x 2.5 mm); the model is an nnU-Net
checkpoint in the official format with random weights, plans made by the training code (CTNormalization,
the CT's in-plane spacing, patch 512^2: one window per slice, as nnU-Net plans abdominal CT). The timed
run is what ``medseg segment`` does: ``read_image`` -> ``predict_auto2d`` -> ``write_labels``.
Target: <= 5 s on an H100.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def ct_volume(slices: int) -> np.ndarray:
    """(z, y, x) int16 HU: body ellipse, lungs, spine, organs, noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[-1:1:512j, -1:1:512j].astype(np.float32)
    plane = np.full((512, 512), -1000, np.float32)
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 < 1
    plane[body] = 40
    plane[body & (((np.abs(x) - 0.4) / 0.25) ** 2 + (y / 0.35) ** 2 < 1)] = -850
    plane[(x / 0.1) ** 2 + ((y - 0.45) / 0.1) ** 2 < 1] = 700
    volume = np.repeat(plane[None], slices, axis=0)
    volume += rng.normal(0, 15, volume.shape).astype(np.float32)
    return volume.astype(np.int16)


def write_checkpoint(family: str, image, path: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from training.auto2d import _nnunet_network, nnunet_plans, save_nnunet_network
    from training.datasets import Case

    labels = (image.array > 200).astype(np.uint8)
    classes = {0: "background", 1: "bone", 2: "lung"}
    labels[image.array < -500] = 2
    trainer = "nnUNetTrainerSwinUMamba" if family == "swin_umamba" else "nnUNetTrainerSwinUMambaD"
    record, _ = nnunet_plans([Case("ct", image, labels)], classes, [512, 512], trainer)
    torch.manual_seed(0)
    return save_nnunet_network(_nnunet_network(family, 1, len(classes)), record, path)


def main() -> None:
    from napari_medseg.inference.auto2d import predict_auto2d
    from napari_medseg.io import read_image, write_labels
    from napari_medseg.io.image import Image
    from napari_medseg.models import load_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="swin_umamba", choices=("swin_umamba", "swin_umamba_d"))
    parser.add_argument("--batch-size", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    folder = Path(tempfile.mkdtemp())
    source = Image(array=ct_volume(args.slices), spacing=(0.8, 0.8, 2.5), origin=(0.0, 0.0, 0.0),
                   direction=np.eye(3), modality="CT", intensity="HU")
    ct_path = folder / "ct.nii.gz"
    import SimpleITK as sitk

    ct = sitk.GetImageFromArray(source.array)
    ct.SetSpacing(source.spacing)
    sitk.WriteImage(ct, str(ct_path))
    checkpoint = write_checkpoint(args.family, source, folder / "checkpoint_final.pth")
    loaded = load_checkpoint(checkpoint, family=args.family)
    from napari_medseg.models import scan

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.family}, scan backend "
          f"{scan.backend_for(torch.device('cuda'))}, CT 512 x 512 x {args.slices} ({ct_path.stat().st_size / 2**20:.0f} MiB "
          "NIfTI)")
    small = source.with_array(source.array[:8])
    for batch in args.batch_size:
        start = time.perf_counter()
        predict_auto2d(loaded, small, device="cuda", batch_size=batch)  # warm-up: cuDNN autotuning, graph capture
        torch.cuda.synchronize()
        print(f"batch {batch:2d}: first use (cuDNN autotuning, Triton kernels compiled or read from Triton's cache, "
              f"CUDA graph capture) {time.perf_counter() - start:.2f} s")
        times = {}
        start = time.perf_counter()
        image = read_image(ct_path)
        times["read"] = time.perf_counter() - start
        labels = predict_auto2d(loaded, image, device="cuda", batch_size=batch)
        torch.cuda.synchronize()
        times["predict"] = time.perf_counter() - start - times["read"]
        write_labels(labels, image, folder / "labels.nii.gz", label_names=loaded.classes)
        total = time.perf_counter() - start
        times["write"] = total - times["read"] - times["predict"]
        print(f"batch {batch:2d}: end to end {total:5.2f} s ({'meets' if total <= 5 else 'MISSES'} <= 5 s): "
              + ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
              + f"; predict {1000 * times['predict'] / args.slices:.2f} ms/slice")


if __name__ == "__main__":
    main()
