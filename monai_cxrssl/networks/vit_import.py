"""Import ViT checkpoints in the public timm / DINO / DINOv2 layout into a :class:`ViTEncoder`.

The layout (``timm.models.vision_transformer``, ``facebookresearch/dino`` and ``dinov2``)::

    cls_token                (1, 1, D)
    pos_embed                (1, 1 + N, D)   the [CLS] position first, then an sqrt(N) x sqrt(N) grid
    patch_embed.proj.weight  (D, C, p, p)    and .bias (D)
    blocks.{i}.norm1 / norm2 .weight .bias
    blocks.{i}.attn.qkv      .weight (3D, D) .bias (3D, optional)
    blocks.{i}.attn.proj     .weight .bias
    blocks.{i}.ls1.gamma / ls2.gamma         (D)  DINOv2 LayerScale (optional)
    blocks.{i}.mlp.fc1 / fc2 .weight .bias
    norm.weight / norm.bias

is converted exactly, or with a named approximation recorded in the notes:

- **LayerScale** ``x + gamma * proj(h)`` is folded into the projection: ``W' = diag(gamma) W``,
  ``b' = gamma * b`` (same for ``mlp.fc2`` with ``ls2``): exact;
- the **[CLS] positional embedding** is added to the [CLS] token (MONAI's ViT has no [CLS]
  position; the token is constant, so this is exact);
- **3 input channels to 1** by summing the patch kernel over channels: a grey image repeated
  on R, G and B then gives exactly the original model's tokens. The original's input
  normalisation (ImageNet mean/std per channel) is not folded in: this project feeds
  ``(x - 0.5) / 0.25``, close to ImageNet's ``(x - 0.485) / 0.229``;
- **positional embeddings** are resampled (bicubic, antialiased) from the file's grid to the
  backbone's ``img_size / patch_size`` grid;
- a **patch size** that differs (DINOv2 uses 14, our ViTs default to 16) is resampled with
  FlexiViT's pseudo-inverse resize (Beyer et al., CVPR 2023; timm's ``resample_patch_embed``):
  the new kernel ``w'`` solves ``<resize(x), w'> = <x, w>`` in the least-squares sense, which
  is exact when the patch grows (14 -> 16): a patch that is the bicubic enlargement of a
  14-pixel patch gets the original token;
- a missing ``qkv`` bias is a zero bias (exact);
- chunked DINOv2 blocks (``blocks.{chunk}.{i}.``), wrapper prefixes (``module.``, ``backbone.``,
  ``teacher.``/``student.``: the teacher wins when both are present, ``_orig_mod.``) are undone;
- ignored with a note: ``mask_token`` (masked-modelling token, unused for features),
  ``register_tokens``/``reg_token`` (DINOv2 with registers: without them the features differ
  from the original model's), and heads (``head.``, ``head_dist.``, ``dino_head.``, ``ibot_head.``).

The **Hugging Face** ``transformers`` Dinov2 layout (``Dinov2Model``'s ``model.safetensors``, e.g.
``facebook/dinov2-small`` or RAD-DINO, ``microsoft/rad-dino``; ``Dinov2ForImageClassification`` under
``dinov2.``) is first renamed into the layout above (:func:`hf_dinov2_to_timm`, the inverse of
transformers' own conversion): ``embeddings.*`` to the tokens and patch embedding, ``encoder.layer.{i}.*``
to ``blocks.{i}.*`` with the separate query, key and value projections concatenated into ``qkv`` (exact),
``layer_scale{1,2}.lambda1`` to ``ls{1,2}.gamma``, ``layernorm`` to ``norm``; ``classifier.*`` is ignored.

Anything else (``fc_norm``, ``patch_embed.norm``, SwiGLU MLPs, q/k norms...) is a
:class:`~monai_cxrssl.exceptions.CheckpointError` naming the keys, as is a depth, width or MLP
size mismatch (naming both shapes). The number of attention heads is not stored in the
weights: ``vit_small`` (6 heads) matches DINOv2 ViT-S/14, ``vit_base`` (12) ViT-B/14.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from monai_cxrssl.exceptions import CheckpointError
from monai_cxrssl.networks.vit import ViTEncoder, resample_pos_embed
from monai_cxrssl.checkpoints import strip_prefixes

__all__ = ["looks_like_timm_vit", "timm_vit_state_dict", "resample_patch_kernel", "looks_like_hf_dinov2",
           "hf_dinov2_to_timm"]

#: wrapper prefixes removed from every key (repeatedly)
PREFIXES = ("module.", "_orig_mod.", "teacher.", "student.", "backbone.", "model.", "encoder.")
#: keys (or key prefixes) that are not part of the feature extractor: skipped with a note
IGNORED = {
    "mask_token": "masked-image-modelling token, unused when computing features",
    "register_tokens": "DINOv2 register tokens: this backbone has none, so its features differ from the "
                       "original model's (which inserts them after [CLS])",
    "reg_token": "register tokens: this backbone has none, so its features differ from the original model's",
    "head.": "classification/projection head, not part of the backbone",
    "head_dist.": "distillation head, not part of the backbone",
    "dino_head.": "DINO projection head, not part of the backbone",
    "ibot_head.": "iBOT projection head, not part of the backbone",
}
#: per-block key (file) -> per-block key (MONAI ViT)
BLOCK_KEYS = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "attn.qkv.weight": "attn.qkv.weight", "attn.qkv.bias": "attn.qkv.bias",
    "attn.proj.weight": "attn.out_proj.weight", "attn.proj.bias": "attn.out_proj.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.linear1.weight", "mlp.fc1.bias": "mlp.linear1.bias",
    "mlp.fc2.weight": "mlp.linear2.weight", "mlp.fc2.bias": "mlp.linear2.bias",
}
TOP_KEYS = {"patch_embed.proj.weight": "patch_embedding.patch_embeddings.weight",
            "patch_embed.proj.bias": "patch_embedding.patch_embeddings.bias",
            "norm.weight": "norm.weight", "norm.bias": "norm.bias"}
_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.(.+)$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")

#: Hugging Face Dinov2: top-level key -> the layout above
HF_TOP = {"embeddings.cls_token": "cls_token", "embeddings.mask_token": "mask_token",
          "embeddings.register_tokens": "register_tokens", "embeddings.position_embeddings": "pos_embed",
          "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
          "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
          "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
#: Hugging Face Dinov2: per-layer key prefix -> per-block key prefix (SwiGLU's weights_in/out keep a name that
#: the conversion then reports as not supported)
HF_BLOCK = {"norm1.": "norm1.", "norm2.": "norm2.", "attention.output.dense.": "attn.proj.", "mlp.fc1.": "mlp.fc1.",
            "mlp.fc2.": "mlp.fc2.", "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
            "mlp.weights_in.": "mlp.w12.", "mlp.weights_out.": "mlp.w3."}
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HF_QKV = re.compile(r"^attention\.attention\.(query|key|value)\.(weight|bias)$")
#: wrapper prefixes before a Hugging Face Dinov2 key (``dinov2.``: Dinov2ForImageClassification)
HF_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "dinov2.")


def _strip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = [k for k in state if isinstance(k, str)]
    if any(k.startswith("teacher.") for k in keys) and any(k.startswith("student.") for k in keys):
        state = {k: v for k, v in state.items() if k.startswith("teacher.")}  # DINO(v2) training state
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        k = strip_prefixes(key, PREFIXES)
        if m := _CHUNKED.match(k):  # DINOv2 block chunks keep the global block index
            k = f"blocks.{m.group(1)}.{m.group(2)}"
        if k in out:
            raise CheckpointError(f"two weights map to '{k}' after removing wrapper prefixes (e.g. '{key}'); "
                                  f"pass a state dict of one network")
        out[k] = value
    return out


def _hf_key(key: str) -> str:
    return strip_prefixes(key, HF_PREFIXES)


def looks_like_hf_dinov2(state: Mapping) -> bool:
    """True when ``state`` is a Hugging Face ``transformers`` Dinov2 state dict (possibly under ``dinov2.``)."""
    if not isinstance(state, Mapping):
        return False
    keys = {_hf_key(k) for k in state if isinstance(k, str)}
    return {"embeddings.patch_embeddings.projection.weight", "embeddings.position_embeddings"} <= keys


def hf_dinov2_to_timm(state: Mapping[str, torch.Tensor],
                      source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a Hugging Face Dinov2 state dict into the timm/DINOv2 layout that :func:`timm_vit_state_dict`
    converts; returns it with notes. Keys it does not know are passed on unchanged, so that the conversion
    names them.

    Raises:
        CheckpointError: a layer with some but not all of its query, key and value projections.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    head: list[str] = []
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            continue
        k = _hf_key(key)
        if k.startswith("classifier."):
            head.append(k)
        elif k in HF_TOP:
            out[HF_TOP[k]] = value
        elif m := _HF_LAYER.match(k):
            i, rest = int(m.group(1)), m.group(2)
            if q := _HF_QKV.match(rest):
                qkv.setdefault(i, {})[f"{q.group(1)}.{q.group(2)}"] = value
                continue
            new = next((b + rest[len(a):] for a, b in HF_BLOCK.items() if rest.startswith(a)), rest)
            out[f"blocks.{i}.{new}"] = value
        else:
            out[k] = value
    for i, parts in sorted(qkv.items()):
        for kind in ("weight", "bias"):
            got = [parts.get(f"{n}.{kind}") for n in ("query", "key", "value")]
            if all(g is None for g in got):
                continue
            if any(g is None for g in got):
                missing = [n for n, g in zip(("query", "key", "value"), got) if g is None]
                raise CheckpointError(f"'{source}': encoder.layer.{i}.attention.attention has no "
                                      f"{'/'.join(missing)}.{kind} beside the others")
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(got, dim=0)
    notes = ["read the Hugging Face transformers Dinov2 layout: renamed to the DINOv2 one, the query, key and "
             "value projections concatenated into qkv (exact)"]
    if head:
        notes.append(f"ignored {', '.join(head)}: classification head, not part of the backbone")
    return out, notes


def looks_like_timm_vit(state: Mapping) -> bool:
    """True when ``state`` (a flat state dict, possibly with wrapper prefixes) is in the timm/DINOv2 ViT layout."""
    if not isinstance(state, Mapping):
        return False
    try:
        keys = set(_strip(state))
    except CheckpointError:  # ambiguous after removing prefixes: not for this importer to judge
        return False
    return {"pos_embed", "patch_embed.proj.weight"} <= keys


def resample_patch_kernel(weight: torch.Tensor, new_size: tuple[int, int]) -> torch.Tensor:
    """Resize patch-embedding kernels ``(D, C, h, w)`` to ``(D, C, *new_size)`` (FlexiViT pseudo-inverse resize).

    With ``R`` the bicubic (antialiased) resize of an ``h x w`` patch to ``new_size`` as a matrix,
    the new kernel is ``pinv(R^T) w``: the token of ``resize(x)`` under the new kernel equals the
    token of ``x`` under the old one (exactly when enlarging, least squares when shrinking).
    """
    old = tuple(int(s) for s in weight.shape[-2:])
    new = tuple(int(s) for s in new_size)
    if old == new:
        return weight
    n_old = old[0] * old[1]
    basis = torch.eye(n_old, dtype=torch.float64).reshape(n_old, 1, *old)
    resized = F.interpolate(basis, size=new, mode="bicubic", align_corners=False, antialias=True)
    resize = resized.reshape(n_old, -1).T  # (n_new, n_old): resize(x) = resize @ x
    pinv = torch.linalg.pinv(resize.T)  # (n_new, n_old)
    flat = weight.double().reshape(-1, n_old) @ pinv.T
    return flat.reshape(*weight.shape[:2], *new).to(weight.dtype)


def _grid_side(n: int) -> int | None:
    side = math.isqrt(n)
    return side if side * side == n and n > 0 else None


def timm_vit_state_dict(state: Mapping[str, torch.Tensor], vit: ViTEncoder,
                        source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], list[str]]:
    """Convert a timm/DINO/DINOv2 ViT state dict to ``vit``'s keys (see the module docstring).

    Args:
        state: the flat state dict (already taken out of any ``"model"``/``"teacher"`` nesting).
        vit: the network to receive the weights (its shapes decide the resampling).
        source: the file name, for messages.

    Returns:
        ``(state_dict, notes)``: a complete state dict for ``vit.load_state_dict(strict=True)``,
        and what was folded, resampled or ignored, one sentence each.

    Raises:
        CheckpointError: keys that cannot be mapped, missing weights, or another depth/width.
    """
    if not isinstance(vit, ViTEncoder):
        raise CheckpointError(f"'{source}' holds a ViT (timm/DINOv2 layout); it can only initialise a ViT backbone "
                              f"(vit_tiny, vit_small, vit_base, vit), not {type(vit).__name__}")
    src = _strip(state)
    target = vit.state_dict()
    d = vit.hidden_size
    notes: list[str] = []
    out: dict[str, torch.Tensor] = {}

    ignored: dict[str, list[str]] = {}
    for k in list(src):
        for prefix in IGNORED:
            if k == prefix or (prefix.endswith(".") and k.startswith(prefix)):
                ignored.setdefault(prefix, []).append(k)
                src.pop(k)
                break
    for prefix, keys in ignored.items():
        notes.append(f"ignored {', '.join(keys) if len(keys) <= 3 else f'{len(keys)} {prefix}* weights'}: "
                     f"{IGNORED[prefix]}")

    # ---------------------------------------------------------------- blocks, with LayerScale folded
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    unmapped: list[str] = []
    for k in list(src):
        m = _BLOCK.match(k)
        if m:
            blocks.setdefault(int(m.group(1)), {})[m.group(2)] = src.pop(k)
    depth, our_depth = len(blocks), len(vit.blocks)
    if blocks and sorted(blocks) != list(range(depth)):
        raise CheckpointError(f"'{source}': block indices {sorted(blocks)} are not 0..{depth - 1}")
    if depth != our_depth:
        raise CheckpointError(f"'{source}' has a ViT of depth {depth} (blocks.0-{depth - 1}); the backbone has depth "
                              f"{our_depth}: choose a backbone of the same depth "
                              f"(vit_tiny/small/base: 12, or depth=...)")
    folded = False
    for i, blk in sorted(blocks.items()):
        gammas = {name: blk.pop(f"{name}.gamma", None) for name in ("ls1", "ls2")}
        for k in blk:
            if k not in BLOCK_KEYS:
                unmapped.append(f"blocks.{i}.{k}")
        for k, v in blk.items():
            if k in BLOCK_KEYS:
                out[f"blocks.{i}.{BLOCK_KEYS[k]}"] = v
        if f"blocks.{i}.attn.qkv.bias" in target and "attn.qkv.bias" not in blk:
            out[f"blocks.{i}.attn.qkv.bias"] = torch.zeros_like(target[f"blocks.{i}.attn.qkv.bias"])
            if i == 0:
                notes.append("the file's attention has no qkv bias: set to zero (exact)")
        for name, layer in (("ls1", "attn.out_proj"), ("ls2", "mlp.linear2")):
            gamma = gammas[name]
            if gamma is None:
                continue
            w, b = out.get(f"blocks.{i}.{layer}.weight"), out.get(f"blocks.{i}.{layer}.bias")
            if w is None or gamma.shape != (w.shape[0],):
                raise CheckpointError(f"'{source}': blocks.{i}.{name}.gamma {tuple(gamma.shape)} does not fit the "
                                      f"projection it scales ({None if w is None else tuple(w.shape)})")
            g = gamma.double()
            out[f"blocks.{i}.{layer}.weight"] = (g[:, None] * w.double()).to(w.dtype)
            out[f"blocks.{i}.{layer}.bias"] = (g * (b.double() if b is not None else 0.0)).to(w.dtype)
            folded = True
    if folded:
        notes.append("folded the LayerScale factors (ls1/ls2.gamma) into attn.proj and mlp.fc2 (exact)")

    # ---------------------------------------------------------------- tokens and positions
    cls = src.pop("cls_token", None)
    pos = src.pop("pos_embed")
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[-1] != d:
        raise CheckpointError(f"'{source}': pos_embed has shape {tuple(pos.shape)}, but the backbone's width is {d} "
                              f"(expected (1, 1 + N, {d})): choose the ViT size of the file "
                              f"(vit_tiny 192, vit_small 384, vit_base 768)")
    if cls is None:
        raise CheckpointError(f"'{source}' has no cls_token: this backbone reads the [CLS] feature")
    if tuple(cls.shape) != (1, 1, d):
        raise CheckpointError(f"'{source}': cls_token has shape {tuple(cls.shape)}; the backbone expects (1, 1, {d})")
    n_tokens = pos.shape[1]
    if _grid_side(n_tokens - 1):
        cls_pos, patch_pos, side = pos[:, :1], pos[:, 1:], _grid_side(n_tokens - 1)
    elif _grid_side(n_tokens):  # timm's no_embed_class layout: no [CLS] position
        cls_pos, patch_pos, side = None, pos, _grid_side(n_tokens)
    else:
        raise CheckpointError(f"'{source}': pos_embed {tuple(pos.shape)} is not a [CLS] position plus a square grid")
    out["cls_token"] = cls + cls_pos if cls_pos is not None else cls.clone()
    out["patch_embedding.position_embeddings"] = resample_pos_embed(patch_pos, (side, side), vit.grid)
    if (side, side) != vit.grid:
        notes.append(f"resampled the positional embeddings from a {side}x{side} to a {vit.grid[0]}x{vit.grid[1]} "
                     f"patch grid (bicubic)")
    if cls_pos is not None:
        notes.append("added the [CLS] positional embedding to the [CLS] token (exact)")

    # ---------------------------------------------------------------- patch embedding and final norm
    for k, ours in TOP_KEYS.items():
        if k in src:
            out[ours] = src.pop(k)
    w = out.get("patch_embedding.patch_embeddings.weight")
    if w is not None:
        our_w = target["patch_embedding.patch_embeddings.weight"]
        if w.ndim != 4 or w.shape[0] != our_w.shape[0]:
            raise CheckpointError(f"'{source}': patch_embed.proj.weight has shape {tuple(w.shape)}; the backbone's is "
                                  f"{tuple(our_w.shape)} (width {d})")
        c_file, c_ours = w.shape[1], our_w.shape[1]
        if c_file != c_ours:
            if c_ours != 1:
                raise CheckpointError(f"'{source}': the patch embedding takes {c_file} channels; the backbone takes "
                                      f"{c_ours} (only reduction to 1 channel is supported)")
            w = w.sum(dim=1, keepdim=True)
            notes.append(f"summed the patch-embedding weights over the file's {c_file} input channels (a grey image "
                         f"repeated on {c_file} channels gives the same tokens)")
        if tuple(w.shape[-2:]) != tuple(our_w.shape[-2:]):
            notes.append(f"resampled the patch-embedding kernel from {w.shape[-2]}x{w.shape[-1]} to "
                         f"{our_w.shape[-2]}x{our_w.shape[-1]} pixels (FlexiViT pseudo-inverse resize)")
            w = resample_patch_kernel(w, tuple(our_w.shape[-2:]))
        out["patch_embedding.patch_embeddings.weight"] = w

    unmapped += sorted(src)
    if unmapped:
        raise CheckpointError(
            f"'{source}' has {len(unmapped)} weight(s) that cannot be mapped onto the MONAI ViT backbone: "
            f"{unmapped[:8]}{' ...' if len(unmapped) > 8 else ''}; supported: the timm/DINOv2 ViT layout with a "
            f"[CLS] token, LayerNorm, GELU MLP (fc1/fc2) and optional LayerScale")

    # unused MONAI parameters (the cross-attention LayerNorm) keep the backbone's values
    for k, v in target.items():
        if ".norm_cross_attn." in k and k not in out:
            out[k] = v
    missing = [k for k in target if k not in out]
    if missing:
        raise CheckpointError(f"'{source}' lacks weights the ViT backbone needs: {missing[:8]}")
    bad = [f"{k}: file {tuple(out[k].shape)} vs backbone {tuple(target[k].shape)}"
           for k in target if tuple(out[k].shape) != tuple(target[k].shape)]
    if bad:
        raise CheckpointError(f"'{source}' does not fit the ViT backbone (width {d}, depth {our_depth}): "
                              f"{len(bad)} shape mismatch(es), e.g. {bad[:3]}")
    return {k: out[k].to(target[k].dtype) for k in target}, notes
