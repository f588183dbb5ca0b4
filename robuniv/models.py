"""The paper's seven architectures, robustness-library model wrapper and checkpoints (SPEC 1, 4).

Every architecture comes in an ImageNet and a CIFAR variant with a width multiplier, so
the small default study (Fashion-MNIST, 1x32x32, width 0.125) uses the same constructors
as the full-size reproduction. At width 1, ImageNet variant and 3 input channels each net
has exactly torchvision's layout (state_dict keys and shapes), so robustness-library
ImageNet weights load strictly.

Models take inputs in [0, 1] and normalise inside (`RobustModel`), as the robustness
library's `AttackerModel`, so attacks and inversion work in pixel space.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pickle
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from robuniv.io import atomic_path
from robuniv.log import UserError
from robuniv.nets import VGG16_LAYERS, BasicBlock, Bottleneck, DenseNet, conv1x1, vgg_features
from robuniv.registry import Registry

log = logging.getLogger(__name__)


class CheckpointError(UserError):
    """A checkpoint that cannot be read, or whose weights do not fit its model."""


Variant = Literal["imagenet", "cifar"]
VARIANTS: tuple[str, ...] = get_args(Variant)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _stem_conv(in_channels: int, out_channels: int, *, small: bool) -> nn.Conv2d:
    """ImageNet stem (7x7, stride 2) or the CIFAR one (3x3, stride 1) of robustness' cifar_models."""
    if small:
        return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    return nn.Conv2d(in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=False)


