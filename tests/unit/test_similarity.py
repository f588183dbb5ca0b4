"""Similarity measures (SPEC 5): properties, independent references, errors, the pair cache."""

from __future__ import annotations

import math

import gph
import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from scipy.spatial.distance import jensenshannon
from scipy.stats import ortho_group

from robuniv import similarity
from robuniv.similarity import (
    INVARIANCES,
    MEASURES,
    agreement,
    cka,
    cka_unbiased,
    compare_pairs,
    jaccard,
    jsd_sim,
    procrustes_sim,
    rtd,
)

N, D = 80, 12
SEEDS = [0, 1, 2]
# Small RTD subsets keep each barcode at milliseconds; the properties do not depend on size.
RTD_OPTIONS = {"trials": 3, "batch": 40, "seed": 0}


def call(name: str, x: np.ndarray, y: np.ndarray) -> float:
    """A measure by name, with the small RTD options; jaccard at its default k."""
    options = RTD_OPTIONS if name == "rtd" else {}
    return MEASURES.get(name).fn(x, y, **options)


def related(seed: int, n: int = N, d: int = D) -> tuple[np.ndarray, np.ndarray]:
    """Two different but related matrices: Y a noisy linear map of X, wider than X."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * rng.uniform(0.5, 3.0, size=d)
    y = x @ rng.standard_normal((d, d + 3)) + rng.standard_normal((n, d + 3))
    return x, y


def logits(seed: int, n: int = N, c: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = 3.0 * rng.standard_normal((n, c))
    return a, a + 2.0 * rng.standard_normal((n, c))


def data_for(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return logits(seed) if MEASURES.get(name).kind == "predictive" else related(seed)


ALL = MEASURES.names()
REPRESENTATIONAL = [m for m in ALL if MEASURES.get(m).kind == "representational"]


def test_registry_holds_the_seven_measures_with_known_invariances() -> None:
    assert set(ALL) == {
        "cka",
        "cka_unbiased",
        "procrustes_sim",
        "jaccard",
        "rtd",
        "agreement",
        "jsd_sim",
    }
    for name in ALL:
        entry = MEASURES.get(name)
        assert entry.name == name and entry.invariances <= INVARIANCES
        assert entry.larger_is_more_similar == (name != "rtd")
        assert entry.stochastic == (name == "rtd")
    assert {MEASURES.get(m).kind for m in ("agreement", "jsd_sim")} == {"predictive"}


def test_unknown_measure_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="jacc.*known: agreement, cka"):
        MEASURES.get("jacc")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ALL)
def test_identical_inputs_give_exactly_the_most_similar_value(name: str, seed: int) -> None:
    x, _ = data_for(name, seed)
    best = 0.0 if name == "rtd" else 1.0
    assert call(name, x, x) == best
    assert call(name, x, x.copy()) == best
    assert call(name, x.astype(np.float32), x.astype(np.float32)) == best


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", REPRESENTATIONAL)
def test_near_identical_inputs_compute_close_to_the_most_similar_value(
    name: str, seed: int
) -> None:
    # A column permutation changes every sum's order but no similarity: this runs the arithmetic
    # that the identical-input shortcut skips.
    x, _ = related(seed)
    perm = np.random.default_rng(seed).permutation(D)
    best = 0.0 if name == "rtd" else 1.0
    assert call(name, x, x[:, perm]) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ALL)
def test_measures_are_symmetric(name: str, seed: int) -> None:
    x, y = data_for(name, seed)
    assert call(name, x, y) == pytest.approx(call(name, y, x), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("name", ["rtd", "jsd_sim", "agreement", "jaccard"])
def test_measures_without_matrix_products_are_exactly_symmetric(name: str) -> None:
    x, y = data_for(name, 3)
    assert call(name, x, y) == call(name, y, x)


def transform(x: np.ndarray, invariance: str, rng: np.random.Generator) -> np.ndarray:
    if invariance == "orthogonal":
        return x @ ortho_group.rvs(x.shape[1], random_state=rng)
    if invariance == "isotropic_scaling":
        return x * rng.uniform(0.1, 10.0)
    if invariance == "translation":
        return x + rng.normal(scale=5.0, size=x.shape[1])
    raise AssertionError(invariance)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("name", "invariance"),
    [(m, inv) for m in ALL for inv in sorted(MEASURES.get(m).invariances)],
)
def test_declared_invariances_hold(name: str, invariance: str, seed: int) -> None:
    x, y = data_for(name, seed)
    rng = np.random.default_rng(100 + seed)
    before = call(name, x, y)
    after = call(name, transform(x, invariance, rng), transform(y, invariance, rng))
    assert after == pytest.approx(before, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("invariance", sorted(INVARIANCES - {"isotropic_scaling"}))
def test_jsd_sim_is_not_invariant_to_logit_transformations(invariance: str) -> None:
    # Guards the invariance test above against a measure that ignores its inputs.
    x, y = logits(0)
    rng = np.random.default_rng(0)
    assert jsd_sim(transform(x, invariance, rng), y) != pytest.approx(jsd_sim(x, y), abs=1e-3)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ALL)
def test_values_lie_in_their_range_on_random_data(name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((N, D)), rng.standard_normal((N, D + 5))
    if MEASURES.get(name).kind == "predictive":
        y = y[:, :D]
    value = call(name, x, y)
    assert isinstance(value, float) and math.isfinite(value)
    if name == "rtd":
        assert value > 0.0
    elif name == "cka_unbiased":
        # An unbiased estimate: near 0, either sign, for independent data.
        assert -1.0 <= value <= 1.0
    else:
        assert 0.0 <= value <= 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_cka_is_small_for_independent_data_and_near_one_for_a_near_orthogonal_map(
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1000, 10))
    independent = rng.standard_normal((1000, 15))
    near_map = x @ (ortho_group.rvs(10, random_state=rng) + 0.05 * rng.standard_normal((10, 10)))
    assert cka(x, independent) < 0.05
    assert abs(cka_unbiased(x, independent)) < 0.02
    assert cka(x, near_map) > 0.98
    assert cka_unbiased(x, near_map) > 0.98


def hsic_gram_form(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA from centred N x N Gram matrices (Kornblith et al. 2019, Eq. 3)."""
    h = np.eye(len(x)) - 1.0 / len(x)
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float(np.sum(k * l_) / (np.linalg.norm(k) * np.linalg.norm(l_)))


