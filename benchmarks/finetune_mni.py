"""Evidence on real data without downloads: nilearn's MNI152 T1 and its white-matter map (> 50 %).

Axial slices 50..130 (every 4th) train, slices 88..102 (every 2nd, never trained on, 4+ slices away from
any training slice) are held out. Each model is trained through `napari_medseg.training.pipeline.fine_tune`
(which holds out part of the training slices for its own validation and keeps the best epoch), then the
saved file is loaded like an official one and scored on the held-out slices through the normal
prediction path:

    python benchmarks/finetune_mni.py lite-medsam --steps 60            # box prompts: Dice before and after
    python benchmarks/finetune_mni.py swin-umamba-d --scratch --steps 1500 --device cuda   # new automatic model

``--quick`` shrinks everything for a smoke run. Prints one table row (and a JSON line).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

TRAIN_SLICES = [z for z in range(50, 131, 4) if not 84 < z < 106]
HELD_OUT = list(range(88, 103, 2))


def mni(npz: str | None):
    from napari_medseg.io.image import Image

    if npz:
        arrays = np.load(npz)
        t1, wm, origin = arrays["t1"], arrays["wm"], tuple(float(v) for v in arrays["origin"])
    else:
        from pathlib import Path

        import nilearn

        from napari_medseg.io import read_image

        data = Path(nilearn.__file__).parent / "datasets" / "data"
        image = read_image(data / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
        t1, origin = image.array, image.origin
        wm = read_image(data / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").array
    return Image(t1, (1.0, 1.0, 1.0), origin, np.eye(3), modality="MR"), (wm > 127).astype(np.uint8)


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    total = predicted.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(predicted, truth).sum() / total)


def held_out_dice(loaded, image, labels, slices) -> float:
    """Mean Dice over held-out slices: box models get the white matter's bounding box on each slice."""
    from napari_medseg.inference.auto2d import predict_auto2d
    from napari_medseg.segmentation import segment
    from napari_medseg.training.datasets import box_of

    if loaded.task == "box2d":
        scores = []
        for z in slices:
            box = box_of(labels[z] > 0)
            predicted = segment(image, loaded, box=(*box, z))[z] > 0
            scores.append(dice(predicted, labels[z] > 0))
        return float(np.mean(scores))
    predicted = predict_auto2d(loaded, image, slices=slices)
    return float(np.mean([dice(predicted[z] > 0, labels[z] > 0) for z in slices]))


def main() -> None:
    from napari_medseg.models.families import load_checkpoint
    from napari_medseg.models.registry import get_card
    from napari_medseg.models.weights import weights_path
    from napari_medseg.training.datasets import Case
    from napari_medseg.training.families import TrainOptions
    from napari_medseg.training.pipeline import fine_tune
    from napari_medseg.training.trainer import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="registry id, e.g. lite-medsam, swin-umamba-d, vm-unet-synapse")
    parser.add_argument("--scratch", action="store_true", help="a new network instead of the registry's weights")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--patch", type=int, nargs=2, help="patch size of a new nnU-Net model (default from the data)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few slices and steps (smoke test)")
    parser.add_argument("--mni", help="npz with t1, wm and origin arrays (where nilearn is absent)")
    args = parser.parse_args()

    image, labels = mni(args.mni)
    train_slices, held_out = (TRAIN_SLICES[::4], HELD_OUT[::3]) if args.quick else (TRAIN_SLICES, HELD_OUT)
    steps = 4 if args.quick else args.steps
    card = get_card(args.model)
    architecture = {"patch_size": list(args.patch)} if args.patch else {}
    before = None
    if not args.scratch:
        base = load_checkpoint(weights_path(card), family=card.family)
        before = held_out_dice(base.to(_device(args.device)), image, labels, held_out)
    case = Case("mni152", image, labels, {"all": False, "slices": train_slices}, classes={1: "white matter"})
    config = TrainConfig(steps=steps, steps_per_epoch=min(args.steps_per_epoch, steps), batch_size=args.batch_size,
                         lr=args.lr, warmup=0.05, patience=None, workers=args.workers)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        summary = fine_tune(args.model, out, cases=[case], scratch=args.scratch, config=config,
                            options=TrainOptions(architecture=architecture), device=args.device, register=False,
                            log=lambda *_: None)
        trained = load_checkpoint(summary["weights"], family=card.family).to(_device(args.device))
        after = held_out_dice(trained, image, labels, held_out)
    row = {"model": args.model, "start": "scratch" if args.scratch else "registry weights", "device": _device(args.device),
           "train_slices": len(train_slices), "held_out_slices": len(held_out), "steps": summary["steps"],
           "batch": args.batch_size, "train_s": round(time.perf_counter() - started, 1),
           "held_out_dice_before": None if before is None else round(before, 4), "held_out_dice_after": round(after, 4),
           "internal_val_dice_best": summary["best_dice"] and round(summary["best_dice"], 4)}
    print("| model | start | device | steps | held-out Dice before | after |")
    print(f"| {row['model']} | {row['start']} | {row['device']} | {row['steps']} | "
          f"{row['held_out_dice_before'] if before is not None else '-'} | {row['held_out_dice_after']} |")
    print(json.dumps(row), flush=True)


def _device(device: str) -> str:
    from napari_medseg.device import resolve_device

    return str(resolve_device(device))


if __name__ == "__main__":
    main()
