"""engines/gradients.py: gradient clipping and the last-layer freeze, as handlers on the MONAI iteration events
the SSL trainer fires (and the order it fires them in)."""

import pytest
import torch
from ignite.engine import Events
from monai.data import Dataset
from monai.engines.utils import IterationEvents

from monai_cxrssl.data.loaders import ssl_dataloader
from monai_cxrssl.data.views import CXRViewAugment
from monai_cxrssl.engines import FreezeLastLayer, GradientClipping, SSLTrainer
from monai_cxrssl.networks import build_backbone
from small_methods import small
from small_runs import random_images


def _trainer(name, epochs=1, handlers=(), precision="fp32"):
    torch.manual_seed(0)
    method = small(name, build_backbone("resnet10", widen_factor=0.25))
    opt = torch.optim.AdamW(method.param_groups(1e-4), lr=1e-2)
    loader = ssl_dataloader(Dataset(random_images(8)), batch_size=4, seed=0)
    views = [CXRViewAugment(out_size=32)] * 2 + [CXRViewAugment(out_size=16)] * (method.num_views - 2)
    return SSLTrainer("cpu", epochs, loader, method, opt, views, precision=precision, handlers=list(handlers)), method


def test_the_trainer_fires_monais_iteration_events_in_order_with_the_loss_in_the_output():
    trainer, method = _trainer("simclr")
    fired = []
    for event in (IterationEvents.FORWARD_COMPLETED, IterationEvents.LOSS_COMPLETED,
                  IterationEvents.BACKWARD_COMPLETED, IterationEvents.MODEL_COMPLETED):
        trainer.add_event_handler(event, lambda e, ev=event: fired.append(
            (ev.value, "loss" in e.state.output, any(p.grad is not None for p in method.parameters()))))
    trainer.run()
    assert fired[:4] == [("forward_completed", True, False), ("loss_completed", True, False),
                         ("backward_completed", True, True), ("model_completed", True, True)]
    assert len(fired) == 4 * 2  # every iteration


def test_gradient_clipping_caps_the_total_norm_before_the_step_and_logs_it():
    norms = []
    trainer, method = _trainer("simclr", handlers=[GradientClipping(1e-3)])
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, lambda e: norms.append(
        torch.nn.utils.get_total_norm([p.grad for p in method.parameters() if p.grad is not None]).item()))
    trainer.run()
    assert norms and max(norms) <= 1e-3 * (1 + 1e-4)  # after clipping (this handler runs after the clipper)
    assert trainer.state.output["grad_norm"].item() > 1e-3  # the norm before clipping, logged
    plain, _ = _trainer("simclr", handlers=[GradientClipping(0)])  # 0: off
    assert not plain.has_event_handler(GradientClipping(0), IterationEvents.BACKWARD_COMPLETED)


def test_the_last_layer_is_frozen_for_the_first_epochs_only():
    trainer, method = _trainer("dino", epochs=2, handlers=[FreezeLastLayer(epochs=1)])
    last = method.get_submodule("head.last_layer")
    snapshots = {}
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: snapshots.update(
        {e.state.epoch: [p.detach().clone() for p in last.parameters()]}))
    start = [p.detach().clone() for p in last.parameters()]
    other = method.head.mlp[0].weight.detach().clone() if hasattr(method.head, "mlp") else None
    trainer.run()
    assert all(torch.equal(a, b) for a, b in zip(start, snapshots[1]))  # epoch 1: not updated
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[2]))  # epoch 2: trained
    if other is not None:
        assert not torch.equal(other, method.head.mlp[0].weight)  # the rest of the head trained from the start


def test_freezing_a_submodule_the_method_lacks_is_refused_before_training():
    trainer, _ = _trainer("simclr", handlers=[FreezeLastLayer(1)])
    started = []
    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED, lambda e: started.append(1))
    with pytest.raises(AttributeError, match="SimCLR has no submodule 'head.last_layer'"):
        trainer.run()
    assert not started
