from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from robuniv.stats import accuracy_table, signed_value, spearman_by_group, to_latex


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
