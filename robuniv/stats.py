"""Statistics and tables over the tidy result tables: Spearman tests, accuracy tables (SPEC 6).

Pure pandas/scipy on the workflow's tables, no torch: the similarity table
(one row per model pair and measure) and the evaluation table (one row per model).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.stats import spearmanr

from robuniv.config import PAIR_COLUMNS, format_eps, pair_record, same_eps_pairs
from robuniv.io import require_columns

log = logging.getLogger(__name__)

# Measures stored as a distance; everything shown or tested uses their negation, so that larger
# always means more similar (the paper plots -RTD).
NEGATED_MEASURES = frozenset({"rtd"})

EVALUATION_REQUIRED = ("arch", "run", "eps", "params", "clean_acc", "adv_acc")
SPEARMAN_INPUT = ("study", "inputs", "eps", "model_a", "model_b", "measure", "k", "value")


def signed_value(df: pd.DataFrame) -> pd.Series:
    """Similarity values with larger = more similar: RTD negated (-RTD), other measures as stored.

    Parameters
    ----------
    df : similarity table with columns ``measure`` and ``value`` (SPEC 5, 6).

    Returns
    -------
    pd.Series, float, same index as `df`.
    """
    require_columns(df, ("measure", "value"), "similarity table")
    value = df["value"].astype(float)
    return value.where(~df["measure"].isin(NEGATED_MEASURES), -value)


def spearman_by_group(
    df: pd.DataFrame, by: Sequence[str], x: str = "eps", y: str = "value"
) -> pd.DataFrame:
    """Spearman rank correlation of `y` with `x` within each group (SPEC 6, Fig 4).

    With ``y="value"`` the signed similarity is used (-RTD for RTD). Groups where the
    correlation is undefined (fewer than 3 rows, constant `x` or constant `y`) are left
    out with a warning, so the result holds no NaN.

    Parameters
    ----------
    df : tidy table with columns `by`, `x` and `y` (and ``measure`` when ``y="value"``).
    by : grouping columns, e.g. ``["study", "inputs", "measure", "k"]``.

    Returns
    -------
    pd.DataFrame with columns ``*by, rho, p, n``, one row per defined group, sorted by `by`.
    """
    by = list(by)
    require_columns(df, [*by, x, y], "table")
    data = df[by].assign(_x=df[x].astype(float))
    data["_y"] = signed_value(df) if y == "value" else df[y].astype(float)
    bad = data[["_x", "_y"]].isna().any(axis=1)
    if bad.any():
        raise ValueError(
            f"{x!r} or {y!r} is missing in {int(bad.sum())} rows, e.g. rows {list(df.index[bad][:5])}"
        )
    rows, undefined = [], []
    for key, group in data.groupby(by, sort=True):
        if len(group) < 3 or np.ptp(group["_x"]) == 0 or np.ptp(group["_y"]) == 0:
            undefined.append(dict(zip(by, key)))
            continue
        result = spearmanr(group["_x"], group["_y"])
        rows.append(
            {**dict(zip(by, key)), "rho": result.statistic, "p": result.pvalue, "n": len(group)}
        )
    if undefined:
        log.warning(
            "Spearman rho undefined (< 3 rows or constant %s or %s), groups left out: %s",
            x,
            y,
            undefined,
        )
    return pd.DataFrame(rows, columns=[*by, "rho", "p", "n"])


def accuracy_table(evaluation: pd.DataFrame) -> pd.DataFrame:
    """Paper Tables 1-3: parameters, clean and adversarial accuracy per architecture and eps.

    Parameters
    ----------
    evaluation : one row per model, columns ``arch, run, eps, params, clean_acc, adv_acc``
        (accuracies as fractions in [0, 1]); ``study`` optional.

    Returns
    -------
    pd.DataFrame, one row per arch in order of first appearance (``study`` and ``run``
    columns lead when the table holds more than one of them), then ``params (M)`` and per
    eps, ascending, ``acc eps=<e>`` and ``adv. acc eps=<e>`` in percent with one decimal.
    Models that were not evaluated give NaN (the paper's "-").
    """
    require_columns(evaluation, EVALUATION_REQUIRED, "evaluation table")
    # A TSV whose eps are all whole numbers reads back as int; one dtype keeps lookups exact.
    evaluation = evaluation.assign(eps=evaluation["eps"].astype(float))
    accuracies = evaluation[["clean_acc", "adv_acc"]].to_numpy(float)
    if not ((accuracies >= 0) & (accuracies <= 1)).all():
        raise ValueError(
            f"accuracies must be fractions in [0, 1]; got range "
            f"[{np.nanmin(accuracies)}, {np.nanmax(accuracies)}] (NaN counts as bad)"
        )
    keys = [c for c in ("study",) if c in evaluation and evaluation[c].nunique() > 1]
    keys += ["arch"] + (["run"] if evaluation["run"].nunique() > 1 else [])
    repeated = evaluation[evaluation.duplicated([*keys, "eps"], keep=False)]
    if not repeated.empty:
        raise ValueError(f"models evaluated more than once:\n{repeated[[*keys, 'eps']]}")
    params = evaluation.groupby(keys, sort=False)["params"]
    varying = params.nunique() > 1
    if varying.any():
        raise ValueError(f"parameter count differs between eps for {list(varying.index[varying])}")
    table = (params.first() / 1e6).round(1).to_frame("params (M)")
    wide = evaluation.pivot(index=keys, columns="eps", values=["clean_acc", "adv_acc"])
    for eps in sorted(evaluation["eps"].unique()):
        label = format_eps(float(eps))
        table[f"acc eps={label}"] = (100 * wide[("clean_acc", eps)]).round(1)
        table[f"adv. acc eps={label}"] = (100 * wide[("adv_acc", eps)]).round(1)
    return table.reset_index()


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _latex_escape(text: object) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in str(text))


def _latex_cell(value: object) -> str:
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "--"
        # Accuracies and parameter counts read best with one decimal, correlations and
        # p-values with three significant digits.
        text = f"{value:.1f}" if abs(value) >= 1 else f"{value:.3g}"
        mantissa, _, exponent = text.partition("e")
        return rf"${mantissa} \times 10^{{{int(exponent)}}}$" if exponent else text
    return _latex_escape(value)


def to_latex(table: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs LaTeX table of `table` (written by hand: pandas' Styler needs jinja2).

    Text columns are left-aligned, numbers right-aligned; NaN prints as "--"; text is escaped.

    Returns
    -------
    str, a complete ``table`` environment ending with a newline.
    """
    align = "".join("r" if pd.api.types.is_numeric_dtype(dtype) else "l" for dtype in table.dtypes)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_latex_escape(caption)}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(_latex_escape(column) for column in table.columns) + r" \\",
        r"\midrule",
        *(" & ".join(map(_latex_cell, row)) + r" \\" for row in table.itertuples(index=False)),
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Pair kinds: the multi-run baseline.

