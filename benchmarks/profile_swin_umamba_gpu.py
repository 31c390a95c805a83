"""Where a Swin-UMamba forward spends its GPU time: per module (CUDA events around each child of the
network and of the encoder's stages) and per kernel (torch.profiler), under bf16 autocast (or fp32) inference.

    python benchmarks/profile_swin_umamba_gpu.py [--shape 8x512] [--family swin_umamba] [--kernels 40]
"""
from __future__ import annotations

import argparse
import collections

import torch
from gpu_timing import cuda_ms, graphed


def timed_modules(network: torch.nn.Module):
    """(name, module) pairs to time: the network's children, the encoder's stages and downsamplers."""
    for name, module in network.named_children():
        if name == "vssm_encoder":
            yield "vssm_encoder.patch_embed", module.patch_embed
            for i, layer in enumerate(module.layers):
                yield f"vssm_encoder.layers.{i}", layer
            for i, down in enumerate(module.downsamples):
                yield f"vssm_encoder.downsamples.{i}", down
        elif name != "out_layers":
            yield name, module
    if hasattr(network, "out_layers"):
        yield "out_layers.0", network.out_layers[0]


def module_times(network, forward, x, iterations: int = 5) -> dict[str, float]:
    events = collections.defaultdict(list)
    handles = []
    for name, module in timed_modules(network):
        def pre(_module, _args, name=name):
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            events[name].append([start, None])

        def post(_module, _args, _out, name=name):
            stop = torch.cuda.Event(enable_timing=True)
            stop.record()
            events[name][-1][1] = stop
        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    forward(x)
    events.clear()
    for _ in range(iterations):
        forward(x)
    torch.cuda.synchronize()
    for handle in handles:
        handle.remove()
    return {name: sum(a.elapsed_time(b) for a, b in pairs) / iterations for name, pairs in events.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="swin_umamba", choices=("swin_umamba", "swin_umamba_d"))
    parser.add_argument("--shape", default="8x512", help="BATCHxSIZE")
    parser.add_argument("--kernels", type=int, default=40, help="rows of the per-kernel table")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="autocast type")
    args = parser.parse_args()
    from napari_medseg.models.swin_umamba import SwinUMamba, SwinUMambaD

    torch.manual_seed(0)
    network = (SwinUMamba(1, 14) if args.family == "swin_umamba" else SwinUMambaD(1, 14)).cuda().eval()
    batch, size = (int(v) for v in args.shape.split("x"))
    x = torch.randn(batch, 1, size, size, device="cuda")

    def forward(x):
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16",
                                                     cache_enabled=False):
            return network(x)

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.family}, {batch} x {size}^2, {args.dtype}")
    print(f"  whole forward: eager {cuda_ms(lambda: forward(x), 10):.2f} ms", end="")
    replay = graphed(forward, x)
    print(f", CUDA graph {cuda_ms(lambda: replay(x), 20):.2f} ms")
    times = module_times(network, forward, x)
    for name, ms in times.items():
        print(f"  {name:32s} {ms:8.2f} ms")
    print(f"  {'sum of modules':32s} {sum(times.values()):8.2f} ms")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            forward(x)
        torch.cuda.synchronize()
    kernels = collections.Counter()
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name[:110]] += event.device_time / 5 / 1e3
    print(f"  kernels: {sum(kernels.values()):.2f} ms per forward")
    for name, ms in kernels.most_common(args.kernels):
        print(f"  {ms:7.3f} ms  {name}")


if __name__ == "__main__":
    main()
