from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from scipy.stats import permutation_test, spearmanr

from robuniv.config import ModelKey
from robuniv.stats import (
    SUBSET_REQUIRED,
    accuracy_table,
    agreement_bounds,
    bounds_table,
    paired_permutation_test,
    permutation_table,
    signed_value,
    spearman_by_group,
    spearman_table,
    to_latex,
)


def similarity_frame(seed: int = 0) -> pd.DataFrame:
    """Two measures x two input kinds, 3 pairs per eps, values rising (RTD: falling) with eps."""
    rng = np.random.default_rng(seed)
    rows = [
        {
            "study": "s",
            "inputs": inputs,
            "eps": eps,
            "measure": measure,
            "k": -1,
            "value": sign * eps + rng.normal(scale=0.5),
        }
        for inputs in ("regular", "inverted")
        for measure, sign in (("cka", 1.0), ("rtd", -1.0))
        for eps in (0.0, 0.25, 0.5, 1.0, 3.0)
        for _ in range(3)
    ]
    return pd.DataFrame(rows)


def test_signed_value_negates_rtd_only() -> None:
    df = pd.DataFrame({"measure": ["cka", "rtd", "jaccard"], "value": [0.5, 2.0, 0.1]})
    assert signed_value(df).tolist() == [0.5, -2.0, 0.1]


def test_spearman_matches_scipy_per_group_with_rtd_negated() -> None:
    df = similarity_frame()
    result = spearman_by_group(df, by=["inputs", "measure"])
    assert list(result.columns) == ["inputs", "measure", "rho", "p", "n"]
    assert len(result) == 4
    for row in result.itertuples():
        group = df[(df["inputs"] == row.inputs) & (df["measure"] == row.measure)]
        sign = -1.0 if row.measure == "rtd" else 1.0
        expected = spearmanr(group["eps"], sign * group["value"])
        assert row.rho == pytest.approx(expected.statistic, abs=1e-12)
        assert row.p == pytest.approx(expected.pvalue, rel=1e-9)
        assert row.n == len(group)
    # -RTD falls as RTD rises with eps, so it correlates positively like the other measures.
    assert (result["rho"] > 0.5).all()


def test_spearman_on_other_column_uses_it_unsigned() -> None:
    df = similarity_frame().assign(other=lambda d: -(d["eps"] ** 2))
    result = spearman_by_group(df[df["measure"] == "rtd"], by=["inputs"], y="other")
    assert result["rho"].tolist() == [-1.0, -1.0]


def test_spearman_drops_undefined_groups_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    df = similarity_frame()
    few = df[(df["inputs"] == "regular") & (df["measure"] == "cka")].head(2)
    constant_x = df[(df["inputs"] == "inverted") & (df["measure"] == "cka")].assign(eps=1.0)
    kept = df[df["measure"] == "rtd"]
    with caplog.at_level(logging.WARNING, logger="robuniv.stats"):
        result = spearman_by_group(pd.concat([few, constant_x, kept]), by=["inputs", "measure"])
    assert set(result["measure"]) == {"rtd"} and len(result) == 2
    assert not result.isna().any().any()
    assert "'inputs': 'regular', 'measure': 'cka'" in caplog.text
    assert "'inputs': 'inverted', 'measure': 'cka'" in caplog.text


def test_spearman_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match=r"lacks columns \['model_a'\]"):
        spearman_by_group(similarity_frame(), by=["model_a", "inputs"])


def test_spearman_rejects_missing_values() -> None:
    df = similarity_frame()
    df.loc[3, "value"] = np.nan
    with pytest.raises(ValueError, match="missing in 1 rows"):
        spearman_by_group(df, by=["inputs", "measure"])


