"""Swin-UMamba and Swin-UMamba† (JiarunLiu/Swin-UMamba, MICCAI 2024), loaded from nnU-Net checkpoints.

- ``swin_umamba``: CNN stem + VMamba-Tiny encoder (``vssm_encoder``) + MONAI UNETR-style residual CNN
  decoder (trainers nnUNetTrainerSwinUMamba / ...Scratch).
- ``swin_umamba_d`` (Swin-UMamba†): VMamba-Tiny encoder on 4x4 patches + VSS-block decoder
  (trainers nnUNetTrainerSwinUMambaD / ...DScratch).

Input channels, classes, patch size and normalisation all come from the checkpoint (its plans and
dataset.json). The networks are built without deep supervision (as nnU-Net predicts); the deep
supervision heads still exist so that every official checkpoint loads strictly.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointError
from .families import load_strict
from .loaded import LoadedModel
from .nnunet_checkpoint import is_nnunet_checkpoint, parse_nnunet_checkpoint
from .scan import triton_available
from .vmamba import PatchExpand2D, VSSLayer, VSSMEncoder, inference

FAMILIES = ("swin_umamba", "swin_umamba_d")
TRAINER_PREFIX = "nnUNetTrainerSwinUMamba"
FEATURES = (48, 96, 192, 384, 768)


class ConvUnit(nn.Module):
    """A convolution one module level down (``.conv``), as MONAI's ``Convolution`` stores it."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def fused_norms(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a ResBlock runs its norms and activations as the Triton kernels of ``triton_norm``: CUDA
    inference (no gradients to ``weight``) with triton importable."""
    return x.is_cuda and inference(weight) and triton_available()


def channels_last_inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the CNN runs channels-last: fused norms under CUDA half-precision autocast, where cuDNN's
    convolutions read and write channels-last maps without converting them."""
    return fused_norms(x, weight) and torch.is_autocast_enabled("cuda") and (
        torch.get_autocast_dtype("cuda") in (torch.float16, torch.bfloat16))


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` if it is contiguous in either layout, else a contiguous copy."""
    return t if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last) else t.contiguous()


def _layout_of(t: torch.Tensor) -> torch.memory_format:
    return torch.contiguous_format if t.is_contiguous() else torch.channels_last


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same state_dict) that, in channels-last inference, convolves a one-channel image with
    ``triton_conv``'s kernel (cuDNN has no fast kernel for one input channel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1 and channels_last_inference(x, self.weight):
            from .triton_conv import single_channel_conv2d

            return single_channel_conv2d(x, self)
        return super().forward(x)


class HeadConv2d(nn.Conv2d):
    """The segmentation head's 1x1 convolution (same state_dict); in channels-last inference one
    ``triton_conv`` kernel computes it and writes channels-first logits (cuDNN's kernel for few output
    channels, then the layout copy, took 5x longer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if channels_last_inference(x, self.weight):
            from .triton_conv import head_conv2d
            from .triton_norm import channels_last

            if channels_last(x):
                return head_conv2d(x.to(torch.get_autocast_dtype("cuda")), self)
        return super().forward(x)


class StemNorm(nn.InstanceNorm2d):
    """The stem's affine InstanceNorm (same state_dict); channels-last CUDA inference runs it as
    ``triton_norm``'s kernels (PyTorch's instance norm would copy the map to channels-first)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused_norms(x, self.weight):
            from .triton_norm import channels_last, instance_norm_leaky_relu

            if channels_last(x):
                return instance_norm_leaky_relu(x, slope=1.0, eps=self.eps, weight=self.weight, bias=self.bias)
        return super().forward(x)


class ResBlock(nn.Module):
    """MONAI ``UnetResBlock``: two 3x3 convolutions (no bias), affine-free InstanceNorm, LeakyReLU(0.01),
    and a 1x1 convolution + norm on the residual when the channel count changes. For CUDA inference the
    norms, the residual sum and the activations run fused (``triton_norm``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = ConvUnit(Conv2d(in_channels, out_channels, 3, padding=1, bias=False))
        self.conv2 = ConvUnit(nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False))
        self.norm1 = nn.InstanceNorm2d(out_channels)
        self.norm2 = nn.InstanceNorm2d(out_channels)
        self.lrelu = nn.LeakyReLU(0.01, inplace=True)
        if in_channels != out_channels:
            self.conv3 = ConvUnit(Conv2d(in_channels, out_channels, 1, bias=False))
            self.norm3 = nn.InstanceNorm2d(out_channels)

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The block's output, written into ``out`` when given (channels-last inference: a view of the
        decoder's concatenation)."""
        if fused_norms(x, self.conv1.conv.weight):
            from .triton_norm import instance_norm_leaky_relu as norm_act

            y = _dense(self.conv2(norm_act(_dense(self.conv1(x)))))
            if hasattr(self, "conv3"):
                return norm_act(y, _dense(self.conv3(x)), out=out)
            return norm_act(y, x.contiguous(memory_format=_layout_of(y)), norm_residual=False, out=out)
        y = self.norm2(self.conv2(self.lrelu(self.norm1(self.conv1(x)))))
        residual = self.norm3(self.conv3(x)) if hasattr(self, "conv3") else x
        y = self.lrelu(y + residual)
        return y if out is None else out.copy_(y)


class BasicBlock(nn.Module):
    """MONAI ``UnetrBasicBlock`` with ``res_block=True``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.layer = ResBlock(in_channels, out_channels)

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return self.layer(x, out)


class UpBlock(nn.Module):
    """MONAI ``UnetrUpBlock``: 2x2 stride-2 transposed convolution, concatenation with the skip, ResBlock."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.transp_conv = ConvUnit(nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=False))
        self.conv_block = ResBlock(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat((self.transp_conv(x), skip), dim=1))

    def joined(self, x: torch.Tensor, skip_block: BasicBlock, skip_input: torch.Tensor) -> torch.Tensor:
        """``forward(x, skip_block(skip_input))`` for channels-last inference, without ``torch.cat``: the
        skip block writes into the concatenation's second half."""
        from .triton_norm import copy_channels_last

        up = self.transp_conv(x)
        b, c, h, w = up.shape
        joined = torch.empty((b, h, w, 2 * c), dtype=up.dtype, device=up.device).permute(0, 3, 1, 2)
        skip_block(skip_input, out=joined[:, c:])
        copy_channels_last(joined[:, :c], up)
        return self.conv_block(joined)


class OutBlock(nn.Module):
    """MONAI ``UnetOutBlock``: a 1x1 convolution with bias."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvUnit(HeadConv2d(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SwinUMamba(nn.Module):
    """Swin-UMamba: ``forward(x)`` gives logits (B, classes, H, W) for H, W divisible by 32 (a list of
    four deep-supervision outputs, full resolution first, when ``deep_supervision`` is set)."""

    def __init__(self, in_chans: int, out_chans: int, feat_size=FEATURES, deep_supervision: bool = False):
        super().__init__()
        f = feat_size
        self.deep_supervision = deep_supervision
        self.stem = nn.Sequential(Conv2d(in_chans, f[0], 7, stride=2, padding=3), StemNorm(f[0], eps=1e-5, affine=True))
        self.vssm_encoder = VSSMEncoder(patch_size=2, in_chans=f[0])
        self.encoder1 = BasicBlock(in_chans, f[0])
        self.encoder2 = BasicBlock(f[0], f[1])
        self.encoder3 = BasicBlock(f[1], f[2])
        self.encoder4 = BasicBlock(f[2], f[3])
        self.encoder5 = BasicBlock(f[3], f[4])
        self.decoder6 = UpBlock(f[4], f[4])
        self.decoder5 = UpBlock(f[4], f[3])
        self.decoder4 = UpBlock(f[3], f[2])
        self.decoder3 = UpBlock(f[2], f[1])
        self.decoder2 = UpBlock(f[1], f[0])
        self.decoder1 = BasicBlock(f[0], f[0])
        self.out_layers = nn.ModuleList(OutBlock(f[i], out_chans) for i in range(4))

    def decoder_features(self, x: torch.Tensor, stage_bias=None) -> list[torch.Tensor]:
        """[dec_out (H), dec1 (H/2), dec2 (H/4), dec3 (H/8)]; ``stage_bias`` optionally maps a decoder
        output ("dec4", "dec3", "dec2", "dec1", "dec_out") to a (B, C) tensor added over H x W."""
        def biased(name, feature):
            if stage_bias is None or name not in stage_bias:
                return feature
            return feature + stage_bias[name][:, :, None, None].to(feature.dtype)

        last = channels_last_inference(x, self.stem[0].weight)
        if last:  # no layout conversions around cuDNN's convolutions
            x = torch.empty_like(x, memory_format=torch.channels_last).copy_(x)  # also for one channel

        def up(decoder, below, encoder, feature):
            return decoder.joined(below, encoder, feature) if last else decoder(below, encoder(feature))

        vss = self.vssm_encoder(self.stem(x))
        dec4 = biased("dec4", up(self.decoder6, vss[4], self.encoder5, vss[3]))
        dec3 = biased("dec3", up(self.decoder5, dec4, self.encoder4, vss[2]))
        dec2 = biased("dec2", up(self.decoder4, dec3, self.encoder3, vss[1]))
        dec1 = biased("dec1", up(self.decoder3, dec2, self.encoder2, vss[0]))
        dec0 = up(self.decoder2, dec1, self.encoder1, x)
        dec_out = biased("dec_out", self.decoder1(dec0))
        return [dec_out, dec1, dec2, dec3]

    def forward(self, x: torch.Tensor):
        features = self.decoder_features(x)
        if self.deep_supervision:
            return [head(f) for head, f in zip(self.out_layers, features)]
        return self.out_layers[0](features[0]).contiguous()


class UNetResDecoder(nn.Module):
    """Swin-UMamba†'s decoder: patch expanding, skip concatenation + Linear, two VSS blocks per stage."""

    def __init__(self, num_classes: int, features=(96, 192, 384, 768), deep_supervision: bool = False,
                 drop_path_rate: float = 0.2, d_state: int = 16):
        super().__init__()
        self.deep_supervision = deep_supervision
        stages = len(features) - 1
        rates = torch.linspace(drop_path_rate, 0, 2 * stages).tolist()
        self.expand_layers = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.seg_layers = nn.ModuleList()
        self.concat_back_dim = nn.ModuleList()
        for s in range(stages):
            below, skip = features[-1 - s], features[-2 - s]
            self.expand_layers.append(PatchExpand2D(below, below // 2, scale=2))
            self.stages.append(VSSLayer(skip, 2, rates[2 * s:2 * s + 2], d_state))
            self.seg_layers.append(nn.Conv2d(skip, num_classes, 1))
            self.concat_back_dim.append(nn.Linear(2 * skip, skip))
        self.expand_layers.append(PatchExpand2D(features[0], features[0], scale=4))
        self.stages.append(nn.Identity())
        self.seg_layers.append(nn.Conv2d(features[0], num_classes, 1))

    def forward(self, skips: list[torch.Tensor]):
        x = skips[-1]
        outputs = []
        for s, stage in enumerate(self.stages):
            x = self.expand_layers[s](x.permute(0, 2, 3, 1))
            if s < len(self.concat_back_dim):
                x = self.concat_back_dim[s](torch.cat((x, skips[-(s + 2)].permute(0, 2, 3, 1)), dim=-1))
            x = stage(x).permute(0, 3, 1, 2)
            if self.deep_supervision or s == len(self.stages) - 1:
                outputs.append(self.seg_layers[s](x))
        return outputs[::-1] if self.deep_supervision else outputs[0]


class SwinUMambaD(nn.Module):
    """Swin-UMamba†: ``forward(x)`` gives logits (B, classes, H, W) for H, W divisible by 32."""

    def __init__(self, in_chans: int, num_classes: int, deep_supervision: bool = False):
        super().__init__()
        self.vssm_encoder = VSSMEncoder(patch_size=4, in_chans=in_chans)
        self.decoder = UNetResDecoder(num_classes, deep_supervision=deep_supervision)

    def forward(self, x: torch.Tensor):
        return self.decoder(self.vssm_encoder(x))


def _layout(weights: dict) -> str | None:
    """The family whose key layout ``weights`` has (LLM-Swin-UMamba's text tower excluded)."""
    if "vssm_encoder.patch_embed.proj.weight" not in weights:
        return None
    if any(key.startswith(("text_encoder.", "lang_proj.")) for key in weights):
        return None
    if "stem.0.weight" in weights and "decoder6.transp_conv.conv.weight" in weights:
        return "swin_umamba"
    if "decoder.expand_layers.0.expand.weight" in weights:
        return "swin_umamba_d"
    return None


def sniff(state) -> str | None:
    if not is_nnunet_checkpoint(state):
        return None
    return _layout(state["network_weights"])


def build(state, family: str, path=None, **options) -> LoadedModel:
    checkpoint = parse_nnunet_checkpoint(state, path)
    weights = checkpoint.network_weights
    name = getattr(path, "name", "The checkpoint")
    layout = _layout(weights)
    if layout != family:
        raise CheckpointError(f"{name} holds a {layout or 'different'} network, not {family}")
    labels = checkpoint.labels
    if family == "swin_umamba":
        channels, heads = weights["stem.0.weight"].shape[1], weights["out_layers.0.conv.conv.weight"].shape[0]
        network = SwinUMamba(channels, heads)
    else:
        channels = weights["vssm_encoder.patch_embed.proj.weight"].shape[1]
        heads = weights["decoder.seg_layers.3.weight"].shape[0]
        network = SwinUMambaD(channels, heads)
    if channels != len(checkpoint.channel_names) or heads != labels.heads:
        raise CheckpointError(
            f"{name}: the network has {channels} input channels and {heads} outputs, but its dataset.json "
            f"describes {len(checkpoint.channel_names)} channels and {labels.heads} outputs"
        )
    if len(checkpoint.configuration["patch_size"]) != 2:
        raise CheckpointError(f"{name}: {family} is a 2-D network but configuration "
                              f"{checkpoint.configuration_name!r} is not 2-D")
    load_strict(network, weights, family, path)
    info = checkpoint.info()
    if not checkpoint.trainer_name.startswith(TRAINER_PREFIX):
        info["note"] = f"trainer {checkpoint.trainer_name!r} is no Swin-UMamba trainer; built from the weights"
    return LoadedModel(network=network, family=family, task="auto2d", classes=labels.classes,
                       preprocessing=checkpoint.preprocessing(), path=path, info=info)