PAIR_KINDS = ("cross_arch", "same_arch")


def pair_kind(df: pd.DataFrame) -> pd.Series:
    """ "cross_arch" for two architectures, "same_arch" for one architecture from two runs.

    Same-architecture pairs are the baseline the paper lacks: how alike two training runs
    of one architecture are.
    """
    require_columns(df, ("model_a", "model_b"), "pair table")
    same = df["model_a"].astype(str) == df["model_b"].astype(str)
    return pd.Series(np.where(same, "same_arch", "cross_arch"), index=df.index, name="pairs")


# `layer` of the feature layer's rows in the similarity table (robuniv.compare.PENULTIMATE).
PENULTIMATE = "penultimate"


def penultimate_rows(similarity: pd.DataFrame) -> pd.DataFrame:
    """The feature layer's rows of a similarity table (all rows of one without `layer`).

    The paper's analyses (Figs 1-8, Spearman) are of the penultimate layer; the rows of
    further layers (Fig 9) must not enter their boxes and tests.
    """
    if "layer" not in similarity.columns:
        return similarity
    return similarity[similarity["layer"] == PENULTIMATE]


def spearman_table(similarity: pd.DataFrame) -> pd.DataFrame:
    """Spearman rho of similarity (-RTD for RTD) with eps per (study, inputs, pairs, measure, k).

    ``pairs`` is `pair_kind`: same-architecture groups appear only where the study has
    several runs. Only the feature layer's rows are tested.
    """
    # Checked before columns are added, so the message lists the file's own columns.
    require_columns(similarity, SPEARMAN_INPUT, "similarity table")
    similarity = penultimate_rows(similarity)
    return spearman_by_group(
        similarity.assign(pairs=pair_kind(similarity)),
        by=["study", "inputs", "pairs", "measure", "k"],
    )


# ---------------------------------------------------------------------------------------------
# Paired permutation test (Fig 5).


