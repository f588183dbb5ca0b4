"""Architectures, model wrapper, feature hooks and checkpoints (robuniv.models)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck
from torchvision.models.resnet import ResNet as TorchvisionResNet

from robuniv.log import UserError
from robuniv.models import (
    ARCHITECTURES,
    CheckpointError,
    InputNormalize,
    ModelSpec,
    build_model,
    count_parameters,
    default_layer,
    features_and_logits,
    load_checkpoint,
    save_checkpoint,
    split_robustness_state,
)

ARCHS = [
    "densenet161",
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "vgg16",
    "vgg16_bn",
    "wide_resnet50_2",
    "wide_resnet50_4",
]
FULL_WIDTH_PENULTIMATE = {
    "resnet18": 512,
    "resnet50": 2048,
    "wide_resnet50_2": 2048,
    "wide_resnet50_4": 2048,
    "resnext50_32x4d": 2048,
    "densenet161": 2208,
    "vgg16": 4096,
    "vgg16_bn": 4096,
}
# Width 0.125, CIFAR variant: ResNets 512/8 (x4 for bottlenecks); DenseNet-161 with growth 6 and
# 12 initial features ends at 276 channels; the CIFAR VGG feeds 512/8 features to its Linear.
SMALL_CIFAR_PENULTIMATE = {
    "resnet18": 64,
    "resnet50": 256,
    "wide_resnet50_2": 256,
    "wide_resnet50_4": 256,
    "resnext50_32x4d": 256,
    "densenet161": 276,
    "vgg16": 64,
    "vgg16_bn": 64,
}


def small_spec(arch: str = "resnet18", **overrides: object) -> ModelSpec:
    fields = {
        "arch": arch,
        "num_classes": 10,
        "variant": "cifar",
        "width": 0.125,
        "in_channels": 1,
        "mean": (0.286,),
        "std": (0.353,),
    }
    fields.update(overrides)
    return ModelSpec(**fields)


def torchvision_reference(arch: str) -> nn.Module:
    if arch == "wide_resnet50_4":
        return TorchvisionResNet(Bottleneck, [3, 4, 6, 3], width_per_group=256)
    return getattr(torchvision.models, arch)()


def test_registry_holds_the_eight_paper_architectures() -> None:
    assert ARCHITECTURES.names() == ARCHS


def test_unknown_architecture_error_lists_known_names() -> None:
    with pytest.raises(KeyError, match="resnet999.*densenet161.*wide_resnet50_4"):
        ModelSpec("resnet999", 10)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"width": 0}, "width"),
        ({"width": -0.5}, "width"),
        ({"width": math.nan}, "width"),
        ({"variant": "mnist"}, "mnist.*imagenet, cifar"),
        ({"num_classes": 0}, "num_classes"),
        ({"in_channels": 3}, "mean has 1 entries but in_channels is 3"),
        ({"std": (0.0,)}, "std"),
        ({"adapt_stem": "yes"}, "adapt_stem"),
    ],
)
def test_invalid_spec_values_raise_value_error_naming_them(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        small_spec(**overrides)


def test_spec_dict_round_trip_and_unknown_keys_rejected() -> None:
    spec = small_spec("wide_resnet50_2", adapt_stem=True)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="depth"):
        ModelSpec.from_dict({**spec.to_dict(), "depth": 50})


@pytest.mark.parametrize("arch", ARCHS)
def test_full_size_imagenet_layout_equals_torchvision(arch: str) -> None:
    # Meta tensors: shapes without memory or init time, enough to compare layouts.
    with torch.device("meta"):
        ours = build_model(ModelSpec(arch, 1000)).model.state_dict()
        reference = torchvision_reference(arch).state_dict()
    assert [(k, v.shape) for k, v in ours.items()] == [(k, v.shape) for k, v in reference.items()]


@pytest.mark.parametrize("arch", ["resnet18", "resnext50_32x4d", "densenet161", "vgg16_bn"])
def test_torchvision_weights_give_torchvision_outputs(arch: str) -> None:
    # robuniv.nets re-implements torchvision's blocks (to spare every job importing
    # torchvision): the same weights must give the same logits, not just the same layout.
    torch.manual_seed(0)
    reference = torchvision_reference(arch).eval()
    ours = build_model(ModelSpec(arch, 1000)).model.eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)


def test_model_building_does_not_import_torchvision() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, robuniv.models, robuniv.pipeline;"
        "print(sorted(m for m in sys.modules if m.startswith('torchvision')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_wide_resnet50_4_has_223_4m_parameters() -> None:
    with torch.device("meta"):
        assert count_parameters(build_model(ModelSpec("wide_resnet50_4", 1000))) == 223_439_144


@pytest.mark.parametrize("arch", ARCHS)
def test_full_size_penultimate_width(arch: str) -> None:
    spec = ModelSpec(arch, 10)
    model = build_model(spec, seed=0).eval()
    # 64x64 suffices: every ImageNet head pools adaptively.
    with torch.no_grad():
        features, logits = features_and_logits(model, torch.rand(2, 3, 64, 64), default_layer(spec))
    assert features.shape == (2, FULL_WIDTH_PENULTIMATE[arch])
    assert logits.shape == (2, 10)


@pytest.mark.parametrize("arch", ARCHS)
def test_small_cifar_variant_gives_logits_and_penultimate_width(arch: str) -> None:
    spec = small_spec(arch)
    model = build_model(spec, seed=0).eval()
    with torch.no_grad():
        features, logits = features_and_logits(model, torch.rand(3, 1, 32, 32), default_layer(spec))
    assert logits.shape == (3, 10)
    assert features.shape == (3, SMALL_CIFAR_PENULTIMATE[arch])


def test_cifar_stems_follow_robustness_cifar_models_and_the_authors() -> None:
    resnet = build_model(small_spec("resnet18")).model
    assert (resnet.conv1.kernel_size, resnet.conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(resnet.maxpool, nn.Identity)
    densenet = build_model(small_spec("densenet161")).model.features
    assert (densenet.conv0.kernel_size, densenet.conv0.stride) == ((3, 3), (1, 1))
    assert isinstance(densenet.pool0, nn.Identity)
    vgg = build_model(small_spec("vgg16")).model
    assert isinstance(vgg.classifier, nn.Linear)
    assert any(isinstance(m, nn.BatchNorm2d) for m in vgg.features)
    # The authors kept the ImageNet stem for WRN/ResNeXt on CIFAR; adapt_stem switches it.
    wide = build_model(small_spec("wide_resnet50_2")).model
    assert (wide.conv1.kernel_size, wide.conv1.stride) == ((7, 7), (2, 2))
    assert isinstance(wide.maxpool, nn.MaxPool2d)
    adapted = build_model(small_spec("wide_resnet50_2", adapt_stem=True)).model
    assert adapted.conv1.kernel_size == (3, 3)
    assert isinstance(adapted.maxpool, nn.Identity)


def test_imagenet_vgg16_has_no_batch_norm_and_in_channels_replace_first_conv() -> None:
    vgg = build_model(ModelSpec("vgg16", 10, width=0.125, in_channels=1, mean=(0.5,), std=(0.5,)))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in vgg.modules())
    assert vgg.model.features[0].in_channels == 1


def test_resnext_group_count_scales_with_width() -> None:
    full = build_model(ModelSpec("resnext50_32x4d", 10)).model.layer1[0].conv2
    small = build_model(small_spec("resnext50_32x4d")).model.layer1[0].conv2
    assert (full.groups, full.out_channels) == (32, 128)
    assert (small.groups, small.out_channels) == (4, 16)


def test_default_layer_follows_the_built_head() -> None:
    assert default_layer(ModelSpec("resnet50", 10)) == "fc:in"
    assert default_layer(ModelSpec("densenet161", 10)) == "classifier:in"
    assert default_layer(ModelSpec("vgg16_bn", 10)) == "classifier.4"
    assert default_layer(small_spec("vgg16")) == "classifier:in"
    assert default_layer(small_spec("vgg16", adapt_stem=False)) == "classifier.4"


def test_features_and_logits_equal_forward_and_backprop_to_input() -> None:
    model = build_model(small_spec("resnet18"), seed=1).eval()
    x = torch.rand(4, 1, 32, 32, requires_grad=True)
    features, logits = features_and_logits(model, x, "fc:in")
    torch.testing.assert_close(logits, model(x))
    features.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.no_grad():
        features, _ = features_and_logits(model, x, "fc:in")
    assert features.grad_fn is None


def test_layer_output_and_input_specs() -> None:
    model = build_model(small_spec("resnet18"), seed=2).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        layer4, _ = features_and_logits(model, x, "layer4")
        pool_in, _ = features_and_logits(model, x, "avgpool:in")
        pooled, _ = features_and_logits(model, x, "fc:in")
    assert layer4.shape == (2, 64 * 4 * 4)
    torch.testing.assert_close(layer4, pool_in)
    torch.testing.assert_close(pooled, layer4.view(2, 64, 16).mean(dim=2))


def test_captured_output_is_not_overwritten_by_later_inplace_relu() -> None:
    # DenseNet applies F.relu(inplace=True) to the output of "features" (pre-ReLU norm5).
    model = build_model(small_spec("densenet161"), seed=3).eval()
    with torch.no_grad():
        pre_relu, _ = features_and_logits(model, torch.rand(4, 1, 32, 32), "features")
    assert pre_relu.min() < 0


def test_unknown_layer_raises_listing_modules() -> None:
    model = build_model(small_spec("resnet18"))
    x = torch.rand(1, 1, 32, 32)
    with pytest.raises(ValueError, match="layer9.*conv1.*layer4.*fc"):
        features_and_logits(model, x, "layer9")
    with pytest.raises(ValueError, match=":out"):
        features_and_logits(model, x, "fc:out")


def test_layer_that_runs_twice_is_rejected() -> None:
    model = build_model(small_spec("resnet18"))
    with pytest.raises(ValueError, match="ran 2 times"):
        features_and_logits(model, torch.rand(1, 1, 32, 32), "layer1.0.relu")


def trained_like_checkpoint(tmp_path, model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.1)
    model(torch.rand(2, 1, 32, 32)).sum().backward()
    optimizer.step()
    schedule.step()
    path = tmp_path / "model.pt"
    save_checkpoint(
        path,
        model,
        epoch=7,
        optimizer=optimizer.state_dict(),
        schedule=schedule.state_dict(),
        extra={"eps": 0.5, "history": [{"epoch": 1, "loss": 2.3}]},
    )
    return path


def test_checkpoint_round_trip_in_robustness_layout(tmp_path) -> None:
    model = build_model(small_spec("vgg16"), seed=4)
    path = trained_like_checkpoint(tmp_path, model)

    raw = torch.load(path, weights_only=True)
    for key in (
        "module.normalizer.new_mean",
        "module.normalizer.new_std",
        "module.model.classifier.weight",
        "module.attacker.normalize.new_mean",
        "module.attacker.model.classifier.weight",
    ):
        assert key in raw["model"]
    loaded, ckpt = load_checkpoint(path)
    assert not loaded.training
    assert loaded.spec == model.spec
    assert ckpt["epoch"] == 7
    assert ckpt["robuniv"]["eps"] == 0.5
    assert ckpt["robuniv"]["history"] == [{"epoch": 1, "loss": 2.3}]
    assert "model" not in ckpt
    for (name, ours), (other_name, theirs) in zip(
        model.state_dict().items(), loaded.state_dict().items()
    ):
        assert name == other_name
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    restored = torch.optim.SGD(loaded.parameters(), lr=0.1, momentum=0.9)
    restored.load_state_dict(ckpt["optimizer"])
    assert ckpt["schedule"]["last_epoch"] == 1


@pytest.mark.parametrize("bad", [np.float64(0.5), object(), {1.5: "float key"}])
def test_checkpoint_refuses_values_weights_only_cannot_load(tmp_path, bad: object) -> None:
    path = tmp_path / "model.pt"
    with pytest.raises(ValueError, match="checkpoint\\['robuniv'\\]\\['bad'\\]"):
        save_checkpoint(path, build_model(small_spec()), epoch=0, extra={"bad": bad})
    assert not path.exists()


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda sd: sd.pop("module.model.fc.bias"), "fc.bias"),
        (lambda sd: sd.update({"module.model.fc2.weight": torch.zeros(1)}), "fc2.weight"),
        (lambda sd: sd.update({"module.model.fc.weight": torch.zeros(3, 3)}), "fc.weight"),
    ],
)
def test_strict_load_rejects_tampered_state(tmp_path, tamper, message: str) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(path, build_model(small_spec()), epoch=0)
    ckpt = torch.load(path, weights_only=True)
    tamper(ckpt["model"])
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)


def test_split_robustness_state_strips_prefix_and_drops_attacker_copies() -> None:
    mean, weight = torch.zeros(3, 1, 1), torch.ones(2)
    state = {
        "module.normalizer.new_mean": mean,
        "module.model.fc.weight": weight,
        "module.attacker.normalize.new_mean": mean,
        "module.attacker.model.fc.weight": weight,
    }
    assert split_robustness_state(state) == ({"new_mean": mean}, {"fc.weight": weight})
    unwrapped = {k.removeprefix("module."): v for k, v in state.items()}
    assert split_robustness_state(unwrapped) == ({"new_mean": mean}, {"fc.weight": weight})
    with pytest.raises(ValueError, match="module.head.weight"):
        split_robustness_state({**state, "module.head.weight": weight})


def test_seeded_builds_are_identical_and_leave_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    first = build_model(small_spec("densenet161"), seed=5).state_dict()
    assert torch.equal(torch.rand(1), expected_draw)
    second = build_model(small_spec("densenet161"), seed=5).state_dict()
    other = build_model(small_spec("densenet161"), seed=6).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(
        first["model.features.conv0.weight"], other["model.features.conv0.weight"]
    )


def test_normalizer_clamps_to_unit_interval_then_standardises() -> None:
    normalize = InputNormalize((0.5, 0.25), (0.5, 0.25))
    assert normalize.new_mean.shape == normalize.new_std.shape == (2, 1, 1)
    x = torch.tensor([-1.0, 0.0, 0.75, 2.0]).view(1, 1, 1, 4).expand(1, 2, 1, 4)
    expected = torch.tensor([[-1.0, -1.0, 0.5, 1.0], [-1.0, -1.0, 2.0, 3.0]]).view(1, 2, 1, 4)
    torch.testing.assert_close(normalize(x), expected)


@pytest.mark.parametrize("damage", ["truncated", "tail cut", "empty", "not a checkpoint"])
def test_damaged_checkpoint_is_named_in_one_line(tmp_path, damage: str) -> None:
    path = trained_like_checkpoint(tmp_path, build_model(small_spec("resnet18"), seed=0))
    data = path.read_bytes()
    damaged = {
        "truncated": data[: len(data) // 2],
        "tail cut": data[:-10],
        "empty": b"",
        "not a checkpoint": b"hello\n" * 10,
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == f"{path}: not a readable checkpoint (truncated or damaged)"
    assert isinstance(err.value, UserError)


def test_equal_metadata_gives_equal_checkpoint_bytes_whatever_its_strings_history(
    tmp_path: Path,
) -> None:
    """A resumed training's history holds strings unpickled from its resume file; its
    checkpoint must still have the bytes of an uninterrupted run's (issue 11)."""
    import pickle

    spec = ModelSpec(arch="resnet18", num_classes=10, width=0.0625, in_channels=1,
                     mean=(0.5,), std=(0.5,), variant="cifar")  # fmt: skip
    model = build_model(spec, seed=0)
    history = [{"epoch": 1, "loss": 2.5}, {"epoch": 2, "loss": 2.25}]
    restored = pickle.loads(pickle.dumps(history))  # fresh string objects, equal values
    save_checkpoint(tmp_path / "a.pt", model, epoch=2, extra={"history": history})
    save_checkpoint(tmp_path / "b.pt", model, epoch=2, extra={"history": restored})
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
