"""Replaying a network call from a CUDA graph: one capture per input signature, then launch-free replays.

The models' inference forwards are chains of hundreds to thousands of small kernels; on a fast GPU the
host launching them, not the arithmetic, sets the time (SAM's mask decoder, Swin-UMamba at 256^2, a Swin
SMT window at batch 2). A captured graph replays the whole chain with one launch. Captures read the
weights by address, so a ``GraphCache`` belongs to one network placement and is dropped with it.
"""
from __future__ import annotations

import logging
import weakref

log = logging.getLogger(__name__)
_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # network -> {name: (weights address, cache)}


class CapturedCall:
    """``fn(*tensors)`` captured once on static input buffers; a call copies its inputs in and replays.

    An input that is the very tensor object of the previous call is not copied again (a cached image
    embedding). The returned output is the graph's own buffer: use it before the next call.
    """

    def __init__(self, fn, *examples):
        import torch

        self.inputs = [x.clone() for x in examples]
        self.sources: list = [None] * len(examples)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(2):  # outside the capture: cuDNN/cuBLAS workspaces, autotuning, lazy inits
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.output = fn(*self.inputs)

    def __call__(self, *tensors):
        for index, (static, x) in enumerate(zip(self.inputs, tensors)):
            if x is not self.sources[index]:
                static.copy_(x)
                self.sources[index] = x
        self.graph.replay()
        return self.output


class GraphCache:
    """``fn`` replayed from CUDA graphs, one per input signature (shapes, dtypes, autocast state, and
    ``key``: whatever else ``fn`` bakes into the graph, such as an output size).

    CPU inputs, or a signature whose capture failed (an operation that synchronises with the host, say),
    run ``fn`` eagerly. ``limit`` bounds the number of graphs kept (each holds its activations' memory).
    """

    def __init__(self, fn, limit: int = 4):
        self.fn, self.limit = fn, limit
        self.graphs: dict[tuple, CapturedCall | None] = {}

    def __call__(self, *tensors, key=()):
        import torch

        if tensors[0].device.type != "cuda":
            return self.fn(*tensors)
        key = (key, tuple((tuple(t.shape), t.dtype, t.device) for t in tensors), torch.is_autocast_enabled("cuda"),
               torch.get_autocast_dtype("cuda"))
        if key not in self.graphs:
            while len(self.graphs) >= self.limit:
                self.graphs.pop(next(iter(self.graphs)))
            try:
                self.graphs[key] = CapturedCall(self.fn, *tensors)
            except Exception as exc:  # noqa: BLE001 - any capture failure means: run eagerly
                log.warning("CUDA graph capture failed (%s: %s); running eagerly", type(exc).__name__, exc)
                self.graphs[key] = None
        graph = self.graphs[key]
        return self.fn(*tensors) if graph is None else graph(*tensors)


def network_graphs(network, method: str = "__call__", limit: int = 4) -> GraphCache:
    """The ``GraphCache`` of ``network.<method>`` that lives as long as the network, so a second
    prediction replays the graphs of the first. Renewed when the weights move (another device)."""
    address = next(network.parameters()).data_ptr()
    caches = _CACHES.setdefault(network, {})
    if method not in caches or caches[method][0] != address:
        owner = weakref.ref(network)  # the cache must not keep its network (the dictionary's key) alive

        def call(*tensors):
            return getattr(owner(), method)(*tensors)
        caches[method] = (address, GraphCache(call, limit))
    return caches[method][1]