@dataclass(frozen=True)
class PermutationResult:
    statistic: float  # mean of x - y
    p: float  # two-sided
    resamples: int  # sign patterns drawn (2**n when enumerated exactly)
    n: int
    exact: bool


# Sign patterns drawn per chunk: bounds memory at 8 MB of float64 per 1000 pairs.
_CHUNK = 1000


def paired_permutation_test(
    x: npt.ArrayLike, y: npt.ArrayLike, *, resamples: int = 9999, seed: int = 0
) -> PermutationResult:
    """Two-sided paired permutation (sign-flip) test of mean(x - y) = 0.

    Under the null hypothesis each pair's two values are exchangeable, so each difference
    keeps or flips its sign with probability 1/2. With 2**n <= resamples every sign pattern
    is enumerated and p is exact; otherwise `resamples` patterns are drawn from
    ``np.random.default_rng(seed)`` and p = (1 + #{|mean*| >= |mean|}) / (resamples + 1),
    the observed pattern counted once (Phipson and Smyth 2010).
    """
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"x and y must be 1-d samples of equal, non-zero length; got {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError(
            f"x - y holds non-finite values at positions {np.flatnonzero(~np.isfinite(d))[:5].tolist()}"
        )
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    n = d.size
    observed = d.mean()
    # Ties within rounding count as "as extreme": a flip that gives the same mean in exact
    # arithmetic must not lose to the last bit of float error.
    threshold = abs(observed) * (1 - 1e-12)
    if n <= 30 and 2**n <= resamples:
        patterns = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        count = int((np.abs(patterns @ d / n) >= threshold).sum())
        return PermutationResult(float(observed), count / 2**n, 2**n, n, True)
    rng = np.random.default_rng(seed)
    count, left = 0, int(resamples)
    while left:
        size = min(left, _CHUNK)
        signs = rng.integers(0, 2, size=(size, n), dtype=np.int8) * 2 - 1
        count += int((np.abs(signs @ d / n) >= threshold).sum())
        left -= size
    return PermutationResult(
        float(observed), (1 + count) / (resamples + 1), int(resamples), n, False
    )


def _group_seed(seed: int, key: tuple) -> int:
    """A seed per table group from the table's seed, stable across processes (no hash())."""
    digest = hashlib.sha256(json.dumps([seed, *map(str, key)]).encode()).digest()
    return int.from_bytes(digest[:8], "little")


SUBSET_REQUIRED = (*PAIR_COLUMNS, "measure", "k", "subset", "value")


def permutation_table(
    subsets: pd.DataFrame, *, resamples: int = 9999, seed: int = 0
) -> pd.DataFrame:
    """Agree vs disagree similarity per (study, eps, measure, k): paired permutation tests.

    Parameters
    ----------
    subsets : the Fig 5 table (`robuniv.subsets.agreement_subset_table`), one row per model
        pair, measure, k and subset ("agree" or "disagree").
    resamples, seed : see `paired_permutation_test`; each group's seed derives from `seed`
        and the group, so adding a group leaves the others' p-values unchanged.

    Returns
    -------
    pd.DataFrame with columns study, eps, measure, k, n_pairs, mean_agree, mean_disagree,
    mean_difference (agree - disagree; -RTD for RTD), p, resamples, seed.
    """
    require_columns(subsets, SUBSET_REQUIRED, "agreement-subset table")
    bad = sorted(set(subsets["subset"]) - {"agree", "disagree"})
    if bad:
        raise ValueError(f"subset must be 'agree' or 'disagree', got {bad}")
    data = subsets.assign(signed=signed_value(subsets), eps=subsets["eps"].astype(float))
    keys = ["study", "eps", "measure", "k"]
    pair = ["model_a", "run_a", "model_b", "run_b"]
    rows = []
    for key, group in data.groupby(keys, sort=True):
        wide = group.pivot_table(index=pair, columns="subset", values="signed", aggfunc="first")
        wide = wide.reindex(columns=["agree", "disagree"]).dropna()
        if wide.empty:
            log.warning("no model pair has both subsets for %s; left out", dict(zip(keys, key)))
            continue
        result = paired_permutation_test(
            wide["agree"], wide["disagree"], resamples=resamples, seed=_group_seed(seed, key)
        )
        rows.append(
            {
                **dict(zip(keys, key)),
                "n_pairs": result.n,
                "mean_agree": float(wide["agree"].mean()),
                "mean_disagree": float(wide["disagree"].mean()),
                "mean_difference": result.statistic,
                "p": result.p,
                "resamples": result.resamples,
                "seed": seed,
            }
        )
    columns = [*keys, "n_pairs", "mean_agree", "mean_disagree", "mean_difference", "p"]
    return pd.DataFrame(rows, columns=[*columns, "resamples", "seed"])


