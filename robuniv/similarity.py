"""Similarity of two representations or of two models' predictions (SPEC 5).

Every measure takes two matrices with the same rows (inputs): N x D representations
for the representational measures, N x C logits for the predictive ones, and returns
a Python float computed in float64. The public functions are thin: each wraps its
matrices in `_Rep` (per-matrix work, cached) and `_Pair` (per-pair work), the same
objects `compare_pairs` reuses across many pairs, so both give identical numbers.

No torch here: similarity jobs stay light (numpy, scipy, giotto-ph).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.special import rel_entr
from tqdm import tqdm

from robuniv import rtd as _rtd
from robuniv.log import progress_kwargs
from robuniv.registry import Registry

log = logging.getLogger(__name__)

Matrix = npt.NDArray[np.float64]
Indices = npt.NDArray[np.intp]
MeasureKind = Literal["representational", "predictive"]

INVARIANCES = frozenset({"orthogonal", "isotropic_scaling", "translation"})
# Float64 entries per block of cosine similarities (32 MiB): N = 10,000 never needs N x N at once.
KNN_BLOCK_ENTRIES = 1 << 22


@dataclass(frozen=True)
class Options:
    """Measure options (SPEC 5): jaccard's neighbourhood size `k`; rtd's trials, batch, seed."""

    k: int = 10
    rtd_trials: int = 10
    rtd_batch: int = 500
    rtd_seed: int = 0

    def __post_init__(self) -> None:
        for name, minimum in (("k", 1), ("rtd_trials", 1), ("rtd_batch", 2)):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, np.integer))
                or value < minimum
            ):
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Validation (SPEC 5, STYLE 9): once per matrix, once per pair.


def _as_matrix(x: npt.ArrayLike, name: str, *, require_variance: bool) -> np.ndarray:
    """`x` as a 2-D finite array (its own dtype: float64 copies are made only where needed)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (inputs x features), got shape {x.shape}")
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{name} needs at least 2 rows and 1 column, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    bad = x.size - np.count_nonzero(np.isfinite(x))
    if bad:
        raise ValueError(f"{name} holds {bad} non-finite values (NaN or inf)")
    if require_variance and not np.any(x != x[0]):
        raise ValueError(
            f"{name} has zero variance (every row equal): representational similarity is undefined"
        )
    return x


def _centre(x: np.ndarray) -> Matrix:
    """Column-centred float64 copy (SPEC 5: every representational measure centres columns)."""
    x = x.astype(np.float64)
    return x - x.mean(axis=0)


# ---------------------------------------------------------------------------------------------
# Per-matrix work, computed on first use and cached (NOTES: per-model work across pairs).


class _Rep:
    """One matrix and what the measures derive from it; each part is computed at most once."""

    def __init__(self, x: npt.ArrayLike, name: str, *, require_variance: bool, knn_k: int = 1):
        self.x = _as_matrix(x, name, require_variance=require_variance)
        self.name = name
        self.knn_k = knn_k  # neighbourhood size to compute first, so smaller ones are slices
        self._neighbours: Indices | None = None
        self._rtd: dict[tuple[int, int, int], list[Matrix]] = {}

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @cached_property
    def centred(self) -> Matrix:
        return _centre(self.x)

    @cached_property
    def sq_norm(self) -> float:
        """||Xc||_F^2."""
        return float(np.einsum("ij,ij->", self.centred, self.centred))

    @cached_property
    def row_sq_norms(self) -> npt.NDArray[np.float64]:
        """Diagonal of the linear Gram matrix Xc Xc^T, shape (N,)."""
        return np.einsum("ij,ij->i", self.centred, self.centred)

    @cached_property
    def gram_sq_norm(self) -> float:
        """||Xc^T Xc||_F^2 = ||Xc Xc^T||_F^2: whichever product is smaller."""
        c = self.centred
        gram = c.T @ c if c.shape[1] <= c.shape[0] else c @ c.T
        return float(np.einsum("ij,ij->", gram, gram))

    @cached_property
    def hsic_self(self) -> float:
        return _scaled_unbiased_hsic(self.gram_sq_norm, self, self)

    @cached_property
    def labels(self) -> Indices:
        return np.argmax(self.x, axis=1)

    @cached_property
    def probs(self) -> Matrix:
        z = self.x.astype(np.float64)
        # Shift by the row maximum so exp never overflows; softmax is unchanged by it.
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def neighbours(self, k: int) -> Indices:
        """Indices of each row's k nearest rows by cosine similarity, shape (N, k); see `_knn`."""
        if self._neighbours is None or self._neighbours.shape[1] < k:
            self._neighbours = _knn(_centre(self.x), max(k, self.knn_k))
        return self._neighbours[:, :k]

    def rtd_distances(self, opts: Options) -> list[Matrix]:
        """Per trial, the normalised distance matrix of the trial's rows (batch x batch)."""
        key = (opts.rtd_trials, opts.rtd_batch, opts.rtd_seed)
        if key not in self._rtd:
            rows = _rtd.trial_rows(self.n, opts.rtd_trials, opts.rtd_batch, opts.rtd_seed)
            self._rtd[key] = [_rtd.normalised_distances(self.x[r], self.name) for r in rows]
        return self._rtd[key]


