"""Which model pairs are compared on which inputs, and the tidy similarity table (SPEC 3-5).

Regular inputs: every unordered pair of a study's models at one eps, once.
Inverted inputs (mechanistic similarity): every unordered pair {A, B} twice, on
A's inverted set and on B's (both models see the same images each time).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from robuniv import io, stats
from robuniv.config import ModelKey
from robuniv.groups import activation_group, input_group, layers_group_of
from robuniv.similarity import MEASURES, compare_pairs

log = logging.getLogger(__name__)

InputKind = Literal["regular", "inverted"]
INPUT_KINDS: tuple[str, ...] = ("regular", "inverted")

SIMILARITY_COLUMNS = (
    "study",
    "inputs",
    "source",
    "source_run",
    "eps",
    "model_a",
    "run_a",
    "model_b",
    "run_b",
    "layer",
    "layer_a",
    "layer_b",
    "depth",
    "measure",
    "k",
    "value",
)
# `layer` of the rows of the study's feature layer (SPEC 4), the only rows Figs 1-8 and the
# statistics read; further layers are "L1", "L2", ... by their position in the study's lists.
PENULTIMATE = stats.PENULTIMATE
# Measures that apply to any layer; agreement and jsd_sim read the logits, once per pair.
LAYER_MEASURES: tuple[str, ...] = ("cka", "cka_unbiased", "procrustes_sim", "jaccard", "rtd")
LAYER_CKA_COLUMNS = (
    "study",
    "inputs",
    "eps",
    "model_a",
    "run_a",
    "model_b",
    "run_b",
    "layer_a",
    "depth_a",
    "layer_b",
    "depth_b",
    "value",
)


@dataclass(frozen=True)
class Comparison:
    a: ModelKey
    b: ModelKey
    source: ModelKey | None  # the inverting model; None for regular images


def comparisons(models: Sequence[ModelKey], inputs: str) -> list[Comparison]:
    if inputs not in INPUT_KINDS:
        raise ValueError(f"inputs must be one of {INPUT_KINDS}, got {inputs!r}")
    pairs = list(itertools.combinations(sorted(models), 2))
    if inputs == "regular":
        return [Comparison(a, b, None) for a, b in pairs]
    return [Comparison(a, b, source) for a, b in pairs for source in (a, b)]


def _read_matrices(
    path: str | Path, keys: Sequence[tuple[ModelKey, ModelKey | None]], dataset: str
) -> dict[tuple[ModelKey, str], np.ndarray]:
    """`dataset` ("features" or "logits") of each (model, source) group of one activation file.

    Raises unless every model saw the same inputs in the same order on each input set.
    """
    matrices: dict[tuple[ModelKey, str], np.ndarray] = {}
    indices: dict[str, np.ndarray] = {}
    with io.open_h5(path) as fh:
        for model, source in keys:
            group = activation_group(model, source)
            if group not in fh:
                raise KeyError(
                    f"{path} has no activations of {model.name} on {input_group(source)!r}"
                )
            matrices[(model, input_group(source))] = io.require_finite(
                fh[group][dataset][()], path, f"{dataset} of {group!r}"
            )
            rows = fh[group]["indices"][()]
            known = indices.setdefault(input_group(source), rows)
            if not np.array_equal(known, rows):
                # Both models must see the same images in the same order, or the comparison is void.
                raise ValueError(f"{path}: rows of {group!r} differ from other models'")
    return matrices


@dataclass(frozen=True)
class ModelLayers:
    """A model's layers in an activation file: the feature layer, the extra ones, depths."""

    feature: str
    extras: tuple[str, ...]
    depths: Mapping[str, float]

    def depth(self, spec: str) -> float:
        return float(self.depths.get(spec, np.nan))


def model_layers(path: str | Path, model: ModelKey) -> ModelLayers:
    """What `activations_stage` recorded of `model`'s layers (files without extras: none)."""
    meta = io.read_h5_meta(path, model.name)
    return ModelLayers(
        feature=str(meta.get("layer", "")),
        extras=tuple(meta.get("layers", ())),
        depths=dict(meta.get("depths", {})),
    )


