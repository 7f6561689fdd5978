"""engines/features.py: a frozen backbone's features, computed once for linear probing."""

import torch

from monai_cxrssl.data.views import PIXEL_MEAN, PIXEL_STD
from monai_cxrssl.engines import FeatureDataset, probe_inputs
from monai_cxrssl.networks import build_classifier


def _items(n=5, size=16):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(1, size, size, generator=g), "target": torch.tensor([float(i % 2)]),
             "patient_id": f"p{i}"} for i in range(n)]


def _linear():
    torch.manual_seed(0)
    return build_classifier("resnet18", num_outputs=1, mode="linear")


def test_features_are_the_backbone_of_normalised_images_item_by_item_with_the_other_keys_kept():
    items, net = _items(), _linear()
    net.train()  # the pass runs in eval mode and gives the network back as it was
    feats = FeatureDataset(items, net, batch_size=2)
    assert net.training and len(feats) == len(items)
    net.eval()
    with torch.no_grad():
        expected = net.backbone((torch.stack([it["image"] for it in items]) - PIXEL_MEAN) / PIXEL_STD)
    assert torch.allclose(feats.stack(), expected, atol=1e-5)
    assert [it["patient_id"] for it in feats] == [f"p{i}" for i in range(5)]
    assert all(torch.equal(f["target"], it["target"]) for f, it in zip(feats, items))


def test_the_classifier_gives_the_same_logits_from_features_as_from_images():
    items, net = _items(), _linear()
    net.eval()
    feats = probe_inputs(items, net, fit_standardisation=True)
    assert isinstance(feats, FeatureDataset)
    # standardisation fitted on these features: they come out with zero mean
    z = (feats.stack() - net.feature_mean) / net.feature_std
    assert torch.allclose(z.mean(0), torch.zeros(z.shape[1]), atol=1e-4)
    with torch.no_grad():
        from_images = net((torch.stack([it["image"] for it in items]) - PIXEL_MEAN) / PIXEL_STD)
        from_features = net(feats.stack())
    assert torch.allclose(from_images, from_features, atol=1e-4)


def test_images_pass_through_when_fine_tuning_or_disabled():
    items = _items()
    assert probe_inputs(items, build_classifier("resnet18", num_outputs=1, mode="finetune")) is items
    assert probe_inputs(items, _linear(), enabled="false") is items
