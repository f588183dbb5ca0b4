"""Representational similarity of inputs two models classify alike vs differently (Fig 5).

For a pair of models, the regular inputs split into those on which their predicted
classes agree and those on which they disagree. Each measure is computed on each subset's
own rows (the features restricted to the subset), never on all rows and then split. CKA's
bias, Jaccard's neighbourhoods and RTD all depend on the number of rows, so the larger
subset is subsampled (seeded per pair) to the size of the smaller: the two values of a
pair then differ by which inputs they hold, not by how many.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from robuniv import io
from robuniv.config import PAIR_COLUMNS, ModelKey, pair_record
from robuniv.groups import activation_group
from robuniv.similarity import MEASURES, compare_pairs

log = logging.getLogger(__name__)

SUBSET_COLUMNS = (
    *PAIR_COLUMNS,
    "measure",
    "k",
    "subset",
    "n_rows",
    "value",
)
SUBSETS = ("agree", "disagree")
# Below this many rows per subset a pair is left out: CKA and ProcrustesSim of 3 points say
# nothing, and the unbiased CKA needs N > 3.
MIN_ROWS = 5


def _pair_rng(seed: int, a: ModelKey, b: ModelKey) -> np.random.Generator:
    """A generator per pair from the table seed and the pair's names, stable across runs."""
    digest = hashlib.sha256(json.dumps([seed, a.name, b.name, a.eps]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def agreement_rows(
    logits_a: np.ndarray, logits_b: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Sorted row indices of the agreeing and the disagreeing inputs, both of the smaller size.

    The larger subset is subsampled without replacement with `rng`.
    """
    if logits_a.shape != logits_b.shape or logits_a.ndim != 2:
        raise ValueError(
            f"logits must be two N x C arrays of one shape, got {logits_a.shape} and {logits_b.shape}"
        )
    same = logits_a.argmax(axis=1) == logits_b.argmax(axis=1)
    rows = {"agree": np.flatnonzero(same), "disagree": np.flatnonzero(~same)}
    n = min(len(r) for r in rows.values())
    return {
        name: np.sort(r if len(r) == n else rng.choice(r, size=n, replace=False))
        for name, r in rows.items()
    }


def _read(path: str | Path, models: Sequence[ModelKey]) -> dict[ModelKey, dict[str, np.ndarray]]:
    """Features, logits and row indices of each model on the regular images."""
    data = {}
    with io.open_h5(path) as fh:
        for model in models:
            group = activation_group(model, None)
            if group not in fh:
                raise KeyError(f"{path} has no activations of {model.name} on the regular images")
            data[model] = {
                name: io.require_finite(fh[group][name][()], path, f"{name} of {group!r}")
                for name in ("features", "logits", "indices")
            }
    return data


def agreement_subset_table(
    activations: str | Path,
    models: Sequence[ModelKey],
    *,
    study: str,
    eps: float,
    measures: Sequence[str],
    jaccard_k: Sequence[int] = (10,),
    rtd_trials: int = 10,
    rtd_batch: int = 500,
    rtd_seed: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Each representational measure on the agree and the disagree subset of every model pair.

    Parameters
    ----------
    activations : the eps's activation HDF5 file (`robuniv.groups.activation_group` of each
        model on the regular images: features, logits and indices; every model's rows must
        be the same inputs).
    models : the models of that eps to compare pairwise.
    measures : representational measures of `robuniv.similarity.MEASURES`.
    jaccard_k : neighbourhood sizes; those not below a pair's subset size are left out
        for that pair (with a warning).
    rtd_trials, rtd_batch, rtd_seed : RTD options; the batch is capped at the subset size.
    seed : seeds the subsampling of the larger subset, per pair.

    Returns
    -------
    pd.DataFrame with columns `SUBSET_COLUMNS`: one row per pair, measure, k (-1 but for
    Jaccard) and subset. Pairs with fewer than `MIN_ROWS` rows in a subset are left out
    (with a warning).
    """
    predictive = [m for m in measures if MEASURES.get(m).kind != "representational"]
    if predictive:
        raise ValueError(
            f"agreement subsets are split by the predictions; {predictive} measure those"
        )
    models = sorted(models)
    data = _read(activations, models)
    for model in models[1:]:
        if not np.array_equal(data[model]["indices"], data[models[0]]["indices"]):
            # Both models must see the same images in the same order, or the split is void.
            raise ValueError(
                f"{activations}: regular-image rows of {model.name} differ from {models[0].name}'s"
            )
    records = []
    for a, b in itertools.combinations(models, 2):
        rows = agreement_rows(data[a]["logits"], data[b]["logits"], _pair_rng(seed, a, b))
        n = len(rows["agree"])
        if n < MIN_ROWS:
            log.warning(
                "%s vs %s at eps %g: %d rows per subset (< %d); pair left out",
                a.name,
                b.name,
                eps,
                n,
                MIN_ROWS,
            )
            continue
        ks = [k for k in jaccard_k if k < n]
        if "jaccard" in measures and len(ks) < len(jaccard_k):
            log.warning("%s vs %s: Jaccard k >= %d rows left out", a.name, b.name, n)
        pair_measures = [m for m in measures if m != "jaccard" or ks]
        matrices = {
            (model, subset): data[model]["features"][rows[subset]]
            for model in (a, b)
            for subset in SUBSETS
        }
        results = compare_pairs(
            matrices,
            [((a, subset), (b, subset)) for subset in SUBSETS],
            pair_measures,
            jaccard_k=ks or (1,),
            rtd_trials=rtd_trials,
            rtd_batch=min(rtd_batch, n),
            rtd_seed=rtd_seed,
        )
        for result in results:
            records.append(
                {
                    **pair_record(study, a, b),
                    "measure": result["measure"],
                    "k": -1 if result["k"] is None else int(result["k"]),
                    "subset": result["a"][1],
                    "n_rows": n,
                    "value": float(result["value"]),
                }
            )
    log.info(
        "%d values on %d pairs at eps %g", len(records), len(models) * (len(models) - 1) // 2, eps
    )
    return pd.DataFrame.from_records(records, columns=list(SUBSET_COLUMNS))
