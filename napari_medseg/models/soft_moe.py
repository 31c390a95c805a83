"""Soft Mixture-of-Experts with dynamic slots, as Swin SMT uses it in place of a Swin block's MLP.

Semantics (and state_dict names) are those of ``DynamicSlotsSoftMoE`` in MI2DataLab/SwinSMT
(``src/models/soft_moe/soft_moe_with_dynamic_slots.py``, from lucidrains' soft-moe-pytorch):

1. tokens ``x`` (b, n, d) are RMS-normalised (``l2norm(x) * sqrt(d) * gamma``);
2. every ``E`` consecutive tokens are averaged (the last, partial group over its real tokens only) and
   projected to one slot embedding per expert, RMS-normalised again: ``S = ceil(n / E)`` slots per expert;
3. ``logits = x . slot_embedsT``; slots are the tokens averaged with ``softmax over tokens``; expert ``e``
   (Linear-GELU-Linear) transforms its ``S`` slots; every token's output is the average of all expert
   outputs with ``softmax over all slots``.

The reference materialises the (n x E*S) logits and both softmaxes: at a 128^3 window, stage 2 has
n = E*S = 32768, i.e. 4 GiB per tensor in fp32. Both softmax averages are attention with unit scale
(queries = slot embeddings, keys = values = tokens for the dispatch; queries = tokens, keys = slot
embeddings, values = expert outputs for the combine), so ``scaled_dot_product_attention`` computes them
exactly with an online softmax (flash / memory-efficient kernels on GPU, the flash kernel on CPU):
memory is linear in n. Padding tokens never enter: a padded token has zero dispatch weight in the
reference, and its output row is dropped.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.gamma


def expert_mlp(dim: int, mult: float, dropout: float = 0.0) -> nn.Sequential:
    hidden = int(dim * mult)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class DynamicSlotsSoftMoE(nn.Module):
    """Soft-MoE over all tokens of a sample: input (b, ..., d) -> output of the same shape.

    Tokens are the middle dimensions flattened in C order, so a (b, D, H, W, d) feature map is mixed
    in (D, H, W) order with W fastest, exactly as Swin SMT's ``x.view(b, -1, c)``.
    """

    def __init__(self, dim: int, *, num_experts: int = 4, expert_mult: float = 4, dropout: float = 0.0):
        super().__init__()
        self.num_experts = num_experts
        self.norm = RMSNorm(dim)
        self.to_slot_embeds = nn.Sequential(
            nn.Linear(dim, dim * num_experts, bias=False),
            nn.Unflatten(-1, (num_experts, dim)),  # feature index = expert * dim + channel
            RMSNorm(dim),
        )
        self.experts = nn.ModuleList(expert_mlp(dim, expert_mult, dropout) for _ in range(num_experts))

    def group_means(self, x: torch.Tensor) -> torch.Tensor:
        """Means of ``num_experts`` consecutive tokens; a last partial group averages its real tokens."""
        b, n, d = x.shape
        whole = n - n % self.num_experts
        means = x[:, :whole].reshape(b, -1, self.num_experts, d).mean(dim=2)
        if whole < n:
            means = torch.cat([means, x[:, whole:].mean(dim=1, keepdim=True)], dim=1)
        return means

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = self.norm(x.reshape(shape[0], -1, shape[-1]))
        slot_embeds = self.to_slot_embeds(self.group_means(tokens))  # (b, S, E, d)
        b, slots_per_expert, experts, d = slot_embeds.shape
        queries = slot_embeds.reshape(b, 1, slots_per_expert * experts, d)
        keys = tokens.unsqueeze(1)
        slots = F.scaled_dot_product_attention(queries, keys, keys, scale=1.0)
        slots = slots.view(b, slots_per_expert, experts, d)
        outputs = torch.stack([expert(slots[:, :, i]) for i, expert in enumerate(self.experts)], dim=2)
        values = outputs.reshape(b, 1, slots_per_expert * experts, d).to(queries.dtype)
        out = F.scaled_dot_product_attention(keys, queries, values, scale=1.0)
        return out.reshape(shape)
