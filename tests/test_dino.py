"""DINO: the loss (centring, temperatures, hand-checked values), the head, the teacher and exact resumption."""

from __future__ import annotations

import math

import pytest
import torch

from small_runs import assert_same_state, run_small

from monai_cxrssl.checkpoints import load_backbone_weights, read_checkpoint
from monai_cxrssl.data.views import CXRViewAugment
from monai_cxrssl.losses import DINOLoss
from monai_cxrssl.methods import DINO
from monai_cxrssl.networks import DINOHead, build_backbone
from small_methods import step_values

from timm_vit_reference import TimmStyleViT

LN3 = math.log(3.0)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one thread avoids thread-synchronisation overhead (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny_vit(img_size=32):
    return build_backbone("vit", embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=img_size)


def _dino(backbone=None, **kwargs):
    kwargs = {"n_local_crops": 2, "out_dim": 16, "hidden_dim": 32, "bottleneck_dim": 8, **kwargs}
    return DINO(backbone if backbone is not None else _tiny_vit(), **kwargs)


def _views(batch=4, n_local=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 1, 32, 32, generator=g) for _ in range(2)] + \
        [torch.randn(batch, 1, 16, 16, generator=g) for _ in range(n_local)]


# ------------------------------------------------------------------------------------ the loss
def test_loss_uniform_teacher_hand_checked():
    # teacher uniform whatever its temperature; student p = (1/4, 3/4) on every crop:
    # every term is -(1/2 log 1/4 + 1/2 log 3/4) = 1/2 log(16/3)
    loss = DINOLoss(out_dim=2, n_crops=3)
    student = torch.tensor([[0.0, 0.1 * LN3]] * 3)
    teacher = torch.tensor([[5.0, 5.0]] * 2)
    assert loss(student, teacher).item() == pytest.approx(0.5 * math.log(16 / 3), rel=1e-6)


def test_loss_centred_teacher_and_skipped_same_view_pairs_hand_checked():
    loss = DINOLoss(out_dim=2, n_crops=3, teacher_temp=0.05)
    loss.center.copy_(torch.tensor([[5.0, 0.0]]))
    # (t - c) / 0.05 = (log 3, 0): the teacher's distribution q = (3/4, 1/4) on both global crops
    teacher = torch.tensor([[5.0 + 0.05 * LN3, 0.0]] * 2)
    # student distributions: crop 0 (1/4, 3/4), crop 1 (1/2, 1/2), crop 2 (3/4, 1/4)
    student = torch.tensor([[0.0, 0.1 * LN3], [0.0, 0.0], [0.1 * LN3, 0.0]])

    def ce(p):
        return -(0.75 * math.log(p[0]) + 0.25 * math.log(p[1]))

    s0, s1, s2 = ce((0.25, 0.75)), ce((0.5, 0.5)), ce((0.75, 0.25))
    # pairs (teacher 0, student 1), (0, 2), (1, 0), (1, 2): a view is never compared with itself
    expected = (s1 + s2 + s0 + s2) / 4
    assert loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_centre_is_an_ema_of_the_teacher_batch_mean():
    kw = {"out_dim": 2, "n_crops": 3, "teacher_temp": 0.5, "center_momentum": 0.9}
    loss = DINOLoss(**kw)
    teacher = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # 2 global crops of one image: mean (2, 3)
    student = torch.tensor([[0.0, 0.3], [0.2, 0.0], [0.1, 0.1]])
    first = loss(student, teacher)
    assert torch.allclose(loss.center, torch.tensor([[0.2, 0.3]]))  # 0.9 * 0 + 0.1 * (2, 3)
    second = loss(student, teacher)
    assert torch.allclose(loss.center, torch.tensor([[0.38, 0.57]]))  # 0.9 * (0.2, 0.3) + 0.1 * (2, 3)
    # each step centres with the centre of the steps before it, then updates it
    reference = DINOLoss(**kw).eval()
    assert first.item() == pytest.approx(reference(student, teacher).item(), rel=1e-6)
    reference.center.copy_(torch.tensor([[0.2, 0.3]]))
    assert second.item() == pytest.approx(reference(student, teacher).item(), rel=1e-6)
    assert first.item() != pytest.approx(second.item(), rel=1e-4)
    loss.eval()
    loss(student, teacher)
    assert torch.allclose(loss.center, torch.tensor([[0.38, 0.57]]))  # evaluation leaves it alone
    assert "center" in dict(loss.named_buffers())  # checkpointed


