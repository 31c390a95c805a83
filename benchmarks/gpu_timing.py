"""Shared by the GPU benchmarks (run as scripts from this folder)."""
import contextlib
import statistics

import torch


@contextlib.contextmanager
def strict_fp32():
    """TF32 off for a float32 reference only; the timed runs keep PyTorch's default flags."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def graphed(forward, x):
    """The forward captured as one CUDA graph on a static input; returns a replaying callable."""
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            forward(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = forward(static_x)

    def replay(new_x):
        static_x.copy_(new_x)
        graph.replay()
        return static_out
    return replay


def cuda_ms(fn, iterations: int) -> float:
    """Median milliseconds per call, timed by CUDA events."""
    times = []
    for _ in range(iterations):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)
