"""Fig 5's agree/disagree subsets: built from the predictions, equal in size, seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from robuniv import io
from robuniv.config import ModelKey
from robuniv.groups import activation_group
from robuniv.stats import permutation_table
from robuniv.subsets import agreement_rows, agreement_subset_table

C = 8


def write_activations(
    path: Path, models: dict[ModelKey, tuple[np.ndarray, np.ndarray]]
) -> tuple[Path, list[ModelKey]]:
    """One eps's activation file: each model's regular-image features and logits."""
    groups = {
        activation_group(key, None): {
            "features": features.astype(np.float32),
            "logits": logits.astype(np.float32),
            "labels": np.zeros(len(features), np.int64),
            "indices": np.arange(len(features), dtype=np.int64),
        }
        for key, (features, logits) in models.items()
    }
    io.write_h5(path, groups, {"test": True})
    return path, list(models)


def one_hot(classes: np.ndarray) -> np.ndarray:
    return np.eye(C)[classes] * 5.0


def planted_study(tmp_path: Path, n_models: int = 6, n: int = 120) -> tuple[Path, list[ModelKey]]:
    """Models whose features share structure on the inputs all classify alike, none elsewhere.

    Inputs 0..59 are classified alike by every model; on the others, each model predicts
    its own class, so every pair disagrees there.
    """
    rng = np.random.default_rng(0)
    shared = rng.normal(size=(n, 6))
    models = {}
    for m in range(n_models):
        classes = np.zeros(n, dtype=int)
        classes[60:] = (m + np.arange(n - 60)) % C
        noise = rng.normal(size=(n, 6))
        features = np.where(np.arange(n)[:, None] < 60, shared + 0.1 * noise, noise)
        models[ModelKey(f"arch{m}", 1.0, 0)] = (features, one_hot(classes))
    return write_activations(tmp_path / "eps1.h5", models)


def test_rows_split_by_argmax_into_disjoint_equal_subsets() -> None:
    a = one_hot(np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1]))
    b = one_hot(np.array([0, 1, 2, 3, 0, 1, 2, 0, 1, 2]))
    rows = agreement_rows(a, b, np.random.default_rng(0))
    assert rows["disagree"].tolist() == [7, 8, 9]
    assert len(rows["agree"]) == 3 and set(rows["agree"]) <= set(range(7))
    again = agreement_rows(a, b, np.random.default_rng(0))
    assert rows["agree"].tolist() == again["agree"].tolist()
    with pytest.raises(ValueError, match="one shape"):
        agreement_rows(a, b[:5], np.random.default_rng(0))


def test_agreeing_inputs_are_more_alike_and_the_test_says_so(tmp_path: Path) -> None:
    files = planted_study(tmp_path)
    measures = ["cka", "procrustes_sim", "jaccard", "rtd"]
    options = {"measures": measures, "jaccard_k": [5], "rtd_trials": 1, "rtd_batch": 30}
    table = agreement_subset_table(*files, study="s", eps=1.0, seed=0, **options)
    assert len(table) == 15 * 4 * 2  # 15 pairs x 4 measures x 2 subsets
    assert (table["n_rows"] == 60).all()
    wide = table.pivot_table(
        index=["model_a", "model_b", "measure"], columns="subset", values="value"
    )
    rtd = wide.xs("rtd", level="measure")
    others = wide.drop(index="rtd", level="measure")
    assert (others["agree"] > others["disagree"]).all()
    assert (rtd["agree"] < rtd["disagree"]).all()  # RTD: a distance
    tests = permutation_table(table, resamples=999, seed=0)
    assert (tests["p"] < 0.01).all() and (tests["mean_difference"] > 0).all()
    repeat = agreement_subset_table(*files, study="s", eps=1.0, seed=0, **options)
    assert repeat.equals(table)


def test_small_subsets_leave_out_what_cannot_be_measured(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    classes = rng.integers(0, C, size=40)
    other = classes.copy()
    other[:8] = (other[:8] + 1) % C  # 8 disagreeing inputs
    files = write_activations(
        tmp_path / "eps0.h5",
        {
            ModelKey("a", 0.0, 0): (rng.normal(size=(40, 5)), one_hot(classes)),
            ModelKey("b", 0.0, 0): (rng.normal(size=(40, 5)), one_hot(other)),
            ModelKey("c", 0.0, 0): (rng.normal(size=(40, 5)), one_hot(classes)),
        },
    )
    table = agreement_subset_table(
        *files, study="s", eps=0.0, measures=["cka", "jaccard"], jaccard_k=[5, 10]
    )
    # a-c always agree (0 disagreeing rows): left out. a-b and b-c: 8 rows, k=10 dropped.
    pairs = set(zip(table["model_a"], table["model_b"]))
    assert pairs == {("a", "b"), ("b", "c")}
    assert set(table.loc[table["measure"] == "jaccard", "k"]) == {5}
    assert (table["n_rows"] == 8).all()


def test_mismatched_rows_and_predictive_measures_are_refused(tmp_path: Path) -> None:
    files = planted_study(tmp_path, n_models=2)
    with pytest.raises(ValueError, match="agreement"):
        agreement_subset_table(*files, study="s", eps=1.0, measures=["agreement"])
    path, models = files
    groups = {
        activation_group(m, None): io.read_h5(path, activation_group(m, None)) for m in models
    }
    second = groups[activation_group(models[1], None)]
    second["indices"] = second["indices"][::-1].copy()
    io.write_h5(path, groups, {})
    with pytest.raises(ValueError, match=f"{path}: regular-image rows of arch1/run0 differ"):
        agreement_subset_table(*files, study="s", eps=1.0, measures=["cka"])


def test_non_finite_activations_are_named_by_file_group_and_rows(tmp_path: Path) -> None:
    from robuniv.compare import similarity_table

    path, models = planted_study(tmp_path, n_models=2)
    group = activation_group(models[1], None)
    arrays = {
        activation_group(m, None): io.read_h5(path, activation_group(m, None)) for m in models
    }
    arrays[group]["features"][[3, 7]] = np.nan
    arrays[group]["features"][9, 0] = np.inf
    io.write_h5(path, arrays, {})
    message = f"{path}: features of '{group}' holds NaN or inf in 3 of 120 rows (a diverged model?)"
    with pytest.raises(io.DamagedFileError) as err:
        similarity_table(path, models, "regular", ["cka"], study="s", eps=1.0)
    assert str(err.value) == message
    with pytest.raises(io.DamagedFileError) as err:
        agreement_subset_table(path, models, study="s", eps=1.0, measures=["cka"])
    assert str(err.value) == message
