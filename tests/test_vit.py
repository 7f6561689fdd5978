"""The MONAI ViT backbone ([CLS] features, positional-embedding interpolation) and the timm/DINOv2 importer.

The importer is checked against a small ViT in the public timm/DINOv2 layout
(``tests/timm_vit_reference.py``: ``cls_token``, ``pos_embed`` with the [CLS] position,
``blocks.{i}.attn.qkv``, ``ls1.gamma``...):
with its weights imported, our one-channel ViT must give the same [CLS] feature on a grey
image as the original three-channel model on that image repeated on R, G and B.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from monai_cxrssl.exceptions import CheckpointError
from monai_cxrssl.networks import BACKBONES, build_backbone, build_classifier, init_backbone
from monai_cxrssl.networks.vit import ViTEncoder, resample_pos_embed
from monai_cxrssl.networks.vit_import import looks_like_timm_vit, resample_patch_kernel

from timm_vit_reference import DEPTH, DIM, HEADS, TimmStyleViT


def _vit(img_size=32, patch=8, dim=DIM, depth=DEPTH, heads=HEADS):
    return build_backbone("vit", embed_dim=dim, depth=depth, num_heads=heads, patch_size=patch, img_size=img_size)


def _save(obj, path):
    torch.save(obj, path)
    return str(path)


# ------------------------------------------------------------------------------- the backbone
def test_cls_features_shape_spec_and_registry():
    net = _vit().eval()
    assert isinstance(net.net, ViTEncoder) and net.out_dim == DIM
    assert net(torch.rand(3, 1, 32, 32)).shape == (3, DIM)
    assert net.spec() == {"name": "vit", "out_dim": DIM, "in_channels": 1, "embed_dim": DIM, "depth": DEPTH,
                          "num_heads": HEADS, "patch_size": 8, "img_size": 32}
    assert {"vit_tiny", "vit_small", "vit_base", "vit"} <= set(BACKBONES)
    small = build_backbone("vit_small", depth=1)
    assert small.out_dim == 384 and small.net.num_heads == 6 and small.net.patch_size == 16
    assert small.net.grid == (14, 14) and small.net.blocks[0].attn.qkv.bias is not None
    assert all(m.eps == 1e-6 for m in small.modules() if isinstance(m, nn.LayerNorm))
    with pytest.raises(ValueError, match="embed_dim and num_heads"):
        build_backbone("vit")


def test_positional_embeddings_interpolated_at_other_input_sizes():
    net = _vit().net
    pos = net.patch_embedding.position_embeddings
    assert net.pos_embed_for((4, 4)) is pos  # native grid: as learned
    expected = F.interpolate(pos.detach().reshape(1, 4, 4, DIM).permute(0, 3, 1, 2), size=(6, 3), mode="bicubic",
                             align_corners=False, antialias=True).permute(0, 2, 3, 1).reshape(1, 18, DIM)
    assert torch.allclose(net.pos_embed_for((6, 3)), expected, atol=1e-6)
    out = net(torch.rand(2, 1, 48, 24))  # 6 x 3 patches
    assert out.shape == (2, DIM)
    (out * torch.randn_like(out)).sum().backward()  # (a plain sum of a LayerNorm output is constant)
    assert pos.grad is not None and pos.grad.abs().sum() > 0  # learned through the interpolation
    assert net(torch.rand(2, 1, 16, 16)).shape == (2, DIM)  # DINO's smaller local crops
    with pytest.raises(ValueError, match="smaller than one 8-pixel patch"):
        net(torch.rand(1, 1, 4, 4))


def test_resample_pos_embed_checks_its_input():
    with pytest.raises(ValueError, match="4x4 grid"):
        resample_pos_embed(torch.zeros(1, 15, 8), (4, 4), (2, 2))


def test_unused_monai_cross_attention_norm_is_frozen():
    net = _vit().net
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert frozen and all(".norm_cross_attn." in n for n in frozen)


# ------------------------------------------------------------------------------- timm / DINOv2 import
@pytest.mark.parametrize("layout", ["flat", "nested_prefixed", "dinov2_chunked"])
def test_import_reproduces_the_timm_model_on_equal_channels(tmp_path, layout):
    torch.manual_seed(0)
    timm = TimmStyleViT().eval()
    state = timm.state_dict()
    if layout == "nested_prefixed":
        state = {"model": {f"module.backbone.{k}": v for k, v in state.items()}, "epoch": 3}
    elif layout == "dinov2_chunked":  # DINOv2 block chunks: blocks.{chunk}.{global index}.
        state = {(k.replace("blocks.", "blocks.0.", 1) if k.startswith("blocks.") else k): v for k, v in state.items()}
    path = _save(state, tmp_path / "vit.pth")
    ours = _vit().eval()
    report = init_backbone(ours, path)
    assert report["format"] == "timm_vit" and report["loaded"] == len(ours.state_dict())
    notes = " ".join(report["notes"])
    assert "LayerScale" in notes and "summed" in notes and "mask_token" in notes

    grey = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = timm(grey.repeat(1, 3, 1, 1))
        got = ours(grey)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), (got - expected).abs().max()


def test_import_sums_channels_folds_layer_scale_and_cls_position(tmp_path):
    torch.manual_seed(1)
    timm = TimmStyleViT()
    ours = _vit()
    init_backbone(ours, _save(timm.state_dict(), tmp_path / "vit.pth"))
    vit = ours.net
    summed = timm.patch_embed.proj.weight.sum(1, keepdim=True)
    assert torch.allclose(vit.patch_embedding.patch_embeddings.weight, summed)
    assert torch.allclose(vit.cls_token, timm.cls_token + timm.pos_embed[:, :1])
    assert torch.allclose(vit.patch_embedding.position_embeddings, timm.pos_embed[:, 1:])
    for ob, tb in zip(vit.blocks, timm.blocks):
        g1, g2 = tb.ls1.gamma, tb.ls2.gamma
        assert torch.allclose(ob.attn.out_proj.weight, g1[:, None] * tb.attn.proj.weight, atol=1e-6)
        assert torch.allclose(ob.attn.out_proj.bias, g1 * tb.attn.proj.bias, atol=1e-6)
        assert torch.allclose(ob.mlp.linear2.weight, g2[:, None] * tb.mlp.fc2.weight, atol=1e-6)
        assert torch.allclose(ob.mlp.linear2.bias, g2 * tb.mlp.fc2.bias, atol=1e-6)
        assert torch.equal(ob.attn.qkv.weight, tb.attn.qkv.weight) and torch.equal(ob.mlp.linear1.bias, tb.mlp.fc1.bias)


def test_import_interpolates_positions_to_the_backbone_grid(tmp_path):
    torch.manual_seed(2)
    timm = TimmStyleViT(layer_scale=False, mask_token=False)  # timm layout without LayerScale
    ours = _vit(img_size=48)  # 6 x 6 grid; the file has 4 x 4
    report = init_backbone(ours, _save(timm.state_dict(), tmp_path / "vit.pth"))
    assert any("4x4 to a 6x6" in n for n in report["notes"])
    expected = resample_pos_embed(timm.pos_embed[:, 1:].detach(), (4, 4), (6, 6))
    assert torch.allclose(ours.net.patch_embedding.position_embeddings, expected)
    assert torch.allclose(ours.net.cls_token, timm.cls_token + timm.pos_embed[:, :1])


def test_import_resamples_another_patch_size_exactly_when_enlarging(tmp_path):
    # the file's ViT has 4-pixel patches on 16-pixel images (4 x 4 grid); ours 8-pixel patches on 32 pixels
    torch.manual_seed(3)
    timm = TimmStyleViT(img_size=16, patch=4).eval()
    ours = _vit(img_size=32, patch=8).eval()
    report = init_backbone(ours, _save(timm.state_dict(), tmp_path / "vit.pth"))
    assert any("4x4 to 8x8 pixels" in n for n in report["notes"])
    # a patch that is the (bicubic) enlargement of the original patch gets the original token:
    # piecewise-constant patches enlarge to constant patches under any interpolation
    small = torch.rand(2, 1, 4, 4).repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # 16 px, constant patches
    large = small.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # 32 px
    with torch.no_grad():
        assert torch.allclose(ours(large), timm(small.repeat(1, 3, 1, 1)), atol=1e-4)
    # and for any patch x: <resize(x), w'> == <x, w>
    w = torch.randn(5, 1, 4, 4)
    x = torch.rand(7, 1, 4, 4)
    w2 = resample_patch_kernel(w, (8, 8))
    big = F.interpolate(x.double(), size=(8, 8), mode="bicubic", align_corners=False, antialias=True).float()
    assert torch.allclose(torch.einsum("nchw,dchw->nd", big, w2), torch.einsum("nchw,dchw->nd", x, w), atol=1e-4)


def test_import_without_qkv_bias_and_with_registers(tmp_path, caplog):
    torch.manual_seed(4)
    timm = TimmStyleViT(qkv_bias=False, registers=4, mask_token=False)
    ours = _vit()
    with caplog.at_level("INFO"):
        report = init_backbone(ours, _save(timm.state_dict(), tmp_path / "vit.pth"))
    notes = " ".join(report["notes"])
    assert "qkv bias" in notes and "register_tokens" in notes and "features differ" in notes
    assert "register_tokens" in caplog.text  # the note is logged, not only returned
    assert all(torch.count_nonzero(b.attn.qkv.bias) == 0 for b in ours.net.blocks)


def test_dino_training_checkpoint_uses_the_teacher(tmp_path):
    torch.manual_seed(5)
    student, teacher = TimmStyleViT(), TimmStyleViT()
    head = {"head.mlp.0.weight": torch.zeros(8, DIM), "head.last_layer.weight_g": torch.ones(8, 1)}
    ckpt = {"student": {**{f"module.backbone.{k}": v for k, v in student.state_dict().items()},
                        **{f"module.{k}": v for k, v in head.items()}},
            "teacher": {**{f"backbone.{k}": v for k, v in teacher.state_dict().items()}, **head},
            "epoch": 100, "dino_loss": {"center": torch.zeros(1, 8)}}
    ours = _vit()
    report = init_backbone(ours, _save(ckpt, tmp_path / "checkpoint.pth"))
    assert torch.allclose(ours.net.cls_token, teacher.cls_token + teacher.pos_embed[:, :1])
    assert any("head" in n for n in report["notes"])
    # DINOv2's training state: one dict with student.* and teacher.* keys
    both = {**{f"student.backbone.{k}": v for k, v in student.state_dict().items()},
            **{f"teacher.backbone.{k}": v for k, v in teacher.state_dict().items()}}
    ours2 = _vit()
    init_backbone(ours2, _save({"model": both}, tmp_path / "dinov2_train.pth"))
    assert torch.allclose(ours2.net.cls_token, teacher.cls_token + teacher.pos_embed[:, :1])


def test_unmappable_keys_are_a_clear_error(tmp_path):
    state = TimmStyleViT().state_dict()
    state["blocks.1.attn.q_norm.weight"] = torch.ones(DIM // HEADS)
    state["fc_norm.weight"] = torch.ones(DIM)
    with pytest.raises(CheckpointError, match=r"cannot be mapped.*blocks\.1\.attn\.q_norm\.weight.*fc_norm\.weight"):
        init_backbone(_vit(), _save(state, tmp_path / "odd.pth"))


def test_wrong_width_or_depth_is_a_clear_error(tmp_path):
    path = _save(TimmStyleViT().state_dict(), tmp_path / "vit64.pth")
    with pytest.raises(CheckpointError, match=r"pos_embed has shape \(1, 17, 64\).*width is 32"):
        init_backbone(_vit(dim=32), path)
    with pytest.raises(CheckpointError, match="depth 2.*depth 3"):
        init_backbone(_vit(depth=3), path)
    with pytest.raises(CheckpointError, match="can only initialise a ViT backbone.*resnet10"):
        init_backbone(build_backbone("resnet10", widen_factor=0.25), path)


def test_looks_like_timm_vit():
    assert looks_like_timm_vit(TimmStyleViT().state_dict())
    assert looks_like_timm_vit({f"module.{k}": v for k, v in TimmStyleViT().state_dict().items()})
    assert not looks_like_timm_vit(_vit().state_dict())  # our own (MONAI) keys go the generic way
    assert not looks_like_timm_vit(build_backbone("resnet10", widen_factor=0.25).state_dict())


def test_classifier_init_weights_accepts_a_timm_file(tmp_path):
    torch.manual_seed(6)
    timm = TimmStyleViT().eval()
    path = _save(timm.state_dict(), tmp_path / "dinov2_like.pth")
    model = build_classifier("vit", num_outputs=1, mode="linear", init_weights=path, embed_dim=DIM, depth=DEPTH,
                             num_heads=HEADS, patch_size=8, img_size=32).eval()
    assert model.init_report["format"] == "timm_vit"
    grey = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.features(grey), timm(grey.repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-4)


def test_a_timm_vit_in_safetensors_loads_and_a_broken_one_is_named(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(7)
    timm = TimmStyleViT().eval()
    save_file({k: v.contiguous() for k, v in timm.state_dict().items()}, str(tmp_path / "model.safetensors"))
    net = _vit().eval()
    assert init_backbone(net, tmp_path / "model.safetensors")["format"] == "timm_vit"
    grey = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(grey), timm(grey.repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-4)
    (tmp_path / "broken.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="broken.safetensors.*cannot be read as safetensors"):
        init_backbone(_vit(), tmp_path / "broken.safetensors")
    with pytest.raises(CheckpointError, match="missing.safetensors.*does not exist"):
        init_backbone(_vit(), tmp_path / "missing.safetensors")



def _to_hugging_face(state: dict, prefix: str = "") -> dict:
    """The timm/DINOv2 layout renamed as transformers' ``convert_dinov2_to_hf.py`` does (Dinov2Model)."""
    out = {}
    top = {"cls_token": "embeddings.cls_token", "mask_token": "embeddings.mask_token",
           "pos_embed": "embeddings.position_embeddings", "patch_embed.proj.weight":
           "embeddings.patch_embeddings.projection.weight", "patch_embed.proj.bias":
           "embeddings.patch_embeddings.projection.bias", "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
    block = {"attn.proj.": "attention.output.dense.", "ls1.gamma": "layer_scale1.lambda1",
             "ls2.gamma": "layer_scale2.lambda1"}
    for k, v in state.items():
        if k in top:
            out[top[k]] = v
            continue
        _, i, rest = k.split(".", 2)
        if rest.startswith("attn.qkv."):
            for name, part in zip(("query", "key", "value"), v.chunk(3, dim=0)):
                out[f"encoder.layer.{i}.attention.attention.{name}.{rest.rsplit('.', 1)[1]}"] = part
            continue
        rest = next((b + rest[len(a):] for a, b in block.items() if rest.startswith(a)), rest)
        out[f"encoder.layer.{i}.{rest}"] = v
    return {prefix + k: v.contiguous() for k, v in out.items()}


@pytest.mark.parametrize("prefix", ["", "dinov2."])  # Dinov2Model; Dinov2ForImageClassification with its head
def test_a_hugging_face_dinov2_file_loads_exactly(tmp_path, prefix):
    """transformers' Dinov2 layout (facebook/dinov2-*, microsoft/rad-dino model.safetensors): the same features as
    the original model on a grey image, the classifier head ignored with a note."""
    from safetensors.torch import save_file

    torch.manual_seed(8)
    timm = TimmStyleViT().eval()
    hf = _to_hugging_face(timm.state_dict(), prefix)
    assert not looks_like_timm_vit(hf)
    if prefix:
        hf.update({"classifier.weight": torch.zeros(5, 2 * DIM), "classifier.bias": torch.zeros(5)})
    save_file(hf, str(tmp_path / "model.safetensors"))
    net = _vit().eval()
    report = init_backbone(net, tmp_path / "model.safetensors")
    assert report["format"] == "hf_dinov2" and report["loaded"] == len(net.state_dict())
    notes = " ".join(report["notes"])
    assert "Hugging Face" in notes and "LayerScale" in notes and ("classifier.weight" in notes) == bool(prefix)
    grey = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(grey), timm(grey.repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-4)
    del hf[f"{prefix}encoder.layer.1.attention.attention.key.weight"]
    save_file(hf, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointError, match=r"partial.safetensors.*encoder.layer.1.attention.attention has no "
                                              r"key.weight"):
        init_backbone(_vit(), tmp_path / "partial.safetensors")
    with pytest.raises(CheckpointError, match="Hugging Face Dinov2 layout.*only initialise a ViT backbone"):
        init_backbone(build_backbone("resnet10"), tmp_path / "model.safetensors")


def test_backbone_export_of_another_vit_is_rejected(tmp_path):
    from monai_cxrssl.checkpoints import BACKBONE_EXPORT, load_backbone_weights

    tiny = build_backbone("vit_tiny", depth=1)
    path = _save({"format": BACKBONE_EXPORT, "backbone": tiny.spec(), "state_dict": tiny.state_dict()},
                 tmp_path / "backbone.pt")
    load_backbone_weights(build_backbone("vit_tiny", depth=1), path)  # the same ViT loads
    with pytest.raises(CheckpointError, match="vit_small"):
        load_backbone_weights(build_backbone("vit_small", depth=1), path)
    with pytest.raises(CheckpointError, match="patch_size"):
        load_backbone_weights(build_backbone("vit_tiny", depth=1, patch_size=14), path)
    assert init_backbone(build_backbone("vit_tiny", depth=1), path)["format"] == BACKBONE_EXPORT