def evaluation_frame() -> pd.DataFrame:
    rows = [
        ("resnet50", 0.0, 25_557_032, 0.758, 0.2597),
        ("resnet50", 3.0, 25_557_032, 0.6283, 0.5947),
        ("resnet18", 0.0, 11_689_512, 0.698, 0.203),
        ("resnet18", 0.25, 11_689_512, 0.6742, 0.6002),
        ("resnet18", 3.0, 11_689_512, 0.5311, 0.497),
    ]
    return pd.DataFrame(
        [
            {"study": "imagenet1k", "arch": a, "run": 0, "eps": e, "params": p, "n": 1000,
             "clean_acc": c, "adv_acc": v, "attack_eps": e or 0.25}
            for a, e, p, c, v in rows
        ]
    )  # fmt: skip


def test_accuracy_table_has_paper_layout_in_percent() -> None:
    table = accuracy_table(evaluation_frame())
    assert list(table.columns) == [
        "arch", "params (M)",
        "acc eps=0", "adv. acc eps=0", "acc eps=0.25", "adv. acc eps=0.25",
        "acc eps=3", "adv. acc eps=3",
    ]  # fmt: skip
    assert table["arch"].tolist() == ["resnet50", "resnet18"]  # order of appearance, as configured
    resnet50 = table.iloc[0]
    assert resnet50["params (M)"] == 25.6
    assert resnet50["acc eps=0"] == 75.8 and resnet50["adv. acc eps=0"] == 26.0
    assert np.isnan(resnet50["acc eps=0.25"])  # not evaluated: the paper's "-"
    assert table.iloc[1]["adv. acc eps=3"] == 49.7


def test_accuracy_table_keeps_runs_apart_when_there_are_several() -> None:
    evaluation = evaluation_frame()
    second = evaluation.assign(run=1, clean_acc=evaluation["clean_acc"] - 0.01)
    table = accuracy_table(pd.concat([evaluation, second]))
    assert list(table.columns[:3]) == ["arch", "run", "params (M)"]
    assert len(table) == 4
    assert table.set_index(["arch", "run"]).loc[("resnet18", 1), "acc eps=0"] == 68.8


def test_accuracy_table_rejects_percentages_and_repeats() -> None:
    evaluation = evaluation_frame()
    with pytest.raises(ValueError, match=r"fractions in \[0, 1\]"):
        accuracy_table(evaluation.assign(clean_acc=100 * evaluation["clean_acc"]))
    with pytest.raises(ValueError, match="more than once"):
        accuracy_table(pd.concat([evaluation, evaluation.head(1)]))
    with pytest.raises(ValueError, match=r"lacks columns \['adv_acc'\]"):
        accuracy_table(evaluation.drop(columns="adv_acc"))


def test_to_latex_is_booktabs_with_every_row_escaped() -> None:
    table = accuracy_table(evaluation_frame().replace("resnet18", "wide_resnet50_2"))
    latex = to_latex(table, "Accuracy (%) on imagenet1k", "tab:acc")
    assert latex.startswith("\\begin{table}") and latex.endswith("\\end{table}\n")
    for command in ("\\toprule", "\\midrule", "\\bottomrule", "\\label{tab:acc}"):
        assert command in latex
    assert "\\caption{Accuracy (\\%) on imagenet1k}" in latex
    assert "\\begin{tabular}{lrrrrrrr}" in latex
    assert "resnet50 & 25.6 & 75.8 & 26.0 & -- & -- & 62.8 & 59.5 \\\\" in latex
    assert "wide\\_resnet50\\_2 & 11.7 & 69.8 & 20.3 & 67.4 & 60.0 & 53.1 & 49.7 \\\\" in latex


def test_to_latex_writes_small_p_values_in_scientific_notation() -> None:
    table = pd.DataFrame({"measure": ["cka"], "rho": [0.5312], "p": [1.234e-7], "n": [12]})
    lines = to_latex(table, "c", "l").splitlines()
    row = lines[lines.index("\\midrule") + 1]
    assert row == "cka & 0.531 & $1.23 \\times 10^{-7}$ & 12 \\\\"


# --- pair kinds, permutation test, agreement bounds (issue: the rest of the analyses) -------


