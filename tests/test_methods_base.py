"""What every SSL method shares (``methods/base.py``): momentum pairs and their schedule, optimiser groups with
weight decay on weights only, and the discovery of methods."""

import pytest
import torch
from torch import nn

from monai_cxrssl import methods
from monai_cxrssl.methods import SSLMethod
from monai_cxrssl.networks import build_backbone
from small_methods import step_values
from small_methods import METHODS, small


def _backbone():
    torch.manual_seed(0)
    return build_backbone("resnet10", widen_factor=0.25)


class _Pairs(SSLMethod):
    """A method with a head and two momentum pairs, as MoCo, DINO and BYOL have."""

    name = "pairs_for_test"

    def __init__(self, backbone, **momentum):
        super().__init__(backbone)
        self.head = nn.Linear(backbone.out_dim, 4)
        self.set_momentum(**momentum)
        self.add_momentum_pair("backbone", "target_backbone")
        self.add_momentum_pair("head", "target_head")


def test_momentum_pairs_are_frozen_copies_that_follow_their_networks():
    m = _Pairs(_backbone(), start=0.9)
    assert [(o, t) for o, t in m.momentum_pairs] == [(m.backbone, m.target_backbone), (m.head, m.target_head)]
    assert not any(p.requires_grad for _, t in m.momentum_pairs for p in t.parameters())
    assert torch.equal(m.head.weight, m.target_head.weight)
    before = m.target_head.weight.clone()
    with torch.no_grad():
        m.head.weight.add_(1.0)
        m.backbone.net.conv1.weight.add_(1.0)
    m.after_step()
    assert torch.allclose(m.target_head.weight, 0.9 * before + 0.1 * m.head.weight)
    assert not torch.equal(m.target_backbone.net.conv1.weight, m.backbone.net.conv1.weight)
    assert torch.allclose(m.target_backbone.net.conv1.weight - m.backbone.net.conv1.weight,
                          torch.full_like(m.backbone.net.conv1.weight, -0.9))  # moved 0.1 of the 1.0 apart


def test_momentum_schedules():
    constant = _Pairs(_backbone(), start=0.99)
    assert [step_values(constant, i, 10)["momentum"] for i in (1, 5, 10)] == [0.99] * 3
    cosine = _Pairs(_backbone(), start=0.99, end=1.0, schedule="cosine")
    values = [step_values(cosine, i, 10)["momentum"] for i in range(1, 12)]
    assert values[0] == pytest.approx(0.99) and values[-1] == 1.0 and values == sorted(values)
    assert cosine.momentum == pytest.approx(0.99)  # before the first step: the start value is logged
    cosine.before_step(6, step_values(cosine, 6, 10))
    assert cosine.momentum == pytest.approx(0.995)  # half-way along the cosine


@pytest.mark.parametrize("momentum, match", [({"start": 1.5}, "momentum must be in"),
                                             ({"start": 0.9, "schedule": "linear"}, "momentum_schedule must be one"),
                                             ({"start": 0.99, "end": 0.9, "schedule": "cosine"}, "rises")])
def test_bad_momentum_settings_are_refused(momentum, match):
    with pytest.raises(ValueError, match=match):
        _Pairs(_backbone(), **momentum)


def test_a_pair_needs_a_submodule():
    m = SSLMethod(_backbone())
    with pytest.raises(TypeError, match="'head' is not a submodule"):
        m.add_momentum_pair("head", "target_head")


@pytest.mark.parametrize("name", METHODS)
def test_every_method_optimises_its_trained_parameters_with_decay_on_weights_only(name):
    m = small(name, _backbone())
    groups = {g["name"]: g for g in m.param_groups(0.05)}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    grouped = [p for g in groups.values() for p in g["params"]]
    assert len({id(p) for p in grouped}) == len(grouped)  # no parameter twice
    trained = {id(p) for p in m.parameters() if p.requires_grad}
    assert {id(p) for p in grouped} == trained  # every trained one, no momentum copy
    assert not {id(p) for _, t in m.momentum_pairs for p in t.parameters()} & trained
    names = {id(p): n for n, p in m.named_parameters()}
    assert all(p.ndim > 1 and not names[id(p)].endswith(".bias") for p in groups["decay"]["params"])
    assert any(names[id(p)].endswith(".bias") for p in groups["no_decay"]["params"])
    torch.optim.AdamW(m.param_groups(0.05), lr=1e-3)  # what the bundles build


def test_methods_are_found_by_name_and_class():
    found = methods.available()
    assert {"simclr", "moco", "micle", "dino"} <= set(found)
    assert all(issubclass(cls, SSLMethod) and cls.name == name for name, cls in found.items())
    for cls in found.values():  # what a bundle's network_def names resolves without an import in __init__
        assert getattr(methods, cls.__name__) is cls
    with pytest.raises(AttributeError, match="NoSuchMethod"):
        getattr(methods, "NoSuchMethod")
