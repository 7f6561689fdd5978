"""A ViT in the public timm / DINOv2 layout, written out for the import tests (no timm needed).

Same parameter names and the same maths as ``timm.models.vision_transformer.VisionTransformer``
and DINOv2's ``DinoVisionTransformer`` (pre-norm blocks, fused qkv, LayerScale ``ls1``/``ls2``,
[CLS] token with a positional embedding, LayerNorm eps 1e-6, exact GELU), in miniature.
"""

from __future__ import annotations

import torch
from torch import nn

DIM, DEPTH, HEADS = 64, 2, 4


class _LayerScale(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.empty(dim).uniform_(0.1, 2.0))

    def forward(self, x):
        return x * self.gamma


class _Attention(nn.Module):
    def __init__(self, dim, heads, qkv_bias=True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim, heads, layer_scale, qkv_bias):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads, qkv_bias)
        self.ls1 = _LayerScale(dim) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, 4 * dim)
        self.ls2 = _LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class TimmStyleViT(nn.Module):
    """timm ``VisionTransformer`` / DINOv2 ``DinoVisionTransformer`` in miniature (same keys, same maths)."""

    def __init__(self, img_size=32, patch=8, dim=DIM, depth=DEPTH, heads=HEADS, in_chans=3, layer_scale=True,
                 qkv_bias=True, mask_token=True, registers=0):
        super().__init__()
        n = (img_size // patch) ** 2
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + n, dim) * 0.5)
        if mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, dim))
        if registers:
            self.register_tokens = nn.Parameter(torch.randn(1, registers, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads, layer_scale, qkv_bias) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        with torch.no_grad():  # non-trivial norms and biases, so that every mapping is exercised
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.1)
                elif isinstance(m, nn.Linear) and m.bias is not None:
                    m.bias.normal_(0, 0.1)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]


def random_timm_state_dict(dim: int, depth: int, patch: int, grid: int, in_chans: int = 3, mlp_ratio: int = 4,
                           layer_scale: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the timm/DINOv2 key layout for any size (e.g. DINOv2 ViT-S/14: 384, 12, 14, 37)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    state = {"cls_token": r(1, 1, dim), "pos_embed": r(1, 1 + grid * grid, dim), "mask_token": torch.zeros(1, dim),
             "patch_embed.proj.weight": r(dim, in_chans, patch, patch), "patch_embed.proj.bias": r(dim),
             "norm.weight": 1 + r(dim), "norm.bias": r(dim)}
    hidden = mlp_ratio * dim
    for i in range(depth):
        b = f"blocks.{i}."
        state.update({b + "norm1.weight": 1 + r(dim), b + "norm1.bias": r(dim),
                      b + "attn.qkv.weight": r(3 * dim, dim), b + "attn.qkv.bias": r(3 * dim),
                      b + "attn.proj.weight": r(dim, dim), b + "attn.proj.bias": r(dim),
                      b + "norm2.weight": 1 + r(dim), b + "norm2.bias": r(dim),
                      b + "mlp.fc1.weight": r(hidden, dim), b + "mlp.fc1.bias": r(hidden),
                      b + "mlp.fc2.weight": r(dim, hidden), b + "mlp.fc2.bias": r(dim)})
        if layer_scale:
            state.update({b + "ls1.gamma": 0.1 + r(dim, std=0.01), b + "ls2.gamma": 0.1 + r(dim, std=0.01)})
    return state
