"""Representations at several depths of one network, from one forward pass.

A layer spec names a module of the net in torchvision layout (`RobustModel.model`) by its
dotted path: "layer3" is that module's output, "fc:in" its input. The study's feature layer
(SPEC 4, used by inversion, probes and Figs 1-8) is one such spec; a study's `layers` list
adds others, compared by list position across architectures (Fig 9).

Relative depth of a spec: the share of the calls of the net's leaf modules (convolutions,
norms, activations, pools, linear layers) in one forward pass that have run when the
representation exists. An output counts its own module (and every module inside it), an
input only what ran before it: "fc:in" of a ResNet is (calls - 1) / calls and the logits
are 1. Calls, not modules, because a module may run twice (a BasicBlock's one ReLU); leaf
calls, not parameters or FLOPs, because the count is the same whatever the width and input
size, so depths of one architecture agree across studies. The functional operations
between modules (residual additions, flattening) are not counted.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from robuniv.models import RobustModel

Reduce = Literal["avgpool", "flatten"]
REDUCTIONS: tuple[str, ...] = ("avgpool", "flatten")
# Nearest module names offered when a spec names none.
SUGGESTIONS = 5


class LayerError(ValueError):
    """A layer spec that names no module of the net, or a module that does not run once."""


def parse_spec(spec: str) -> tuple[str, bool]:
    """(module path, whether the module's input is meant) of a layer spec."""
    name, _, where = spec.partition(":")
    if where not in ("", "in"):
        raise LayerError(f"layer {spec!r}: suffix must be ':in' or nothing, got ':{where}'")
    return name, where == "in"


def module_names(net: nn.Module) -> list[str]:
    """Every addressable module path of `net`, in registration order."""
    return [name for name, _ in net.named_modules() if name]


def nearest_names(name: str, names: Sequence[str], n: int = SUGGESTIONS) -> list[str]:
    """The `n` module paths most like `name` (difflib ratio), closest first."""
    close = difflib.get_close_matches(name, names, n=n, cutoff=0.0)
    return close[:n]


def resolve(net: nn.Module, spec: str, arch: str = "the net") -> nn.Module:
    """The module a spec names; LayerError listing the nearest valid names otherwise."""
    name, _ = parse_spec(spec)
    try:
        return net.get_submodule(name)
    except AttributeError:
        names = module_names(net)
        nearest = ", ".join(repr(n) for n in nearest_names(name, names))
        children = ", ".join(n for n, _ in net.named_children())
        raise LayerError(
            f"unknown layer {name!r} in {arch}; nearest module names: {nearest} "
            f"(top-level modules: {children}; deeper ones as dotted paths; append ':in' "
            "for a module's input)"
        ) from None


def check_specs(net: nn.Module, specs: Sequence[str], arch: str) -> None:
    """Raise LayerError for the first spec that names no module of `net`."""
    for spec in specs:
        resolve(net, spec, arch)


def reduce(activations: Tensor, mode: str) -> Tensor:
    """(N x D) rows of a layer's activations.

    Spatial maps (N x C x H x W) are averaged over H and W ("avgpool": D = C, what the
    penultimate layer of the pooled architectures already is) or kept whole ("flatten":
    D = C H W, which can be large: 256 x 56 x 56 for ResNet-50's layer1 on ImageNet).
    """
    if mode not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {mode!r}")
    if mode == "avgpool" and activations.dim() == 4:
        return activations.mean(dim=(2, 3))
    return activations.flatten(1)


@contextmanager
def _hooks(net: nn.Module, specs: Sequence[str], arch: str) -> Iterator[dict[str, list[Tensor]]]:
    """Capture every spec's tensor during forward passes inside the block."""
    captured: dict[str, list[Tensor]] = {spec: [] for spec in specs}
    handles = []

    # Clone: later in-place ops (ReLU(inplace=True), `out += identity`) would overwrite it.
    def keep(spec: str, is_input: bool) -> Any:
        def keep_input(_m: nn.Module, args: tuple[Tensor, ...]) -> None:
            captured[spec].append(args[0].clone())

        def keep_output(_m: nn.Module, _args: tuple[Tensor, ...], output: Tensor) -> None:
            captured[spec].append(output.clone())

        return keep_input if is_input else keep_output

    try:
        for spec in captured:
            module = resolve(net, spec, arch)
            _, is_input = parse_spec(spec)
            hook = keep(spec, is_input)
            if is_input:
                handles.append(module.register_forward_pre_hook(hook))
            else:
                handles.append(module.register_forward_hook(hook))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def capture(model: RobustModel, x: Tensor, specs: Sequence[str]) -> tuple[list[Tensor], Tensor]:
    """Each spec's activations (unreduced) and the logits, from one forward pass of `x`."""
    unique = list(dict.fromkeys(specs))
    with _hooks(model.model, unique, model.spec.arch) as captured:
        logits = model(x)
    for spec, tensors in captured.items():
        if len(tensors) != 1:
            raise LayerError(
                f"layer {spec!r} of {model.spec.arch} ran {len(tensors)} times in one forward "
                "pass; choose a module that runs exactly once"
            )
    return [captured[spec][0] for spec in specs], logits


@torch.no_grad()
def relative_depths(model: RobustModel, x: Tensor, specs: Sequence[str]) -> dict[str, float]:
    """Relative depth in [0, 1] of each spec (see the module docstring), from a forward of `x`."""
    net = model.model
    leaves = [m for m in net.modules() if not any(True for _ in m.children())]
    done = [0]
    marks: dict[str, int] = {}

    def count(_m: nn.Module, _args: Any, _out: Any) -> None:
        done[0] += 1

    def mark(spec: str) -> Any:
        # Returns None: a hook's return value would replace the module's input or output.
        def hook(*_: Any) -> None:
            marks.setdefault(spec, done[0])

        return hook

    # Counting hooks first: a leaf's own output hook then sees the leaf counted.
    handles = [leaf.register_forward_hook(count) for leaf in leaves]
    try:
        for spec in dict.fromkeys(specs):
            module = resolve(net, spec, model.spec.arch)
            _, is_input = parse_spec(spec)
            if is_input:
                handles.append(module.register_forward_pre_hook(mark(spec)))
            else:
                handles.append(module.register_forward_hook(mark(spec)))
        model.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    total = max(done[0], 1)
    missing = [spec for spec in specs if spec not in marks]
    if missing:
        raise LayerError(f"layers {missing} of {model.spec.arch} did not run in a forward pass")
    return {spec: marks[spec] / total for spec in specs}


def study_layers(study: Mapping[str, Any], arch: str) -> list[str]:
    """The extra layers a study compares for `arch` (its `layers` list; none if absent)."""
    return list(study.get("layers", {}).get(arch, []))
