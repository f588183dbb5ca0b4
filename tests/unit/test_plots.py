from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from PIL import Image

from robuniv.config import ModelKey
from robuniv.plots import (
    draw_figure,
    plot_agreement_bounds,
    plot_agreement_subsets,
    plot_inversions,
    plot_jaccard_k,
    plot_predictive,
    plot_probes,
    plot_representational,
    save_figure,
)
from robuniv.stats import bounds_table, permutation_table, spearman_by_group, spearman_table

ARCHS = ("resnet18", "resnet50", "vgg16_bn")
EPS = (0.0, 0.25, 1.0, 3.0)
MEASURES = (
    ("agreement", -1),
    ("jsd_sim", -1),
    ("cka", -1),
    ("procrustes_sim", -1),
    ("jaccard", 10),
    ("jaccard", 100),
    ("jaccard", 500),
    ("rtd", -1),
)


def similarity_table(seed: int = 0, study: str = "cifar10") -> pd.DataFrame:
    """Tidy table as the workflow writes it: regular pairs once, inverted pairs once per source."""
    rng = np.random.default_rng(seed)
    rows = []
    for inputs, eps, (a, b), (measure, k) in itertools.product(
        ("regular", "inverted"), EPS, itertools.combinations(ARCHS, 2), MEASURES
    ):
        for source in ("",) if inputs == "regular" else (a, b):
            value = 0.5 + 0.1 * eps + rng.normal(scale=0.05)
            rows.append(
                {
                    "study": study,
                    "inputs": inputs,
                    "source": source,
                    "source_run": -1 if inputs == "regular" else 0,
                    "eps": eps,
                    "model_a": a,
                    "run_a": 0,
                    "model_b": b,
                    "run_b": 0,
                    "measure": measure,
                    "k": k,
                    "value": 10 - value if measure == "rtd" else value,
                }
            )
    return pd.DataFrame(rows)


def texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def point_offsets(fig) -> list[np.ndarray]:
    return [c.get_offsets().data.copy() for ax in fig.axes for c in ax.collections]


def test_predictive_figure_has_two_lettered_panels_with_one_box_per_eps() -> None:
    fig = plot_predictive(similarity_table(), "regular")
    assert len(fig.axes) == 2
    (a, b) = fig.axes
    assert "A" in texts(a) and "B" in texts(b)
    assert (a.get_ylabel(), b.get_ylabel()) == ("Agreement", "JSDSim")
    assert "regular" in a.get_title()
    assert [t.get_text() for t in a.get_xticklabels()] == ["0", "0.25", "1", "3"]
    # one scatter of points per eps; 3 regular pairs each
    assert [len(c.get_offsets()) for c in a.collections] == [3, 3, 3, 3]


def test_predictive_on_inverted_inputs_shows_both_directions_of_each_pair() -> None:
    fig = plot_predictive(similarity_table(), "inverted")
    assert [len(c.get_offsets()) for c in fig.axes[0].collections] == [6, 6, 6, 6]
    assert "inverted" in fig.axes[1].get_title()


def test_jitter_is_seeded_and_deterministic() -> None:
    sim = similarity_table()
    first, again = plot_predictive(sim, "regular"), plot_predictive(sim, "regular")
    other = plot_predictive(sim, "regular", seed=1)
    for x, y, z in zip(point_offsets(first), point_offsets(again), point_offsets(other)):
        assert np.array_equal(x, y)
        assert not np.array_equal(x[:, 0], z[:, 0])


def test_representational_figure_prints_each_panels_spearman_rho() -> None:
    sim = similarity_table()
    spearman = spearman_by_group(sim, by=["study", "inputs", "measure", "k"])
    fig = plot_representational(sim, spearman)
    assert len(fig.axes) == 8
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["CKA", "ProcrustesSim", "Jaccard (k=10)", "-RTD"] * 2
    panels = itertools.product(("regular", "inverted"), ("cka", "procrustes_sim", "jaccard", "rtd"))
    for ax, (inputs, measure) in zip(fig.axes, panels):
        k = 10 if measure == "jaccard" else -1
        row = spearman.set_index(["inputs", "measure", "k"]).loc[(inputs, measure, k)]
        assert f"ρ = {row['rho']:.2f}" in texts(ax)[0]
    # values rise with eps; stored RTD falls, so -RTD must rise too
    assert all(texts(ax)[0].startswith(("ρ = 0.", "ρ = 1.")) for ax in fig.axes)
    rtd = fig.axes[3].collections
    assert np.mean(rtd[-1].get_offsets()[:, 1]) > np.mean(rtd[0].get_offsets()[:, 1])


