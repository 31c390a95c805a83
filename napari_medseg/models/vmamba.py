"""VMamba "v0" building blocks (Jan-2024 VMamba, as copied into Swin-UMamba, Swin-UMamba† and VM-UNet).

State-dict names match the official modules exactly. Every LayerNorm uses eps 1e-5: the official
callers pass ``nn.LayerNorm`` everywhere (``VSSBlock``'s own 1e-6 default is never used). Feature maps
are channels-last ``(B, H, W, C)`` inside the VMamba modules.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .scan import selective_scan, triton_available

DIRECTIONS = 4  # row-major, column-major, and both reversed


def inference(weight: torch.Tensor) -> bool:
    """Whether no gradient flows to ``weight`` (the fused inference paths' condition)."""
    return not (torch.is_grad_enabled() and weight.requires_grad)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same state_dict) that, for inference under CUDA autocast, normalises a
    half-precision input in its own dtype (statistics in fp32) instead of autocast's fp32 copy in and fp32
    output, which tripled the memory traffic; the parameters are cast like a Linear's weight under autocast.
    With triton, ``triton_norm.layer_norm`` computes it (several rows per program). Training keeps
    autocast's fp32 layer norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.is_cuda and torch.is_autocast_enabled("cuda") and x.dtype == torch.get_autocast_dtype("cuda")
        if inference(self.weight) and half:
            if triton_available():
                from .triton_norm import layer_norm

                return layer_norm(x, self.weight, self.bias, self.eps)
            with torch.autocast("cuda", enabled=False):
                return F.layer_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)
        return super().forward(x)


