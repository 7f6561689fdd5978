"""BYOL: a symmetric loss of online predictions against a momentum target, no gradient into the target, the
target following on a cosine momentum, the online backbone exported."""

import pytest
import torch
from ignite.engine import Events
from monai.data import Dataset
from monai.handlers import LrScheduleHandler
from monai.utils import set_determinism

from monai_cxrssl.checkpoints import read_checkpoint
from monai_cxrssl.data.dataset import ssl_dataloader
from monai_cxrssl.data.views import CXRViewAugment
from monai_cxrssl.engines import SSLCheckpoint, SSLTrainer, warmup_cosine
from monai_cxrssl.methods import BYOL
from monai_cxrssl.networks import build_backbone


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
    assert method.momentum_at(1, 10) == pytest.approx(0.9) and method.momentum_at(11, 10) == 1.0
    opt = torch.optim.SGD(method.param_groups(0.0), lr=0.5)
    before = [p.clone() for p in method.target_projector.parameters()]
    method.before_step(1, 10)
    out = method(_views())
    assert out["momentum"].item() == pytest.approx(0.9)
    out["loss"].backward()
    opt.step()
    method.after_step(1, 10)
    for b, t, o in zip(before, method.target_projector.parameters(), method.projector.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o, atol=1e-6)
    assert not any(p is q for p in method.target_projector.parameters() for g in opt.param_groups for q in g["params"])


def _run(out_dir, epochs=3, resume=False, stop_after_epoch=None):
    set_determinism(seed=0)
    method = _byol(momentum=0.9)
    opt = torch.optim.AdamW(method.param_groups(1e-5), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    loader = ssl_dataloader(Dataset([{"image": torch.rand(1, 32, 32, generator=g)} for _ in range(12)]), batch_size=4,
                            seed=0)
    sched = warmup_cosine(opt, total_steps=epochs * len(loader), warmup_steps=1)
    handlers = [LrScheduleHandler(sched, epoch_level=False, print_lr=False),
                SSLCheckpoint(out_dir, method, opt, sched, resume=resume)]
    trainer = SSLTrainer("cpu", epochs, loader, method, opt, CXRViewAugment(out_size=32), seed=0, precision="auto",
                         handlers=handlers)
    if stop_after_epoch is not None:  # an interruption: the run was meant to go on
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after_epoch), lambda e: e.terminate())
    trainer.run()
    return trainer, method


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    _, straight = _run(tmp_path / "a")
    _run(tmp_path / "b", stop_after_epoch=1)
    ckpt = read_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert ckpt["method"] == "byol" and ckpt["iteration"] == 3
    assert any(k.startswith("target_projector.") for k in ckpt["state_dict"])  # the target is in the checkpoint
    trainer, resumed = _run(tmp_path / "b", resume=True)
    assert trainer.state.iteration == 9
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    assert not torch.allclose(resumed.target_projector[0].weight, resumed.projector[0].weight)  # the target lags


def test_two_views_or_a_clear_error():
    with pytest.raises(ValueError, match="BYOL takes 2 views, got 3"):
        _byol()(_views() + _views()[:1])
