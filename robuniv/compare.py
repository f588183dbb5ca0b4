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
from typing import Literal

import h5py
import numpy as np
import pandas as pd

from robuniv.config import ModelKey
from robuniv.similarity import MEASURES, compare_pairs

log = logging.getLogger(__name__)

InputKind = Literal["regular", "inverted"]
INPUT_KINDS: tuple[str, ...] = ("regular", "inverted")
REGULAR_GROUP = "regular"

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


def inverted_group_name(source_name: str) -> str:
    """HDF5 group of a model's activations on the inverted images of model `source_name`."""
    return f"inverted/{source_name}"


def inverted_group(source: ModelKey) -> str:
    return inverted_group_name(source.name)


def input_group(source: ModelKey | None) -> str:
    return REGULAR_GROUP if source is None else inverted_group(source)


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


def _dataset_for(measure: str) -> str:
    return "logits" if MEASURES.get(measure).kind == "predictive" else "features"


def similarity_table(
    activations: Mapping[ModelKey, str | Path],
    inputs: str,
    measure: str,
    *,
    study: str,
    eps: float,
    jaccard_k: Sequence[int] = (10,),
    rtd_trials: int = 10,
    rtd_batch: int = 500,
    rtd_seed: int = 0,
) -> pd.DataFrame:
    """One measure over all comparisons of the given models on one input kind, as tidy rows."""
    models = sorted(activations)
    plan = comparisons(models, inputs)
    dataset = _dataset_for(measure)
    pairs = [((c.a, input_group(c.source)), (c.b, input_group(c.source))) for c in plan]
    needed = sorted({key for pair in pairs for key in pair})
    matrices: dict[tuple[ModelKey, str], np.ndarray] = {}
    indices: dict[str, np.ndarray] = {}
    for model, group in needed:
        with h5py.File(activations[model], "r") as fh:
            if group not in fh:
                raise KeyError(f"{activations[model]} has no activations for input set {group!r}")
            matrices[(model, group)] = fh[group][dataset][()]
            rows = fh[group]["indices"][()]
        if group in indices and not np.array_equal(indices[group], rows):
            # Both models must see the same images in the same order, or the comparison is void.
            raise ValueError(f"{activations[model]}: rows of {group!r} differ from other models'")
        indices.setdefault(group, rows)
    log.info("%s on %s inputs at eps %g: %d comparisons", measure, inputs, eps, len(pairs))
    results = compare_pairs(
        matrices,
        pairs,
        [measure],
        jaccard_k=jaccard_k,
        rtd_trials=rtd_trials,
        rtd_batch=rtd_batch,
        rtd_seed=rtd_seed,
        progress=True,
    )
    source_of = {(c.a, c.b, input_group(c.source)): c.source for c in plan}
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
    return pd.DataFrame.from_records(records, columns=list(SIMILARITY_COLUMNS))