def test_teacher_temperature_warm_up_is_a_declared_schedule_set_into_the_loss():
    method = _dino(warmup_teacher_temp_iterations=4)  # teacher_temp 0.07 after a warm-up from 0.04
    assert set(method.schedules()) == {"momentum", "teacher_temp"}
    temps = [step_values(method, i, 100)["teacher_temp"] for i in range(1, 7)]
    assert temps == pytest.approx([0.04, 0.05, 0.06, 0.07, 0.07, 0.07])
    assert method.criterion.teacher_temp == pytest.approx(0.04)  # before the first step
    method.before_step(2, step_values(method, 2, 100))
    assert method.criterion.teacher_temp == pytest.approx(0.05)
    assert method(_views())["teacher_temp"].item() == pytest.approx(0.05)
    assert _dino().criterion.teacher_temp == pytest.approx(0.07)  # no warm-up
    assert DINOLoss(out_dim=4, n_crops=2, teacher_temp=0.06).teacher_temp == 0.06


def test_loss_is_float32_under_bf16_autocast_and_checks_shapes():
    loss = DINOLoss(out_dim=8, n_crops=4)
    s = torch.randn(12, 8, dtype=torch.bfloat16)
    t = torch.randn(6, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(s, t)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    with pytest.raises(ValueError, match="4 crops"):
        loss(torch.randn(9, 8), t)
    with pytest.raises(ValueError, match="n_crops"):
        DINOLoss(out_dim=8, n_crops=1)


# ------------------------------------------------------------------------------------ the head
def test_dino_head_unit_prototypes_and_frozen_norm():
    head = DINOHead(32, out_dim=16, hidden_dim=24, bottleneck_dim=8)
    assert head(torch.randn(5, 32)).shape == (5, 16)
    w = head.last_layer.weight
    assert torch.allclose(w.norm(dim=1), torch.ones(16), atol=1e-6)  # g = 1: unit prototypes
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad
    assert DINOHead(32, 16, norm_last_layer=False).last_layer.parametrizations.weight.original0.requires_grad
    # L2-normalised bottleneck and unit prototypes: logits are cosines
    assert head(torch.randn(5, 32)).abs().max() <= 1.0 + 1e-5


# ------------------------------------------------------------------------------------ the method
def test_views_teacher_sees_globals_student_one_pass_per_size():
    method = _dino()
    assert method.num_views == 4 and method.name == "dino"
    calls = {"student": [], "teacher": []}
    method.backbone.register_forward_hook(lambda m, i, o: calls["student"].append(tuple(i[0].shape)))
    method.teacher_backbone.register_forward_hook(lambda m, i, o: calls["teacher"].append(tuple(i[0].shape)))
    out = method(_views())
    assert calls["teacher"] == [(8, 1, 32, 32)]
    assert calls["student"] == [(8, 1, 32, 32), (8, 1, 16, 16)]
    assert set(out) == {"loss", "teacher_temp", "momentum"} and out["loss"].requires_grad
    out["loss"].backward()
    assert all(p.grad is None for p in method.teacher_backbone.parameters())
    assert all(not p.requires_grad for p in [*method.teacher_backbone.parameters(), *method.teacher_head.parameters()])
    assert method.head.mlp[0].weight.grad is not None
    with pytest.raises(ValueError, match="takes 4 views"):
        method(_views()[:3])


def test_teacher_follows_student_with_cosine_momentum():
    method = _dino()
    for a, b in zip(method.backbone.state_dict().values(), method.teacher_backbone.state_dict().values()):
        assert torch.equal(a, b)  # the teacher starts as a copy
    with torch.no_grad():
        for p in [*method.backbone.parameters(), *method.head.parameters()]:
            p.add_(1.0)
    before = {k: v.clone() for k, v in method.teacher_backbone.named_parameters()}
    student = dict(method.backbone.named_parameters())
    method.after_step()  # first step: momentum 0.996
    for k, t in method.teacher_backbone.named_parameters():
        assert torch.allclose(t, 0.996 * before[k] + 0.004 * student[k], atol=1e-6), k
    assert step_values(method, 1, 10)["momentum"] == pytest.approx(0.996)
    assert step_values(method, 6, 10)["momentum"] == pytest.approx(0.998)  # half-way along the cosine
    assert step_values(method, 10, 10)["momentum"] == pytest.approx(1 - 0.004 * (math.cos(0.9 * math.pi) + 1) / 2)
    method.before_step(6, step_values(method, 6, 10))
    assert method(_views())["momentum"].item() == pytest.approx(0.998)


def test_exported_backbone_is_the_teacher():
    method = _dino()
    assert method.export_backbone() is method.teacher_backbone
    assert method.export_backbone().spec() == method.backbone.spec()


def test_param_groups_cover_the_student_only():
    method = _dino()
    groups = method.param_groups(0.04)
    ids = {id(p) for g in groups for p in g["params"]}
    student = {id(p) for p in [*method.backbone.parameters(), *method.head.parameters()] if p.requires_grad}
    assert ids == student
    no_decay = groups[1]["params"]
    assert groups[1]["weight_decay"] == 0.0 and all(p.ndim == 1 for p in no_decay)


def test_resnet_backbone_trains_a_step():
    method = _dino(build_backbone("resnet10", widen_factor=0.25), n_local_crops=1)
    opt = torch.optim.AdamW(method.param_groups(0.04), lr=1e-3)
    method.before_step(1, step_values(method, 1, 5))
    loss = method(_views(n_local=1))["loss"]
    loss.backward()
    opt.step()
    method.after_step()
    assert torch.isfinite(loss) and method.export_backbone().spec()["name"] == "resnet10"


def test_init_weights_load_student_and_teacher(tmp_path):
    torch.manual_seed(0)
    timm = TimmStyleViT(dim=32, heads=2)
    path = tmp_path / "dinov2_like.pth"
    torch.save(timm.state_dict(), path)
    method = _dino(init_weights=str(path))
    assert method.init_report["format"] == "timm_vit"
    expected = timm.cls_token + timm.pos_embed[:, :1]
    assert torch.allclose(method.backbone.net.cls_token, expected)
    assert torch.allclose(method.teacher_backbone.net.cls_token, expected)


# ------------------------------------------------------------------------------------ resumption
def _run(out_dir, epochs=2, **kw):
    """2 epochs of 2 iterations; ``stop_after_epoch`` interrupts the run there (same schedules as the full run)."""
    views = [CXRViewAugment(32, scale=(0.4, 1.0))] * 2 + [CXRViewAugment(16, scale=(0.05, 0.4))] * 2
    return run_small(lambda: _dino(warmup_teacher_temp_iterations=3), out_dir, views, images=8, epochs=epochs,
                     weight_decay=0.04, **kw)


def test_resume_continues_exactly(tmp_path):
    # the teacher momentum follows the whole run's length: interrupt a 2-epoch run, as a crash would,
    # rather than run a 1-epoch one
    _, straight = _run(tmp_path / "a")
    _run(tmp_path / "b", stop_after_epoch=1)
    ckpt = read_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert ckpt["method"] == "dino" and ckpt["iteration"] == 2
    assert any(k.startswith("teacher_backbone.") for k in ckpt["state_dict"])
    assert "criterion.center" in ckpt["state_dict"]
    trainer, resumed = _run(tmp_path / "b", resume=True)
    assert trainer.state.iteration == 4
    assert_same_state(straight, resumed)
    assert torch.count_nonzero(resumed.criterion.center) > 0
    assert not torch.allclose(resumed.teacher_head.mlp[0].weight, resumed.head.mlp[0].weight)  # an EMA, not a copy
    # the exported backbone is the teacher's
    exported = _tiny_vit()
    meta = load_backbone_weights(exported, tmp_path / "b" / "models" / "backbone.pt")
    assert meta["method"] == "dino"
    for k, v in exported.state_dict().items():
        assert torch.equal(v, resumed.teacher_backbone.state_dict()[k])


# ------------------------------------------------------------------------------------ several processes
@pytest.mark.slow
def test_two_processes_with_batch_b_equal_one_process_with_batch_2b(two_process_steps):
    from dist_step import run_step

    two = torch.load(two_process_steps / "dino_vit.pt", weights_only=True)
    one = run_step("dino:vit", 8)  # this process: no process group, the whole batch
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    # the centre averages every process's batch
    assert torch.allclose(two["buffers"]["criterion.center"], one["buffers"]["criterion.center"], atol=1e-6)
    assert torch.allclose(two["params"], one["params"], atol=1e-5)  # the student
    assert torch.allclose(two["targets"], one["targets"], atol=1e-5)  # the teacher
