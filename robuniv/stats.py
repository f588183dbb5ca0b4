"""Statistics and tables over the tidy result tables: Spearman tests, accuracy tables (SPEC 6).

Pure pandas/scipy on the workflow's tables, no torch: the similarity table
(one row per model pair and measure) and the evaluation table (one row per model).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from robuniv.config import format_eps

log = logging.getLogger(__name__)

# Measures stored as a distance; everything shown or tested uses their negation, so that larger
# always means more similar (the paper plots -RTD).
NEGATED_MEASURES = frozenset({"rtd"})

EVALUATION_REQUIRED = ("arch", "run", "eps", "params", "clean_acc", "adv_acc")


def require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise ValueError naming the columns of `columns` that `df` lacks."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; it has {list(df.columns)}")


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