class _Pair:
    """Two matrices with the same rows, and the work they share (one cross product)."""

    def __init__(self, a: _Rep, b: _Rep):
        self.a, self.b = a, b

    @cached_property
    def identical(self) -> bool:
        return self.a.x is self.b.x or bool(np.array_equal(self.a.x, self.b.x))

    @cached_property
    def cross(self) -> Matrix:
        """C = Xc^T Yc (Dx x Dy): serves cka, cka_unbiased and procrustes_sim."""
        return self.a.centred.T @ self.b.centred

    @cached_property
    def cross_sq_norm(self) -> float:
        return float(np.einsum("ij,ij->", self.cross, self.cross))


# ---------------------------------------------------------------------------------------------
# Measures on prepared pairs. Each returns a float; clamps keep rounding inside the valid range.


def _cka_pair(p: _Pair, opts: Options) -> float:
    value = p.cross_sq_norm / (math.sqrt(p.a.gram_sq_norm) * math.sqrt(p.b.gram_sq_norm))
    # Cauchy-Schwarz bounds CKA by 1; rounding of three different products can exceed it by an ulp.
    return min(1.0, value)


def _scaled_unbiased_hsic(cross_sq_norm: float, a: _Rep, b: _Rep) -> float:
    """N (N - 3) x unbiased HSIC of the linear kernels of column-centred X and Y (Song et al. 2012).

    With K = Xc Xc^T, L = Yc Yc^T, their diagonals d_K, d_L and zero-diagonal copies K~, L~:
    tr(K~ L~) = ||Xc^T Yc||_F^2 - d_K.d_L, 1^T K~ 1 = -||Xc||_F^2 and K~ 1 = -d_K, because
    centred columns make K 1 = 0. So the estimator needs the D x D cross product only, never
    an N x N Gram matrix. It equals the inner product of the U-centred Gram matrices
    (Kornblith et al.'s debiased CKA).
    """
    n = a.n
    diag = float(a.row_sq_norms @ b.row_sq_norms)
    return cross_sq_norm - diag * n / (n - 2) + a.sq_norm * b.sq_norm / ((n - 1) * (n - 2))


def _cka_unbiased_pair(p: _Pair, opts: Options) -> float:
    hx, hy = p.a.hsic_self, p.b.hsic_self
    for rep, h in ((p.a, hx), (p.b, hy)):
        if not h > 0:
            raise ValueError(
                f"{rep.name}: unbiased HSIC with itself is {h:.3g} (its U-centred Gram matrix "
                "is zero); cka_unbiased is undefined"
            )
    value = _scaled_unbiased_hsic(p.cross_sq_norm, p.a, p.b) / (math.sqrt(hx) * math.sqrt(hy))
    # An inner product of U-centred Gram matrices over their norms lies in [-1, 1] (Cauchy-Schwarz);
    # negative values are genuine (the estimator is unbiased around 0), only rounding is clipped.
    return min(1.0, max(-1.0, value))