# ---------------------------------------------------------------------------------------------
# Agreement bounds (Fig 7).

BOUND_COLUMNS = ("hard_lower", "hard_upper", "independent", "correlated")


def agreement_bounds(
    acc_a: npt.ArrayLike, acc_b: npt.ArrayLike, n_classes: int
) -> dict[str, np.ndarray]:
    """The agreement two classifiers with accuracies a <= a* can have (SPEC 6, Fig 7).

    hard_lower = max(0, a + a* - 1) and hard_upper = 1 - (a* - a) bound every pair of
    classifiers; Fort et al. (2019) expect a a* + (1-a)(1-a*)/(C-1) when errors are
    independent (spread uniformly over the C - 1 wrong classes), and
    1 - (C-1)(a* - a)/(C a* - 1) when the weaker model is the stronger one up to flipping
    noise (NaN where the weaker model is below chance, 1/C: no flipping noise gives that).
    Inputs are swapped as needed so that a <= a*; arrays broadcast.
    """
    a1, a2 = np.asarray(acc_a, dtype=float), np.asarray(acc_b, dtype=float)
    for name, acc in (("acc_a", a1), ("acc_b", a2)):
        if not ((acc >= 0) & (acc <= 1)).all():
            raise ValueError(f"{name} must lie in [0, 1], got {acc}")
    if int(n_classes) < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    c = int(n_classes)
    low, high = np.minimum(a1, a2), np.maximum(a1, a2)
    with np.errstate(divide="ignore", invalid="ignore"):
        correlated = 1 - (c - 1) * (high - low) / (c * high - 1)
    # Flipping noise keeps a share p = (C a - 1) / (C a* - 1) of the stronger model's answers
    # and guesses elsewhere: it needs p >= 0, i.e. the weaker model at or above chance.
    correlated = np.where((low >= 1 / c) & (c * high > 1), correlated, np.nan)
    return {
        "hard_lower": np.maximum(0.0, low + high - 1),
        "hard_upper": 1 - (high - low),
        "independent": low * high + (1 - low) * (1 - high) / (c - 1),
        "correlated": correlated,
    }


def bounds_table(
    predictions: Mapping[Any, tuple[npt.ArrayLike, npt.ArrayLike]], *, study: str
) -> pd.DataFrame:
    """Observed agreement and its four bounds for every pair of models at the same eps.

    Parameters
    ----------
    predictions : model key (with ``arch``, ``eps``, ``run``) -> (logits (N x C) or
        predicted classes (N,), true labels (N,)), all on the same N inputs.

    Returns
    -------
    pd.DataFrame with columns study, eps, model_a, run_a, model_b, run_b, acc_a, acc_b,
    agreement, hard_lower, hard_upper, independent, correlated; one row per pair.
    """
    classes, labels, n_classes = {}, None, 0
    for key, (scores, truth) in predictions.items():
        scores, truth = np.asarray(scores), np.asarray(truth)
        predicted = scores.argmax(axis=1) if scores.ndim == 2 else scores
        if scores.ndim == 2:
            n_classes = max(n_classes, scores.shape[1])
        if labels is None:
            labels = truth
        elif not np.array_equal(labels, truth):
            raise ValueError(f"labels of {key} differ from the other models': inputs must match")
        if predicted.shape != truth.shape:
            raise ValueError(f"{key}: {predicted.shape[0]} predictions for {truth.shape[0]} labels")
        classes[key] = predicted
    if labels is None:
        raise ValueError("no predictions given")
    n_classes = max(n_classes, int(labels.max()) + 1, 2)
    rows = []
    for a, b in same_eps_pairs(classes):
        acc_a = float((classes[a] == labels).mean())
        acc_b = float((classes[b] == labels).mean())
        bounds = agreement_bounds(acc_a, acc_b, n_classes)
        rows.append(
            {
                **pair_record(study, a, b),
                "acc_a": acc_a,
                "acc_b": acc_b,
                "agreement": float((classes[a] == classes[b]).mean()),
                **{name: float(value) for name, value in bounds.items()},
            }
        )
    columns = [*PAIR_COLUMNS, "acc_a", "acc_b", "agreement", *BOUND_COLUMNS]
    return pd.DataFrame(rows, columns=columns)