def _read_layers(
    path: str | Path, keys: Sequence[tuple[ModelKey, ModelKey | None, str]]
) -> dict[tuple[ModelKey, str, str], np.ndarray]:
    """Extra layer `spec` of each (model, source, spec) of one activation file."""
    matrices = {}
    with io.open_h5(path) as fh:
        for model, source, spec in keys:
            group = layers_group_of(activation_group(model, source))
            if group not in fh or spec not in fh[group]:
                raise KeyError(f"{path} has no layer {spec!r} of {model.name} in {group!r}")
            matrices[(model, input_group(source), spec)] = io.require_finite(
                fh[group][spec][()], path, f"layer {spec!r} of {group!r}"
            )
    return matrices


def _layer_positions(path: str | Path, models: Sequence[ModelKey]) -> dict[ModelKey, ModelLayers]:
    layers = {m: model_layers(path, m) for m in models}
    counts = {m.name: len(info.extras) for m, info in layers.items()}
    if len(set(counts.values())) > 1:
        # Layers are matched by list position across architectures.
        raise ValueError(f"{path}: models hold different numbers of extra layers: {counts}")
    return layers


def similarity_table(
    activations: str | Path,
    models: Sequence[ModelKey],
    inputs: str,
    measures: Sequence[str],
    *,
    study: str,
    eps: float,
    jaccard_k: Sequence[int] = (10,),
    rtd_trials: int = 10,
    rtd_batch: int = 500,
    rtd_seed: int = 0,
    layer_measures: Sequence[str] = (),
) -> pd.DataFrame:
    """Every measure over all comparisons of `models` on one input kind, as tidy rows.

    `activations` is the eps's activation file. One `compare_pairs` call per kind of
    matrix (features, logits) computes all measures of that kind, so per-model work (centring,
    k-NN graphs, softmax) and per-pair work (one cross product for cka, cka_unbiased and
    procrustes_sim) is done once for all of them.

    Rows of the feature layer have `layer` "penultimate". Where the file holds extra layers,
    `layer_measures` (representational only) compare position i of model A's list with
    position i of model B's as layer "L<i+1>"; a position that is both models' feature
    layer is left out (its rows are the penultimate ones). `depth` is the mean relative depth
    of the two layers compared.
    """
    plan = comparisons(models, inputs)
    layers = _layer_positions(activations, models)
    not_layer = [m for m in layer_measures if m not in LAYER_MEASURES]
    if not_layer:
        raise ValueError(f"{not_layer} are not representational; layers take {LAYER_MEASURES}")
    kinds = {
        kind: [m for m in measures if _dataset_for(m) == kind] for kind in ("features", "logits")
    }
    pairs = [((c.a, input_group(c.source)), (c.b, input_group(c.source))) for c in plan]
    keys = list(dict.fromkeys((m, c.source) for c in plan for m in (c.a, c.b)))
    results = []
    for dataset, kind_measures in kinds.items():
        if not kind_measures:
            continue
        matrices = _read_matrices(activations, keys, dataset)
        log.info(
            "%s on %s inputs at eps %g: %d comparisons", kind_measures, inputs, eps, len(pairs)
        )
        results += compare_pairs(
            matrices,
            pairs,
            kind_measures,
            jaccard_k=jaccard_k,
            rtd_trials=rtd_trials,
            rtd_batch=rtd_batch,
            rtd_seed=rtd_seed,
            progress=True,
        )
    source_of = {(c.a, c.b, input_group(c.source)): c.source for c in plan}
    order = {name: i for i, name in enumerate(measures)}
    records = []

    def record(row: Mapping[str, Any], layer: str, spec_a: str, spec_b: str) -> dict[str, Any]:
        a, group, b = row["a"][0], row["a"][1], row["b"][0]
        source = source_of[(a, b, group)]
        return {
            "study": study,
            "inputs": inputs,
            "source": "none" if source is None else source.arch,
            "source_run": -1 if source is None else source.run,
            "eps": float(eps),
            "model_a": a.arch,
            "run_a": a.run,
            "model_b": b.arch,
            "run_b": b.run,
            "layer": layer,
            "layer_a": spec_a,
            "layer_b": spec_b,
            "depth": (layers[a].depth(spec_a) + layers[b].depth(spec_b)) / 2,
            "measure": row["measure"],
            "k": -1 if row["k"] is None else int(row["k"]),
            "value": float(row["value"]),
        }

    for row in results:
        a, b = row["a"][0], row["b"][0]
        records.append(record(row, PENULTIMATE, layers[a].feature, layers[b].feature))
    n_layers = len(next(iter(layers.values())).extras) if layers else 0
    if layer_measures and n_layers:
        options = {
            "jaccard_k": jaccard_k,
            "rtd_trials": rtd_trials,
            "rtd_batch": rtd_batch,
            "rtd_seed": rtd_seed,
        }
        log.info(
            "%s on %d extra layers of %s inputs at eps %g", layer_measures, n_layers, inputs, eps
        )
        for row in _compare_layers(activations, plan, layers, layer_measures, n_layers, options):
            (a, _, spec_a), (b, _, spec_b) = row["a"], row["b"]
            position = layers[a].extras.index(spec_a)
            records.append(record(row, f"L{position + 1}", spec_a, spec_b))
    table = pd.DataFrame.from_records(records, columns=list(SIMILARITY_COLUMNS))
    # One row order whatever the measure kinds: by layer (the feature layer first), by
    # measure as configured, then comparison.
    table["_layer"] = table["layer"].map(lambda name: 0 if name == PENULTIMATE else int(name[1:]))
    table["_order"] = table["measure"].map(order)
    return (
        table.sort_values(["_layer", "_order"], kind="stable")
        .drop(columns=["_layer", "_order"])
        .reset_index(drop=True)
    )


