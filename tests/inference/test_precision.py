"""Autocast type choice and the float16 overflow guard of automatic segmentation."""
import pytest
import torch

from napari_medseg.errors import MedsegError
from napari_medseg.inference.precision import Precision, autocast_dtype, default_dtype


def test_dtype_names_and_defaults():
    cpu = torch.device("cpu")
    assert default_dtype(cpu) is torch.float32
    assert autocast_dtype(None, cpu) is torch.float32
    assert autocast_dtype("bfloat16", cpu) is torch.bfloat16 and autocast_dtype(torch.float16, cpu) is torch.float16
    with pytest.raises(MedsegError, match="Unknown dtype"):
        autocast_dtype("float8", cpu)


def test_float16_overflow_is_recomputed_in_float32_and_float32_is_kept():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))
    with torch.no_grad():
        network[0].weight.mul_(1e5)  # activations of ~1e5: beyond float16's 65504, fine in bfloat16/float32
    x = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.float16):
        assert not torch.isfinite(network(x)).all()  # the failure the guard exists for
    warnings = []
    precision = Precision(torch.device("cpu"), "float16", warnings.append)
    out = precision(network, x)
    assert torch.isfinite(out).all() and out.dtype is torch.float32
    torch.testing.assert_close(out, network(x))
    assert precision.dtype is torch.float32 and len(warnings) == 1 and "float16 overflowed" in warnings[0]
    precision(network, x)
    assert len(warnings) == 1


def test_finite_float16_output_stays_in_float16():
    network = torch.nn.Linear(16, 4)
    warnings = []
    precision = Precision(torch.device("cpu"), torch.float16, warnings.append)
    out = precision(network, torch.randn(2, 16))
    assert out.dtype is torch.float16 and precision.dtype is torch.float16 and not warnings


@pytest.mark.gpu
def test_cuda_default_is_bfloat16_where_the_gpu_has_it():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    native = torch.cuda.get_device_capability()[0] >= 8
    assert default_dtype(torch.device("cuda")) is (torch.bfloat16 if native else torch.float16)
