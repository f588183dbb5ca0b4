"""robuniv.rtd internals (exact zeros, symmetry, trials) and the per-trial timing of bench_rtd."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

from robuniv import bench_rtd
from robuniv import rtd as R
from robuniv.similarity import rtd


def _features(seed: int, n: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Post-ReLU feature pairs with the structures that make RTD matrices hard."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 5))
    if kind == "plain":
        return (
            bench_rtd.post_relu(rng, latent, 12),
            bench_rtd.post_relu(rng, latent, 40),
        )
    if kind == "dead_dup":  # dead units and the same input several times
        x = bench_rtd.post_relu(rng, latent, 16, dead=0.4)
        y = bench_rtd.post_relu(rng, latent, 32, dead=0.2)
        dst = rng.choice(n, size=n // 8, replace=False)
        src = rng.integers(0, n, size=dst.size)
        x[dst], y[dst] = x[src], y[src]
        return x, y
    if kind == "narrow_zero_rows":  # many inputs with every unit off in X only
        return (
            bench_rtd.post_relu(rng, latent, 3, shift=0.6),
            bench_rtd.post_relu(rng, latent, 32),
        )
    if kind == "quantised":  # few distinct values: massive ties in A, B and min(A, B)
        x = np.round(bench_rtd.post_relu(rng, latent, 6) * 2) / 2
        y = np.round(bench_rtd.post_relu(rng, latent, 8) * 2) / 2
        return x, y
    raise ValueError(kind)


def test_the_cases_have_the_structures_they_claim() -> None:
    x, y = _features(0, 120, "narrow_zero_rows")
    assert np.mean(~x.any(axis=1)) > 0.1 and not (~y.any(axis=1)).any()
    x, y = _features(0, 120, "dead_dup")
    assert (~x.any(axis=0)).any() and len(np.unique(x, axis=0)) < len(x)
    x, _ = _features(0, 120, "quantised")
    d = R.normalised_distances(x[:60], "X")
    assert len(np.unique(d)) < d.size // 20


@pytest.mark.parametrize("kind", ["plain", "narrow_zero_rows"])
def test_h1_total_of_equal_matrices_is_exactly_zero(kind: str) -> None:
    x, _ = _features(3, 80, kind)
    a = R.normalised_distances(x[:50], "X")
    assert R.h1_total(a, a) == 0.0
    assert R.h1_total(a, a.copy()) == 0.0


def test_h1_total_is_positive_for_different_matrices() -> None:
    x, y = _features(4, 80, "plain")
    a, b = R.normalised_distances(x[:50], "X"), R.normalised_distances(y[:50], "Y")
    assert R.h1_total(a, b) > 0 and R.h1_total(b, a) > 0


@pytest.mark.parametrize("kind", ["plain", "narrow_zero_rows"])
def test_rtd_is_zero_for_identical_inputs_and_symmetric(kind: str) -> None:
    x, y = _features(5, 90, kind)
    assert rtd(x, x.copy(), trials=2, batch=40, seed=1) == 0.0
    assert rtd(x, y, trials=2, batch=40, seed=1) == rtd(y, x, trials=2, batch=40, seed=1)


def test_rtd_is_the_mean_of_both_directions_over_the_trials() -> None:
    x, y = _features(6, 90, "dead_dup")
    lengths = []
    for rows in R.trial_rows(90, 2, 40, 2):
        a, b = R.normalised_distances(x[rows], "X"), R.normalised_distances(y[rows], "Y")
        lengths += [R.h1_total(a, b), R.h1_total(b, a)]
    assert rtd(x, y, trials=2, batch=40, seed=2) == math.fsum(lengths) / len(lengths)


def test_trial_times_shapes_values_and_rows() -> None:
    x, y = _features(8, 70, "dead_dup")
    got = bench_rtd.trial_times(x, y, batch=30, trials=3, seed=4)
    assert got.seconds.shape == got.h1.shape == (3, 2)
    assert (got.seconds > 0).all() and (got.h1 >= 0).all()
    assert got.rtd == rtd(x, y, trials=3, batch=30, seed=4)
    with pytest.raises(ValueError, match="same rows"):
        bench_rtd.trial_times(x, y[:-1], batch=30, trials=1, seed=0)


def test_bench_main_prints_a_row_per_data_and_batch(tmp_path, capsys) -> None:
    x, y = _features(9, 50, "plain")
    np.save(tmp_path / "netA.npy", x)
    np.save(tmp_path / "netB.npy", y)
    np.save(tmp_path / "netA_logits.npy", x[:, :3])  # skipped
    np.save(tmp_path / "short.npy", y[:40])  # no other file has 40 rows: in no pair
    code = bench_rtd.main(
        ["--feats-dir", str(tmp_path), "--batches", "20", "--trials", "1", "--n", "40"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "netA | netB" in out and "logits" not in out and "short" not in out
    rows = out.splitlines()[2:-1]
    assert len(rows) == len(bench_rtd.synthetic_pairs(40)) + 1
    assert all(" 20 " in line for line in rows)
    assert out.splitlines()[-1].startswith(f"all {len(rows)} pairs")


def _vr_h1_total(d: np.ndarray) -> float:
    import gph

    bars = gph.ripser_parallel(d, maxdim=1, metric="precomputed", n_threads=1)["dgms"][1]
    bars = bars.astype(np.float64)
    finite = np.isfinite(bars[:, 1])
    return float(np.sum(bars[finite, 1] - bars[finite, 0]))


def test_spanning_tree_length_matches_scipy_and_counts_zero_edges() -> None:
    from scipy.sparse.csgraph import minimum_spanning_tree

    x, _ = _features(10, 60, "plain")
    d = R.normalised_distances(x, "X")
    assert R.spanning_tree_length(d) == pytest.approx(minimum_spanning_tree(d).sum(), rel=1e-12)
    # A repeated row joins the tree at length 0 (scipy's sparse graphs would drop that edge).
    dup = squareform(pdist(np.concatenate([x, x[:5]]).astype(np.float64)))
    undup = squareform(pdist(x.astype(np.float64)))
    assert R.spanning_tree_length(dup) == pytest.approx(R.spanning_tree_length(undup), rel=1e-12)


@pytest.mark.parametrize("kind", ["plain", "dead_dup", "narrow_zero_rows", "quantised"])
def test_h1_total_is_components_plus_cycles_of_the_pair(kind: str) -> None:
    """The exact sequence of (VR(min(A, B)), VR(A)): an independent check of the RTD matrix."""
    x, y = _features(11, 90, kind)
    a, b = R.normalised_distances(x[:70], "X"), R.normalised_distances(y[:70], "Y")
    for p, q in ((a, b), (b, a)):
        total, h0 = R.h1_total(p, q), R.h0_part(p, q)
        cycles_bound = _vr_h1_total(np.minimum(p, q))
        tol = 1e-5 * max(total, 1.0)  # giotto-ph filters in float32
        assert h0 >= 0
        assert -tol <= total - h0 <= cycles_bound + tol, (total, h0, cycles_bound)


def test_a_barcode_from_all_zero_rows_is_mostly_components() -> None:
    narrow, wide = _features(12, 120, "narrow_zero_rows")
    a, b = R.normalised_distances(narrow[:100], "X"), R.normalised_distances(wide[:100], "Y")
    slow, mirror = (b, a), (a, b)  # all-zero rows are one point of min(a, b), spread out in b
    assert R.h0_part(*slow) > 0.8 * R.h1_total(*slow)
    assert R.h1_total(*slow) > 5 * R.h1_total(*mirror)


def test_a_slow_barcode_is_explained_in_the_log(monkeypatch, caplog) -> None:
    x, y = _features(13, 60, "plain")
    a, b = R.normalised_distances(x[:40], "X"), R.normalised_distances(y[:40], "Y")
    with caplog.at_level("WARNING", logger="robuniv.rtd"):
        total = R.h1_total(a, b, "(netA, netB) trial 0")
    assert not caplog.records
    monkeypatch.setattr(R, "SLOW_BARCODE_S", 0.0)
    with caplog.at_level("WARNING", logger="robuniv.rtd"):
        assert R.h1_total(a, b, "(netA, netB) trial 0") == total
    (record,) = caplog.records
    share = f"{100 * R.h0_part(a, b) / total:.0f}% of its total"
    assert "(netA, netB) trial 0" in record.getMessage() and share in record.getMessage()


def test_the_rtd_measure_labels_its_slow_barcodes_by_pair_and_trial(monkeypatch, caplog) -> None:
    x, y = _features(14, 60, "plain")
    monkeypatch.setattr(R, "SLOW_BARCODE_S", 0.0)
    with caplog.at_level("WARNING", logger="robuniv.rtd"):
        value = rtd(x, y, trials=2, batch=30, seed=0)
    labels = [r.getMessage().split(" took ")[0] for r in caplog.records]
    expected = [f"rtd barcode ({p}) trial {t}" for t in (0, 1) for p in ("X, Y", "Y, X")]
    assert labels == expected, labels
    assert value == rtd(x, y, trials=2, batch=30, seed=0)
