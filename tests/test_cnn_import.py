"""Outside CNN checkpoints into the one-channel backbones: torchvision/timm ResNets, torchvision/torchxrayvision
DenseNet-121 (``monai_cxrssl.networks.cnn_import``).

The files are generated in those layouts (no download, no torchvision): a three-channel MONAI network of the
same architecture, its keys renamed to the outside layout (torchvision's shortcut convolutions have no bias, its
DenseNet layers no ``layers.`` level) and an ImageNet head added. Imported, our one-channel backbone must give
on a grey image what the three-channel original gives on that image repeated on R, G and B.
"""

import re

import pytest
import torch

from monai_cxrssl.exceptions import CheckpointError
from monai_cxrssl.networks import build_backbone, build_classifier, init_backbone
from monai_cxrssl.networks.cnn_import import looks_like_cnn


def _randomise_batch_norm(net):
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return net.eval()


def _torchvision_resnet(name, in_channels=3, head=1000):
    """A ResNet in torchvision's layout (and its three-channel MONAI twin, for the reference output)."""
    twin = _randomise_batch_norm(build_backbone(name, in_channels=in_channels))
    with torch.no_grad():  # torchvision's shortcut convolutions have no bias
        for k, v in twin.state_dict().items():
            if re.search(r"downsample\.0\.bias$", k):
                v.zero_()
    state = {k[len("net."):]: v.clone() for k, v in twin.state_dict().items() if not k.endswith("downsample.0.bias")}
    state["fc.weight"], state["fc.bias"] = torch.randn(head, twin.out_dim), torch.zeros(head)
    return state, twin


def _torchvision_densenet(in_channels=3, head=1000):
    twin = _randomise_batch_norm(build_backbone("densenet121", in_channels=in_channels))
    state = {k[len("net."):].replace(".layers.", "."): v.clone() for k, v in twin.state_dict().items()}
    state["classifier.weight"], state["classifier.bias"] = torch.randn(head, 1024), torch.zeros(head)
    return state, twin


def _same_features(net, twin, size=64, channels=3):
    grey = torch.rand(2, 1, size, size)
    with torch.no_grad():
        ours, theirs = net.eval()(grey), twin(grey.repeat(1, channels, 1, 1))
    # equal up to float32 summation order, relative to the features' scale (a random ResNet-50's reach ~600, where
    # the order of a 3-channel sum against a summed 1-channel kernel moves them by ~5e-4, depending on the CPU's
    # kernels); a wrong or missing weight moves them by the scale itself
    return bool((ours - theirs).abs().max() <= 1e-5 * theirs.abs().max())


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_resnet_loads_exactly_into_the_one_channel_backbone(tmp_path, name, caplog):
    torch.manual_seed(0)
    state, twin = _torchvision_resnet(name)
    torch.save(state, tmp_path / f"{name}-imagenet.pth")
    net = build_backbone(name)
    with caplog.at_level("INFO"):
        report = init_backbone(net, tmp_path / f"{name}-imagenet.pth")
    assert report["format"] == "torchvision_resnet" and len(report["sha256"]) == 64
    notes = " ".join(report["notes"])
    assert "summed the first convolution" in notes and "fc.weight" in notes and "shortcut convolution bias" in notes
    assert "summed the first convolution" in caplog.text  # the log says what was converted
    assert _same_features(net, twin)


def test_timm_resnet_in_safetensors_with_a_wrapper_prefix(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    state, twin = _torchvision_resnet("resnet18")
    save_file({f"model.{k}": v.contiguous() for k, v in state.items()}, str(tmp_path / "resnet18.a1_in1k.safetensors"))
    net = build_backbone("resnet18")
    assert init_backbone(net, tmp_path / "resnet18.a1_in1k.safetensors")["format"] == "torchvision_resnet"
    assert _same_features(net, twin)


def test_torchvision_densenet121_and_a_one_channel_torchxrayvision_one(tmp_path):
    torch.manual_seed(2)
    state, twin = _torchvision_densenet()
    torch.save(state, tmp_path / "densenet121-imagenet.pth")
    net = build_backbone("densenet121")
    report = init_backbone(net, tmp_path / "densenet121-imagenet.pth")
    assert report["format"] == "torchvision_densenet" and "classifier.weight" in " ".join(report["notes"])
    assert _same_features(net, twin)
    # torchxrayvision: one channel already (nothing summed), 18 findings and their thresholds as the head
    xrv, xrv_twin = _torchvision_densenet(in_channels=1, head=18)
    xrv["op_threshs"] = torch.rand(18)
    torch.save({"model": xrv}, tmp_path / "densenet121-res224-all.pt")
    net = build_backbone("densenet121")
    report = init_backbone(net, tmp_path / "densenet121-res224-all.pt")
    assert not any("summed" in n for n in report["notes"]) and "op_threshs" in " ".join(report["notes"])
    assert _same_features(net, xrv_twin, channels=1)


def test_another_depth_is_a_clear_error_before_anything_loads(tmp_path):
    state, _ = _torchvision_resnet("resnet50")
    torch.save(state, tmp_path / "resnet50.pth")
    with pytest.raises(CheckpointError, match=r"resnet50.pth.*resnet layout.*shape mismatch.*resnet18"):
        build_classifier("resnet18", 1, init_weights=str(tmp_path / "resnet50.pth"))
    deeper, _ = _torchvision_resnet("resnet34")
    torch.save(deeper, tmp_path / "resnet34.pth")
    with pytest.raises(CheckpointError, match=r"resnet34.pth.*weight\(s\) the backbone does not have.*init_strict false"):
        init_backbone(build_backbone("resnet18"), tmp_path / "resnet34.pth")
    report = init_backbone(build_backbone("resnet18"), tmp_path / "resnet34.pth", strict=False)
    assert any("init_strict false" in n for n in report["notes"])
    densenet, _ = _torchvision_densenet()
    torch.save(densenet, tmp_path / "densenet.pth")
    with pytest.raises(CheckpointError, match="holds a densenet.*resnet"):
        init_backbone(build_backbone("resnet18"), tmp_path / "densenet.pth")


def test_only_outside_layouts_take_this_path():
    state, _ = _torchvision_resnet("resnet10")
    assert looks_like_cnn(state) == "resnet" and looks_like_cnn({f"module.{k}": v for k, v in state.items()}) == "resnet"
    # this project's own (MONAI) layouts load by name, as before
    assert looks_like_cnn(build_backbone("resnet10").state_dict()) is None
    assert looks_like_cnn(build_backbone("densenet121").state_dict()) is None
    assert looks_like_cnn(_torchvision_densenet()[0]) == "densenet"