def _compare_layers(
    activations: str | Path,
    plan: Sequence[Comparison],
    layers: Mapping[ModelKey, ModelLayers],
    measures: Sequence[str],
    n_layers: int,
    options: Mapping[str, Any],
) -> list[dict]:
    """`compare_pairs` over position i of both models' extra layers, every i in one call."""
    pairs = []
    for c in plan:
        group = input_group(c.source)
        a, b = layers[c.a], layers[c.b]
        for i in range(n_layers):
            if a.extras[i] == a.feature and b.extras[i] == b.feature:
                continue
            pairs.append(((c.a, group, a.extras[i]), (c.b, group, b.extras[i])))
    keys = list(
        dict.fromkeys((m, c.source, s) for c in plan for m in (c.a, c.b) for s in layers[m].extras)
    )
    matrices = _read_layers(activations, keys)
    return compare_pairs(matrices, pairs, measures, progress=True, **options)


def layer_cka_table(
    activations: str | Path,
    a: ModelKey,
    b: ModelKey,
    *,
    study: str,
    inputs: str = "regular",
) -> pd.DataFrame:
    """Linear CKA of every layer of model `a` with every layer of model `b` (Fig 9's heatmap).

    Each model's layers are its feature layer and its extra layers, by relative depth; both
    models see the regular images (or, with inputs "inverted", `a`'s inverted set).
    """
    source = None if inputs == "regular" else a
    specs = {}
    matrices: dict[tuple[ModelKey, str], np.ndarray] = {}
    for model in (a, b):
        info = model_layers(activations, model)
        ordered = sorted(dict.fromkeys((info.feature, *info.extras)), key=info.depth)
        specs[model] = (info, ordered)
        features = _read_matrices(activations, [(model, source)], "features")
        matrices[(model, info.feature)] = features[(model, input_group(source))]
        extras = [s for s in info.extras if s != info.feature]
        for (_, _, spec), matrix in _read_layers(
            activations, [(model, source, s) for s in extras]
        ).items():
            matrices[(model, spec)] = matrix
    (info_a, order_a), (info_b, order_b) = specs[a], specs[b]
    pairs = [((a, sa), (b, sb)) for sa in order_a for sb in order_b]
    rows = compare_pairs(matrices, pairs, ["cka"])
    records = [
        {
            "study": study,
            "inputs": inputs,
            "eps": float(a.eps),
            "model_a": a.arch,
            "run_a": a.run,
            "model_b": b.arch,
            "run_b": b.run,
            "layer_a": row["a"][1],
            "depth_a": info_a.depth(row["a"][1]),
            "layer_b": row["b"][1],
            "depth_b": info_b.depth(row["b"][1]),
            "value": float(row["value"]),
        }
        for row in rows
    ]
    return pd.DataFrame.from_records(records, columns=list(LAYER_CKA_COLUMNS))


def _dataset_for(measure: str) -> str:
    return "logits" if MEASURES.get(measure).kind == "predictive" else "features"