def test_spearman_table_separates_the_same_architecture_baseline() -> None:
    rows = []
    for eps in (0.0, 0.5, 1.0, 2.0):
        rows.append(("resnet18", 0, "vgg16", 0, eps, 0.2 + 0.1 * eps))
        rows.append(("resnet18", 0, "resnet18", 1, eps, 0.9 - 0.01 * eps))
    sim = pd.DataFrame(rows, columns=["model_a", "run_a", "model_b", "run_b", "eps", "value"])
    sim = sim.assign(study="s", inputs="inverted", measure="cka", k=-1)
    table = spearman_table(sim).set_index("pairs")
    assert table.loc["cross_arch", "rho"] == pytest.approx(1.0)
    assert table.loc["same_arch", "rho"] == pytest.approx(-1.0)
    expected = spearmanr(sim["eps"][::2], sim["value"][::2])
    assert table.loc["cross_arch", "p"] == pytest.approx(expected.pvalue)


def test_permutation_test_is_repeatable_with_its_seed() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=40), rng.normal(size=40) + 0.2
    first = paired_permutation_test(x, y, resamples=999, seed=3)
    assert first == paired_permutation_test(x, y, resamples=999, seed=3)
    others = {paired_permutation_test(x, y, resamples=999, seed=s).p for s in range(4, 9)}
    assert len(others | {first.p}) > 1
    assert not first.exact and first.resamples == 999


def test_permutation_test_rejects_a_planted_difference_and_accepts_equal_samples() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=20)
    planted = paired_permutation_test(base + 0.5 + 0.1 * rng.normal(size=20), base, seed=0)
    assert planted.p < 0.001 and planted.statistic > 0.4
    equal = [
        paired_permutation_test(rng.normal(size=20), rng.normal(size=20), seed=s).p
        for s in range(20)
    ]
    # Exchangeable samples: p is roughly uniform, rarely below 0.05.
    assert np.mean(np.array(equal) < 0.05) <= 0.2 and np.median(equal) > 0.2
    same = paired_permutation_test(base, base, seed=0)
    assert same.p == 1.0


def test_permutation_test_matches_scipy() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=10), rng.normal(size=10) + 0.6
    # 2**10 sign patterns: both enumerate exactly.
    ours = paired_permutation_test(x, y, resamples=9999)
    theirs = permutation_test(
        (x, y),
        lambda a, b, axis: np.mean(a - b, axis=axis),
        permutation_type="samples",
        alternative="two-sided",
        n_resamples=9999,
    )
    assert ours.exact and ours.p == pytest.approx(theirs.pvalue, rel=1e-9)
    x, y = rng.normal(size=25), rng.normal(size=25) + 0.3
    ours = paired_permutation_test(x, y, resamples=9999, seed=0)
    theirs = permutation_test(
        (x, y),
        lambda a, b, axis: np.mean(a - b, axis=axis),
        permutation_type="samples",
        alternative="two-sided",
        n_resamples=9999,
        rng=np.random.default_rng(0),
    )
    # Monte Carlo on both sides: within a few standard errors of each other.
    assert abs(ours.p - theirs.pvalue) < 4 * np.sqrt(ours.p * (1 - ours.p) / 9999) + 1e-3


def test_permutation_test_names_bad_input() -> None:
    with pytest.raises(ValueError, match="non-zero length"):
        paired_permutation_test([], [])
    with pytest.raises(ValueError, match="non-finite values at positions \\[1\\]"):
        paired_permutation_test([1.0, np.nan], [0.0, 0.0])


