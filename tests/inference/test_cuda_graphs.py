"""CUDA-graph replay of network calls: eager on the CPU, equal to eager on CUDA, no leaked networks."""
import gc
import weakref

import pytest
import torch

from napari_medseg.inference.cuda_graphs import GraphCache, network_graphs


def test_cpu_inputs_run_eagerly_and_the_cache_does_not_keep_its_network():
    network = torch.nn.Conv2d(1, 2, 3, padding=1)
    x = torch.randn(1, 1, 8, 8)
    graphs = network_graphs(network)
    assert torch.equal(graphs(x), network(x)) and graphs.graphs == {}
    assert network_graphs(network) is graphs  # kept with the network
    owner = weakref.ref(network)
    del network, graphs
    gc.collect()
    assert owner() is None


@pytest.mark.gpu
def test_replays_equal_eager_calls_per_signature():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)).cuda()
    graphs = GraphCache(network)
    with torch.inference_mode():
        for shape in [(2, 1, 16, 16), (2, 1, 16, 16), (1, 1, 32, 24)]:
            x = torch.randn(shape, device="cuda")
            assert torch.allclose(graphs(x), network(x), atol=1e-6)
        assert len(graphs.graphs) == 2 and all(graphs.graphs.values())
        x = torch.randn(2, 1, 16, 16, device="cuda")
        first = graphs(x).clone()
        x.mul_(2)  # the same tensor object changed in place is not copied again: callers pass new tensors
        assert torch.equal(graphs(x), first)
        assert not torch.equal(graphs(x.clone()), first)
        graphs(x, key="other size")
        assert len(graphs.graphs) == 3