def test_representational_marks_missing_spearman_rows() -> None:
    sim = similarity_table()
    spearman = spearman_by_group(sim, by=["study", "inputs", "measure", "k"])
    fig = plot_representational(sim, spearman[spearman["measure"] != "cka"], measures=("cka",))
    assert texts(fig.axes[0]) == ["ρ n/a"]


def test_missing_eps_and_pairs_leave_gaps_but_keep_slots() -> None:
    sim = similarity_table()
    drop = (sim["inputs"] == "inverted") & ((sim["eps"] == 0.25) | (sim["model_a"] == "resnet18"))
    sim = sim[~drop]
    spearman = spearman_by_group(sim, by=["study", "inputs", "measure", "k"])
    fig = plot_representational(sim, spearman, measures=("cka", "rtd"))
    regular, inverted = fig.axes[0], fig.axes[2]
    assert len(regular.collections) == 4
    assert [len(c.get_offsets()) for c in inverted.collections] == [2, 2, 2]  # eps 0.25 gone
    assert [t.get_text() for t in inverted.get_xticklabels()] == ["0", "0.25", "1", "3"]


def test_jaccard_k_figure_has_rows_per_input_and_columns_per_k() -> None:
    fig = plot_jaccard_k(similarity_table())
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes] == [f"Jaccard (k={k})" for k in (10, 100, 500)] * 2
    assert "Regular" in fig.axes[0].get_ylabel() and "Mechanistic" in fig.axes[3].get_ylabel()


def test_several_studies_get_one_box_each_and_a_legend() -> None:
    sim = pd.concat([similarity_table(0, "cifar10"), similarity_table(1, "imagenet100")])
    fig = plot_predictive(sim, "regular")
    assert len(fig.axes[0].collections) == 2 * len(EPS)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "cifar10 (regular)",
        "imagenet100 (regular)",
    ]


def test_bad_input_raises_naming_the_value() -> None:
    sim = similarity_table()
    with pytest.raises(ValueError, match="'mechanistic'"):
        plot_predictive(sim, "mechanistic")
    with pytest.raises(ValueError, match=r"lacks columns \['eps'\]"):
        plot_predictive(sim.drop(columns="eps"), "regular")
    with pytest.raises(ValueError, match="no 'jaccard' values with k=50"):
        plot_jaccard_k(sim, ks=(10, 50))
    with pytest.raises(ValueError, match=r"lacks columns \['rho'\]"):
        plot_representational(sim, pd.DataFrame(columns=["study", "inputs", "measure", "k", "p"]))
    with pytest.raises(KeyError, match="unknown measure 'svcca'"):
        renamed = sim.replace("cka", "svcca")
        spearman = spearman_by_group(renamed, ["study", "inputs", "measure", "k"])
        plot_representational(renamed, spearman, measures=("svcca",))


def test_save_figure_writes_reproducible_pdf_and_png_with_provenance(tmp_path: Path) -> None:
    sim = similarity_table()
    meta = {"study": "cifar10", "figure": "fig1", "options": {"dpi": 60}}
    for name in ("first", "second"):
        save_figure(
            plot_predictive(sim, "regular"),
            tmp_path / name / "fig1.pdf",
            tmp_path / name / "fig1.png",
            dpi=60,
            metadata=meta,
        )
    pdf, png = (tmp_path / "first" / "fig1.pdf").read_bytes(), tmp_path / "first" / "fig1.png"
    assert pdf.startswith(b"%PDF")
    assert pdf == (tmp_path / "second" / "fig1.pdf").read_bytes()
    assert png.read_bytes() == (tmp_path / "second" / "fig1.png").read_bytes()
    assert b"/Subject" in pdf and b"cifar10" in pdf and b"CreationDate" not in pdf
    assert imread(png).shape == (int(3.4 * 60), 8 * 60, 4)
    assert '"figure": "fig1"' in Image.open(png).text["provenance"]
    assert sorted(p.name for p in (tmp_path / "first").iterdir()) == ["fig1.pdf", "fig1.png"]


# --- multi-run baseline and Figs 2, 5, 6, 7 -------------------------------------------------


def with_baseline(sim: pd.DataFrame) -> pd.DataFrame:
    """The table plus pairs of each architecture with its run-1 replica."""
    same = sim.drop_duplicates(["inputs", "eps", "model_a", "measure", "k", "source"]).copy()
    same["model_b"], same["run_b"] = same["model_a"], 1
    return pd.concat([sim, same], ignore_index=True)


def test_same_architecture_pairs_get_their_own_box_and_legend_entry() -> None:
    sim = with_baseline(similarity_table())
    fig = plot_predictive(sim, "regular")
    # Per eps: a box of cross-architecture pairs and one of same-architecture pairs.
    assert len(fig.axes[0].patches) == 2 * len(EPS)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == [
        "different architectures (regular)",
        "same architecture, different runs (regular)",
    ]
    spearman = spearman_table(sim)
    fig4 = plot_representational(sim, spearman)
    text = "\n".join(t.get_text() for t in fig4.axes[0].texts)
    assert "same arch: ρ =" in text
    # Without same-architecture pairs: one box per eps and no legend, as before.
    plain = plot_predictive(similarity_table(), "regular")
    assert len(plain.axes[0].patches) == len(EPS) and not plain.legends