class DropPath(nn.Module):
    """Stochastic depth for training; the identity in eval."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class PatchEmbed2D(nn.Module):
    """Non-overlapping ``patch_size`` convolution then LayerNorm: (B, C, H, W) -> (B, H/p, W/p, dim)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging2D(nn.Module):
    """2x2 neighbourhoods concatenated as (even row, even col), (odd, even), (even, odd), (odd, odd), LN, 4C -> 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2  # odd sizes lose their last row/column
        x = x[:, :height, :width]
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class PatchExpand2D(nn.Module):
    """Linear to ``scale**2 * out_dim`` channels, pixel shuffle ``b h w (p1 p2 c) -> b (h p1) (w p2) c``, LN.

    VM-UNet's PatchExpand2D / Final_PatchExpand2D and Swin-UMamba†'s PatchExpand / FinalPatchExpand_X4 are
    all this module with different (in_dim, out_dim, scale).
    """

    def __init__(self, in_dim: int, out_dim: int, scale: int):
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(in_dim, scale * scale * out_dim, bias=False)
        self.norm = LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        p = self.scale
        x = self.expand(x).view(b, h, w, p, p, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, h * p, w * p, -1)
        return self.norm(x)


def fused_ss2d(xz: torch.Tensor, module: "SS2D") -> bool:
    """Whether SS2D's convolution and merge run as the Triton kernels of ``triton_ss2d``: CUDA inference
    (no gradients to the module) on half-precision activations (float32 keeps the official computation),
    with triton importable and a 3x3 convolution."""
    if not xz.is_cuda or xz.dtype not in (torch.float16, torch.bfloat16) or not inference(module.x_proj_weight):
        return False
    return module.conv2d.kernel_size == (3, 3) and triton_available()


class SS2D(nn.Module):
    """2-D selective scan: depthwise conv, four directional scans sharing one grouped selective scan."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 3, expand: int = 2):
        super().__init__()
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16)
        inner, k = self.d_inner, DIRECTIONS
        self.in_proj = nn.Linear(d_model, 2 * inner, bias=False)
        self.conv2d = nn.Conv2d(inner, inner, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=inner, bias=True)
        self.x_proj_weight = nn.Parameter(torch.empty(k, self.dt_rank + 2 * d_state, inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, inner))
        self.A_logs = nn.Parameter(torch.empty(k * inner, d_state))
        self.Ds = nn.Parameter(torch.empty(k * inner))
        self.out_norm = LayerNorm(inner)
        self.out_proj = nn.Linear(inner, d_model, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """The official initialisation: Mamba's dt and S4D-real A, D = 1 (used when training from scratch)."""
        nn.init.uniform_(self.x_proj_weight, -self.d_inner ** -0.5, self.d_inner ** -0.5)
        nn.init.uniform_(self.dt_projs_weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        log_dt = torch.rand(self.dt_projs_bias.shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=dt_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def scan_directions(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) -> (B, H, W, D): the four directional scans, merged back into pixel order."""
        b, d, h, w = x.shape
        length = h * w
        xs = x.new_empty(b, DIRECTIONS, d, length)  # rows, columns, both reversed: written in place
        xs[:, 0] = x.reshape(b, d, length)
        xs[:, 1].view(b, d, w, h).copy_(x.transpose(2, 3))
        xs[:, 2:] = xs[:, :2].flip(-1)
        ys = self.scan(xs)
        from_rows = (ys[:, 0] + ys[:, 2].flip(-1)).view(b, d, h, w).permute(0, 2, 3, 1)
        from_columns = (ys[:, 1] + ys[:, 3].flip(-1)).view(b, d, w, h).permute(0, 3, 2, 1)
        return ys.new_empty(b, h, w, d).copy_(from_rows).add_(from_columns)

    def scan(self, xs: torch.Tensor) -> torch.Tensor:
        """The selective scans of the four direction sequences xs (B, 4, D, L) -> (B, 4, D, L)."""
        b, _, d, length = xs.shape
        # batched matrix products that write (B, 4, C, L) directly (einsum wrote (4, B, L, C) and copied it)
        x_dbl = torch.matmul(self.x_proj_weight, xs)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.matmul(self.dt_projs_weight, dts)
        # the scan reads u, delta, B, C in the activations' dtype (half under autocast: the official code's
        # .float() copies hold the same values) and keeps its state and sums in fp32; every backend reads
        # B and C through their strides (rows of x_dbl)
        kind = xs.dtype
        return selective_scan(
            xs.reshape(b, -1, length), dts.to(kind).reshape(b, -1, length),
            -torch.exp(self.A_logs.float()), Bs.to(kind), Cs.to(kind), self.Ds.float(),
            delta_bias=self.dt_projs_bias.float().reshape(-1), delta_softplus=True,
        ).view(b, DIRECTIONS, d, length)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """SS2D(x), or residual + SS2D(x) with the sum made by ``out_proj``'s matrix product."""
        xz = self.in_proj(x)
        if fused_ss2d(xz, self):
            from .triton_ss2d import ss2d_scan_merge

            y = ss2d_scan_merge(self, xz)
        else:
            x, z = xz.chunk(2, dim=-1)
            x = F.silu(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))
            y = self.out_norm(self.scan_directions(x)) * F.silu(z)
        if residual is None:
            return self.out_proj(y)
        if residual.dtype != y.dtype:  # the matrix product would round the residual to y's dtype
            return residual + self.out_proj(y)
        out = torch.addmm(residual.reshape(-1, residual.shape[-1]), y.reshape(-1, y.shape[-1]), self.out_proj.weight.t())
        return out.view(residual.shape)


class VSSBlock(nn.Module):
    """x + DropPath(SS2D(LN(x))); the v0 block has no MLP."""

    def __init__(self, hidden_dim: int, drop_path: float = 0.0, d_state: int = 16):
        super().__init__()
        self.ln_1 = LayerNorm(hidden_dim)
        self.self_attention = SS2D(hidden_dim, d_state=d_state)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # training keeps autocast's fp32 residual stream and stochastic depth
            return x + self.drop_path(self.self_attention(self.ln_1(x)))
        return self.self_attention(self.ln_1(x), residual=x)


class VSSLayer(nn.Module):
    """``depth`` VSS blocks, optionally preceded by an up-sampler or followed by a down-sampler."""

    def __init__(self, dim: int, depth: int, drop_path: list[float] | float = 0.0, d_state: int = 16,
                 downsample: nn.Module | None = None, upsample: nn.Module | None = None):
        super().__init__()
        rates = drop_path if isinstance(drop_path, list) else [drop_path] * depth
        if upsample is not None:
            self.upsample = upsample
        self.blocks = nn.ModuleList([VSSBlock(dim, rates[i], d_state) for i in range(depth)])
        if downsample is not None:
            self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        for block in self.blocks:
            x = block(x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        return x


def drop_path_rates(depths: list[int], rate: float) -> list[list[float]]:
    """Linearly increasing stochastic-depth rates, split per stage (as the official encoders)."""
    rates = torch.linspace(0, rate, sum(depths)).tolist()
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [rates[s:s + d] for s, d in zip(starts, depths)]


class VSSMEncoder(nn.Module):
    """Swin-UMamba's encoder: patch embedding, VSS stages, and PatchMerging2D in ``downsamples.{i}``.

    Returns ``[x, stage0, stage1, stage2, stage3]`` with the stages channels-first (B, C, H, W).
    """

    def __init__(self, patch_size: int, in_chans: int, depths=(2, 2, 9, 2), dims=(96, 192, 384, 768),
                 d_state: int = 16, drop_path_rate: float = 0.2):
        super().__init__()
        self.patch_embed = PatchEmbed2D(patch_size, in_chans, dims[0])
        rates = drop_path_rates(list(depths), drop_path_rate)
        self.layers = nn.ModuleList(VSSLayer(dims[i], depths[i], rates[i], d_state) for i in range(len(depths)))
        self.downsamples = nn.ModuleList(PatchMerging2D(dims[i]) for i in range(len(depths) - 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = [x]
        x = self.patch_embed(x)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            outputs.append(x.permute(0, 3, 1, 2))
            if i < len(self.downsamples):
                x = self.downsamples[i](x)
        return outputs


def stage_depths(state_dict: dict, prefix: str, stages: int) -> list[int]:
    """Blocks per stage from keys ``{prefix}{i}.blocks.{j}.ln_1.weight``."""
    depths = []
    for i in range(stages):
        start = f"{prefix}{i}.blocks."
        blocks = {key[len(start):].split(".", 1)[0] for key in state_dict if key.startswith(start)}
        depths.append(len(blocks))
    return depths
