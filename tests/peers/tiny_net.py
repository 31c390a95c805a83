"""A small 2-D network for the nnU-Net parity tests, importable by this package's tests and by the peer
environment's nnU-Net (its plans name ``tiny_net.TinyNet``): torch only.

Fully convolutional, with an instance norm (each tile's output depends on the tile, as nnU-Net's networks)
and no flip symmetry, so that tiling, Gaussian blending, mirroring and resampling all show in its labels.
"""
from __future__ import annotations

from torch import nn


class TinyNet(nn.Module):
    def __init__(self, input_channels: int, num_classes: int, width: int = 8, deep_supervision: bool = False):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(input_channels, width, 3, padding=1), nn.InstanceNorm2d(width, affine=True), nn.LeakyReLU(0.01),
            nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.LeakyReLU(0.01),
            nn.Conv2d(width, num_classes, 1),
        )

    def forward(self, x):
        return self.body(x)
