"""The paper's similarity figures from the tidy similarity table: DataFrame in, Figure out (SPEC 6).

Figures are built as plain `matplotlib.figure.Figure` objects, without pyplot: no global
figure registry, no backend choice at import, and nothing to close; PNGs render through Agg.
Every panel shows, per eps, a box of all model pairs plus the pairs as jittered points.
A table holding several studies gets one box per study in each eps slot, in shades of
its input kind's colour (blue for regular, orange for inverted images).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
from robuniv.stats import PAIR_KINDS, pair_kind, penultimate_rows, require_columns, signed_value

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


def _colors_from(cmap_name: str, n: int) -> list[tuple[float, float, float, float]]:
    cmap = mpl.colormaps[cmap_name]
    return [cmap(level) for level in (np.linspace(0.45, 0.9, n) if n > 1 else [0.7])]


PAIR_LABELS = {
    "cross_arch": "different architectures",
    "same_arch": "same architecture, different runs",
}


@dataclass(frozen=True)
class _Layout:
    """What every panel of one figure shares: eps slots, studies, and the pair kinds present."""

    eps: list[float]
    studies: list[str]
    kinds: list[str]

    @property
    def groups(self) -> list[tuple[str, str]]:
        return [(study, kind) for kind in self.kinds for study in self.studies]


def _group_color(inputs: str, layout: _Layout, study: str, kind: str) -> tuple:
    """Studies in shades of their input kind's colour; the same-architecture baseline in grey."""
    cmap = INPUT_COLORMAPS[inputs] if kind == "cross_arch" else "Greys"
    return _colors_from(cmap, len(layout.studies))[layout.studies.index(study)]


def _box_strip(
    ax: Axes,
    rows: pd.DataFrame,
    inputs: str,
    layout: _Layout,
    rng: np.random.Generator,
) -> None:
    """Per eps slot, study and pair kind: a box of the pairs and the pairs as jittered points."""
    groups = layout.groups
    width = 0.7 / len(groups)
    kinds = pair_kind(rows)
    for j, (study, kind) in enumerate(groups):
        color = _group_color(inputs, layout, study, kind)
        offset = (j - (len(groups) - 1) / 2) * width
        for i, eps in enumerate(layout.eps):
            chosen = (rows["study"] == study) & (rows["eps"] == eps) & (kinds == kind)
            y = rows.loc[chosen, "y"].to_numpy()
            if y.size == 0:  # a model pair or eps this study lacks: leave the slot empty
                continue
            position = i + offset
            ax.boxplot(
                [y],
                positions=[position],
                widths=0.8 * width,
                patch_artist=True,
                showfliers=False,  # every point is drawn anyway
                boxprops={
                    "facecolor": (*color[:3], 0.35),
                    "edgecolor": color,
                    "hatch": "//" if kind == "same_arch" else None,
                },
                medianprops={"color": "black"},
                whiskerprops={"color": color},
                capprops={"color": color},
            )
            jitter = rng.uniform(-0.3 * width, 0.3 * width, y.size)
            ax.scatter(position + jitter, y, s=10, color=color, alpha=0.8, lw=0, zorder=3)
    _eps_axis(ax, layout.eps)


def _eps_axis(ax: Axes, eps_values: Sequence[float]) -> None:
    ax.set_xticks(range(len(eps_values)), [format_eps(float(e)) for e in eps_values])
    ax.set_xlim(-0.5, len(eps_values) - 0.5)
    ax.set_xlabel("ε (L2 robustness)")


def _layout(sim: pd.DataFrame) -> _Layout:
    """Shared eps slots (so panels line up), studies in order of appearance, pair kinds present."""
    require_columns(sim, SIMILARITY_REQUIRED, "similarity table")
    present = set(pair_kind(sim)) if {"model_a", "model_b"} <= set(sim.columns) else set()
    return _Layout(
        eps=sorted(sim["eps"].astype(float).unique()),
        studies=list(pd.unique(sim["study"])),
        kinds=[kind for kind in PAIR_KINDS if kind in present] or ["cross_arch"],
    )


def _legend_height(layout: _Layout) -> float:
    """Inches the legend below the panels needs (none for one study without a baseline)."""
    return 0.0 if len(layout.groups) == 1 else 0.25 * math.ceil(len(layout.groups) / 2)