def _procrustes_pair(p: _Pair, opts: Options) -> float:
    # The nuclear norm of Xs^T Ys ignores zero-padding of the narrower matrix (SPEC 5): padding
    # only adds zero rows or columns to the D x D' cross product, so no padded copy is made.
    nuclear = float(np.sum(np.linalg.svd(p.cross, compute_uv=False)))
    value = nuclear / (math.sqrt(p.a.sq_norm) * math.sqrt(p.b.sq_norm))
    # ||Xs^T Ys||_* <= ||Xs||_F ||Ys||_F = 1; the SVD's rounding can overshoot by a few ulps.
    return min(1.0, value)


def _knn(xc: Matrix, k: int) -> Indices:
    """The k nearest rows of each row by cosine similarity, itself excluded, best first.

    Ranked by (similarity descending, row index ascending), so ties are resolved the same way
    on every machine and the k nearest are the first k of any larger neighbourhood.
    """
    norms = np.linalg.norm(xc, axis=1)
    # A row equal to the column mean has no direction: it gets cosine 0 to every row, not NaN.
    unit = xc / np.where(norms > 0, norms, 1.0)[:, None]
    n = unit.shape[0]
    out = np.empty((n, k), dtype=np.intp)
    step = max(1, KNN_BLOCK_ENTRIES // n)
    for start in range(0, n, step):
        sim = unit[start : start + step] @ unit.T
        local = np.arange(sim.shape[0])
        sim[local, start + local] = -np.inf
        out[start : start + step] = _top_k(sim, k)
    return out


def _top_k(sim: Matrix, k: int) -> Indices:
    """Column indices of each row's k largest entries, ordered by (value desc, index asc)."""
    top = np.argpartition(sim, -k, axis=1)[:, -k:]
    vals = np.take_along_axis(sim, top, axis=1)
    kth = vals.min(axis=1)
    # argpartition picks arbitrarily among entries tied with the k-th largest; where such a tie
    # crosses the boundary, redo the row so the lowest indices win.
    for r in np.flatnonzero(np.count_nonzero(sim >= kth[:, None], axis=1) > k):
        idx = np.flatnonzero(sim[r] >= kth[r])
        top[r] = idx[np.lexsort((idx, -sim[r, idx]))[:k]]
        vals[r] = sim[r, top[r]]
    return np.take_along_axis(top, np.lexsort((top, -vals), axis=1), axis=1)


def _jaccard_pair(p: _Pair, opts: Options) -> float:
    k = opts.k
    both = np.sort(np.concatenate([p.a.neighbours(k), p.b.neighbours(k)], axis=1), axis=1)
    # Each neighbourhood lists k distinct rows, so a repeated index is one shared neighbour.
    shared = np.count_nonzero(both[:, 1:] == both[:, :-1], axis=1)
    return float(np.mean(shared / (2 * k - shared)))


def _rtd_pair(p: _Pair, opts: Options) -> float:
    lengths = [
        direction
        for a, b in zip(p.a.rtd_distances(opts), p.b.rtd_distances(opts))
        for direction in (_rtd.h1_total(a, b), _rtd.h1_total(b, a))
    ]
    # fsum is exact, so rtd(X, Y) == rtd(Y, X) to the last bit.
    return math.fsum(lengths) / len(lengths)


def _agreement_pair(p: _Pair, opts: Options) -> float:
    return float(np.mean(p.a.labels == p.b.labels))


def _jsd_pair(p: _Pair, opts: Options) -> float:
    pa, pb = p.a.probs, p.b.probs
    m = 0.5 * (pa + pb)
    jsd_bits = 0.5 * (rel_entr(pa, m).sum(axis=1) + rel_entr(pb, m).sum(axis=1)) / math.log(2)
    # JSD in bits lies in [0, 1]; rounding can leave the mean an ulp outside.
    return min(1.0, max(0.0, 1.0 - float(np.mean(jsd_bits))))


# ---------------------------------------------------------------------------------------------
# Registry (STYLE 8).


def _unbiased_needs(opts: Options) -> tuple[int, str]:
    return 4, "the unbiased HSIC divides by N - 3"


def _jaccard_needs(opts: Options) -> tuple[int, str]:
    return opts.k + 1, f"k = {opts.k} neighbours besides the row itself, so k < N"


def _rtd_needs(opts: Options) -> tuple[int, str]:
    return opts.rtd_batch, f"batch = {opts.rtd_batch} distinct rows per trial, so batch <= N"


@dataclass(frozen=True)
class Measure:
    """A similarity measure and its properties (ReSi-style flags; SPEC 5).

    `fn` is the public function on two arrays. `pair_fn` computes the same value from cached
    per-matrix work (`compare_pairs`). `most_similar` is the value for identical inputs,
    `per_k` marks measures computed per neighbourhood size k, `rows_needed` gives the least N
    for given options and the reason, where more than 2 rows are needed.
    """

    name: str
    fn: Callable[..., float]
    pair_fn: Callable[[_Pair, Options], float]
    kind: MeasureKind = "representational"
    larger_is_more_similar: bool = True
    invariances: frozenset[str] = INVARIANCES
    stochastic: bool = False
    most_similar: float = 1.0
    per_k: bool = False
    rows_needed: Callable[[Options], tuple[int, str]] | None = None

    def __post_init__(self) -> None:
        unknown = self.invariances - INVARIANCES
        if unknown:
            raise ValueError(
                f"{self.name}: unknown invariances {sorted(unknown)}; known: {sorted(INVARIANCES)}"
            )


MEASURES: Registry[Measure] = Registry("measure")


def _check(measure: Measure, a: _Rep, b: _Rep, opts: Options) -> None:
    """Raise ValueError unless `measure` is defined for the pair (a, b) under `opts`."""
    if a.n != b.n:
        raise ValueError(
            f"{measure.name}: {a.name} and {b.name} must have the same rows (inputs), "
            f"got shapes {a.x.shape} and {b.x.shape}"
        )
    if measure.kind == "predictive" and a.x.shape[1] != b.x.shape[1]:
        raise ValueError(
            f"{measure.name}: logits {a.name} and {b.name} must have the same classes, "
            f"got shapes {a.x.shape} and {b.x.shape}"
        )
    need, why = measure.rows_needed(opts) if measure.rows_needed else (2, "")
    if a.n < need:
        raise ValueError(f"{measure.name} needs N >= {need} rows ({why}), got N = {a.n}")


def _value(measure: Measure, pair: _Pair, opts: Options) -> float:
    if pair.identical:
        # Identical inputs are maximally similar by definition (SPEC 5 asks for exactly that);
        # computed, the SVD or two BLAS paths would land an ulp or two below the maximum.
        return measure.most_similar
    return measure.pair_fn(pair, opts)


def _compare_arrays(name: str, X: npt.ArrayLike, Y: npt.ArrayLike, opts: Options) -> float:
    measure = MEASURES.get(name)
    variance = measure.kind == "representational"
    a = _Rep(X, "X", require_variance=variance, knn_k=opts.k)
    b = _Rep(Y, "Y", require_variance=variance, knn_k=opts.k)
    _check(measure, a, b, opts)
    return _value(measure, _Pair(a, b), opts)


def cka(X: npt.ArrayLike, Y: npt.ArrayLike) -> float:
    """Linear CKA (Kornblith et al. 2019), SPEC 5.

    CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centred Xc, Yc.

    Parameters
    ----------
    X : (num_inputs x num_features_x) representations.
    Y : (num_inputs x num_features_y) representations of the same inputs.

    Returns
    -------
    float in [0, 1]; exactly 1.0 for identical inputs.
    """
    return _compare_arrays("cka", X, Y, Options())


def cka_unbiased(X: npt.ArrayLike, Y: npt.ArrayLike) -> float:
    """Linear CKA from the unbiased HSIC estimator (Song et al. 2012; Nguyen et al. 2021), SPEC 5.

    Uses all N rows at once, as the authors' code; needs N >= 4.

    Parameters
    ----------
    X : (num_inputs x num_features_x) representations.
    Y : (num_inputs x num_features_y) representations of the same inputs.

    Returns
    -------
    float in [-1, 1] (near 0, possibly negative, for unrelated inputs); 1.0 for identical inputs.
    """
    return _compare_arrays("cka_unbiased", X, Y, Options())


def procrustes_sim(X: npt.ArrayLike, Y: npt.ArrayLike) -> float:
    """ProcrustesSim = ||Xs^T Ys||_* = (2 - d^2) / 2, d the orthogonal Procrustes distance (SPEC 5).

    Xs, Ys: column-centred, unit Frobenius norm, the narrower one zero-padded (which leaves
    the nuclear norm unchanged, so no padding is materialised).

    Parameters
    ----------
    X : (num_inputs x num_features_x) representations.
    Y : (num_inputs x num_features_y) representations of the same inputs.

    Returns
    -------
    float in [0, 1]; exactly 1.0 for identical inputs.
    """
    return _compare_arrays("procrustes_sim", X, Y, Options())


def jaccard(X: npt.ArrayLike, Y: npt.ArrayLike, *, k: int = 10) -> float:
    """k-NN Jaccard similarity (SPEC 5).

    Neighbours by cosine similarity of column-centred rows, the row itself excluded, ties
    broken by the lower row index; the mean over rows of |N_k^X(i) & N_k^Y(i)| / |union|.

    Parameters
    ----------
    X : (num_inputs x num_features_x) representations.
    Y : (num_inputs x num_features_y) representations of the same inputs.
    k : neighbourhood size, 1 <= k < num_inputs.

    Returns
    -------
    float in [0, 1]; exactly 1.0 for identical inputs.
    """
    return _compare_arrays("jaccard", X, Y, Options(k=k))


def rtd(
    X: npt.ArrayLike, Y: npt.ArrayLike, *, trials: int = 10, batch: int = 500, seed: int = 0
) -> float:
    """Representation Topology Divergence (Barannikov et al. 2022), SPEC 5; a distance, not negated.

    Per trial the same `batch` rows of X and Y (drawn from ``np.random.default_rng(seed)``);
    per direction the Euclidean distance matrices over their 0.9 quantile, A and B, the
    2 batch x 2 batch matrix [[0, A^T], [A, min(A, B)]], the sum of its finite H1 bar lengths
    (giotto-ph, one thread); the mean over both directions and all trials.

    Parameters
    ----------
    X : (num_inputs x num_features_x) representations.
    Y : (num_inputs x num_features_y) representations of the same inputs.
    trials : number of row subsets.
    batch : rows per subset, 2 <= batch <= num_inputs. RTD grows with it: compare values
        only at the same batch.
    seed : seed of the row subsets.

    Returns
    -------
    float >= 0; exactly 0.0 for identical inputs.
    """
    opts = Options(rtd_trials=trials, rtd_batch=batch, rtd_seed=seed)
    return _compare_arrays("rtd", X, Y, opts)


def agreement(logits_a: npt.ArrayLike, logits_b: npt.ArrayLike) -> float:
    """Share of inputs on which two models predict the same class (argmax), SPEC 5.

    Parameters
    ----------
    logits_a, logits_b : (num_inputs x num_classes) logits of two models on the same inputs.

    Returns
    -------
    float in [0, 1].
    """
    return _compare_arrays("agreement", logits_a, logits_b, Options())


def jsd_sim(logits_a: npt.ArrayLike, logits_b: npt.ArrayLike) -> float:
    """JSDSim = 1 - mean over inputs of the Jensen-Shannon divergence in bits (SPEC 5).

    Softmax in float64, shifted by the row maximum for stability.

    Parameters
    ----------
    logits_a, logits_b : (num_inputs x num_classes) logits of two models on the same inputs.

    Returns
    -------
    float in [0, 1]; exactly 1.0 for identical inputs.
    """
    return _compare_arrays("jsd_sim", logits_a, logits_b, Options())


for _measure in (
    Measure(
        name="cka",
        fn=cka,
        pair_fn=_cka_pair,
    ),
    Measure(
        name="cka_unbiased",
        fn=cka_unbiased,
        pair_fn=_cka_unbiased_pair,
        rows_needed=_unbiased_needs,
    ),
    Measure(
        name="procrustes_sim",
        fn=procrustes_sim,
        pair_fn=_procrustes_pair,
    ),
    Measure(
        name="jaccard",
        fn=jaccard,
        pair_fn=_jaccard_pair,
        per_k=True,
        rows_needed=_jaccard_needs,
    ),
    # A distance (smaller = more similar), stochastic through its seeded row subsets.
    Measure(
        name="rtd",
        fn=rtd,
        pair_fn=_rtd_pair,
        stochastic=True,
        larger_is_more_similar=False,
        most_similar=0.0,
        rows_needed=_rtd_needs,
    ),
    # argmax ignores positive scaling of the logits; the softmax does not.
    Measure(
        name="agreement",
        fn=agreement,
        pair_fn=_agreement_pair,
        kind="predictive",
        invariances=frozenset({"isotropic_scaling"}),
    ),
    Measure(
        name="jsd_sim",
        fn=jsd_sim,
        pair_fn=_jsd_pair,
        kind="predictive",
        invariances=frozenset(),
    ),
):
    MEASURES.register(_measure.name, _measure)


# ---------------------------------------------------------------------------------------------
# Many pairs with per-matrix work shared (the workflow's entry point).


def compare_pairs(
    matrices: Mapping[Hashable, np.ndarray],
    pairs: Sequence[tuple[Hashable, Hashable]],
    measures: Sequence[str],
    *,
    jaccard_k: Sequence[int] = (10,),
    rtd_trials: int = 10,
    rtd_batch: int = 500,
    rtd_seed: int = 0,
    progress: bool = False,
) -> list[dict]:
    """Similarity of many pairs of matrices, each matrix's own work done once (SPEC 5).

    Per matrix and only as the measures need: the centred float64 matrix and its norms, the
    k-NN graph (at max(jaccard_k), sliced for smaller k), the RTD distance matrices of each
    trial (the same rows for every pair), argmax and softmax. Per pair, one cross product
    serves cka, cka_unbiased and procrustes_sim. A matrix's cache is freed after its last
    pair. Values equal those of the public functions.

    Parameters
    ----------
    matrices : key -> (num_inputs x num_features) matrix; logits for predictive measures
        (the same mapping serves every measure given).
    pairs : (key_a, key_b) pairs of keys in `matrices`; the two matrices share rows.
    measures : names in `MEASURES`.
    jaccard_k : neighbourhood sizes for jaccard; one row per k.
    rtd_trials, rtd_batch, rtd_seed : RTD options, see `rtd`.
    progress : show a tqdm bar over pairs.

    Returns
    -------
    One dict per pair, measure (and k for jaccard), in the order of `pairs` then `measures`:
    ``{"a": key_a, "b": key_b, "measure": name, "k": int | None, "value": float}``.
    """
    entries = [MEASURES.get(name) for name in measures]
    if not jaccard_k:
        raise ValueError("jaccard_k must name at least one neighbourhood size, got none")
    per_k = [
        Options(k=k, rtd_trials=rtd_trials, rtd_batch=rtd_batch, rtd_seed=rtd_seed)
        for k in jaccard_k
    ]
    largest = max(per_k, key=lambda o: o.k)
    missing = [key for pair in pairs for key in pair if key not in matrices]
    if missing:
        raise KeyError(f"pairs name keys without a matrix: {missing[:5]}; known: {list(matrices)}")
    variance = any(m.kind == "representational" for m in entries)
    reps = {
        key: _Rep(matrices[key], repr(key), require_variance=variance, knn_k=largest.k)
        for key in dict.fromkeys(key for pair in pairs for key in pair)
    }
    # Every check before any work: a bad pair fails the job at once, not after hours of RTD.
    for key_a, key_b in pairs:
        for measure in entries:
            _check(measure, reps[key_a], reps[key_b], largest)
    last_use = {key: i for i, pair in enumerate(pairs) for key in pair}
    log.info("%d measures on %d pairs of %d matrices", len(entries), len(pairs), len(reps))
    rows: list[dict] = []
    bar = tqdm(pairs, desc="pairs", disable=not progress, **progress_kwargs())
    for i, (key_a, key_b) in enumerate(bar):
        pair = _Pair(reps[key_a], reps[key_b])
        for measure in entries:
            for opts in per_k if measure.per_k else [largest]:
                rows.append(
                    {
                        "a": key_a,
                        "b": key_b,
                        "measure": measure.name,
                        "k": opts.k if measure.per_k else None,
                        "value": _value(measure, pair, opts),
                    }
                )
        for key in {key_a, key_b}:
            if last_use[key] == i:
                # Free the matrix's cached work after its last pair: memory holds live keys only.
                del reps[key]
    return rows