def test_permutation_table_pairs_agree_with_disagree_per_model_pair() -> None:
    rows = []
    rng = np.random.default_rng(0)
    for i in range(12):
        for subset, shift in (("agree", 0.3), ("disagree", 0.0)):
            for measure, sign in (("cka", 1), ("rtd", -1)):
                value = sign * (0.5 + shift + 0.05 * rng.normal())
                rows.append(("s", 1.0, f"a{i}", 0, "b", 0, measure, -1, subset, 50, value))
    subsets = pd.DataFrame(rows, columns=[*SUBSET_REQUIRED[:-2], "subset", "n_rows", "value"])
    table = permutation_table(subsets, resamples=999, seed=0).set_index("measure")
    assert (table["n_pairs"] == 12).all() and (table["p"] < 0.01).all()
    # RTD is a distance: -RTD is larger on agreeing inputs, as CKA is.
    assert table.loc["rtd", "mean_difference"] == pytest.approx(0.3, abs=0.05)
    assert table.equals(permutation_table(subsets, resamples=999, seed=0).set_index("measure"))
    with pytest.raises(ValueError, match="'both'"):
        permutation_table(subsets.assign(subset="both"))


def test_agreement_bounds_formulas() -> None:
    b = agreement_bounds(0.9, 0.7, 10)
    assert b["hard_lower"] == pytest.approx(0.6)
    assert b["hard_upper"] == pytest.approx(0.8)
    assert b["independent"] == pytest.approx(0.7 * 0.9 + 0.3 * 0.1 / 9)
    assert b["correlated"] == pytest.approx(1 - 9 * 0.2 / (10 * 0.9 - 1))
    # Equal accuracies: a model may agree with itself entirely.
    assert agreement_bounds(0.8, 0.8, 2)["hard_upper"] == 1.0
    assert agreement_bounds(0.2, 0.3, 2)["hard_lower"] == 0.0
    # Below chance no flipping noise explains the weaker model.
    assert np.isnan(agreement_bounds(0.05, 0.3, 10)["correlated"])
    with pytest.raises(ValueError, match="acc_b must lie in \\[0, 1\\]"):
        agreement_bounds(0.5, 1.2, 10)
    with pytest.raises(ValueError, match="n_classes"):
        agreement_bounds(0.5, 0.5, 1)


def _classifier(
    labels: np.ndarray, accuracy: float, rng: np.random.Generator, c: int
) -> np.ndarray:
    """Predictions right on a random `accuracy` share of inputs, uniformly wrong elsewhere."""
    wrong = rng.random(labels.size) >= accuracy
    shift = rng.integers(1, c, size=labels.size)
    return np.where(wrong, (labels + shift) % c, labels)


def test_bounds_hold_for_synthetic_predictions_with_known_accuracies() -> None:
    rng = np.random.default_rng(0)
    c, n = 10, 20000
    labels = rng.integers(0, c, size=n)
    a = _classifier(labels, 0.9, rng, c)
    b = _classifier(labels, 0.6, rng, c)  # errors independent of a's
    same = a.copy()
    predictions = {
        ModelKey("x", 1.0, 0): (a, labels),
        ModelKey("y", 1.0, 0): (b, labels),
        ModelKey("x", 1.0, 1): (same, labels),
        ModelKey("z", 0.0, 0): (b, labels),  # another eps: never paired with the others
    }
    table = bounds_table(predictions, study="s")
    assert len(table) == 3 and set(table["eps"]) == {1.0}
    assert (table["hard_lower"] <= table["agreement"]).all()
    assert (table["agreement"] <= table["hard_upper"]).all()
    xy = table[(table["model_a"] == "x") & (table["model_b"] == "y")].iloc[0]
    assert xy["acc_a"] == pytest.approx(0.9, abs=0.01) and xy["acc_b"] == pytest.approx(
        0.6, abs=0.01
    )
    assert xy["agreement"] == pytest.approx(xy["independent"], abs=0.01)
    xx = table[(table["model_a"] == "x") & (table["model_b"] == "x")].iloc[0]
    assert xx["agreement"] == 1.0 == xx["hard_upper"]
    with pytest.raises(ValueError, match="labels of"):
        bounds_table(
            {ModelKey("x", 0, 0): (a, labels), ModelKey("y", 0, 0): (b, labels[::-1])}, study="s"
        )
