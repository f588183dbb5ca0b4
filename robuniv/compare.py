"""Which model pairs are compared on which inputs, and the tidy similarity table (SPEC 3-5).

Regular inputs: every unordered pair of a study's models at one eps, once.
Inverted inputs (mechanistic similarity): every unordered pair {A, B} twice, on
A's inverted set and on B's (both models see the same images each time).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import pandas as pd

from robuniv.config import ModelKey
from robuniv.groups import activation_group, input_group
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
    "measure",
    "k",
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
    with h5py.File(path, "r") as fh:
        for model, source in keys:
            group = activation_group(model, source)
            if group not in fh:
                raise KeyError(
                    f"{path} has no activations of {model.name} on {input_group(source)!r}"
                )
            matrices[(model, input_group(source))] = fh[group][dataset][()]
            rows = fh[group]["indices"][()]
            known = indices.setdefault(input_group(source), rows)
            if not np.array_equal(known, rows):
                # Both models must see the same images in the same order, or the comparison is void.
                raise ValueError(f"{path}: rows of {group!r} differ from other models'")
    return matrices


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
) -> pd.DataFrame:
    """Every measure over all comparisons of `models` on one input kind, as tidy rows.

    `activations` is the eps's activation file. One `compare_pairs` call per kind of
    matrix (features, logits) computes all measures of that kind, so per-model work (centring,
    k-NN graphs, softmax) and per-pair work (one cross product for cka, cka_unbiased and
    procrustes_sim) is done once for all of them.
    """
    plan = comparisons(models, inputs)
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
    for row in results:
        (a, group), (b, _) = row["a"], row["b"]
        source = source_of[(a, b, group)]
        records.append(
            {
                "study": study,
                "inputs": inputs,
                "source": "none" if source is None else source.arch,
                "source_run": -1 if source is None else source.run,
                "eps": float(eps),
                "model_a": a.arch,
                "run_a": a.run,
                "model_b": b.arch,
                "run_b": b.run,
                "measure": row["measure"],
                "k": -1 if row["k"] is None else int(row["k"]),
                "value": float(row["value"]),
            }
        )
    table = pd.DataFrame.from_records(records, columns=list(SIMILARITY_COLUMNS))
    # One row order whatever the measure kinds: by measure as configured, then comparison.
    table["_order"] = table["measure"].map(order)
    return (
        table.sort_values(["_order"], kind="stable").drop(columns="_order").reset_index(drop=True)
    )


def _dataset_for(measure: str) -> str:
    return "logits" if MEASURES.get(measure).kind == "predictive" else "features"
