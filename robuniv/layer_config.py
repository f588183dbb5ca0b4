"""A study's `layers` block (similarity across depth, Fig 9): checks and choices, no torch
unless module names are checked.

The JSON schema checks types; `check_layers` checks what it cannot: equal list lengths
(layers are matched by position across architectures), measures and k that Fig 9 draws
being computed, the heatmap's pair, and, by building each network on PyTorch's meta device
(no memory, no weights), that every spec names a module.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robuniv.config import ConfigError, ModelKey, adapt_stem_for, model_names, models_at


def has_layers(study: Mapping[str, Any]) -> bool:
    return any(study.get("layers", {}).values())


def fig9_pair(study: Mapping[str, Any]) -> tuple[ModelKey, ModelKey]:
    """Fig 9's heatmap pair: the chosen (or first two) architectures, first run, at the
    highest eps where both exist."""
    archs = study["figures"]["fig9"]["pair"] or model_names(study)[:2]
    for eps in sorted(map(float, study["eps"]), reverse=True):
        present = models_at(study, eps)
        pair = [min((m for m in present if m.arch == arch), default=None) for arch in archs]
        if len(pair) == 2 and None not in pair:
            return pair[0], pair[1]
    raise ConfigError(f"figures.fig9.pair {list(archs)}: no eps has both models")


def check_study_layers(name: str, study: Mapping[str, Any], *, modules: bool = True) -> None:
    """Raise ConfigError naming the bad value; run after schema validation (defaults applied)."""
    layers = study["layers"]
    names = model_names(study)
    unknown = set(layers) - set(names)
    if unknown:
        raise ConfigError(f"study {name!r}: layers names {sorted(unknown)}, not in models {names}")
    counts = {arch: len(layers.get(arch, [])) for arch in names}
    if has_layers(study) and len(set(counts.values())) > 1:
        raise ConfigError(
            f"study {name!r}: layers are matched by list position across architectures, so "
            f"every arch needs the same number; got {counts}"
        )
    fig9 = study["figures"]["fig9"]
    measures = study["similarity"]["measures"]
    drawn = set(fig9["measures"]) - set(measures)
    if has_layers(study):
        drawn |= set(fig9["measures"]) - set(study["layers_measures"])
    if drawn:
        raise ConfigError(
            f"study {name!r}: figures.fig9.measures {sorted(drawn)} are not computed; "
            f"similarity.measures = {measures}, layers_measures = {study['layers_measures']}"
        )
    if "jaccard" in fig9["measures"] and fig9["jaccard_k"] not in study["similarity"]["jaccard_k"]:
        raise ConfigError(
            f"study {name!r}: figures.fig9.jaccard_k {fig9['jaccard_k']} not in "
            f"similarity.jaccard_k {study['similarity']['jaccard_k']}"
        )
    pair = fig9["pair"]
    if pair is not None and set(pair) - set(model_names(study)):
        raise ConfigError(
            f"study {name!r}: figures.fig9.pair {sorted(set(pair) - set(model_names(study)))} "
            f"not among the study's models {model_names(study)}"
        )
    fig9_pair(study)
    if "rtd" in study["layers_measures"] and has_layers(study):
        batch = study["similarity"]["rtd"]["batch"]
        smallest = min(
            n for n in (study["inputs"]["n_regular"], study["inputs"]["n_inverted"]) if n
        )
        if batch > smallest:
            raise ConfigError(
                f"study {name!r}: similarity.rtd.batch = {batch} exceeds {smallest} images"
            )
    if modules and has_layers(study):
        check_module_names(name, study)


# The code that decides a registry network's module names: a passed check stays valid
# while these files are unchanged.
_NETWORK_CODE = ("models.py", "nets.py", "layers.py", "data.py", "pipeline.py")


def _check_cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "robuniv" / "layer-names.json"


def _code_digest() -> bytes:
    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in _NETWORK_CODE:
        digest.update((here / name).read_bytes())
    return digest.digest()


def _check_key(
    code: bytes, arch: str, dataset: str, model: Mapping[str, Any], specs: list[str]
) -> str:
    what = [arch, dataset, model["width"], adapt_stem_for(model, arch), specs]
    return hashlib.sha256(code + json.dumps(what, sort_keys=True).encode()).hexdigest()


def check_module_names(name: str, study: Mapping[str, Any]) -> None:
    """Every spec of `layers` and `model.layers` names a module of its network.

    Checks that passed are remembered (keyed by the specs and the network code) in
    ~/.cache/robuniv, so a Snakemake start imports torch only for specs it has not seen.
    """
    cache = _check_cache()
    try:
        passed = set(json.loads(cache.read_text()))
    except (OSError, ValueError):
        passed = set()
    # Networks of the architecture registry; loaded models are checked when they load.
    new = set()
    code = _code_digest()  # read once, not once per architecture
    for arch in study.get("archs", []):
        penultimate = study.get("model", {}).get("layers", {}).get(arch)
        specs = [*study["layers"].get(arch, []), *([penultimate] if penultimate else [])]
        if not specs:
            continue
        key = _check_key(code, arch, study["dataset"]["name"], study["model"], specs)
        if key in passed:
            continue
        _check_arch(name, study, arch, specs)
        new.add(key)
    if new:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(sorted(passed | new)))
            os.replace(tmp, cache)
        except OSError:  # a read-only home: the check just runs again next time
            pass


def _check_arch(name: str, study: Mapping[str, Any], arch: str, specs: list[str]) -> None:
    import torch

    from robuniv.layers import LayerError, check_specs
    from robuniv.models import build_model
    from robuniv.pipeline import model_spec

    spec = model_spec(
        arch,
        study["dataset"]["name"],
        width=study["model"]["width"],
        adapt_stem=adapt_stem_for(study["model"], arch),
    )
    # Meta tensors: the module tree without allocating or initialising any weight.
    with torch.device("meta"):
        net = build_model(spec).model
    try:
        check_specs(net, specs, arch)
    except LayerError as err:
        raise ConfigError(f"study {name!r}: layers.{arch}: {err}") from None


def check_layers(studies: Mapping[str, Mapping[str, Any]]) -> None:
    for name, study in studies.items():
        check_study_layers(name, study)


def layer_options(study: Mapping[str, Any]) -> dict[str, Any]:
    """What extraction needs of the block: layers per arch and the reduction."""
    return {"layers": study["layers"], "reduce": study["layers_reduce"]}