def cka_u_centred(x: np.ndarray, y: np.ndarray) -> float:
    """Debiased CKA from U-centred N x N Gram matrices (Kornblith et al.'s `center_gram`)."""

    def u_centre(gram: np.ndarray) -> np.ndarray:
        n = len(gram)
        gram = gram.copy()
        np.fill_diagonal(gram, 0.0)
        means = gram.sum(axis=0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        gram -= means[:, None] + means[None, :]
        np.fill_diagonal(gram, 0.0)
        return gram

    k, l_ = u_centre(x @ x.T), u_centre(y @ y.T)
    return float(np.sum(k * l_) / (np.linalg.norm(k) * np.linalg.norm(l_)))


@pytest.mark.parametrize("seed", SEEDS)
def test_cka_and_cka_unbiased_match_their_gram_matrix_definitions(seed: int) -> None:
    x, y = related(seed)
    y = y + 3.0  # uncentred input: the feature-space formulas must centre it themselves
    assert cka(x, y) == pytest.approx(hsic_gram_form(x, y), rel=1e-12)
    assert cka_unbiased(x, y) == pytest.approx(cka_u_centred(x, y), rel=1e-10)
    z = np.random.default_rng(seed).standard_normal((N, 4))
    assert cka_unbiased(x, z) == pytest.approx(cka_u_centred(x, z), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_procrustes_sim_equals_one_minus_half_the_squared_procrustes_distance(seed: int) -> None:
    x, y = related(seed)  # y is 3 columns wider: x gets zero-padded
    xs, ys = x - x.mean(axis=0), y - y.mean(axis=0)
    xs, ys = xs / np.linalg.norm(xs), ys / np.linalg.norm(ys)
    xs = np.hstack([xs, np.zeros((N, ys.shape[1] - xs.shape[1]))])
    rotation, _ = orthogonal_procrustes(xs, ys)
    d = np.linalg.norm(xs @ rotation - ys)
    assert procrustes_sim(x, y) == pytest.approx((2.0 - d**2) / 2.0, abs=1e-12)


def brute_force_jaccard(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Cosine k-NN by a full stable sort per row (ties to the lower index), no blocks."""

    def neighbours(m: np.ndarray) -> list[set[int]]:
        c = m - m.mean(axis=0)
        unit = c / np.linalg.norm(c, axis=1, keepdims=True)
        result = []
        for i in range(len(c)):
            # Sorting (-similarity, index) tuples: most similar first, ties to the lower index.
            ranked = sorted((-float(unit[i] @ unit[j]), j) for j in range(len(c)) if j != i)
            result.append({j for _, j in ranked[:k]})
        return result

    pairs = zip(neighbours(x), neighbours(y))
    return float(np.mean([len(a & b) / len(a | b) for a, b in pairs]))


@pytest.mark.parametrize("k", [1, 5, 29])
@pytest.mark.parametrize("seed", SEEDS)
def test_jaccard_matches_a_brute_force_knn(seed: int, k: int) -> None:
    x, y = related(seed, n=30)
    assert jaccard(x, y, k=k) == pytest.approx(brute_force_jaccard(x, y, k), abs=1e-15)


def test_jaccard_breaks_ties_by_row_index_in_every_block(monkeypatch: pytest.MonkeyPatch) -> None:
    # Duplicated rows tie exactly; blocks of 3 rows put the ties across block boundaries.
    rng = np.random.default_rng(0)
    base = rng.standard_normal((8, 5))
    x = np.vstack([base, base, base[:4]])
    y = x + 0.3 * rng.standard_normal(x.shape)
    expected = {k: brute_force_jaccard(x, y, k) for k in (2, 3, 7)}
    monkeypatch.setattr(similarity, "KNN_BLOCK_ENTRIES", 3 * len(x))
    for k, value in expected.items():
        assert jaccard(x, y, k=k) == pytest.approx(value, abs=1e-15)
    # compare_pairs computes k = 7 once and slices it for k = 3 and 2: ties must survive slicing.
    rows = compare_pairs({"x": x, "y": y}, [("x", "y")], ["jaccard"], jaccard_k=(2, 7, 3))
    assert {r["k"]: r["value"] for r in rows} == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("seed", SEEDS)
def test_jsd_sim_matches_scipy_jensenshannon_squared_per_row(seed: int) -> None:
    a, b = logits(seed)

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    pa, pb = softmax(a), softmax(b)
    per_row = [jensenshannon(p, q, base=2) ** 2 for p, q in zip(pa, pb)]
    assert jsd_sim(a, b) == pytest.approx(1.0 - np.mean(per_row), abs=1e-12)


def test_jsd_sim_handles_logits_whose_softmax_underflows() -> None:
    a = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    b = np.array([[-1000.0, 0.0, 1000.0], [0.0, 0.0, 0.0]])
    # Row 1: disjoint one-hot distributions (1 bit); row 2: equal (0 bits).
    assert jsd_sim(a, b) == pytest.approx(0.5, abs=1e-12)


def test_agreement_counts_rows_with_equal_argmax() -> None:
    a = np.array([[2.0, 1.0, 0.0], [0.0, 5.0, 1.0], [0.0, 0.0, 1.0], [3.0, 3.0, 0.0]])
    b = np.array([[9.0, 1.0, 0.0], [5.0, 0.0, 1.0], [0.0, 0.0, 7.0], [1.0, 0.0, 0.0]])
    # Rows 1, 3 and 4 agree (row 4: a tie in `a` goes to the first class, as argmax does).
    assert agreement(a, b) == 0.75


def reference_rtd(x: np.ndarray, y: np.ndarray, trials: int, batch: int, seed: int) -> float:
    """RTD written out once more from SPEC 5, distances by broadcasting."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(trials):
        rows = rng.choice(len(x), size=batch, replace=False)
        a, b = (np.sqrt(((m[rows, None] - m[None, rows]) ** 2).sum(-1)) for m in (x, y))
        a, b = a / np.quantile(a, 0.9), b / np.quantile(b, 0.9)
        for p, q in ((a, b), (b, a)):
            m = np.block([[np.zeros_like(p), p.T], [p, np.minimum(p, q)]])
            bars = gph.ripser_parallel(m, maxdim=1, metric="precomputed")["dgms"][1]
            values.append(np.sum(bars[:, 1].astype(float) - bars[:, 0]))
    return float(np.mean(values))


@pytest.mark.parametrize("seed", SEEDS)
def test_rtd_matches_the_spec_written_out(seed: int) -> None:
    x, y = related(seed)
    # giotto-ph filters in float32: the two computations agree to float32 precision only.
    assert rtd(x, y, **RTD_OPTIONS) == pytest.approx(
        reference_rtd(x, y, RTD_OPTIONS["trials"], RTD_OPTIONS["batch"], RTD_OPTIONS["seed"]),
        rel=1e-6,
    )


def test_rtd_is_positive_for_different_data_repeatable_and_seeded() -> None:
    x, y = related(0)
    first = rtd(x, y, trials=2, batch=40, seed=5)
    assert first > 0.0
    assert rtd(x, y, trials=2, batch=40, seed=5) == first
    assert rtd(x, y, trials=2, batch=40, seed=6) != first


def test_rtd_uses_all_rows_when_batch_equals_n() -> None:
    # With every row in each trial, the trials agree whatever the seed.
    x, y = related(0, n=30)
    assert rtd(x, y, trials=1, batch=30, seed=0) == pytest.approx(
        rtd(x, y, trials=1, batch=30, seed=1), rel=1e-12
    )


GOOD = np.random.default_rng(0).standard_normal((10, 3))


@pytest.mark.parametrize(
    ("call_", "message"),
    [
        (lambda: cka(GOOD[:, 0], GOOD), r"X must be a 2-D array.*shape \(10,\)"),
        (lambda: cka(GOOD, GOOD[:9]), r"same rows.*\(10, 3\) and \(9, 3\)"),
        (lambda: cka(GOOD[:1], GOOD[:1]), r"at least 2 rows.*\(1, 3\)"),
        (lambda: procrustes_sim(GOOD, np.where(GOOD > 1, np.nan, GOOD)), "Y holds .* non-finite"),
        (lambda: jaccard(np.full((10, 3), np.inf), GOOD), "X holds 30 non-finite"),
        (lambda: cka(GOOD, np.ones((10, 3))), "Y has zero variance"),
        (lambda: rtd(np.ones((10, 3)), GOOD, batch=5), "X has zero variance"),
        (lambda: jaccard(GOOD, GOOD, k=10), r"jaccard needs N >= 11.*k = 10.*got N = 10"),
        (lambda: jaccard(GOOD, GOOD, k=0), "k must be an integer >= 1, got 0"),
        (lambda: rtd(GOOD, GOOD, batch=11), r"rtd needs N >= 11.*batch = 11.*got N = 10"),
        (lambda: rtd(GOOD, GOOD, trials=0), "rtd_trials must be an integer >= 1, got 0"),
        (lambda: cka_unbiased(GOOD[:3], GOOD[:3]), r"cka_unbiased needs N >= 4.*got N = 3"),
        (lambda: agreement(GOOD, GOOD[:, :2]), r"same classes.*\(10, 3\) and \(10, 2\)"),
        (lambda: jsd_sim(GOOD.astype(str), GOOD), "X must hold real numbers"),
    ],
)
def test_bad_input_raises_a_value_error_naming_it(call_, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call_()


def test_rtd_rejects_rows_whose_distances_are_mostly_zero() -> None:
    x = np.vstack([np.zeros((30, 2)), np.ones((1, 2))])
    y = np.random.default_rng(0).standard_normal((31, 2))
    with pytest.raises(ValueError, match="0.9 quantile .* is 0"):
        rtd(x, y, trials=1, batch=31)


def test_constant_logits_are_valid_predictions() -> None:
    flat = np.zeros((10, 3))
    assert agreement(flat, GOOD) == np.mean(np.argmax(GOOD, axis=1) == 0)
    assert 0.0 <= jsd_sim(flat, GOOD) <= 1.0


def three_models(seed: int) -> dict:
    x, y = related(seed)
    z = np.random.default_rng(seed).standard_normal((N, 9))
    return {("m0", "regular"): x, ("m1", "regular"): y, ("m2", "regular"): z.astype(np.float32)}


@pytest.mark.parametrize("seed", SEEDS)
def test_compare_pairs_gives_the_public_functions_values(seed: int) -> None:
    matrices = three_models(seed)
    keys = list(matrices)
    pairs = [(keys[0], keys[1]), (keys[1], keys[2]), (keys[0], keys[2]), (keys[2], keys[2])]
    rows = compare_pairs(
        matrices, pairs, REPRESENTATIONAL, jaccard_k=(7, 3), rtd_trials=2, rtd_batch=30, rtd_seed=4
    )
    expected = []
    for a, b in pairs:
        x, y = matrices[a], matrices[b]
        for name in REPRESENTATIONAL:
            if name == "jaccard":
                expected += [(a, b, name, k, jaccard(x, y, k=k)) for k in (7, 3)]
            elif name == "rtd":
                expected.append((a, b, name, None, rtd(x, y, trials=2, batch=30, seed=4)))
            else:
                expected.append((a, b, name, None, MEASURES.get(name).fn(x, y)))
    assert [(r["a"], r["b"], r["measure"], r["k"]) for r in rows] == [e[:4] for e in expected]
    for row, (*_, value) in zip(rows, expected):
        assert row["value"] == value, row  # the same code on the same numbers
        assert type(row["value"]) is float


def test_compare_pairs_on_logits_gives_the_public_functions_values() -> None:
    (a, b), (c, _) = logits(0), logits(1)
    matrices = {"a": a, "b": b, "c": c}
    rows = compare_pairs(matrices, [("a", "b"), ("c", "a")], ["agreement", "jsd_sim"])
    assert [r["value"] for r in rows] == [
        agreement(a, b),
        jsd_sim(a, b),
        agreement(c, a),
        jsd_sim(c, a),
    ]


def test_compare_pairs_rejects_bad_pairs_keys_k_and_names() -> None:
    matrices = three_models(0)
    matrices["short"] = matrices[("m0", "regular")][:40]
    pairs = [(("m0", "regular"), ("m1", "regular")), (("m0", "regular"), "short")]
    with pytest.raises(ValueError, match=r"'short' must have the same rows.*\(80, 12\) and \(40"):
        compare_pairs(matrices, pairs, ["rtd"], rtd_batch=30)
    with pytest.raises(KeyError, match="without a matrix.*'missing'"):
        compare_pairs(matrices, [("short", "missing")], ["cka"])
    with pytest.raises(ValueError, match=r"jaccard needs N >= 81.*k = 80"):
        compare_pairs(matrices, pairs[:1], ["jaccard"], jaccard_k=(10, 80))
    with pytest.raises(KeyError, match="unknown measure 'CKA'"):
        compare_pairs(matrices, pairs[:1], ["CKA"])


# ---------------------------------------------------------------------------------------------
# The float32 fast path against the float64 one (TOLERANCE), its guards and its exact k-NN.


def post_relu(n: int, widths: tuple[int, ...], seed: int) -> dict[str, np.ndarray]:
    """Correlated non-negative float32 features: a shared latent factor, ReLU, several widths."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 32)) * np.geomspace(4.0, 0.1, 32)
    out = {}
    for i, d in enumerate(widths):
        pre = z @ rng.standard_normal((32, d)) + 0.3 * rng.standard_normal((n, d))
        out[f"m{i}"] = np.maximum(pre + rng.uniform(-1.5, 0.5, d), 0.0).astype(np.float32)
    return out


def by_key(rows: list[dict]) -> dict:
    return {(r["a"], r["b"], r["measure"], r["k"]): r["value"] for r in rows}


FAST_MEASURES = ["cka", "cka_unbiased", "procrustes_sim", "jaccard"]


@pytest.fixture
def float32_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small test matrices take the float32 paths too (by default only large products do)."""
    monkeypatch.setattr(similarity, "FLOAT32_MIN_MACS", 1)


@pytest.mark.usefixtures("float32_everywhere")
def test_float32_path_matches_float64_on_post_relu_features() -> None:
    features = post_relu(1500, (256, 512, 512, 700), seed=0)
    assert 0.4 < np.mean(features["m1"] == 0) < 0.8  # post-ReLU: many exact zeros
    keys = list(features)
    pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1 :]]
    stats: dict = {}
    fast = by_key(
        compare_pairs(features, pairs, FAST_MEASURES, jaccard_k=(10, 50, 200), stats=stats)
    )
    exact = by_key(
        compare_pairs(features, pairs, FAST_MEASURES, jaccard_k=(10, 50, 200), precision="float64")
    )
    assert fast.keys() == exact.keys()
    for key, value in exact.items():
        assert abs(fast[key] - value) <= similarity.TOLERANCE, key
        if key[2] == "jaccard":
            assert fast[key] == value, key  # the same neighbour sets, so the same number
    # Where the guards fall back depends on the BLAS kernel's float32 rounding: none on an
    # AVX2 OpenBLAS, the nuclear norms of 5 of 6 pairs at this N with AVX-512 (estimated
    # error scale 2e-7, at N = 10,000 in `robuniv.bench similarity` none). Values agree
    # either way (above); the Gram norms and k-NN blocks never need float64 on such data.
    assert set(stats["fallbacks"]) <= {"cross product"}, stats["fallbacks"]
    assert {"cross product", "gram norm", "nuclear norm", "knn graph"} <= stats["seconds"].keys()


@pytest.mark.usefixtures("float32_everywhere")
def test_float32_products_carry_an_error_estimate_that_matches_the_actual_error() -> None:
    features = post_relu(1000, (150, 250), seed=1)
    a = similarity._Rep(features["m0"], "a", require_variance=True)
    b = similarity._Rep(features["m1"], "b", require_variance=True)
    pair = similarity._Pair(a, b)
    assert pair.fast and pair.cross.scale > 0
    actual = np.linalg.norm(pair.cross.c - a.centred.T @ b.centred)
    # The probe estimate of ||E||_F is a few-sample average: right within a factor of 2.
    assert 0.5 < pair.cross.frobenius_error / actual < 2.0


@pytest.mark.usefixtures("float32_everywhere")
def test_cross_product_and_gram_guards_fall_back_to_float64(monkeypatch) -> None:
    monkeypatch.setattr(similarity, "GUARD_LIMIT", 0.0)  # no float32 error is small enough
    features = post_relu(800, (100, 140), seed=2)
    pairs = [("m0", "m1")]
    stats: dict = {}
    measures = ["cka", "cka_unbiased", "procrustes_sim"]
    fast = by_key(compare_pairs(features, pairs, measures, stats=stats))
    exact = by_key(compare_pairs(features, pairs, measures, precision="float64"))
    assert stats["fallbacks"]["cross product"] == 3  # once per measure
    assert stats["fallbacks"]["gram norm"] == 4  # cka and cka_unbiased, per matrix
    for key, value in exact.items():
        assert fast[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.usefixtures("float32_everywhere")
def test_rank_deficient_cross_product_falls_back_to_the_svd() -> None:
    # Duplicated columns: C = Xc^T Yc has rank 60 of 120, so its small Gram matrix has 60 zero
    # eigenvalues, whose square roots the eigenvalue route cannot resolve.
    features = post_relu(600, (60, 90), seed=3)
    features["m0"] = np.hstack([features["m0"], features["m0"]])
    stats: dict = {}
    pairs = [("m0", "m1")]
    fast = by_key(compare_pairs(features, pairs, ["procrustes_sim"], stats=stats))
    exact = by_key(compare_pairs(features, pairs, ["procrustes_sim"], precision="float64"))
    assert stats["fallbacks"] == {"cross product": 1, "nuclear norm": 1}
    key = ("m0", "m1", "procrustes_sim", None)
    assert fast[key] == pytest.approx(exact[key], abs=1e-12)


def test_nuclear_norm_from_eigenvalues_and_its_bound() -> None:
    rng = np.random.default_rng(0)
    c = rng.standard_normal((40, 70))
    value, bound = similarity._nuclear_from_eigenvalues(similarity._small_gram_eigenvalues(c), 70)
    assert value == pytest.approx(np.linalg.svd(c, compute_uv=False).sum(), rel=1e-13)
    assert bound < 1e-12 * value  # well conditioned: far inside NUCLEAR_RTOL
    low_rank = c[:, :10] @ rng.standard_normal((10, 70))
    eigenvalues = similarity._small_gram_eigenvalues(low_rank)
    value, bound = similarity._nuclear_from_eigenvalues(eigenvalues, 70)
    assert bound > similarity.NUCLEAR_RTOL * value  # 30 zero eigenvalues: route refused


def reference_sets(xc: np.ndarray, ks: tuple[int, ...]) -> dict[int, np.ndarray]:
    nearest = similarity._knn(xc, max(ks))
    return {k: np.sort(nearest[:, :k], axis=1) for k in ks}


def tied_features(seed: int) -> np.ndarray:
    """Centred rows with exact ties: duplicated rows, all-zero rows (which centre to the same
    row) and rows of exact zeros after centring (no direction: cosine 0 to every row)."""
    x = post_relu(700, (120,), seed)["m0"].astype(np.float64)
    x[:60] = x[100:160]
    x[200:230] = 0.0
    xc = x - x.mean(axis=0)
    xc[300:305] = 0.0
    return xc


@pytest.mark.parametrize("symmetric", [True, False])
def test_float32_knn_sets_equal_the_float64_ones_with_exact_ties(
    monkeypatch: pytest.MonkeyPatch, symmetric: bool
) -> None:
    xc = tied_features(4)
    rescored = []
    original = similarity._exact_cosines

    def counting(unit, rows, cols):
        rescored.append(rows.size)
        return original(unit, rows, cols)

    monkeypatch.setattr(similarity, "_exact_cosines", counting)
    # Several panels, the symmetric or the panel-only product, narrow rows' one-by-one path.
    monkeypatch.setattr(similarity, "KNN_PANEL_ENTRIES", 130 * len(xc))
    monkeypatch.setattr(similarity, "KNN_FULL_BYTES", 1 << 30 if symmetric else 0)
    monkeypatch.setattr(similarity, "KNN_WIDE_EXTRA", 16)
    ks = (1, 5, 40, 150)
    fast = similarity._knn_sets(xc, ks)
    expected = reference_sets(xc, ks)
    for k in ks:
        got = np.sort(fast[k], axis=1)
        assert np.array_equal(got, expected[k]), k
    assert sum(rescored) > 0  # the float64 re-ranking at the k-th boundary did run


@pytest.mark.usefixtures("float32_everywhere")
def test_jaccard_float32_path_breaks_ties_like_the_float64_path() -> None:
    xc = tied_features(5)
    y = post_relu(700, (90,), 6)["m0"]
    y[:60] = y[100:160]
    matrices = {"x": xc, "y": y}
    ks = (3, 10, 60)
    fast = by_key(compare_pairs(matrices, [("x", "y")], ["jaccard"], jaccard_k=ks))
    exact = by_key(
        compare_pairs(matrices, [("x", "y")], ["jaccard"], jaccard_k=ks, precision="float64")
    )
    assert fast == exact


def test_public_functions_on_large_inputs_use_float32_within_tolerance() -> None:
    features = post_relu(3000, (160, 200), seed=7)
    x, y = features["m0"], features["m1"]
    assert 3000 * 160 * 200 >= similarity.FLOAT32_MIN_MACS  # the fast path is the default here
    exact = by_key(
        compare_pairs(features, [("m0", "m1")], FAST_MEASURES, jaccard_k=(10,), precision="float64")
    )
    for name in FAST_MEASURES:
        value = MEASURES.get(name).fn(x, y)
        assert value == pytest.approx(
            exact[("m0", "m1", name, 10 if name == "jaccard" else None)], abs=similarity.TOLERANCE
        )
        assert MEASURES.get(name).fn(x, x.copy()) == 1.0


def test_jsd_from_cached_entropies_matches_rel_entr() -> None:
    rng = np.random.default_rng(8)
    a = 4.0 * rng.standard_normal((400, 1000))
    b = a + 3.0 * rng.standard_normal(a.shape)
    a[0, 0], b[1, 5] = 800.0, 900.0  # softmax rows that underflow to exact zeros
    matrices = {"a": a.astype(np.float32), "b": b.astype(np.float32)}
    fast = by_key(compare_pairs(matrices, [("a", "b")], ["jsd_sim"]))
    exact = by_key(compare_pairs(matrices, [("a", "b")], ["jsd_sim"], precision="float64"))
    assert fast[("a", "b", "jsd_sim", None)] == pytest.approx(
        exact[("a", "b", "jsd_sim", None)], abs=1e-12
    )


def test_compare_pairs_rejects_an_unknown_precision() -> None:
    with pytest.raises(ValueError, match="precision must be one of.*got 'float16'"):
        compare_pairs({"x": GOOD}, [("x", "x")], ["cka"], precision="float16")


def test_importing_similarity_does_not_import_scipy() -> None:
    import subprocess
    import sys

    code = "import sys, robuniv.similarity; print(sorted(m for m in sys.modules if m.startswith('scipy')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_exact_cosines_give_the_same_bits_wherever_a_pair_occurs() -> None:
    # Enough pairs for the two-thread split; an odd width exercises the zero padding.
    rng = np.random.default_rng(9)
    unit = similarity._unit_rows(rng.standard_normal((300, 37)))
    rows, cols = rng.integers(0, 300, 5000), rng.integers(0, 300, 5000)
    values = similarity._exact_cosines(unit, rows, cols)
    perm = rng.permutation(5000)
    assert np.array_equal(similarity._exact_cosines(unit, rows[perm], cols[perm]), values[perm])
    assert values == pytest.approx(np.einsum("ij,ij->i", unit[rows], unit[cols]), abs=1e-15)
