"""Swin-UMamba / Swin-UMamba† forward on a CUDA GPU: the official network as its users run it against ours.

    python benchmarks/bench_swin_umamba_gpu.py [--family swin_umamba_d] [--checkpoint checkpoint_final.pth]
                                               [--official-repo /path/to/Swin-UMamba]

PyTorch's default backend flags throughout (as the official code runs). With --official-repo (a clone of
JiarunLiu/Swin-UMamba) the authors' SwinUMamba network gets the same weights and is timed in fp32, under
nnU-Net's predictor's autocast (float16) and under that autocast with a CUDA graph; arg-max agreement is
against the official network in strict float32 (TF32 off for that reference only).
For batch 1 at 256^2 and batch 8 at 512^2 it times ours in
  * fp32 eager                 (the official computation; the scan always runs in fp32)
  * bf16 and fp16 (nnU-Net's choice) autocast eager
  * bf16 and fp16 autocast + CUDA graph (the whole forward captured once, replayed)
  * bf16 autocast + torch.compile (--compile-mode, default "default"; the PyTorch scan stays eager)
and reports ms per batch, images/s, TFLOP/s (convolutions and matrix products counted by
torch.utils.flop_counter; the selective scan's elementwise work is not counted) and the arg-max
agreement with fp32. Then it times the fp32 forward with each selective-scan backend (the project's
chunked PyTorch scan and mamba_ssm's CUDA kernel, when installed) and their largest logit difference.
Without --checkpoint the network has random weights (the official initialisation), with 14 classes, and random
inputs: many pixels then have near-tied class logits. ``--train-steps N`` instead trains a new network on MNI152
white matter through the project's pipeline and feeds it mosaics of held-out MNI slices.
"""
from __future__ import annotations

import argparse
import contextlib
import os

import torch
from gpu_timing import cuda_ms, graphed, strict_fp32

from napari_medseg.models import scan


def build(family: str, checkpoint: str | None):
    if checkpoint:
        from napari_medseg.models import load_checkpoint

        loaded = load_checkpoint(checkpoint, family=family)
        return loaded.network, len(loaded.preprocessing["channels"])
    from napari_medseg.models.swin_umamba import SwinUMamba, SwinUMambaD

    torch.manual_seed(0)
    return (SwinUMamba(1, 14) if family == "swin_umamba" else SwinUMambaD(1, 14)), 1


def trained_on_mni(family: str, npz: str | None, steps: int, device: str = "cuda"):
    """A new network trained from scratch through the project's pipeline on MNI152 white matter (the
    training slices of finetune_mni.py): trained logits have the margins random ones lack."""
    import tempfile
    import time

    from finetune_mni import TRAIN_SLICES, mni

    from napari_medseg.models import load_checkpoint
    from napari_medseg.training.datasets import Case
    from napari_medseg.training.pipeline import fine_tune
    from napari_medseg.training.trainer import TrainConfig

    image, labels = mni(npz)
    case = Case("mni152", image, labels, {"all": False, "slices": TRAIN_SLICES}, classes={1: "white matter"})
    config = TrainConfig(steps=steps, steps_per_epoch=min(steps, 100), batch_size=16, lr=1e-3, patience=None)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        model = family.replace("_", "-")
        summary = fine_tune(model, out, cases=[case], scratch=True, config=config, device=device, register=False,
                            log=lambda *_: None)
        loaded = load_checkpoint(summary["weights"], family=family)
    print(f"trained {steps} steps (batch 16) on MNI152 white matter in {time.perf_counter() - start:.0f} s, "
          f"validation Dice {summary['best_dice'] or float('nan'):.4f}")
    return loaded, image


