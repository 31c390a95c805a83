"""The napari layer: readers, writers, sample data and dock widgets (the only Qt code)."""
import os
import sys


def _hide_triton_without_nvidia_driver() -> None:
    """Triton bundles its own LLVM; loading it into a process whose OpenGL is Mesa's llvmpipe (software
    rendering, e.g. under Xvfb) crashes the viewer. Triton is of no use without an NVIDIA GPU, so on
    such machines torch (and everything importing torch._dynamo) is told it is absent."""
    if sys.platform == "linux" and "triton" not in sys.modules and not os.path.exists("/proc/driver/nvidia/version"):
        sys.modules["triton"] = None


_hide_triton_without_nvidia_driver()
