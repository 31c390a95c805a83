"""Training throughput (images/s) and GPU utilisation of napari-medseg's trainer on real data.

Swin-UMamba at 256x256, batch 16 per GPU, and Swin SMT at 128^3 windows (batch 2 per GPU), on the MNI152
T1 volume with its white-matter map, through `napari_medseg.training.trainer.train` (AMP, AdamW, DDP):

    python benchmarks/bench_train_gpu.py --model swin_umamba            # one GPU
    torchrun --standalone --nproc_per_node=2 benchmarks/bench_train_gpu.py --model swin_umamba

Each run prints one JSON line (rank 0); ``--json FILE`` appends it there too. Run the 1-GPU and N-GPU
lines and compare ``images_per_s``: scaling efficiency = images/s(N) / (N x images/s(1)).
``--mni FILE.npz`` reads the volume from arrays (``t1``, ``wm``) where nilearn is not installed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time

import numpy as np

MODELS = {  # family: (default batch per GPU, architecture)
    "swin_umamba": (16, {"patch_size": [256, 256]}),
    "swin_smt": (2, {"roi_size": [128, 128, 128], "spacing": [1.0, 1.0, 1.0], "feature_size": 48}),
}


def mni_case(npz: str | None):
    from napari_medseg.io.image import Image
    from napari_medseg.training.datasets import Case

    if npz:
        arrays = np.load(npz)
        t1, wm = arrays["t1"], arrays["wm"]
        affine_origin = tuple(float(v) for v in arrays["origin"])
    else:
        from pathlib import Path

        import nilearn

        from napari_medseg.io import read_image

        data = Path(nilearn.__file__).parent / "datasets" / "data"
        image = read_image(data / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
        t1, affine_origin = image.array, image.origin
        wm = read_image(data / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").array
    image = Image(t1.astype(np.float32), (1.0, 1.0, 1.0), affine_origin, np.eye(3), modality="MR")
    return Case("mni152", image, (wm > 127).astype(np.uint8), classes={1: "white matter"})


class UtilisationSampler(threading.Thread):
    """Samples every GPU's utilisation (%) and memory (MiB) through nvidia-smi while running."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval, self.samples, self.active = interval, [], threading.Event()
        self.stopped = threading.Event()

    def run(self):
        query = ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        while not self.stopped.is_set():
            if self.active.is_set():
                out = subprocess.run(query, capture_output=True, text=True).stdout
                self.samples.append([[float(v) for v in line.split(",")] for line in out.strip().splitlines()])
            time.sleep(self.interval)

    def summary(self, gpus: int) -> dict:
        rows = [s[:gpus] for s in self.samples if len(s) >= gpus]
        if not rows:
            return {}
        array = np.array(rows)  # (samples, gpus, 3)
        return {"gpu_util_mean_percent": [round(float(v), 1) for v in array[:, :, 1].mean(0)],
                "gpu_memory_max_mib": [int(v) for v in array[:, :, 2].max(0)], "util_samples": len(rows)}


def main() -> None:
    import torch

    from napari_medseg.models.registry import get_card
    from napari_medseg.training import distributed
    from napari_medseg.training.families import TrainOptions, make_adapter, scratch_model
    from napari_medseg.training.trainer import TrainConfig, train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--batch", type=int, help="per GPU (default: 16 for swin_umamba, 2 for swin_smt)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--mni", help="npz with t1, wm and origin arrays")
    parser.add_argument("--json", help="append the result line to this file")
    args = parser.parse_args()

    context = distributed.setup("cuda")
    batch, architecture = MODELS[args.model]
    batch = args.batch or batch
    card = get_card({"swin_umamba": "swin-umamba", "swin_smt": "swin-smt"}[args.model])
    case = mni_case(args.mni)
    loaded = scratch_model(card, [case], architecture=architecture)
    adapter = make_adapter(loaded, card.id, context.device, TrainOptions(architecture=architecture),
                           {0: "background", 1: "white matter"})
    adapter.prepare([case], [])
    sampler = UtilisationSampler()
    if context.rank == 0:
        sampler.start()
    stamps = {}

    def progress(done, total, message):
        stamps[done] = time.perf_counter()
        if done == args.warmup and context.rank == 0:
            sampler.active.set()
        if done == args.steps:
            sampler.active.clear()

    config = TrainConfig(steps=args.steps, steps_per_epoch=args.steps, batch_size=batch, lr=1e-4, patience=None,
                         workers=args.workers, warmup=0.0, save_every=1e9)
    torch.cuda.reset_peak_memory_stats(context.device)
    with tempfile.TemporaryDirectory() as out:
        train(adapter, config, out, resume=False, progress=progress)
    sampler.stopped.set()
    seconds = stamps[args.steps] - stamps[args.warmup]
    timed = args.steps - args.warmup
    peak = distributed.mean_float(torch.cuda.max_memory_allocated(context.device) / 2**30, context)
    if context.rank == 0:
        result = {
            "model": args.model, "gpus": context.world, "gpu_name": torch.cuda.get_device_name(context.device),
            "input": architecture.get("patch_size") or architecture.get("roi_size"), "batch_per_gpu": batch,
            "timed_steps": timed, "seconds": round(seconds, 3), "step_ms": round(1000 * seconds / timed, 1),
            "images_per_s": round(timed * batch * context.world / seconds, 2),
            "peak_allocated_gib_per_gpu": round(peak, 2), "amp": "bf16" if torch.cuda.is_bf16_supported() else "fp16",
            "scan_backend": _scan_backend(context.device) if args.model == "swin_umamba" else None,
            **sampler.summary(context.world),
        }
        line = json.dumps(result)
        print(line, flush=True)
        if args.json:
            with open(args.json, "a") as stream:
                stream.write(line + "\n")
    distributed.cleanup()


def _scan_backend(device) -> str:
    from napari_medseg.models.scan import backend_for

    return backend_for(device)


if __name__ == "__main__":
    main()
