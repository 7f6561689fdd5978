"""BYOL: a symmetric loss of online predictions against a momentum target, no gradient into the target, the
target following on a cosine momentum, the online backbone exported."""

import pytest
import torch
from small_runs import assert_same_state, run_small

from monai_cxrssl.checkpoints import read_checkpoint
from monai_cxrssl.data.views import CXRViewAugment
from monai_cxrssl.methods import BYOL
from monai_cxrssl.networks import build_backbone
from small_methods import step_values


def _byol(**kw):
    torch.manual_seed(0)
    return BYOL(build_backbone("resnet10", widen_factor=0.25), hidden_dim=32, out_dim=16, predictor_hidden_dim=32, **kw)


def _views(n=6):
    g = torch.Generator().manual_seed(1)
    return [torch.rand(n, 1, 32, 32, generator=g), torch.rand(n, 1, 32, 32, generator=g)]


def test_loss_is_symmetric_over_the_views_and_trains_the_online_network_only():
    method = _byol()
    v1, v2 = _views()
    out = method([v1, v2])
    assert 0 < out["loss"].item() < 8  # two terms of 2 - 2 cos
    method.eval()  # BatchNorm with its running statistics: the same function of each view in both orders
    assert torch.allclose(method([v1, v2])["loss"], method([v2, v1])["loss"], atol=1e-6)
    method.train()
    method([v1, v2])["loss"].backward()
    assert all(p.grad is None for p in [*method.target_backbone.parameters(), *method.target_projector.parameters()])
    assert all(p.grad is not None for p in method.predictor.parameters())
    assert method.export_backbone() is method.backbone


def test_the_target_follows_the_online_network_on_a_cosine_to_one():
    method = _byol(momentum=0.9)
    assert [(o, t) for o, t in method.momentum_pairs] == [(method.backbone, method.target_backbone),
                                                          (method.projector, method.target_projector)]
    assert step_values(method, 1, 10)["momentum"] == pytest.approx(0.9) and step_values(method, 11, 10)["momentum"] == 1.0
    opt = torch.optim.SGD(method.param_groups(0.0), lr=0.5)
    before = [p.clone() for p in method.target_projector.parameters()]
    method.before_step(1, step_values(method, 1, 10))
    out = method(_views())
    assert out["momentum"].item() == pytest.approx(0.9)
    out["loss"].backward()
    opt.step()
    method.after_step()
    for b, t, o in zip(before, method.target_projector.parameters(), method.projector.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o, atol=1e-6)
    assert not any(p is q for p in method.target_projector.parameters() for g in opt.param_groups for q in g["params"])


def _run(out_dir, **kw):
    return run_small(lambda: _byol(momentum=0.9), out_dir, CXRViewAugment(out_size=32), **kw)


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    _, straight = _run(tmp_path / "a")
    _run(tmp_path / "b", stop_after_epoch=1)
    ckpt = read_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert ckpt["method"] == "byol" and ckpt["iteration"] == 3
    assert any(k.startswith("target_projector.") for k in ckpt["state_dict"])  # the target is in the checkpoint
    trainer, resumed = _run(tmp_path / "b", resume=True)
    assert trainer.state.iteration == 9
    assert_same_state(straight, resumed)
    assert not torch.allclose(resumed.target_projector[0].weight, resumed.projector[0].weight)  # the target lags


def test_two_views_or_a_clear_error():
    with pytest.raises(ValueError, match="BYOL takes 2 views, got 3"):
        _byol()(_views() + _views()[:1])
