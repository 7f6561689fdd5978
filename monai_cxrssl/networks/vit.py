"""Vision Transformer feature extractor: MONAI's ViT returning the [CLS] feature at any input size.

:class:`ViTEncoder` is :class:`monai.networks.nets.ViT` (2-D, learnable positional embeddings,
convolutional patch embedding), so its state dict keys are MONAI's, with three changes that
make it the backbone of DINO and of the downstream classifier:

- it returns the **[CLS] token after the final LayerNorm** ``(B, hidden_size)``, the feature
  DINO and DINOv2 train and linear probes read, instead of MONAI's ``(Tanh(linear), hidden
  states)`` tuple. Unlike timm/DINOv2, MONAI adds positional embeddings to the patch tokens
  only; the [CLS] token is learned on its own (an imported checkpoint's [CLS] position is
  folded into it, see :mod:`monai_cxrssl.networks.vit_import`);
- the positional embeddings, learned for an ``img_size`` grid, are **interpolated** (bicubic)
  whenever the input gives another grid: DINO's local crops are smaller than its global ones,
  and a classifier may run at another resolution than pretraining;
- LayerNorm epsilon 1e-6 (timm and DINOv2's, so imported weights reproduce their features),
  ``qkv_bias=True`` (as timm/DINOv2), attention through ``scaled_dot_product_attention``, and
  the DINO initialisation (truncated normal, std 0.02, for linear layers and tokens).

MONAI's transformer block always creates a cross-attention LayerNorm (``norm_cross_attn``);
it is unused here, so its parameters are frozen (and ``DistributedDataParallel`` sees no
parameter without a gradient). It stays in the state dict for MONAI key compatibility.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from monai.networks.nets import ViT

__all__ = ["ViTEncoder", "VIT_SIZES", "resample_pos_embed"]

#: registry name -> (hidden size, number of heads); depth 12 and MLP ratio 4 for all, as in DeiT/DINO
VIT_SIZES = {"vit_tiny": (192, 3), "vit_small": (384, 6), "vit_base": (768, 12)}

LAYER_NORM_EPS = 1e-6


def resample_pos_embed(pos: torch.Tensor, old_grid: List[int], new_grid: List[int]) -> torch.Tensor:
    """Bicubic resampling of patch positional embeddings from one grid to another.

    Args:
        pos: ``(1, old_h * old_w, D)`` embeddings of the patch tokens only (row-major grid).
        old_grid: ``(old_h, old_w)``.
        new_grid: ``(new_h, new_w)``.

    Returns:
        ``(1, new_h * new_w, D)``, in ``pos``'s dtype; ``pos`` itself when the grids are equal.
        Computed in float32 with antialiasing (timm's convention), differentiable. TorchScript-compatible
        (grids as ``(h, w)`` tuples or lists).
    """
    old_h, old_w = int(old_grid[0]), int(old_grid[1])
    new_h, new_w = int(new_grid[0]), int(new_grid[1])
    if pos.dim() != 3 or pos.shape[1] != old_h * old_w:
        raise ValueError("expected positional embeddings (1, " + str(old_h * old_w) + ", D) for a " + str(old_h)
                         + "x" + str(old_w) + " grid, got " + str(pos.shape))
    if old_h == new_h and old_w == new_w:
        return pos
    d = pos.shape[-1]
    grid = pos.float().reshape(1, old_h, old_w, d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=[new_h, new_w], mode="bicubic", align_corners=False, antialias=True)
    return grid.permute(0, 2, 3, 1).reshape(1, new_h * new_w, d).to(pos.dtype)


class ViTEncoder(ViT):
    """MONAI ViT (2-D) mapping ``(B, C, H, W)`` to its [CLS] feature ``(B, hidden_size)``.

    Any input side works: the patch grid is ``(H // patch_size, W // patch_size)`` (a remainder
    is cropped by the strided patch convolution), and the positional embeddings are resampled
    to it when it differs from the ``img_size`` grid.

    Args:
        in_channels: image channels (1 for radiographs).
        img_size: side of the square image the positional embeddings are learned for.
        patch_size: side of the square patches.
        hidden_size: token width (192 tiny, 384 small, 768 base).
        num_layers: transformer blocks (12 for the standard sizes).
        num_heads: attention heads (``hidden_size / 64`` for the standard sizes).
        mlp_ratio: MLP width as a multiple of ``hidden_size``.
        qkv_bias: bias in the query/key/value projection (timm and DINOv2 have one).
    """

    def __init__(self, in_channels: int = 1, img_size: int = 224, patch_size: int = 16, hidden_size: int = 384,
                 num_layers: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        img_size, patch_size = int(img_size), int(patch_size)
        if patch_size < 1 or img_size < patch_size:
            raise ValueError(f"ViT needs 1 <= patch_size <= img_size, got patch_size {patch_size}, img_size {img_size}")
        if hidden_size % num_heads:
            raise ValueError(f"ViT hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        super().__init__(
            in_channels=in_channels,
            img_size=img_size,
            patch_size=patch_size,
            hidden_size=hidden_size,
            mlp_dim=int(round(hidden_size * mlp_ratio)),
            num_layers=num_layers,
            num_heads=num_heads,
            proj_type="conv",
            pos_embed_type="learnable",
            classification=False,
            spatial_dims=2,
            qkv_bias=qkv_bias,
        )
        self.in_channels = int(in_channels)
        self.img_size = img_size
        self.patch_size = patch_size
        self.hidden_size = int(hidden_size)
        self.num_heads = int(num_heads)
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        for blk in self.blocks:
            blk.attn.use_flash_attention = True  # F.scaled_dot_product_attention: same result, faster
            for p in blk.norm_cross_attn.parameters():
                p.requires_grad_(False)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                m.eps = LAYER_NORM_EPS
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """DINO's initialisation: truncated normal (std 0.02) for linear layers and tokens, zero biases."""
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def pos_embed_for(self, grid: List[int]) -> torch.Tensor:
        """The patch positional embeddings ``(1, h * w, D)`` for an ``(h, w)`` patch grid."""
        return resample_pos_embed(self.patch_embedding.position_embeddings, [self.grid[0], self.grid[1]],
                                  [int(grid[0]), int(grid[1])])

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final LayerNorm: ``(B, 1 + h * w, D)``, the [CLS] token first."""
        return self.norm(self._blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The [CLS] feature after the final LayerNorm, ``(B, hidden_size)``."""
        return self.norm(self._blocks(x)[:, 0])  # LayerNorm acts per token: normalise only the [CLS] one

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        # messages built without f-strings or tuple(): the encoder scripts (TorchScript export)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError("ViT expects images (B, " + str(self.in_channels) + ", H, W), got " + str(x.shape))
        if x.shape[-2] < self.patch_size or x.shape[-1] < self.patch_size:
            raise ValueError("ViT input " + str(x.shape[-2:]) + " is smaller than one " + str(self.patch_size)
                             + "-pixel patch")
        tokens = self.patch_embedding.patch_embeddings(x)  # (B, D, h, w)
        tokens = tokens.flatten(2).transpose(1, 2) + self.pos_embed_for([tokens.shape[-2], tokens.shape[-1]])
        tokens = self.patch_embedding.dropout(tokens)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        for blk in self.blocks:
            tokens = blk(tokens)
        return tokens