def _legend(fig: Figure, inputs_shown: Sequence[str], layout: _Layout) -> None:
    if len(layout.groups) == 1:
        return
    handles = []
    for inputs in inputs_shown:
        for study, kind in layout.groups:
            color = _group_color(inputs, layout, study, kind)
            parts = [study] if len(layout.studies) > 1 else []
            parts += [PAIR_LABELS[kind]] if len(layout.kinds) > 1 else []
            label = f"{', '.join(parts)} ({inputs})"
            handles.append(
                Patch(
                    facecolor=(*color[:3], 0.35),
                    edgecolor=color,
                    hatch="//" if kind == "same_arch" else None,
                    label=label,
                )
            )
    ncols = min(len(handles), 4)
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=8)


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
    sim = penultimate_rows(sim)
    layout = _layout(sim)
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(8, 3.4 + _legend_height(layout)), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, letter, measure in zip(axes, "AB", ("agreement", "jsd_sim")):
        _box_strip(ax, _select(sim, inputs, measure), inputs, layout, rng)
        ax.set_ylabel(measure_label(measure))
        ax.set_title(f"{measure_label(measure)} on {inputs} images")
        ax.text(-0.12, 1.04, letter, transform=ax.transAxes, fontsize=14, fontweight="bold")
    _legend(fig, [inputs], layout)
    return fig


def _format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _spearman_text(
    spearman: pd.DataFrame, layout: _Layout, inputs: str, measure: str, k: int
) -> str:
    """rho and p per study, and for the same-architecture baseline where the figure has it."""
    if "pairs" not in spearman.columns:  # a table from before the multi-run baseline
        spearman = spearman.assign(pairs="cross_arch")
    lines = []
    for study, kind in layout.groups:
        row = spearman[
            (spearman["study"] == study)
            & (spearman["inputs"] == inputs)
            & (spearman["pairs"] == kind)
            & (spearman["measure"] == measure)
            & (spearman["k"] == k)
        ]
        if len(row) > 1:
            raise ValueError(f"spearman table repeats {(study, inputs, kind, measure, k)}")
        if row.empty:
            log.warning("no Spearman rho for %s", (study, inputs, kind, measure, k))
            text = "ρ n/a"
        else:
            text = f"ρ = {row['rho'].iloc[0]:.2f}, {_format_p(row['p'].iloc[0])}"
        names = [study] if len(layout.studies) > 1 else []
        names += ["same arch"] if kind == "same_arch" else []
        lines.append(f"{', '.join(names)}: {text}" if names else text)
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
    sim = penultimate_rows(sim)
    layout = _layout(sim)
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(3.1 * len(measures), 5.8 + _legend_height(layout)), layout="constrained")
    axes = fig.subplots(2, len(measures), squeeze=False)
    for row, inputs in zip(axes, INPUT_KINDS):
        for ax, measure in zip(row, measures):
            measure_k = k if measure == "jaccard" else NO_K
            _box_strip(ax, _select(sim, inputs, measure, measure_k), inputs, layout, rng)
            ax.set_title(measure_label(measure, measure_k))
            low, high = ax.get_ylim()
            ax.set_ylim(low, high + 0.2 * (high - low))  # headroom so rho does not hide points
            ax.text(
                0.03,
                0.97,
                _spearman_text(spearman, layout, inputs, measure, measure_k),
                transform=ax.transAxes,
                va="top",
                fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.8, "lw": 0},
            )
        row[0].set_ylabel(f"{ROW_LABELS[inputs]}\nsimilarity")
    _legend(fig, INPUT_KINDS, layout)
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
    sim = penultimate_rows(sim)
    layout = _layout(sim)
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(3.1 * len(ks), 5.8 + _legend_height(layout)), layout="constrained")
    axes = fig.subplots(2, len(ks), squeeze=False, sharey="row")
    for row, inputs in zip(axes, INPUT_KINDS):
        for ax, k in zip(row, ks):
            _box_strip(ax, _select(sim, inputs, "jaccard", k), inputs, layout, rng)
            ax.set_title(measure_label("jaccard", k))
        row[0].set_ylabel(f"{ROW_LABELS[inputs]}\nJaccard")
    _legend(fig, INPUT_KINDS, layout)
    return fig