def test_inversion_grid_has_seed_target_and_one_row_per_model() -> None:
    rng = np.random.default_rng(0)
    images = {name: rng.integers(0, 256, (8, 1, 12, 12), dtype=np.uint8) for name in "abcd"}
    fig = plot_inversions(
        images["a"],
        images["b"],
        {"resnet18, eps 0": images["c"], "resnet18, eps 3": images["d"]},
        seed_labels=[0] * 8,
        target_labels=[1] * 8,
        class_names=["shirt", "bag"],
        n_show=5,
    )
    assert len(fig.axes) == 4 * 5
    assert [ax.get_ylabel() for ax in fig.axes[::5]] == [
        "seed", "target", "resnet18, eps 0", "resnet18, eps 3",
    ]  # fmt: skip
    assert fig.axes[0].get_title() == "shirt → bag"
    colour = rng.integers(0, 256, (2, 3, 12, 12), dtype=np.uint8)
    assert len(plot_inversions(colour, colour, {"x": colour}).axes) == 3 * 2
    with pytest.raises(ValueError, match="C = 1 or 3"):
        plot_inversions(colour[:, :2], colour, {"x": colour})


def subset_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for eps, (a, b), measure in itertools.product(
        (0.0, 3.0), itertools.combinations(ARCHS, 2), ("cka", "procrustes_sim", "jaccard", "rtd")
    ):
        for subset in ("agree", "disagree"):
            value = 0.6 + (0.2 if subset == "agree" else 0) + rng.normal(scale=0.02)
            rows.append(("s", eps, a, 0, b, 0, measure, 10 if measure == "jaccard" else -1,
                         subset, 50, -value if measure == "rtd" else value))  # fmt: skip
    columns = ["study", "eps", "model_a", "run_a", "model_b", "run_b", "measure", "k"]
    return pd.DataFrame(rows, columns=[*columns, "subset", "n_rows", "value"])


def test_agreement_subset_figure_joins_pairs_and_prints_p_values() -> None:
    subsets = subset_table()
    tests = permutation_table(subsets, resamples=99, seed=0)
    fig = plot_agreement_subsets(subsets, tests)
    assert len(fig.axes) == 4
    ax = fig.axes[0]
    assert len(ax.lines) >= 2 * 3  # one line per pair and eps (plus box whiskers)
    assert [t.get_text() for t in ax.texts] == ["p = 0.25", "p = 0.25"]  # 3 pairs: 2/8 exactly
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "agreeing predictions",
        "disagreeing predictions",
    ]
    with pytest.raises(ValueError, match="'cka_unbiased'"):
        plot_agreement_subsets(subsets, tests, measures=("cka_unbiased",))


def test_probe_figure_scatters_pairs_around_the_diagonal() -> None:
    probes = pd.DataFrame(
        {
            "eps": [0.0, 0.0, 3.0],
            "model_a": ["a", "a", "a"],
            "model_b": ["b", "a", "b"],
            "classifier_agreement": [0.7, 0.9, 0.8],
            "probe_agreement": [0.75, 0.95, 0.9],
        }
    )
    fig = plot_probes(probes)
    ax = fig.axes[0]
    assert len(ax.collections) == 3  # eps 0 cross, eps 0 same arch, eps 3 cross
    assert ax.get_xlim() == ax.get_ylim()
    with pytest.raises(ValueError, match="probe_agreement"):
        plot_probes(probes.drop(columns="probe_agreement"))


def test_bounds_figure_draws_four_bounds_and_the_observed_agreement() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    predictions = {
        ModelKey(arch, eps, 0): (np.where(rng.random(500) < 0.6 + 0.1 * i, labels, 0), labels)
        for eps in (0.0, 1.0)
        for i, arch in enumerate(ARCHS)
    }
    bounds = bounds_table(predictions, study="s")
    fig = plot_agreement_bounds(bounds)
    labels_shown = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(labels_shown) == 5 and labels_shown[-1] == "observed agreement (pairs)"
    with pytest.raises(ValueError, match="no model pairs"):
        plot_agreement_bounds(bounds.iloc[:0])


def test_draw_figure_names_a_missing_table() -> None:
    with pytest.raises(ValueError, match="fig7 needs the 'bounds' table"):
        draw_figure("fig7", {"similarity": similarity_table()}, {"dpi": 50})
    with pytest.raises(KeyError, match="fig10"):
        draw_figure("fig10", {}, {})