def mni_mosaics(loaded, image, batch: int, size: int) -> torch.Tensor:
    """(batch, 1, size, size) canvases of k x k axial MNI slices (as many as fit; odd indices: never trained
    on), normalised as prediction normalises them; zero (the normalised background) around them."""
    import numpy as np

    from napari_medseg.inference.auto2d import normalize

    data = image.array.astype(np.float32)[None]
    normalize(data, data[0] > 0, loaded.preprocessing["normalization"])
    planes = data[0, 1::2]
    h, w = planes.shape[1:]
    k = min(size // h, size // w)
    if k == 0:
        raise SystemExit(f"MNI slices of {h} x {w} do not fit {size}^2 canvases")
    canvas = np.zeros((batch, 1, size, size), np.float32)
    centre = len(planes) // 2  # the middle slices: brain fills most of them
    chosen = planes[max(0, centre - k * k * batch // 2):][:k * k * batch]
    for i, plane in enumerate(chosen):
        row, col = divmod(i % (k * k), k)
        canvas[i // (k * k), 0, row * h:(row + 1) * h, col * w:(col + 1) * w] = plane
    return torch.from_numpy(canvas)


def flops_of(network, x) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        network(x)
    return counter.get_total_flops()


@contextlib.contextmanager
def scan_backend(name: str):
    old = os.environ.get("NAPARI_MEDSEG_SCAN")
    os.environ["NAPARI_MEDSEG_SCAN"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("NAPARI_MEDSEG_SCAN")
        else:
            os.environ["NAPARI_MEDSEG_SCAN"] = old


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="swin_umamba", choices=("swin_umamba", "swin_umamba_d"))
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode, e.g. max-autotune-no-cudagraphs (slow to compile); 'none' skips it")
    parser.add_argument("--shapes", default="1x256,8x512", help="comma-separated BATCHxSIZE")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="train a new network on MNI152 white matter first; its inputs are then mosaics of "
                             "MNI slices (else random weights on random inputs)")
    parser.add_argument("--mni", help="npz with t1, wm and origin arrays (where nilearn is absent)")
    parser.add_argument("--official-repo", help="a clone of JiarunLiu/Swin-UMamba: time the authors' network too")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    if args.official_repo and args.family != "swin_umamba":
        raise SystemExit("--official-repo compares the authors' SwinUMamba only (use --family swin_umamba)")
    image = None
    if args.train_steps:
        loaded, image = trained_on_mni(args.family, args.mni, args.train_steps)
        network, channels = loaded.network, 1
    else:
        network, channels = build(args.family, args.checkpoint)
    network = network.cuda().eval()
    official = None
    if args.official_repo:
        import official as authors

        heads = network.out_layers[0].conv.conv.out_channels
        official = authors.swin_umamba(args.official_repo, network.state_dict(), channels, heads).cuda().eval()
    backend = scan.backend_for(torch.device("cuda"))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.family}, scan backend {backend}, "
          f"PyTorch default flags (cuDNN TF32 {torch.backends.cudnn.allow_tf32}, matmul TF32 "
          f"{torch.backends.cuda.matmul.allow_tf32})")

    def official_fp32(x):
        with torch.inference_mode():
            return official(x).float()

    def official_fp16(x):  # nnUNetPredictor: torch.autocast(device.type) -> float16 on CUDA
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
            return official(x).float()

    def fp32(x):
        with torch.inference_mode():
            return network(x).float()

    def bf16(x):
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            return network(x).float()

    def fp16(x):  # nnU-Net's autocast type (predict_auto2d's only on GPUs without native bf16)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, cache_enabled=False):
            return network(x).float()

    compiled = None if args.compile_mode == "none" else torch.compile(network, mode=args.compile_mode)

    def bf16_compiled(x):
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            return compiled(x).float()

    for shape in args.shapes.split(","):
        batch, size = (int(v) for v in shape.split("x"))
        if image is None:
            x = torch.randn(batch, channels, size, size, device="cuda")
        else:
            x = mni_mosaics(loaded, image, batch, size).cuda()
        flops = flops_of(network, x)
        with strict_fp32():
            reference = (official_fp32 if official is not None else fp32)(x).argmax(1)
        variants = {}
        if official is not None:
            variants["official fp32"] = official_fp32
            variants["official fp16 autocast"] = official_fp16
            try:
                variants["official fp16 + graph"] = graphed(official_fp16, x)
            except Exception as exc:
                print(f"  official CUDA graph capture failed: {type(exc).__name__}: {exc}")
        variants.update({"fp32 eager": fp32, "bf16 autocast": bf16, "fp16 autocast": fp16})
        for name, fn in (("bf16", bf16), ("fp16", fp16)):
            try:
                variants[f"{name} + CUDA graph"] = graphed(fn, x)
            except Exception as exc:  # capture can fail with backends that synchronise
                print(f"  CUDA graph capture failed: {type(exc).__name__}: {exc}")
        if compiled is not None:
            variants["bf16 + torch.compile"] = bf16_compiled
        print(f"batch {batch} x {size}^2: {flops / 1e9:.1f} GFLOP per batch (scan excluded); agreement against "
              f"{'the official network' if official is not None else 'ours'} in strict fp32")
        timings = {}
        for name, fn in variants.items():
            try:
                same = fn(x).argmax(1) == reference
                agreement = same.float().mean().item()
                if image is not None:  # also over the brain alone (the canvases are mostly background)
                    brain = x[:, 0] != 0
                    agreement_text = f"{agreement:.5f} (brain {same[brain].float().mean().item():.5f})"
                else:
                    agreement_text = f"{agreement:.5f}"
                ms = cuda_ms(lambda: fn(x), args.iterations)
            except Exception as exc:
                print(f"  {name:22s} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                continue
            timings[name] = ms
            print(f"  {name:22s} {ms:9.2f} ms  {ms / batch:7.2f} ms/slice  {batch / ms * 1e3:8.1f} img/s  "
                  f"{flops / ms / 1e9:7.2f} TFLOP/s  arg-max agreement {agreement_text}")
        ours_best = min((v, k) for k, v in timings.items() if not k.startswith("official"))
        for name in ("official fp16 autocast", "official fp16 + graph", "official fp32"):
            if name in timings:
                print(f"  {name} / ours best ({ours_best[1]}): {timings[name] / ours_best[0]:.2f}x")
        outputs = {}
        for name in ("torch", "triton", "mamba_ssm"):
            if (name == "mamba_ssm" and scan.mamba_ssm_scan() is None) or (name == "triton" and not scan.triton_available()):
                print(f"  scan {name}: not installed")
                continue
            with scan_backend(name):
                outputs[name] = fp32(x)
                ms = cuda_ms(lambda: fp32(x), max(3, args.iterations // 4))
            print(f"  fp32 forward, scan {name:10s} {ms:9.2f} ms")
        for name in ("triton", "mamba_ssm"):
            if name in outputs:
                diff = (outputs[name] - outputs["torch"]).abs().max() / outputs["torch"].abs().max()
                same = (outputs[name].argmax(1) == outputs["torch"].argmax(1)).float().mean()
                print(f"  scan {name} vs torch: relative max logit difference {diff.item():.2e}, "
                      f"arg-max agreement {same.item():.5f}")
    if image is not None:
        pipeline_agreement(loaded, image)


def pipeline_agreement(loaded, image) -> None:
    """predict_auto2d on the whole MNI volume: the default autocast type against float32, and its time."""
    import time

    from napari_medseg.inference.auto2d import predict_auto2d
    from napari_medseg.inference.precision import default_dtype

    reference = predict_auto2d(loaded, image, device="cuda", dtype="float32")
    brain = image.array > 0
    for dtype in (None, "float16"):
        predict_auto2d(loaded, image, device="cuda", dtype=dtype)  # warm-up: graph capture
        torch.cuda.synchronize()
        start = time.perf_counter()
        labels = predict_auto2d(loaded, image, device="cuda", dtype=dtype)
        seconds = time.perf_counter() - start
        name = f"default ({str(default_dtype(torch.device('cuda'))).removeprefix('torch.')})" if dtype is None else dtype
        print(f"predict_auto2d, {image.array.shape} volume, {name}: {seconds:.2f} s, arg-max agreement with float32 "
              f"{(labels == reference).mean():.5f} (brain {(labels[brain] == reference[brain]).mean():.5f})")


if __name__ == "__main__":
    main()
