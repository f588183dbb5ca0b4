"""The paper's similarity figures from the tidy similarity table: DataFrame in, Figure out (SPEC 6).

Figures are built as plain `matplotlib.figure.Figure` objects, without pyplot: no global
figure registry, no backend choice at import, and nothing to close; PNGs render through Agg.
Every panel shows, per eps, a box of all model pairs plus the pairs as jittered points.
A table holding several studies gets one box per study in each eps slot, in shades of
its input kind's colour (blue for regular, orange for inverted images).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from robuniv.config import format_eps
from robuniv.io import atomic_path, to_json
from robuniv.stats import require_columns, signed_value

log = logging.getLogger(__name__)

SIMILARITY_REQUIRED = ("study", "inputs", "eps", "measure", "k", "value")
SPEARMAN_REQUIRED = ("study", "inputs", "measure", "k", "rho", "p")
INPUT_KINDS = ("regular", "inverted")
INPUT_COLORMAPS = {"regular": "Blues", "inverted": "Oranges"}
ROW_LABELS = {"regular": "Regular", "inverted": "Mechanistic (inverted)"}
MEASURE_LABELS = {
    "agreement": "Agreement",
    "jsd_sim": "JSDSim",
    "cka": "CKA",
    "cka_unbiased": "CKA (unbiased)",
    "procrustes_sim": "ProcrustesSim",
    "jaccard": "Jaccard",
    "rtd": "-RTD",
}
NO_K = -1  # the k of every measure but Jaccard


def measure_label(measure: str, k: int = NO_K) -> str:
    """Axis label of a measure as the paper writes it, e.g. "Jaccard (k=10)" or "-RTD"."""
    if measure not in MEASURE_LABELS:
        raise KeyError(f"unknown measure {measure!r}; known: {sorted(MEASURE_LABELS)}")
    return MEASURE_LABELS[measure] + (f" (k={k})" if k != NO_K else "")


def _check_inputs(inputs: str) -> None:
    if inputs not in INPUT_KINDS:
        raise ValueError(f"inputs must be one of {INPUT_KINDS}, got {inputs!r}")


def _select(sim: pd.DataFrame, inputs: str, measure: str, k: int = NO_K) -> pd.DataFrame:
    """Rows of one panel with the signed value (-RTD) in column ``y``; raise if there are none."""
    rows = sim[(sim["inputs"] == inputs) & (sim["measure"] == measure) & (sim["k"] == k)]
    if rows.empty:
        present = sim[["inputs", "measure", "k"]].drop_duplicates().to_records(index=False)
        raise ValueError(
            f"no {measure!r} values with k={k} on {inputs!r} inputs; "
            f"(inputs, measure, k) present: {sorted(map(tuple, present))}"
        )
    return rows.assign(y=signed_value(rows))


def _colors(inputs: str, n: int) -> list[tuple[float, float, float, float]]:
    cmap = mpl.colormaps[INPUT_COLORMAPS[inputs]]
    return [cmap(level) for level in (np.linspace(0.45, 0.9, n) if n > 1 else [0.7])]


def _box_strip(
    ax: Axes,
    rows: pd.DataFrame,
    inputs: str,
    eps_values: Sequence[float],
    studies: Sequence[str],
    rng: np.random.Generator,
) -> None:
    """Per eps slot and study: a box of all pairs and the pairs as jittered points."""
    width = 0.7 / len(studies)
    for j, (study, color) in enumerate(zip(studies, _colors(inputs, len(studies)))):
        offset = (j - (len(studies) - 1) / 2) * width
        for i, eps in enumerate(eps_values):
            y = rows.loc[(rows["study"] == study) & (rows["eps"] == eps), "y"].to_numpy()
            if y.size == 0:  # a model pair or eps this study lacks: leave the slot empty
                continue
            position = i + offset
            ax.boxplot(
                [y],
                positions=[position],
                widths=0.8 * width,
                patch_artist=True,
                showfliers=False,  # every point is drawn anyway
                boxprops={"facecolor": (*color[:3], 0.35), "edgecolor": color},
                medianprops={"color": "black"},
                whiskerprops={"color": color},
                capprops={"color": color},
            )
            jitter = rng.uniform(-0.3 * width, 0.3 * width, y.size)
            ax.scatter(position + jitter, y, s=10, color=color, alpha=0.8, lw=0, zorder=3)
    ax.set_xticks(range(len(eps_values)), [format_eps(float(e)) for e in eps_values])
    ax.set_xlim(-0.5, len(eps_values) - 0.5)
    ax.set_xlabel("ε (L2 robustness)")


def _layout(sim: pd.DataFrame) -> tuple[list[float], list[str]]:
    """Shared eps slots (so panels line up) and studies in order of appearance."""
    require_columns(sim, SIMILARITY_REQUIRED, "similarity table")
    return sorted(sim["eps"].astype(float).unique()), list(pd.unique(sim["study"]))


def _legend(fig: Figure, inputs_shown: Sequence[str], studies: Sequence[str]) -> None:
    if len(studies) > 1:
        handles = [
            Patch(color=color, label=f"{study} ({inputs})")
            for inputs in inputs_shown
            for study, color in zip(studies, _colors(inputs, len(studies)))
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=len(studies), fontsize=8)


def plot_predictive(sim: pd.DataFrame, inputs: str, *, seed: int = 0) -> Figure:
    """Fig 1 (``inputs="regular"``) or Fig 3 (``"inverted"``): Agreement (A) and JSDSim (B) per eps.

    Parameters
    ----------
    sim : similarity table (columns ``study, inputs, eps, measure, k, value``), SPEC 6.
    inputs : "regular" or "inverted".
    seed : seed of the points' horizontal jitter.

    Returns
    -------
    Figure with two axes.
    """
    _check_inputs(inputs)
    eps_values, studies = _layout(sim)
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(8, 3.4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, letter, measure in zip(axes, "AB", ("agreement", "jsd_sim")):
        _box_strip(ax, _select(sim, inputs, measure), inputs, eps_values, studies, rng)
        ax.set_ylabel(measure_label(measure))
        ax.set_title(f"{measure_label(measure)} on {inputs} images")
        ax.text(-0.12, 1.04, letter, transform=ax.transAxes, fontsize=14, fontweight="bold")
    _legend(fig, [inputs], studies)
    return fig


def _format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _spearman_text(
    spearman: pd.DataFrame, studies: Sequence[str], inputs: str, measure: str, k: int
) -> str:
    lines = []
    for study in studies:
        row = spearman[
            (spearman["study"] == study)
            & (spearman["inputs"] == inputs)
            & (spearman["measure"] == measure)
            & (spearman["k"] == k)
        ]
        if len(row) > 1:
            raise ValueError(f"spearman table repeats {(study, inputs, measure, k)}")
        if row.empty:
            log.warning("no Spearman rho for %s", (study, inputs, measure, k))
            text = "ρ n/a"
        else:
            text = f"ρ = {row['rho'].iloc[0]:.2f}, {_format_p(row['p'].iloc[0])}"
        lines.append(f"{study}: {text}" if len(studies) > 1 else text)
    return "\n".join(lines)


def plot_representational(
    sim: pd.DataFrame,
    spearman: pd.DataFrame,
    measures: Sequence[str] = ("cka", "procrustes_sim", "jaccard", "rtd"),
    k: int = 10,
    *,
    seed: int = 0,
) -> Figure:
    """Fig 4: representational similarity per eps; columns `measures`, rows regular / inverted.

    Each panel prints the Spearman rho of similarity with eps and its p-value.

    Parameters
    ----------
    sim : similarity table (columns ``study, inputs, eps, measure, k, value``), SPEC 6.
    spearman : `robuniv.stats.spearman_by_group` by ``study, inputs, measure, k``.
    measures : one column each; RTD is shown as -RTD.
    k : the Jaccard neighbourhood size shown.
    seed : seed of the points' horizontal jitter.

    Returns
    -------
    Figure with 2 x len(measures) axes.
    """
    require_columns(spearman, SPEARMAN_REQUIRED, "spearman table")
    eps_values, studies = _layout(sim)
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(3.1 * len(measures), 5.8), layout="constrained")
    axes = fig.subplots(2, len(measures), squeeze=False)
    for row, inputs in zip(axes, INPUT_KINDS):
        for ax, measure in zip(row, measures):
            measure_k = k if measure == "jaccard" else NO_K
            _box_strip(
                ax, _select(sim, inputs, measure, measure_k), inputs, eps_values, studies, rng
            )
            ax.set_title(measure_label(measure, measure_k))
            low, high = ax.get_ylim()
            ax.set_ylim(low, high + 0.2 * (high - low))  # headroom so rho does not hide points
            ax.text(
                0.03,
                0.97,
                _spearman_text(spearman, studies, inputs, measure, measure_k),
                transform=ax.transAxes,
                va="top",
                fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.8, "lw": 0},
            )
        row[0].set_ylabel(f"{ROW_LABELS[inputs]}\nsimilarity")
    _legend(fig, INPUT_KINDS, studies)
    return fig


def plot_jaccard_k(
    sim: pd.DataFrame, ks: Sequence[int] = (10, 100, 500), *, seed: int = 0
) -> Figure:
    """Fig 8: Jaccard similarity per eps; columns neighbourhood sizes `ks`, rows regular / inverted.

    Parameters
    ----------
    sim : similarity table (columns ``study, inputs, eps, measure, k, value``), SPEC 6.
    ks : neighbourhood sizes, one column each.
    seed : seed of the points' horizontal jitter.

    Returns
    -------
    Figure with 2 x len(ks) axes; each row shares its y axis, so levels compare across k.
    """
    eps_values, studies = _layout(sim)
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(3.1 * len(ks), 5.8), layout="constrained")
    axes = fig.subplots(2, len(ks), squeeze=False, sharey="row")
    for row, inputs in zip(axes, INPUT_KINDS):
        for ax, k in zip(row, ks):
            _box_strip(ax, _select(sim, inputs, "jaccard", k), inputs, eps_values, studies, rng)
            ax.set_title(measure_label("jaccard", k))
        row[0].set_ylabel(f"{ROW_LABELS[inputs]}\nJaccard")
    _legend(fig, INPUT_KINDS, studies)
    return fig


def save_figure(
    fig: Figure,
    pdf_path: str | Path,
    png_path: str | Path,
    *,
    dpi: int = 150,
    metadata: Mapping | None = None,
) -> None:
    """Write `fig` atomically as PDF and PNG, with `metadata` (provenance) as JSON inside both.

    The JSON goes into the PDF's Subject and the PNG's "provenance" text chunk. The PDF
    carries no creation date, so the same figure gives byte-identical files on every run.
    """
    provenance = {} if metadata is None else {"provenance": to_json(metadata)}
    pdf_meta = {"CreationDate": None, "Subject": provenance.get("provenance")}
    with atomic_path(pdf_path) as tmp:
        fig.savefig(tmp, format="pdf", metadata=pdf_meta)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata=provenance)


def draw_figure(
    figure: str,
    similarity: pd.DataFrame,
    options: Mapping[str, Any],
    spearman: pd.DataFrame | None = None,
) -> Figure:
    """One of the paper's figures by its number ("fig1", "fig3", "fig4", "fig8")."""
    builders: dict[str, Callable[[], Figure]] = {
        "fig1": lambda: plot_predictive(similarity, "regular"),
        "fig3": lambda: plot_predictive(similarity, "inverted"),
        "fig4": lambda: plot_representational(
            similarity,
            _required(spearman, "fig4 needs the Spearman table"),
            measures=tuple(options["measures"]),
            k=options["jaccard_k"],
        ),
        "fig8": lambda: plot_jaccard_k(similarity, ks=tuple(options["jaccard_k"])),
    }
    if figure not in builders:
        raise KeyError(f"unknown figure {figure!r}; known: {', '.join(builders)}")
    return builders[figure]()


def _required(table: pd.DataFrame | None, message: str) -> pd.DataFrame:
    if table is None:
        raise ValueError(message)
    return table