class ResNet(nn.Module):
    """torchvision's ResNet with every channel count scaled by `width`; same module names.

    ResNeXt keeps its per-group width (4 channels per group in layer1 at 32x4d) and scales
    the number of groups with `width` (at least 1), so the inner width stays a multiple of
    the group count and the inner width scales by `width` like every other channel count.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        *,
        num_classes: int,
        width: float = 1.0,
        groups: int = 1,
        width_per_group: float = 64,
        in_channels: int = 3,
        small_stem: bool = False,
    ) -> None:
        super().__init__()
        if groups > 1:
            scaled_groups = max(1, round(groups * width))
            width_per_group = width_per_group * groups / scaled_groups
            groups = scaled_groups
        inplanes = _scaled(64, width)
        self.conv1 = _stem_conv(in_channels, inplanes, small=small_stem)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = (
            nn.Identity() if small_stem else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        )
        for index, (base_planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            planes = _scaled(base_planes, width)
            stride = 1 if index == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    conv1x1(inplanes, planes * block.expansion, stride),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            stage = [block(inplanes, planes, stride, downsample, groups, width_per_group)]
            inplanes = planes * block.expansion
            stage += [
                block(inplanes, planes, groups=groups, base_width=width_per_group)
                for _ in range(1, blocks)
            ]
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VGG(nn.Module):
    """torchvision's VGG layout (features, avgpool, classifier) with a head given from outside.

    torchvision's class hard-codes the 4096-wide classifier; the width multiplier and the
    CIFAR head (robustness' cifar_models: one Linear on the flattened 1x1 map) need others.
    """

    def __init__(self, features: nn.Sequential, avgpool: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.avgpool = avgpool
        self.classifier = classifier
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _build_resnet(
    *,
    block: type[BasicBlock | Bottleneck],
    layers: Sequence[int],
    groups: int = 1,
    width_per_group: int = 64,
    num_classes: int,
    width: float,
    variant: Variant,
    adapt_stem: bool,
    in_channels: int,
) -> nn.Module:
    return ResNet(
        block,
        layers,
        num_classes=num_classes,
        width=width,
        groups=groups,
        width_per_group=width_per_group,
        in_channels=in_channels,
        small_stem=adapt_stem,
    )


def _build_densenet(
    *,
    growth_rate: int,
    block_config: tuple[int, int, int, int],
    num_init_features: int,
    num_classes: int,
    width: float,
    variant: Variant,
    adapt_stem: bool,
    in_channels: int,
) -> nn.Module:
    net = DenseNet(
        growth_rate=_scaled(growth_rate, width),
        block_config=block_config,
        num_init_features=_scaled(num_init_features, width),
        num_classes=num_classes,
    )
    if adapt_stem or in_channels != 3:
        conv0 = _stem_conv(in_channels, net.features.conv0.out_channels, small=adapt_stem)
        nn.init.kaiming_normal_(conv0.weight)  # torchvision's DenseNet init
        net.features.conv0 = conv0
    if adapt_stem:
        net.features.pool0 = nn.Identity()
    return net


def _build_vgg(
    *,
    batch_norm: bool,
    num_classes: int,
    width: float,
    variant: Variant,
    adapt_stem: bool,
    in_channels: int,
) -> nn.Module:
    # The robustness library's CIFAR vgg16 has batch norm (without it VGG-16 does not train
    # at lr 0.1), so the CIFAR variant of "vgg16" has it too and equals "vgg16_bn" there.
    batch_norm = batch_norm or variant == "cifar"
    cfg = [v if v == "M" else _scaled(v, width) for v in VGG16_LAYERS]
    features = vgg_features(cfg, batch_norm=batch_norm, in_channels=in_channels)
    channels = cfg[-2]
    if adapt_stem:
        # 32x32 inputs leave a 1x1 map after five max-pools: no pooling, one Linear.
        return VGG(features, nn.Identity(), nn.Linear(channels, num_classes))
    hidden = _scaled(4096, width)
    classifier = nn.Sequential(
        nn.Linear(channels * 7 * 7, hidden),
        nn.ReLU(True),
        nn.Dropout(0.5),
        nn.Linear(hidden, hidden),
        nn.ReLU(True),
        nn.Dropout(0.5),
        nn.Linear(hidden, num_classes),
    )
    return VGG(features, nn.AdaptiveAvgPool2d((7, 7)), classifier)


@dataclass(frozen=True)
class Architecture:
    """One registry entry (SPEC 1).

    `build(*, num_classes, width, variant, adapt_stem, in_channels)` returns the net in
    torchvision layout. `penultimate` maps the layout to the default feature layer (SPEC 4):
    "imagenet" for the ImageNet stem and head, "cifar" for the adapted small-image stem and
    head (they differ only for VGG, whose CIFAR head is a single Linear).
    `adapts_stem_on_cifar` is the default of `adapt_stem` for the CIFAR variant.
    """

    name: str
    family: str
    build: Callable[..., nn.Module]
    penultimate: Mapping[str, str]
    adapts_stem_on_cifar: bool


ARCHITECTURES: Registry[Architecture] = Registry("architecture")

_POOLED_FC = MappingProxyType({"imagenet": "fc:in", "cifar": "fc:in"})
_POOLED_CLASSIFIER = MappingProxyType({"imagenet": "classifier:in", "cifar": "classifier:in"})
# ImageNet: output of the second classifier ReLU (4096-d at width 1); CIFAR: the flattened
# 512-d features that feed robustness' single-Linear head.
_VGG_LAYER = MappingProxyType({"imagenet": "classifier.4", "cifar": "classifier:in"})


def _register(
    name: str,
    family: str,
    build: Callable[..., nn.Module],
    penultimate: Mapping[str, str],
    *,
    adapts_stem_on_cifar: bool,
) -> None:
    ARCHITECTURES.register(
        name, Architecture(name, family, build, penultimate, adapts_stem_on_cifar)
    )


_BOTTLENECK_50 = partial(_build_resnet, block=Bottleneck, layers=(3, 4, 6, 3))
_register(
    "resnet18",
    "resnet",
    partial(_build_resnet, block=BasicBlock, layers=(2, 2, 2, 2)),
    _POOLED_FC,
    adapts_stem_on_cifar=True,
)
_register("resnet50", "resnet", _BOTTLENECK_50, _POOLED_FC, adapts_stem_on_cifar=True)
_register(
    "wide_resnet50_2",
    "wide_resnet",
    partial(_BOTTLENECK_50, width_per_group=128),
    _POOLED_FC,
    adapts_stem_on_cifar=False,
)
_register(
    "wide_resnet50_4",
    "wide_resnet",
    partial(_BOTTLENECK_50, width_per_group=256),
    _POOLED_FC,
    adapts_stem_on_cifar=False,
)
_register(
    "resnext50_32x4d",
    "resnext",
    partial(_BOTTLENECK_50, groups=32, width_per_group=4),
    _POOLED_FC,
    adapts_stem_on_cifar=False,
)
_register(
    "densenet161",
    "densenet",
    partial(_build_densenet, growth_rate=48, block_config=(6, 12, 36, 24), num_init_features=96),
    _POOLED_CLASSIFIER,
    adapts_stem_on_cifar=True,
)
_register(
    "vgg16", "vgg", partial(_build_vgg, batch_norm=False), _VGG_LAYER, adapts_stem_on_cifar=True
)
_register(
    "vgg16_bn", "vgg", partial(_build_vgg, batch_norm=True), _VGG_LAYER, adapts_stem_on_cifar=True
)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network; stored in every checkpoint (SPEC 1).

    `adapt_stem=None` means the architecture's default for the variant (ImageNet: False;
    CIFAR: `Architecture.adapts_stem_on_cifar`). `mean`/`std` have one entry per channel.

    Models loaded from a zoo (`robuniv.zoo`) keep their library's own constructor:
    `source` names the library ("timm", "robustbench", "torchvision"; "robuniv" for the
    registry), `arch` its model name, `source_dataset`/`source_threat_model` RobustBench's
    keys. `input_size` (H, W) is the size the net was trained at: inputs of another size are
    resized to it and grey images repeated to `in_channels`, so every model of a study sees
    the same images. `penultimate` overrides the registry's default feature layer.
    """

    arch: str
    num_classes: int
    variant: Variant = "imagenet"
    width: float = 1.0
    adapt_stem: bool | None = None
    in_channels: int = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    source: str = "robuniv"
    source_dataset: str = ""
    source_threat_model: str = ""
    input_size: tuple[int, ...] = ()
    penultimate: str = ""

    def __post_init__(self) -> None:
        if self.source == "robuniv":
            ARCHITECTURES.get(self.arch)  # KeyError listing the known architectures
        if len(self.input_size) not in (0, 2):
            raise ValueError(f"input_size must be (H, W) or empty, got {self.input_size!r}")
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; allowed: {', '.join(VARIANTS)}")
        for name in ("num_classes", "in_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (
            isinstance(self.width, (int, float)) and math.isfinite(self.width) and self.width > 0
        ):
            raise ValueError(f"width must be a finite number > 0, got {self.width!r}")
        if self.adapt_stem not in (None, True, False):
            raise ValueError(f"adapt_stem must be True, False or None, got {self.adapt_stem!r}")
        object.__setattr__(self, "width", float(self.width))
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != self.in_channels:
                raise ValueError(
                    f"{name} has {len(values)} entries but in_channels is {self.in_channels}"
                )
            object.__setattr__(self, name, values)
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")

    @property
    def stem_adapted(self) -> bool:
        """`adapt_stem` resolved against the architecture's default for the variant."""
        if self.adapt_stem is not None:
            return self.adapt_stem
        if self.source != "robuniv":
            return False
        return self.variant == "cifar" and ARCHITECTURES.get(self.arch).adapts_stem_on_cifar

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON- and weights_only-safe values (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown model spec keys {unknown}; allowed: {', '.join(names)}")
        missing = [name for name in ("arch", "num_classes") if name not in d]
        if missing:
            raise ValueError(f"model spec lacks {missing}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class InputNormalize(nn.Module):
    """Clamp to [0, 1], then (x - mean) / std per channel, as robustness' `InputNormalizer`.

    Buffers `new_mean`/`new_std` have shape (C, 1, 1) and the robustness library's names, so
    its checkpoints' normaliser entries load into this module.

    The clamp passes gradients straight through. `torch.clamp`'s own gradient is 0 at
    exactly 0 and 1, so with it every pixel at a bound is frozen for PGD and inversion:
    Fashion-MNIST's black background (half of each image) could never change, and every
    pixel an attack or inversion step clamps to a bound stayed there. Inputs in [0, 1] get
    the same outputs either way.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} entries, std {len(std)}")
        self.register_buffer("new_mean", torch.as_tensor(mean, dtype=torch.float32)[:, None, None])
        self.register_buffer("new_std", torch.as_tensor(std, dtype=torch.float32)[:, None, None])

    def forward(self, x: Tensor) -> Tensor:
        x = x + (x.clamp(0, 1) - x).detach()
        return (x - self.new_mean) / self.new_std


class InputAdapter(nn.Module):
    """Grey images repeated to the net's channels, then resized to the size it was trained at.

    Only zoo models need it (a RobustBench CIFAR-10 or an ImageNet model studied on
    Fashion-MNIST); it sits before the normaliser, so attacks and inversion still work in
    the study's own pixel space. Bilinear resizing is differentiable, and deterministic on
    the CPU.
    """

    def __init__(self, in_channels: int, input_size: Sequence[int]) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.input_size = tuple(input_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1 and self.in_channels != 1:
            x = x.expand(-1, self.in_channels, -1, -1)
        if self.input_size and tuple(x.shape[-2:]) != self.input_size:
            x = nn.functional.interpolate(
                x, size=self.input_size, mode="bilinear", align_corners=False, antialias=False
            )
        return x


class RobustModel(nn.Module):
    """Normaliser + net, as robustness' `AttackerModel` without its attacker (SPEC 1).

    Attributes
    ----------
    normalizer : InputNormalize
    model : nn.Module
        The net in torchvision layout; layer specs are relative to it.
    spec : ModelSpec
    """

    def __init__(self, spec: ModelSpec, model: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        # It holds no weights, so checkpoints keep the robustness library's keys.
        zoo_model = spec.source != "robuniv"
        self._adapter = InputAdapter(spec.in_channels, spec.input_size) if zoo_model else None
        self.normalizer = InputNormalize(spec.mean, spec.std)
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N x num_classes) of images x (N x C x H x W) in [0, 1]."""
        if self._adapter is not None:
            x = self._adapter(x)
        return self.model(self.normalizer(x))


def build_model(
    spec: ModelSpec, *, seed: int | None = None, zero_init_residual: bool = False
) -> RobustModel:
    """A freshly initialised model on the CPU (torchvision's init per family).

    With `seed`, initialisation uses its own generator state, so equal seeds give equal
    weights and the global torch RNG is left untouched. `zero_init_residual` starts each
    residual block's last BatchNorm scale at 0 (torchvision's option of the same name), so
    every block starts as the identity: deep ResNets (ResNeXt-50) then train in a few
    hundred steps. Other families have no residual blocks and ignore it.
    """
    if spec.source != "robuniv":
        from robuniv import zoo  # the zoo libraries load only for zoo models

        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            return RobustModel(spec, zoo.build_net(spec))
    arch = ARCHITECTURES.get(spec.arch)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        net = arch.build(
            num_classes=spec.num_classes,
            width=spec.width,
            variant=spec.variant,
            adapt_stem=spec.stem_adapted,
            in_channels=spec.in_channels,
        )
    if zero_init_residual:
        for module in net.modules():
            if isinstance(module, Bottleneck):
                nn.init.zeros_(module.bn3.weight)
            elif isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)
    return RobustModel(spec, net)


def default_layer(spec: ModelSpec) -> str:
    """The penultimate layer spec of the net `spec` builds (SPEC 4)."""
    if spec.penultimate:
        return spec.penultimate
    layout = "cifar" if spec.stem_adapted else "imagenet"
    return ARCHITECTURES.get(spec.arch).penultimate[layout]


def features_and_logits(model: RobustModel, x: Tensor, layer: str) -> tuple[Tensor, Tensor]:
    """Features at `layer` and logits from one forward pass (SPEC 4).

    Parameters
    ----------
    model : RobustModel
    x : Tensor
        Images (N x C x H x W) in [0, 1].
    layer : str
        Relative to `model.model`: "name" is the output of submodule `name` (dotted path),
        "name:in" its input.

    Returns
    -------
    features : Tensor
        (N x D), the layer's activations flattened; differentiable when grad is enabled.
    logits : Tensor
        (N x num_classes).
    """
    name, _, where = layer.partition(":")
    if where not in ("", "in"):
        raise ValueError(f"layer {layer!r}: suffix must be ':in' or nothing, got ':{where}'")
    try:
        module = model.model.get_submodule(name)
    except AttributeError:
        from robuniv.layers import resolve  # imports this module

        resolve(model.model, layer, model.spec.arch)  # raises, naming the nearest modules
        raise
    captured: list[Tensor] = []

    # Clone: later in-place ops (ReLU(inplace=True), `out += identity`) would overwrite it.
    def keep_input(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
        captured.append(args[0].clone())

    def keep_output(_module: nn.Module, _args: tuple[Tensor, ...], output: Tensor) -> None:
        captured.append(output.clone())

    if where == "in":
        handle = module.register_forward_pre_hook(keep_input)
    else:
        handle = module.register_forward_hook(keep_output)
    try:
        logits = model(x)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise ValueError(
            f"layer {layer!r} of {model.spec.arch} ran {len(captured)} times in one forward "
            "pass; choose a module that runs exactly once"
        )
    return captured[0].flatten(1), logits


_WEIGHTS_ONLY_SCALARS = (bool, int, float, str, type(None))


def _check_weights_only(value: Any, where: str) -> None:
    """Raise unless `value` unpickles under torch.load(weights_only=True)."""
    # Exact types: numpy scalars subclass float but pickle as numpy objects.
    if isinstance(value, Tensor) or type(value) in _WEIGHTS_ONLY_SCALARS:
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            _check_weights_only(item, f"{where}[{index}]")
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise ValueError(f"{where}: key {key!r} must be str or int")
            _check_weights_only(item, f"{where}[{key!r}]")
        return
    raise ValueError(
        f"{where} is a {type(value).__name__}; a weights-only checkpoint holds only tensors, "
        "bool, int, float, str, None, lists, tuples and dicts"
    )


def _interned(value: Any) -> Any:
    """`value` with every string interned, so equal metadata pickles to equal bytes.

    Pickle writes a string once and refers back to it when the same object recurs. A
    training history restored from a resume file holds strings unpickled from it, other
    objects than the code's own "epoch" or "loss": without interning, a resumed run's
    checkpoint had the same contents as an uninterrupted one's but other bytes.
    """
    if isinstance(value, str):
        return sys.intern(value)
    if type(value) in (dict, OrderedDict):
        return type(value)((_interned(k), _interned(v)) for k, v in value.items())
    if type(value) in (list, tuple):
        return type(value)(_interned(v) for v in value)
    return value


def save_checkpoint(
    path: str | Path,
    model: RobustModel,
    *,
    epoch: int,
    optimizer: dict | None = None,
    schedule: dict | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a robustness-library checkpoint atomically, loadable with weights_only=True.

    Layout: {"model": state, "epoch", "optimizer", "schedule", "robuniv": {"spec", **extra}}
    with state keys "module.normalizer.*", "module.model.*" and their duplicates
    "module.attacker.normalize.*", "module.attacker.model.*" (shared tensors, stored once),
    so robustness' `make_and_restore_model` reads it too.
    """
    extra = dict(extra or {})
    if "spec" in extra:
        raise ValueError("extra must not contain 'spec': the checkpoint stores model.spec there")
    payload: dict[str, Any] = _interned(
        {
            "epoch": epoch,
            "optimizer": optimizer,
            "schedule": schedule,
            "robuniv": {"spec": model.spec.to_dict(), **extra},
        }
    )
    _check_weights_only(payload, "checkpoint")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    robustness_state = {f"module.{k}": v for k, v in state.items()}
    # robustness' Attacker holds the normaliser as "normalize", the net as "model".
    robustness_state.update(
        {
            "module.attacker." + (f"normalize.{k[11:]}" if k.startswith("normalizer.") else k): v
            for k, v in state.items()
        }
    )
    # Through a file object: torch.save names the zip archive's root folder after a path's
    # file name, which for the temporary name would differ between otherwise equal files.
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save({"model": robustness_state, **payload}, fh)


def split_robustness_state(state_dict: Mapping[str, Tensor]) -> tuple[dict, dict]:
    """(normaliser state, net state) of a robustness-library state dict.

    Strips a "module." prefix (DataParallel), drops the "attacker.*" duplicates and splits
    "normalizer.<k>" from "model.<k>". Other keys raise ValueError.
    """
    normalizer: dict[str, Tensor] = {}
    net: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        head, _, rest = key.removeprefix("module.").partition(".")
        if head == "normalizer":
            normalizer[rest] = value
        elif head == "model":
            net[rest] = value
        elif head != "attacker":
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"keys outside normalizer/model/attacker: {unknown[:5]}"
            f"{' ...' if len(unknown) > 5 else ''}"
        )
    return normalizer, net


def load_checkpoint(
    path: str | Path, *, map_location: str | torch.device = "cpu"
) -> tuple[RobustModel, dict]:
    """Rebuild a model saved by `save_checkpoint`, load it strictly, put it in eval mode.

    Returns the model on `map_location` and the checkpoint dict without "model" (epoch,
    optimizer, schedule, robuniv metadata). A damaged file, or missing, unexpected or
    misshapen weights, raise CheckpointError naming `path`.
    """
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    # torch reports a damaged archive as whatever its zip or pickle reader tripped on.
    except (RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or damaged)") from err
    meta = ckpt.get("robuniv") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or "spec" not in meta:
        raise CheckpointError(
            f"{path}: no robuniv model spec; for a robustness-library release, "
            "build the model and load split_robustness_state(...) of its weights"
        )
    model = build_model(ModelSpec.from_dict(meta["spec"])).to(map_location)
    normalizer, net = split_robustness_state(ckpt["model"])
    state = {f"normalizer.{k}": v for k, v in normalizer.items()}
    state.update({f"model.{k}": v for k, v in net.items()})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit {model.spec.arch}: {err}") from None
    log.info("loaded %s (%s, epoch %s)", path, model.spec.arch, ckpt.get("epoch"))
    return model.eval(), {k: v for k, v in ckpt.items() if k != "model"}


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (the normaliser has none, only buffers)."""
    return sum(p.numel() for p in model.parameters())