def _image_grid(images: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) as (N, H, W) for C = 1 or (N, H, W, C) for C = 3."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C = 1 or 3, got shape {images.shape}")
    return images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)


def plot_inversions(
    seeds: np.ndarray,
    targets: np.ndarray,
    inverted: Mapping[str, np.ndarray],
    *,
    seed_labels: Sequence[int] | None = None,
    target_labels: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    n_show: int = 6,
) -> Figure:
    """Fig 2: seed images, target images and each model's inversions of them (one row each).

    Parameters
    ----------
    seeds, targets : uint8 (N, C, H, W), the pairs' seed (start) and target images.
    inverted : row label (e.g. "resnet18, eps 0") -> uint8 (N, C, H, W) inverted images of
        the same pairs, in the order the rows are drawn.
    seed_labels, target_labels, class_names : label each column's seed and target.
    n_show : columns (pairs) shown.
    """
    if not inverted:
        raise ValueError("plot_inversions needs at least one inverted set")
    rows = {"seed": seeds, "target": targets, **inverted}
    n = min(n_show, *(len(images) for images in rows.values()))
    if n == 0:
        raise ValueError("no images to show")
    fig = Figure(figsize=(1.2 * n + 1.4, 1.25 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), n, squeeze=False)

    def name(labels: Sequence[int] | None, j: int) -> str:
        if labels is None:
            return ""
        label = int(labels[j])
        return class_names[label] if class_names is not None else f"class {label}"

    for r, (label, images) in enumerate(rows.items()):
        shown = _image_grid(np.asarray(images)[:n])
        for j, ax in enumerate(axes[r]):
            ax.imshow(shown[j], cmap="gray" if shown.ndim == 3 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{name(seed_labels, j)} → {name(target_labels, j)}", fontsize=7)
        axes[r][0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    return fig


SUBSET_STYLE = {"agree": ("tab:green", -0.18), "disagree": ("tab:purple", 0.18)}


def plot_agreement_subsets(
    subsets: pd.DataFrame,
    permutation: pd.DataFrame,
    *,
    measures: Sequence[str] = ("cka", "procrustes_sim", "jaccard", "rtd"),
    k: int = 10,
) -> Figure:
    """Fig 5: similarity on the inputs a pair classifies alike vs differently, per eps.

    Each model pair is a line from its agree to its disagree value; boxes summarise the
    pairs; each slot prints the paired permutation test's p-value.

    Parameters
    ----------
    subsets : `robuniv.subsets.agreement_subset_table` rows (all studies' eps).
    permutation : `robuniv.stats.permutation_table` of the same rows.
    measures : one panel each; RTD shown as -RTD.
    k : the Jaccard neighbourhood size shown.
    """
    require_columns(
        subsets,
        ("study", "eps", "model_a", "run_a", "model_b", "run_b", "measure", "k", "subset", "value"),
        "agreement-subset table",
    )
    require_columns(permutation, ("study", "eps", "measure", "k", "p"), "permutation table")
    eps_values = sorted(subsets["eps"].astype(float).unique())
    fig = Figure(figsize=(3.1 * len(measures), 3.8), layout="constrained")
    axes = fig.subplots(1, len(measures), squeeze=False)[0]
    pair = ["study", "model_a", "run_a", "model_b", "run_b"]
    for ax, measure in zip(axes, measures):
        measure_k = k if measure == "jaccard" else NO_K
        rows = subsets[(subsets["measure"] == measure) & (subsets["k"] == measure_k)]
        if rows.empty:
            raise ValueError(f"no {measure!r} values with k={measure_k} in the subset table")
        rows = rows.assign(y=signed_value(rows), eps=rows["eps"].astype(float))
        for i, eps in enumerate(eps_values):
            at = rows[rows["eps"] == eps]
            wide = at.pivot_table(index=pair, columns="subset", values="y", aggfunc="first")
            for subset, (color, offset) in SUBSET_STYLE.items():
                if subset not in wide:
                    continue
                y = wide[subset].dropna().to_numpy()
                ax.boxplot(
                    [y],
                    positions=[i + offset],
                    widths=0.25,
                    patch_artist=True,
                    showfliers=False,
                    medianprops={"color": "black"},
                    boxprops={"facecolor": (*mpl.colors.to_rgb(color), 0.3), "edgecolor": color},
                )
                ax.scatter(np.full(y.size, i + offset), y, s=10, color=color, zorder=3, lw=0)
            if {"agree", "disagree"} <= set(wide.columns):
                both = wide[["agree", "disagree"]].dropna().to_numpy()
                for a, d in both:
                    ax.plot([i - 0.18, i + 0.18], [a, d], color="0.6", lw=0.6, zorder=2)
            test = permutation[
                (permutation["eps"].astype(float) == eps)
                & (permutation["measure"] == measure)
                & (permutation["k"] == measure_k)
            ]
            text = _format_p(float(test["p"].iloc[0])) if len(test) == 1 else "p n/a"
            ax.text(
                i,
                1.0,
                text,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        _eps_axis(ax, eps_values)
        ax.set_title(measure_label(measure, measure_k), pad=16)
    axes[0].set_ylabel("Similarity (regular images)")
    handles = [
        Patch(
            facecolor=(*mpl.colors.to_rgb(color), 0.3),
            edgecolor=color,
            label=f"{subset}ing predictions",
        )
        for subset, (color, _) in SUBSET_STYLE.items()
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8)
    return fig


def plot_probes(probes: pd.DataFrame) -> Figure:
    """Fig 6: agreement of two linear probes vs agreement of the two classifiers, per pair.

    Points above the diagonal: the probes agree more than the models they were cut from.
    Colour: eps; crosses mark pairs of one architecture from two runs.
    """
    require_columns(
        probes,
        ("eps", "model_a", "model_b", "classifier_agreement", "probe_agreement"),
        "probe table",
    )
    if probes.empty:
        raise ValueError("the probe table has no model pairs")
    eps_values = sorted(probes["eps"].astype(float).unique())
    colors = _colors_from("viridis", len(eps_values))
    kinds = pair_kind(probes)
    fig = Figure(figsize=(4.6, 4.4), layout="constrained")
    ax = fig.subplots()
    for eps, color in zip(eps_values, colors):
        for kind, marker in (("cross_arch", "o"), ("same_arch", "x")):
            rows = probes[(probes["eps"].astype(float) == eps) & (kinds == kind)]
            if rows.empty:
                continue
            label = f"ε = {format_eps(eps)}" + (" (same arch)" if kind == "same_arch" else "")
            ax.scatter(
                rows["classifier_agreement"],
                rows["probe_agreement"],
                color=color,
                marker=marker,
                s=28,
                label=label,
                zorder=3,
            )
    values = probes[["classifier_agreement", "probe_agreement"]].to_numpy(float)
    low, high = values.min(), values.max()
    pad = 0.05 * max(high - low, 0.02)
    lims = (low - pad, high + pad)
    ax.plot(lims, lims, color="0.5", lw=0.8, ls="--", label="probes = classifiers")
    ax.set_xlim(lims)
    ax.set_ylim(lims)
    ax.set_aspect("equal")
    ax.set_xlabel("Agreement of the classifiers")
    ax.set_ylabel("Agreement of the linear probes")
    ax.set_title("Linear probes vs classifiers (held-out images)", fontsize=10)
    ax.legend(fontsize=8)
    return fig


BOUND_STYLE = {
    "hard_upper": ("hard upper 1 − (a* − a)", "tab:red", "v"),
    "correlated": ("correlated up to flipping noise", "tab:purple", "D"),
    "independent": ("independent errors (Fort et al.)", "tab:blue", "s"),
    "hard_lower": ("hard lower max(0, a + a* − 1)", "tab:gray", "^"),
}


def plot_agreement_bounds(bounds: pd.DataFrame, *, seed: int = 0) -> Figure:
    """Fig 7: observed agreement per eps (box and pairs) against the mean of each bound."""
    require_columns(bounds, ("study", "eps", "agreement", *BOUND_STYLE), "agreement-bound table")
    if bounds.empty:
        raise ValueError("the agreement-bound table has no model pairs")
    eps_values = sorted(bounds["eps"].astype(float).unique())
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(max(4.5, 1.3 * len(eps_values) + 2.5), 4.2), layout="constrained")
    ax = fig.subplots()
    data = bounds.assign(eps=bounds["eps"].astype(float))
    for i, eps in enumerate(eps_values):
        y = data.loc[data["eps"] == eps, "agreement"].to_numpy()
        ax.boxplot(
            [y],
            positions=[i],
            widths=0.35,
            patch_artist=True,
            showfliers=False,
            medianprops={"color": "black"},
            boxprops={"facecolor": (1.0, 0.6, 0.2, 0.35), "edgecolor": "tab:orange"},
        )
        ax.scatter(i + rng.uniform(-0.1, 0.1, y.size), y, s=10, color="tab:orange", lw=0, zorder=3)
    means = data.groupby("eps")[list(BOUND_STYLE)].mean().reindex(eps_values)
    for column, (label, color, marker) in BOUND_STYLE.items():
        ax.plot(
            range(len(eps_values)),
            means[column],
            color=color,
            marker=marker,
            lw=1,
            ms=5,
            label=f"{label} (mean)",
        )
    ax.plot([], [], color="tab:orange", marker="o", ls="", label="observed agreement (pairs)")
    _eps_axis(ax, eps_values)
    ax.set_ylabel("Agreement on regular images")
    ax.set_title("Observed agreement vs bounds from the accuracies", fontsize=10)
    fig.legend(loc="outside lower center", ncols=2, fontsize=7)
    return fig


DEPTH_REQUIRED = ("inputs", "eps", "model_a", "model_b", "layer", "depth", "measure", "k", "value")
LAYER_CKA_REQUIRED = (
    "model_a",
    "model_b",
    "eps",
    "layer_a",
    "depth_a",
    "layer_b",
    "depth_b",
    "value",
)


def depth_curves(sim: pd.DataFrame, inputs: str, measure: str, k: int = NO_K) -> pd.DataFrame:
    """Fig 9's points: per eps and layer position, the mean relative depth and the mean
    similarity (-RTD for RTD) over cross-architecture pairs, by depth.

    Same-architecture pairs (the multi-run baseline) are left out: one line per eps stands
    for the pairs the paper asks about.
    """
    require_columns(sim, DEPTH_REQUIRED, "similarity table")
    rows = _select(sim, inputs, measure, k)
    rows = rows[pair_kind(rows) == "cross_arch"]
    curves = (
        rows.groupby(["eps", "layer"], sort=True)
        .agg(depth=("depth", "mean"), y=("y", "mean"), pairs=("y", "size"))
        .reset_index()
    )
    return curves.sort_values(["eps", "depth"], kind="stable").reset_index(drop=True)


def plot_depth(
    sim: pd.DataFrame,
    layer_cka: pd.DataFrame,
    measures: Sequence[str] = ("cka", "procrustes_sim", "jaccard"),
    k: int = 10,
) -> Figure:
    """Fig 9: similarity across depth, and the layer x layer CKA of one pair of models.

    Parameters
    ----------
    sim : similarity table with the columns of `DEPTH_REQUIRED`: rows of the feature layer
        ("penultimate") and of further layers ("L1", ...), each with its mean relative depth.
    layer_cka : `robuniv.compare.layer_cka_table` of one pair.
    measures : one column each (RTD as -RTD); rows regular / inverted inputs.
    k : the Jaccard neighbourhood size shown.

    Returns
    -------
    Figure with 2 x len(measures) line panels (x relative depth, one line per eps, in a
    colour ramp from low to high eps) and the heatmap on the right spanning both rows.
    """
    require_columns(layer_cka, LAYER_CKA_REQUIRED, "layer CKA table")
    eps_values = sorted(sim["eps"].astype(float).unique())
    colors = _colors_from("viridis_r", len(eps_values))
    fig = Figure(figsize=(3.1 * len(measures) + 4.2, 6.2), layout="constrained")
    grid = fig.add_gridspec(2, len(measures) + 1, width_ratios=[1] * len(measures) + [1.35])
    for r, inputs in enumerate(INPUT_KINDS):
        for c, measure in enumerate(measures):
            ax = fig.add_subplot(grid[r, c])
            measure_k = k if measure == "jaccard" else NO_K
            curves = depth_curves(sim, inputs, measure, measure_k)
            for color, eps in zip(colors, eps_values):
                line = curves[np.isclose(curves["eps"].astype(float), eps)]
                ax.plot(
                    line["depth"],
                    line["y"],
                    marker="o",
                    ms=4,
                    color=color,
                    label=f"ε = {format_eps(eps)}",
                )
            ax.set_xlim(0, 1.02)
            ax.set_title(measure_label(measure, measure_k))
            ax.set_xlabel("relative depth")
            if c == 0:
                ax.set_ylabel(f"{ROW_LABELS[inputs]}\nsimilarity")
            if r == 0 and c == 0:
                ax.legend(fontsize=7, loc="best")
    _layer_heatmap(fig.add_subplot(grid[:, -1]), layer_cka, fig)
    return fig


def _layer_heatmap(ax: Axes, layer_cka: pd.DataFrame, fig: Figure) -> None:
    """Linear CKA of layer i of model A (rows) with layer j of model B (columns), by depth."""
    rows = layer_cka.sort_values(["depth_a", "depth_b"], kind="stable")
    order_a = list(dict.fromkeys(rows["layer_a"]))
    order_b = list(dict.fromkeys(rows.sort_values("depth_b", kind="stable")["layer_b"]))
    matrix = (
        rows.pivot_table(index="layer_a", columns="layer_b", values="value", aggfunc="mean")
        .reindex(index=order_a, columns=order_b)
        .to_numpy()
    )
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="magma", origin="lower", aspect="auto")
    first = rows.iloc[0]
    ax.set_yticks(range(len(order_a)), order_a, fontsize=7)
    ax.set_xticks(range(len(order_b)), order_b, fontsize=7, rotation=60, ha="right")
    ax.set_ylabel(
        f"{first['model_a']} (run {first['run_a']})" if "run_a" in rows else first["model_a"]
    )
    ax.set_xlabel(
        f"{first['model_b']} (run {first['run_b']})" if "run_b" in rows else first["model_b"]
    )
    ax.set_title(f"Linear CKA by layer, ε = {format_eps(float(first['eps']))}")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if np.isfinite(matrix[i, j]):
                color = "black" if matrix[i, j] > 0.6 else "white"
                ax.text(
                    j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6, color=color
                )
    fig.colorbar(image, ax=ax, shrink=0.8, label="CKA")


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


def draw_figure(figure: str, tables: Mapping[str, Any], options: Mapping[str, Any]) -> Figure:
    """One of the paper's figures by its number ("fig1" ... "fig8"), or Fig 9 (depth).

    Parameters
    ----------
    tables : the figure's inputs by name: "similarity", "spearman" (Figs 1, 3, 4, 8),
        "subsets", "permutation" (Fig 5), "probes" (Fig 6), "bounds" (Fig 7),
        "layer_cka" (Fig 9, with "similarity") as
        DataFrames, and "inversions" (Fig 2), the mapping `robuniv.pipeline.inversion_examples`
        returns.
    options : the figure's config block (plus dpi).
    """

    def table(name: str) -> Any:
        return _required(tables.get(name), f"{figure} needs the {name!r} table")

    builders: dict[str, Callable[[], Figure]] = {
        "fig1": lambda: plot_predictive(table("similarity"), "regular"),
        "fig2": lambda: plot_inversions(**table("inversions"), n_show=options["n_show"]),
        "fig3": lambda: plot_predictive(table("similarity"), "inverted"),
        "fig4": lambda: plot_representational(
            table("similarity"),
            table("spearman"),
            measures=tuple(options["measures"]),
            k=options["jaccard_k"],
        ),
        "fig5": lambda: plot_agreement_subsets(
            table("subsets"),
            table("permutation"),
            measures=tuple(options["measures"]),
            k=options["jaccard_k"],
        ),
        "fig6": lambda: plot_probes(table("probes")),
        "fig7": lambda: plot_agreement_bounds(table("bounds")),
        "fig8": lambda: plot_jaccard_k(table("similarity"), ks=tuple(options["jaccard_k"])),
        "fig9": lambda: plot_depth(
            table("similarity"),
            table("layer_cka"),
            measures=tuple(options["measures"]),
            k=options["jaccard_k"],
        ),
    }
    if figure not in builders:
        raise KeyError(f"unknown figure {figure!r}; known: {', '.join(builders)}")
    return builders[figure]()


def _required(table: Any, message: str) -> Any:
    if table is None:
        raise ValueError(message)
    return table
