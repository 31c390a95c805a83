"""Selective-scan backends: the project's chunked PyTorch scan against a step-by-step reference loop
(the transcription of mamba's ``selective_scan_ref`` in tests/models/test_scan.py) and, on CUDA,
against mamba_ssm's kernel.

    python benchmarks/bench_scan.py                       # CPU, B=1 D=384 N=16 L=4096 (target: >= 20x)
    python benchmarks/bench_scan.py --device cuda --batch 8
    python benchmarks/bench_scan.py --sweep               # CPU block budgets x chunk lengths
    python benchmarks/bench_scan.py --backward --length 512   # forward + backward (the reference loop's
                                                          # backward is quadratic in L: minutes at 4096)
    python benchmarks/bench_scan.py --device cuda --batch 8 --triton-sweep   # Triton tiles x warps

Timings are the minimum over ``--repeats`` runs, measured interleaved so that load from other
processes hits every contestant alike. On an oversubscribed CPU (more busy threads than cores) every
multi-threaded PyTorch operation can wait milliseconds at OpenMP barriers, which hurts the chunked scan
(hundreds of operations) far more than the reference loop (small single-threaded operations): compare
with ``--threads 1`` there.
"""
from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch

from napari_medseg.models import scan
from napari_medseg.models.scan import chunked

ROOT = Path(__file__).resolve().parents[1]


def reference_scan():
    spec = importlib.util.spec_from_file_location("test_scan", ROOT / "tests" / "models" / "test_scan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_scan


def make_inputs(batch, dim, state, length, groups, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = dict(
        u=torch.randn(batch, dim, length, generator=g),
        delta=0.5 * torch.randn(batch, dim, length, generator=g),
        A=-torch.exp(torch.log(torch.arange(1.0, state + 1)).expand(dim, state)
                     + 0.01 * torch.randn(dim, state, generator=g)),
        B=torch.randn(batch, groups, state, length, generator=g),
        C=torch.randn(batch, groups, state, length, generator=g),
        D=1 + 0.1 * torch.randn(dim, generator=g),
        delta_bias=-4.6 + 0.1 * torch.randn(dim, generator=g),
    )
    return {k: v.to(device) for k, v in t.items()}


def timer(fn, inputs, backward, device):
    def run():
        if backward:
            leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
            out = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"],
                     delta_bias=leaves["delta_bias"], delta_softplus=True)
            out.sum().backward()
        else:
            with torch.no_grad():
                fn(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"],
                   delta_bias=inputs["delta_bias"], delta_softplus=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def once():
        start = time.perf_counter()
        run()
        return time.perf_counter() - start
    return once


def compare(contestants: dict, inputs, repeats, backward, device) -> dict:
    timers = {name: timer(fn, inputs, backward, device) for name, fn in contestants.items()}
    for t in timers.values():  # warm-up (CUDA kernels, allocator)
        t()
    best = {name: float("inf") for name in timers}
    for _ in range(repeats):
        for name, t in timers.items():
            best[name] = min(best[name], t())
    return best


def triton_sweep(inputs, repeats, device):
    """Time the Triton kernel's launch configurations (BLOCK_D, BLOCK_L, STAGES, NUM_WARPS) against each
    other; tiles of more than 32 state elements per thread (which spill registers) are left out."""
    from napari_medseg.models.scan import triton_scan

    kernel = {"triton": lambda *a, **k: scan.selective_scan(*a, backend="triton", **k)}
    states = 1 << (inputs["A"].shape[1] - 1).bit_length()
    for block_d in (1, 2):
        for block_l in (64, 128, 256):
            for stages in (1, 2, 3):
                row = []
                for warps in (2, 4, 8):
                    if block_d * states * block_l > 32 * 32 * warps:
                        row.append(f"{warps} warps       -   ")
                        continue
                    triton_scan.BLOCK_D, triton_scan.BLOCK_L = block_d, block_l
                    triton_scan.STAGES, triton_scan.NUM_WARPS = stages, warps
                    seconds = compare(kernel, inputs, repeats, False, device)["triton"]
                    row.append(f"{warps} warps {seconds * 1e3:7.3f} ms")
                print(f"BLOCK_D {block_d} BLOCK_L {block_l:>3} STAGES {stages}: " + "  ".join(row))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backward", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="time block budgets x chunk lengths")
    parser.add_argument("--triton-sweep", action="store_true",
                        help="CUDA: time the Triton kernel's channels per program x tile lengths x stages x warps")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    inputs = make_inputs(args.batch, args.dim, args.state, args.length, args.groups, device)
    own = lambda *a, **k: scan.selective_scan(*a, backend="torch", **k)  # noqa: E731
    print(f"device {device}, threads {torch.get_num_threads()}, B={args.batch} D={args.dim} N={args.state} "
          f"L={args.length} G={args.groups}, {'forward+backward' if args.backward else 'forward'}")
    if args.sweep:
        budgets, chunks = (1 << 19, 1 << 20, 1 << 21, 1 << 22, 1 << 23, 1 << 24), (4, 8, 16, 32)
        for budget in budgets:
            row = []
            for chunk in chunks:
                chunked.CPU_BLOCK_ELEMENTS = chunked.GPU_BLOCK_ELEMENTS = budget
                chunked.CHUNK = chunk
                row.append(compare({"own": own}, inputs, args.repeats, args.backward, device)["own"])
            print(f"budget {budget:>9}: " + "  ".join(f"T<={c}: {t * 1e3:7.1f} ms" for c, t in zip(chunks, row)))
        return
    if args.triton_sweep:
        triton_sweep(inputs, args.repeats, device)
        return
    contestants = {"own (chunked torch)": own, "reference loop": reference_scan()}
    if device.type == "cuda" and scan.mamba_ssm_scan() is not None:
        contestants["mamba_ssm CUDA"] = lambda *a, **k: scan.selective_scan(*a, backend="mamba_ssm", **k)
    if device.type == "cuda" and scan.triton_available() and not args.backward:
        contestants["own Triton"] = lambda *a, **k: scan.selective_scan(*a, backend="triton", **k)
    best = compare(contestants, inputs, args.repeats, args.backward, device)
    reference = best["reference loop"]
    for name, seconds in best.items():
        print(f"{name:22s} {seconds * 1e3:9.2f} ms   {reference / seconds:7.1f}x the reference loop")
    with torch.no_grad():
        call = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"])
        expected = reference_scan()(*call, delta_bias=inputs["delta_bias"], delta_softplus=True)
        for name, fn in contestants.items():
            got = fn(*call, delta_bias=inputs["delta_bias"], delta_softplus=True)
            error = ((got - expected).abs().max() / expected.abs().max()).item()
            print(f"{name:22s} relative max error {error:.2e}")


if __name__ == "__main__":
    main()
