"""Similarity of two representations or of two models' predictions (SPEC 5).

Every measure takes two matrices with the same rows (inputs): N x D representations
for the representational measures, N x C logits for the predictive ones, and returns
a Python float. The public functions are thin: each wraps its matrices in `_Rep`
(per-matrix work, cached) and `_Pair` (per-pair work), the same objects `compare_pairs`
reuses across many pairs, so both give identical numbers.

Precision. Values are those of a float64 computation to within `TOLERANCE`: large matrix
products run in float32 (centred in float64 first, every norm, trace and sum accumulated in
float64) behind guards that fall back to float64 wherever the float32 result could miss the
float64 value by more than `GUARD_LIMIT`; the k-NN sets equal the float64 ones exactly (float32
similarities, float64 re-ranking at every k-th boundary). ``precision="float64"`` in
`compare_pairs` runs everything in float64, as before these fast paths; small problems (below
`FLOAT32_MIN_MACS`) always do, where float32 would save nothing.

No torch here: similarity jobs stay light (numpy; scipy and giotto-ph only where needed).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from robuniv.log import progress_kwargs
from robuniv.registry import Registry

log = logging.getLogger(__name__)

Matrix = npt.NDArray[np.float64]
Vector = npt.NDArray[np.float64]
Indices = npt.NDArray[np.intp]
MeasureKind = Literal["representational", "predictive"]
Precision = Literal["float32", "float64"]
PRECISIONS: tuple[Precision, ...] = ("float32", "float64")

INVARIANCES = frozenset({"orthogonal", "isotropic_scaling", "translation"})
# Float64 entries per block of cosine similarities (32 MiB): N = 10,000 never needs N x N at once.
KNN_BLOCK_ENTRIES = 1 << 22

# Largest deviation from the float64 values that the fast paths allow (absolute, on each value).
TOLERANCE = 1e-6
# A product with fewer multiply-adds than this runs in float64: it takes milliseconds either way,
# and small inputs (the unit tests' 80 x 12) keep exactly the float64 path's bits.
FLOAT32_MIN_MACS = 1 << 26
# Float32 guards: a fast result is used only when GUARD_SIGMAS standard deviations of its
# estimated rounding error, plus any bias, change the measure by at most GUARD_LIMIT, a tenth
# of TOLERANCE. Ten sigmas leave room for errors less independent than the estimate assumes.
GUARD_LIMIT = 1e-7
GUARD_SIGMAS = 10.0
# Random probe vectors per product for the a-posteriori error estimate (each costs N (Dx + Dy)).
GUARD_PROBES = 4
# The nuclear norm from eigenvalues is used when its worst-case error bound, relative to the
# norm, stays below this (see `_nuclear_from_eigenvalues`); otherwise an SVD computes it.
# With procrustes_sim <= 1, this plus the float32 guard's GUARD_LIMIT stays within TOLERANCE.
# It cannot be much tighter: cross products of two equally wide models are square, with
# singular values down to ~1e-7 sigma_max whose eigenvalues lie below n eps lambda_max, so
# the bound reaches ~1e-7 there although the eigenvalue route matches the SVD to ~1e-12.
NUCLEAR_RTOL = 3e-7
# The float32 k-NN keeps the whole symmetric N x N similarity matrix up to this size (so each
# block above the diagonal serves two row panels), and row panels of at most
# KNN_PANEL_ENTRIES similarities; larger N computes every panel in full.
KNN_FULL_BYTES = 1 << 30
KNN_PANEL_ENTRIES = 1 << 23
# Rows of a panel with more than k_max + this k-NN candidates (rows equal to the column mean,
# masses of exact ties) are resolved one at a time instead of widening every row's array.
KNN_WIDE_EXTRA = 1024

# Work shared by several measures, timed as its own stage in `compare_pairs(stats=...)`.
SHARED_STAGES: dict[str, tuple[str, ...]] = {
    "centre": ("cka", "cka_unbiased", "procrustes_sim", "jaccard"),
    "cross product": ("cka", "cka_unbiased", "procrustes_sim"),
    "gram norm": ("cka", "cka_unbiased"),
    "nuclear norm": ("procrustes_sim",),
    "knn graph": ("jaccard",),
    "softmax": ("jsd_sim",),
    "argmax": ("agreement",),
}


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


class _Stats:
    """What the matrices of one call share: seconds per stage (exclusive: a nested stage
    pauses its caller), guard fallbacks, and scratch buffers reused from matrix to matrix."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.fallbacks: Counter[str] = Counter()
        self._open: list[list] = []  # [stage, start] of the running stages, innermost last
        self._buffers: dict[str, np.ndarray] = {}

    def buffer(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """An uninitialised array, the same memory on every call with the same name and size:
        first touching hundreds of MiB costs more than what is computed in them."""
        size = math.prod(shape)
        held = self._buffers.get(name)
        if held is None or held.dtype != dtype or held.size < size:
            held = self._buffers[name] = np.empty(size, dtype=dtype)
        return held[:size].reshape(shape)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        now = time.perf_counter()
        if self._open:
            outer = self._open[-1]
            self.seconds[outer[0]] += now - outer[1]
        self._open.append([name, now])
        try:
            yield
        finally:
            now = time.perf_counter()
            self.seconds[name] += now - self._open.pop()[1]
            if self._open:
                self._open[-1][1] = now

    def fallback(self, guard: str, owner: str) -> None:
        self.fallbacks[guard] += 1
        log.debug("%s: %s guard fell back to float64", owner, guard)


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
    x -= x.mean(axis=0)
    return x


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


# ---------------------------------------------------------------------------------------------
# Float32 products with an a-posteriori error estimate.


@dataclass(frozen=True)
class _Product:
    """A D x D' product A^T B of centred matrices, in float64, and what its guards need.

    `scale` estimates the rounding error E of a float32 product: E[E_ij^2] ~= scale^2 a_i b_j
    with a_i, b_j the squared norms of A's and B's columns (rounding errors of a dot product
    grow with the norms of its factors); 0 for a float64 product.
    """

    c: Matrix  # (Dx x Dy)
    scale: float
    a_sq: Vector  # (Dx,) squared column norms of A
    b_sq: Vector  # (Dy,)

    @cached_property
    def sq_norm(self) -> float:
        return float(np.einsum("ij,ij->", self.c, self.c))

    @cached_property
    def sq_norm_error(self) -> tuple[float, float]:
        """(sd, bias) of the error of ||C||_F^2: ||C + E||^2 - ||C||^2 = 2 <C, E> + ||E||^2.

        With independent entries of E, sd(2 <C, E>) = 2 scale sqrt(sum_ij C_ij^2 a_i b_j);
        ||E||_F^2 ~= scale^2 sum(a) sum(b) is the bias.
        """
        if self.scale == 0.0:
            return 0.0, 0.0
        weighted = float(np.einsum("ij,ij,j->i", self.c, self.c, self.b_sq) @ self.a_sq)
        return 2.0 * self.scale * math.sqrt(weighted), self.frobenius_error**2

    @property
    def frobenius_error(self) -> float:
        """Estimated ||E||_F."""
        return self.scale * math.sqrt(float(self.a_sq.sum()) * float(self.b_sq.sum()))


def _product(
    a: Matrix,
    a32: np.ndarray,
    b: Matrix,
    b32: np.ndarray,
    seed: int,
    a_sq: Vector | None = None,
    b_sq: Vector | None = None,
) -> _Product:
    """A^T B in float32 (from the float32 copies), with the error scale estimated from probes.

    For probe vectors g (standard normal), E g = C32 g - A^T (B g): the right-hand product in
    float64 costs N (Dx + Dy) per probe, and E ||E g||^2 = ||E||_F^2 = scale^2 sum(a) sum(b).
    The float32 casts of A and B are part of E, as they should be: the reference is float64.
    """
    c = (a32.T @ b32).astype(np.float64)
    g = np.random.default_rng(seed).standard_normal((c.shape[1], GUARD_PROBES))
    residual = c @ g - a.T @ (b @ g)
    if a_sq is None:
        a_sq = np.einsum("ij,ij->j", a, a)
    if b_sq is None:
        b_sq = a_sq if b is a else np.einsum("ij,ij->j", b, b)
    denominator = float(a_sq.sum()) * float(b_sq.sum())
    mean_sq = float(np.einsum("ij,ij->", residual, residual)) / GUARD_PROBES
    scale = math.sqrt(mean_sq / denominator) if denominator > 0 else 0.0
    return _Product(c, scale, a_sq, b_sq)


def _small_gram_eigenvalues(c: Matrix) -> Vector:
    """Eigenvalues (ascending) of C^T C or C C^T, whichever is smaller: C's squared singular values."""
    gram = c @ c.T if c.shape[0] <= c.shape[1] else c.T @ c
    return np.linalg.eigvalsh(gram)


def _nuclear_from_eigenvalues(eigenvalues: Vector, n: int) -> tuple[float, float]:
    """(||C||_*, bound on its error) from the eigenvalues of the smaller Gram matrix of C.

    Forming the Gram matrix and a backward-stable symmetric eigensolver perturb each
    eigenvalue by about n eps lambda_max (n = the larger dimension of C): delta. Square
    roots amplify that for small eigenvalues, |sqrt(lam) - sqrt(lam_hat)| <=
    sqrt(lam_hat + delta) - sqrt(max(lam_hat - delta, 0)), up to sqrt(delta) for an eigenvalue
    near zero. The bound is the sum over all eigenvalues.
    """
    lam_max = float(eigenvalues[-1])
    if not lam_max > 0:
        return 0.0, 0.0
    delta = n * np.finfo(np.float64).eps * lam_max
    positive = np.maximum(eigenvalues, 0.0)
    value = float(np.sum(np.sqrt(positive)))
    upper, lower = np.sqrt(positive + delta), np.sqrt(np.maximum(eigenvalues - delta, 0.0))
    return value, float(np.sum(upper - lower))


def _nuclear_curvature(sigma: Vector, extra: int) -> float:
    """sum_{i<j} 1 / (sigma_i + sigma_j) + extra sum_i 1 / (2 sigma_i); inf if any sigma is 0.

    For C (d x d + extra) with singular values sigma and E with independent entries of variance
    v, the second-order change of ||C + E||_* is sum_{i<j} (e_ij - e_ji)^2 / (2 (sigma_i +
    sigma_j)) + sum_i sum_l e_il^2 / (2 sigma_i) (e = U^T E V, l over the extra columns), whose
    mean is v times this. It is positive: rounding noise inflates the nuclear norm.
    """
    if not sigma.min() > 0:
        return math.inf
    half_inverse = float(np.sum(0.5 / sigma))
    total = 0.0
    step = max(1, (1 << 20) // sigma.size)
    for start in range(0, sigma.size, step):
        total += float(np.sum(1.0 / (sigma[start : start + step, None] + sigma[None, :])))
    return (total - half_inverse) / 2 + extra * half_inverse


# ---------------------------------------------------------------------------------------------
# Per-matrix work, computed on first use and cached (NOTES: per-model work across pairs).


class _Rep:
    """One matrix and what the measures derive from it; each part is computed at most once."""

    def __init__(
        self,
        x: npt.ArrayLike,
        name: str,
        *,
        require_variance: bool,
        knn_ks: Sequence[int] = (1,),
        precision: Precision = "float32",
        stats: _Stats | None = None,
    ):
        _check_precision(precision)
        self.x = _as_matrix(x, name, require_variance=require_variance)
        self.name = name
        self.knn_ks = tuple(knn_ks)  # neighbourhood sizes computed together on first use
        self.precision = precision
        self.stats = stats or _Stats()
        self._neighbours: dict[int, Indices] = {}
        self._rtd: dict[tuple[int, int, int], list[Matrix]] = {}

    @property
    def n(self) -> int:
        return self.x.shape[0]

    def fast(self, macs: float) -> bool:
        """Whether a product of `macs` multiply-adds on this matrix runs in float32."""
        return self.precision == "float32" and macs >= FLOAT32_MIN_MACS

    @cached_property
    def centred(self) -> Matrix:
        with self.stats.stage("centre"):
            return _centre(self.x)

    @cached_property
    def work(self) -> Matrix:
        """`centred` without its constant columns (exact zeros after centring).

        They add nothing to any product, norm or cosine, and a dead ReLU unit would otherwise
        make the cross product rank deficient, which the nuclear norm's eigenvalue route avoids.
        """
        with self.stats.stage("centre"):
            varies = self.x.min(axis=0) != self.x.max(axis=0)
            return self.centred if varies.all() else self.centred[:, varies]

    @cached_property
    def work32(self) -> np.ndarray:
        """`work` rounded to float32 once, for the float32 products."""
        with self.stats.stage("centre"):
            return self.work.astype(np.float32)

    @cached_property
    def col_sq_norms(self) -> Vector:
        """Squared norms of the columns of `work`, shape (D,): the float32 guards' weights."""
        return np.einsum("ij,ij->j", self.work, self.work)

    @cached_property
    def sq_norm(self) -> float:
        """||Xc||_F^2."""
        return float(np.einsum("ij,ij->", self.centred, self.centred))

    @cached_property
    def row_sq_norms(self) -> npt.NDArray[np.float64]:
        """Diagonal of the linear Gram matrix Xc Xc^T, shape (N,)."""
        return np.einsum("ij,ij->i", self.centred, self.centred)

    @cached_property
    def fast_gram(self) -> bool:
        """Whether ||Xc^T Xc||_F^2 comes from a float32 product (of the smaller Gram matrix)."""
        n, d = self.x.shape
        return self.fast(n * d * min(n, d))

    @cached_property
    def _gram_exact(self) -> float:
        """||Xc^T Xc||_F^2 = ||Xc Xc^T||_F^2 in float64: whichever product is smaller."""
        with self.stats.stage("gram norm"):
            c = self.work if self.fast_gram else self.centred
            gram = c.T @ c if c.shape[1] <= c.shape[0] else c @ c.T
            return float(np.einsum("ij,ij->", gram, gram))

    @cached_property
    def _gram_fast(self) -> _Product | None:
        """Xc^T Xc (or Xc Xc^T if smaller) in float32 with its error estimate; None if unused."""
        if not self.fast_gram:
            return None
        with self.stats.stage("gram norm"):
            w, w32 = self.work, self.work32
            if w.shape[1] > w.shape[0]:
                return _product(w.T, w32.T, w.T, w32.T, seed=1)
            return _product(w, w32, w, w32, 1, self.col_sq_norms, self.col_sq_norms)

    def _gram_within(self, effect: Callable[[float], float]) -> float:
        """||Xc^T Xc||_F^2, from float32 where the guard allows.

        `effect(v)` bounds the measure's change per unit change of the norm when the norm is
        v; the float32 value is kept if (GUARD_SIGMAS sd + bias) effect <= GUARD_LIMIT.
        """
        fast = self._gram_fast
        if fast is not None:
            sd, bias = fast.sq_norm_error
            if (GUARD_SIGMAS * sd + bias) * effect(fast.sq_norm) <= GUARD_LIMIT:
                return fast.sq_norm
            self.stats.fallback("gram norm", self.name)
        return self._gram_exact

    @cached_property
    def gram_sq_norm(self) -> float:
        # CKA = ||C||^2 / sqrt(gx gy) <= 1 changes by at most 1 / (2 gx) per unit change of gx.
        return self._gram_within(lambda v: 0.5 / v)

    @cached_property
    def hsic_self(self) -> float:
        def effect(v: float) -> float:
            # cka_unbiased (in [-1, 1]) divides by sqrt(h): it changes by at most 1 / (2 h) per
            # unit change of h = gx - ..., and h can be much smaller than gx.
            h = _scaled_unbiased_hsic(v, self, self)
            return 0.5 / h if h > 0 else math.inf

        return _scaled_unbiased_hsic(self._gram_within(effect), self, self)

    @cached_property
    def labels(self) -> Indices:
        with self.stats.stage("argmax"):
            return np.argmax(self.x, axis=1)

    @cached_property
    def probs(self) -> Matrix:
        with self.stats.stage("softmax"):
            z = self.x.astype(np.float64)
            # Shift by the row maximum so exp never overflows; softmax is unchanged by it.
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)

    @cached_property
    def entropy(self) -> Vector:
        """Shannon entropy of each row's softmax in nats, shape (N,)."""
        probs = self.probs
        with self.stats.stage("softmax"):
            return _entropy(probs)

    def neighbours(self, k: int) -> Indices:
        """The k nearest rows of each row by cosine similarity, shape (N, k); see `_knn`.

        Each row holds the exact float64 neighbour set (ties to the lower row index); the
        float32 path (`_knn_sets`) does not order the set, so use it as a set.
        """
        if k not in self._neighbours:
            ks = sorted({*self.knn_ks, k})
            n, d = self.x.shape
            with self.stats.stage("knn graph"):
                if self.fast(n * n * d):
                    self._neighbours.update(_knn_sets(self.work, ks, self.stats))
                else:
                    nearest = _knn(self.centred, ks[-1])
                    self._neighbours.update({kk: nearest[:, :kk] for kk in ks})
        return self._neighbours[k]

    def sorted_neighbours(self, k: int) -> npt.NDArray[np.int32]:
        """`neighbours(k)` with each row sorted, as int32 (cheaper to merge), shape (N, k)."""
        key = -k  # kept beside the unsorted sets, which use positive keys
        if key not in self._neighbours:
            nearest = self.neighbours(k)
            with self.stats.stage("knn graph"):
                dtype = np.int32 if self.n < 2**31 else np.intp
                self._neighbours[key] = np.sort(nearest, axis=1).astype(dtype)
        return self._neighbours[key]

    def rtd_distances(self, opts: Options) -> list[Matrix]:
        """Per trial, the normalised distance matrix of the trial's rows (batch x batch)."""
        from robuniv import rtd as _rtd  # scipy.spatial: only jobs that compute RTD import it

        key = (opts.rtd_trials, opts.rtd_batch, opts.rtd_seed)
        if key not in self._rtd:
            rows = _rtd.trial_rows(self.n, opts.rtd_trials, opts.rtd_batch, opts.rtd_seed)
            self._rtd[key] = [_rtd.normalised_distances(self.x[r], self.name) for r in rows]
        return self._rtd[key]


class _Pair:
    """Two matrices with the same rows, and the work they share (one cross product)."""

    def __init__(self, a: _Rep, b: _Rep):
        self.a, self.b = a, b
        self.stats = a.stats

    @cached_property
    def identical(self) -> bool:
        return self.a.x is self.b.x or bool(np.array_equal(self.a.x, self.b.x))

    @cached_property
    def fast(self) -> bool:
        """Whether the cross product runs in float32 (both matrices allow it, and it is large)."""
        (n, dx), dy = self.a.x.shape, self.b.x.shape[1]
        macs = n * dx * dy
        return self.a.fast(macs) and self.b.fast(macs)

    @cached_property
    def cross(self) -> _Product:
        """C = Xc^T Yc (Dx x Dy): serves cka, cka_unbiased and procrustes_sim.

        In float32 where `fast`, else in float64 (`exact_cross`).
        """
        if not self.fast:
            return self.exact_cross
        with self.stats.stage("cross product"):
            a, b = self.a, self.b
            return _product(a.work, a.work32, b.work, b.work32, 0, a.col_sq_norms, b.col_sq_norms)

    @cached_property
    def exact_cross(self) -> _Product:
        """C in float64, as the float64 path computes it (the guards' fallback)."""
        with self.stats.stage("cross product"):
            # The fallback of a float32 product uses the same columns; else the float64 path's.
            a, b = (self.a.work, self.b.work) if self.fast else (self.a.centred, self.b.centred)
            empty = np.zeros(0)
            return _Product(a.T @ b, 0.0, empty, empty)

    def cross_sq_norm(self, effect: float) -> float:
        """||C||_F^2, from the float32 product where GUARD_SIGMAS sd + bias, times `effect`
        (the measure's change per unit change of ||C||_F^2), stays below GUARD_LIMIT."""
        sd, bias = self.cross.sq_norm_error
        if (GUARD_SIGMAS * sd + bias) * effect > GUARD_LIMIT:
            self.stats.fallback("cross product", f"{self.a.name} x {self.b.name}")
            return self.exact_cross.sq_norm
        return self.cross.sq_norm

    @cached_property
    def _nuclear_eigenvalues(self) -> Vector:
        with self.stats.stage("nuclear norm"):
            return _small_gram_eigenvalues(self.cross.c)

    def nuclear_norm(self, effect: float) -> float:
        """||C||_*; `effect` is procrustes_sim's change per unit change of the norm.

        The float32 product is kept where its first-order effect (GUARD_SIGMAS sd of
        <U V^T, E>, U V^T the polar factor) plus the second-order bias (`_nuclear_curvature`,
        infinite for a rank-deficient C, whose null space the noise would fill) stays below
        GUARD_LIMIT. sd = scale sqrt(sum_ij (UV^T)_ij^2 a_i b_j) needs U and V, which the
        eigenvalues do not give: it is replaced by an upper bound (see below).
        """
        if not self.fast:
            with self.stats.stage("nuclear norm"):
                return float(np.sum(np.linalg.svd(self.cross.c, compute_uv=False)))
        cross, eigenvalues = self.cross, self._nuclear_eigenvalues
        a, b = cross.a_sq, cross.b_sq
        # sum_ij W_ij^2 a_i b_j for W = U V^T (rows and columns of norm <= 1): at most
        # max(a) sum(b), max(b) sum(a) and, by Cauchy-Schwarz, ||a||_2 ||b||_2.
        weighted = min(
            float(a.max()) * float(b.sum()),
            float(b.max()) * float(a.sum()),
            float(np.linalg.norm(a)) * float(np.linalg.norm(b)),
        )
        sd = cross.scale * math.sqrt(weighted)
        with self.stats.stage("nuclear norm"):
            sigma = np.sqrt(np.maximum(eigenvalues, 0.0))
            # Entry variances s^2 a_i b_j, rotated by U and V: at most s^2 max(a) max(b).
            variance = cross.scale**2 * float(a.max()) * float(b.max())
            shape = cross.c.shape
            bias = variance * _nuclear_curvature(sigma, max(shape) - min(shape))
        if (GUARD_SIGMAS * sd + bias) * effect > GUARD_LIMIT:
            self.stats.fallback("cross product", f"{self.a.name} x {self.b.name}")
            cross = self.exact_cross
            with self.stats.stage("nuclear norm"):
                eigenvalues = _small_gram_eigenvalues(cross.c)
        with self.stats.stage("nuclear norm"):
            value, bound = _nuclear_from_eigenvalues(eigenvalues, max(cross.c.shape))
            if bound > NUCLEAR_RTOL * value:
                self.stats.fallback("nuclear norm", f"{self.a.name} x {self.b.name}")
                value = float(np.sum(np.linalg.svd(cross.c, compute_uv=False)))
        return value


# ---------------------------------------------------------------------------------------------
# Measures on prepared pairs. Each returns a float; clamps keep rounding inside the valid range.


def _cka_pair(p: _Pair, opts: Options) -> float:
    denominator = math.sqrt(p.a.gram_sq_norm) * math.sqrt(p.b.gram_sq_norm)
    value = p.cross_sq_norm(1.0 / denominator) / denominator
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
    denominator = math.sqrt(hx) * math.sqrt(hy)
    cross_sq_norm = p.cross_sq_norm(1.0 / denominator)
    value = _scaled_unbiased_hsic(cross_sq_norm, p.a, p.b) / denominator
    # An inner product of U-centred Gram matrices over their norms lies in [-1, 1] (Cauchy-Schwarz);
    # negative values are genuine (the estimator is unbiased around 0), only rounding is clipped.
    return min(1.0, max(-1.0, value))


def _procrustes_pair(p: _Pair, opts: Options) -> float:
    # The nuclear norm of Xs^T Ys ignores zero-padding of the narrower matrix (SPEC 5): padding
    # only adds zero rows or columns to the D x D' cross product, so no padded copy is made.
    denominator = math.sqrt(p.a.sq_norm) * math.sqrt(p.b.sq_norm)
    value = p.nuclear_norm(1.0 / denominator) / denominator
    # ||Xs^T Ys||_* <= ||Xs||_F ||Ys||_F = 1; the SVD's rounding can overshoot by a few ulps.
    return min(1.0, value)


def _unit_rows(xc: Matrix) -> Matrix:
    norms = np.linalg.norm(xc, axis=1)
    # A row equal to the column mean has no direction: it gets cosine 0 to every row, not NaN.
    return xc / np.where(norms > 0, norms, 1.0)[:, None]


def _knn(xc: Matrix, k: int) -> Indices:
    """The k nearest rows of each row by cosine similarity, itself excluded, best first.

    Ranked by (similarity descending, row index ascending), so ties are resolved the same way
    on every machine and the k nearest are the first k of any larger neighbourhood. Float64
    throughout: the reference for `_knn_sets`.
    """
    unit = _unit_rows(xc)
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


def _cosine_error_bound(d: int) -> float:
    """Bound on |float32 cosine - float64 cosine| for unit rows of length d.

    Rounding the float64 unit vectors a, b to float32 changes a.b by at most (2u + u^2) with
    u = 2^-24 (|a|.|b| <= 1); any float32 evaluation order of the d-term dot product adds at
    most gamma_d(u) (1 + u)^2, gamma_n(u) = n u / (1 - n u) (Higham, Accuracy and Stability,
    Sec. 3.1); the float64 re-scoring adds gamma_d(eps). The factor 1.001 covers float64 unit
    vectors whose norms are 1 only to within rounding.
    """
    u32, u64 = 2.0**-24, float(np.finfo(np.float64).eps) / 2

    def gamma(n: int, u: float) -> float:
        return n * u / (1 - n * u)

    return 1.001 * (gamma(d, u32) * (1 + u32) ** 2 + 2 * u32 + u32**2 + gamma(d, u64))


def _knn_sets(xc: Matrix, ks: Sequence[int], stats: _Stats | None = None) -> dict[int, Indices]:
    """Per k in `ks`, each row's exact k nearest rows by cosine similarity, shape (N, k).

    The sets equal those of `_knn` (float64, ties to the lower index); each row's order is not
    the ranking. Similarities are float32 products of the float32-rounded unit rows, off by at
    most delta = `_cosine_error_bound(D)`; `_resolve_knn` makes them exact. Where the whole
    N x N matrix fits in KNN_FULL_BYTES, only blocks on and above the diagonal are multiplied,
    each block's transpose filling the rows below (half the float32 FLOPs).
    """
    stats = stats or _Stats()
    unit = _unit_rows(xc)
    unit32 = unit.astype(np.float32)
    n, d = unit.shape
    delta = _cosine_error_bound(d)
    out = {k: np.empty((n, k), dtype=np.intp) for k in ks}
    step = max(1, min(n, KNN_PANEL_ENTRIES // n))
    full = stats.buffer("knn full", (n, n), np.float32) if 4 * n * n <= KNN_FULL_BYTES else None
    for start in range(0, n, step):
        stop = min(n, start + step)
        if full is not None:
            panel = full[start:stop]
            # Columns left of `start` were filled by the earlier panels' transposed blocks.
            np.matmul(unit32[start:stop], unit32[start:].T, out=panel[:, start:])
            full[stop:, start:stop] = panel[:, stop:].T
        else:
            panel = np.matmul(
                unit32[start:stop],
                unit32.T,
                out=stats.buffer("knn panel", (stop - start, n), np.float32),
            )
        local = np.arange(stop - start)
        panel[local, start + local] = -np.inf
        _select_knn(panel, start, unit, ks, delta, out, stats)
    return out


def _select_knn(
    panel: np.ndarray,
    start: int,
    unit: Matrix,
    ks: Sequence[int],
    delta: float,
    out: dict[int, Indices],
    stats: _Stats,
) -> None:
    """Fill rows start.. of `out` from a panel of float32 similarities (self at -inf).

    Candidates per row: every column within 2 delta of the row's k_max-th largest float32
    similarity or above; no column below can be among the exact k_max (k_max columns beat it).
    """
    h, n = panel.shape
    k_max = max(ks)
    scratch = stats.buffer("knn partition", (h, n), np.float32)
    np.copyto(scratch, panel)
    scratch.partition(n - k_max, axis=1)
    lower = scratch[:, n - k_max : n - k_max + 1] - 2 * delta
    mask = np.greater_equal(panel, lower, out=stats.buffer("knn mask", (h, n), np.bool_))
    # Row-major, so each row's candidates come together; flat indices are 4x faster than
    # np.nonzero's two index arrays.
    flat = np.flatnonzero(mask)
    rows = flat // n
    counts = np.bincount(rows, minlength=h)
    wide = np.flatnonzero(counts > k_max + KNN_WIDE_EXTRA)
    if wide.size:
        keep = ~np.isin(rows, wide)
        flat, rows = flat[keep], rows[keep]
        counts[wide] = 0
    cols = flat - rows * n
    m = int(counts.max())
    if m:
        # Candidates of each row, padded to m with -inf (never within a band).
        offsets = np.cumsum(counts) - counts
        place = np.arange(rows.size) - offsets[rows]
        vals = np.full((h, m), -np.inf, dtype=np.float32)
        cand = np.zeros((h, m), dtype=np.intp)
        vals[rows, place] = panel[rows, cols]
        cand[rows, place] = cols
        normal = np.flatnonzero(counts)
        if normal.size < h:
            vals, cand = vals[normal], cand[normal]
        _resolve_knn(vals, cand, start + normal, unit, delta, out)
    for r in wide:
        cand = np.flatnonzero(panel[r] >= lower[r])[None, :]
        _resolve_knn(panel[r, cand], cand, np.array([start + r]), unit, delta, out)


def _resolve_knn(
    vals: np.ndarray,
    cand: Indices,
    row_ids: Indices,
    unit: Matrix,
    delta: float,
    out: dict[int, Indices],
) -> None:
    """Exact k-NN sets of rows `row_ids` from their candidates' float32 similarities (r x m).

    With float32 values v within delta of the exact s, and t the k-th largest v of a row:
    columns with v > t + 2 delta are in the exact top k (s > t + delta, beaten only by
    columns with v > t, of which there are fewer than k), columns with v < t - 2 delta are
    out (k columns have s >= t - delta > their s). The band between is re-scored in float64
    and the free places go to its best (similarity desc, index asc), as `_knn` ranks.
    """
    order = np.argsort(-vals, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    cand = np.take_along_axis(cand, order, axis=1)
    for k, result in out.items():
        kth = vals[:, k - 1 : k]
        sure = np.count_nonzero(vals > kth + 2 * delta, axis=1)
        upto = np.count_nonzero(vals >= kth - 2 * delta, axis=1)
        chosen = cand[:, :k].copy()
        need = np.flatnonzero(upto > k)
        if need.size:
            first, lengths = sure[need], upto[need] - sure[need]
            offsets = np.cumsum(lengths) - lengths
            group = np.repeat(np.arange(need.size), lengths)
            within = np.arange(int(lengths.sum())) - offsets[group]
            rows, cols = need[group], cand[need[group], first[group] + within]
            exact = _exact_cosines(unit, row_ids[rows], cols)
            # Band entries grouped by row, each group ranked by (similarity desc, index asc).
            ranked = np.lexsort((cols, -exact, group))
            rank = np.arange(ranked.size) - offsets[group[ranked]]
            keep = rank < (k - first)[group[ranked]]
            g = group[ranked][keep]
            chosen[need[g], first[g] + rank[keep]] = cols[ranked][keep]
        result[row_ids] = chosen


# Pairs per chunk when re-scoring k-NN candidates in float64.
KNN_RESCORE_CHUNK = 64


def _exact_cosines(unit: Matrix, rows: Indices, cols: Indices) -> Vector:
    """unit[rows[i]] . unit[cols[i]] in float64, the same bits for the same two rows wherever
    they occur (exact ties must stay ties, for the index to break them).

    Both factors are copied into buffers whose rows start 64-byte aligned and are zero-padded
    to a multiple of 8 entries: every dot product then runs the same SIMD sequence. Small
    chunks keep the copies in cache; two threads share the random reads of the rows, which
    are bound by memory latency (numpy releases the GIL in `take` and `einsum`).
    """
    out = np.empty(rows.size)
    d = unit.shape[1]
    width = -(-d // 8) * 8
    step = KNN_RESCORE_CHUNK

    def run(lo: int, hi: int) -> None:
        buffers = []
        for _ in range(2):
            raw = np.zeros(step * width + 8)
            skip = (-raw.ctypes.data % 64) // 8
            buffers.append(raw[skip : skip + step * width].reshape(step, width))
        left, right = buffers
        for start in range(lo, hi, step):
            stop = min(hi, start + step)
            m = stop - start
            np.take(unit, rows[start:stop], axis=0, out=left[:m, :d])
            np.take(unit, cols[start:stop], axis=0, out=right[:m, :d])
            out[start:stop] = np.einsum("ij,ij->i", left[:m], right[:m])

    half = (rows.size // 2 // step) * step
    if half < 8 * step:
        run(0, rows.size)
    else:
        with ThreadPoolExecutor(max_workers=2) as pool:
            for done in [pool.submit(run, 0, half), pool.submit(run, half, rows.size)]:
                done.result()
    return out


def _jaccard_pair(p: _Pair, opts: Options) -> float:
    k = opts.k
    # Two sorted runs per row: a stable sort merges them in linear time.
    both = np.concatenate([p.a.sorted_neighbours(k), p.b.sorted_neighbours(k)], axis=1)
    both.sort(axis=1, kind="stable")
    # Each neighbourhood lists k distinct rows, so a repeated index is one shared neighbour.
    shared = np.count_nonzero(both[:, 1:] == both[:, :-1], axis=1)
    return float(np.mean(shared / (2 * k - shared)))


def _rtd_pair(p: _Pair, opts: Options) -> float:
    from robuniv import rtd as _rtd  # scipy.spatial and giotto-ph: only RTD jobs import them

    lengths = [
        direction
        for t, (a, b) in enumerate(zip(p.a.rtd_distances(opts), p.b.rtd_distances(opts)))
        for direction in (
            _rtd.h1_total(a, b, f"({p.a.name}, {p.b.name}) trial {t}"),
            _rtd.h1_total(b, a, f"({p.b.name}, {p.a.name}) trial {t}"),
        )
    ]
    # fsum is exact, so rtd(X, Y) == rtd(Y, X) to the last bit.
    return math.fsum(lengths) / len(lengths)


def _agreement_pair(p: _Pair, opts: Options) -> float:
    return float(np.mean(p.a.labels == p.b.labels))


# Rows of softmax per chunk in the per-pair JSD (temporaries of ~8 MiB each).
JSD_CHUNK_ENTRIES = 1 << 20


def _entropy(probs: Matrix) -> Vector:
    """-sum p log p per row, in nats, with 0 log 0 = 0."""
    logs = np.zeros_like(probs)
    np.log(probs, out=logs, where=probs > 0)
    return -np.einsum("ij,ij->i", probs, logs)


def _jsd_pair(p: _Pair, opts: Options) -> float:
    pa, pb = p.a.probs, p.b.probs
    if p.a.precision == "float64" or p.b.precision == "float64":
        from scipy.special import rel_entr  # scipy.special takes ~0.25 s to import

        m = 0.5 * (pa + pb)
        jsd_nats = 0.5 * (rel_entr(pa, m).sum(axis=1) + rel_entr(pb, m).sum(axis=1))
    else:
        # JSD = H(M) - (H(P) + H(Q)) / 2 with M = (P + Q) / 2: per pair only H(M) is new, the
        # rows' own entropies are cached per model. All terms are O(log C) nats, so the
        # difference loses at most ~C eps log C per row to cancellation (below 1e-12 for C = 1000).
        ha, hb = p.a.entropy, p.b.entropy
        step = max(1, JSD_CHUNK_ENTRIES // pa.shape[1])
        jsd_nats = np.empty(pa.shape[0])
        for start in range(0, pa.shape[0], step):
            rows = slice(start, start + step)
            jsd_nats[rows] = _entropy(0.5 * (pa[rows] + pb[rows])) - 0.5 * (ha[rows] + hb[rows])
    jsd_bits = jsd_nats / math.log(2)
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
    stats = _Stats()
    a = _Rep(X, "X", require_variance=variance, knn_ks=(opts.k,), stats=stats)
    b = _Rep(Y, "Y", require_variance=variance, knn_ks=(opts.k,), stats=stats)
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
    precision: Precision = "float32",
    stats: dict | None = None,
) -> list[dict]:
    """Similarity of many pairs of matrices, each matrix's own work done once (SPEC 5).

    Per matrix and only as the measures need: the centred float64 matrix (and its float32
    copy) and its norms, the k-NN sets for every k in `jaccard_k` at once, the RTD distance
    matrices of each trial (the same rows for every pair), argmax, softmax and its entropy.
    Per pair, one cross product serves cka, cka_unbiased and procrustes_sim. A matrix's cache
    is freed after its last pair. Values equal those of the public functions.

    Parameters
    ----------
    matrices : key -> (num_inputs x num_features) matrix; logits for predictive measures
        (the same mapping serves every measure given).
    pairs : (key_a, key_b) pairs of keys in `matrices`; the two matrices share rows.
    measures : names in `MEASURES`.
    jaccard_k : neighbourhood sizes for jaccard; one row per k.
    rtd_trials, rtd_batch, rtd_seed : RTD options, see `rtd`.
    progress : show a tqdm bar over pairs.
    precision : "float32" (default): large products in float32 behind guards, values within
        `TOLERANCE` of the float64 ones and k-NN sets equal to them; "float64": everything
        in float64 (the reference, several times slower).
    stats : if given, filled with ``"seconds"``: seconds per stage (each measure's own work
        under its name, shared work under the names in `SHARED_STAGES`), and
        ``"fallbacks"``: how often each guard fell back to float64.

    Returns
    -------
    One dict per pair, measure (and k for jaccard), in the order of `pairs` then `measures`:
    ``{"a": key_a, "b": key_b, "measure": name, "k": int | None, "value": float}``.
    """
    _check_precision(precision)
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
    clock = _Stats()
    reps = {
        key: _Rep(
            matrices[key],
            repr(key),
            require_variance=variance,
            knn_ks=[o.k for o in per_k],
            precision=precision,
            stats=clock,
        )
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
                with clock.stage(measure.name):
                    value = _value(measure, pair, opts)
                rows.append(
                    {
                        "a": key_a,
                        "b": key_b,
                        "measure": measure.name,
                        "k": opts.k if measure.per_k else None,
                        "value": value,
                    }
                )
        for key in {key_a, key_b}:
            if last_use[key] == i:
                # Free the matrix's cached work after its last pair: memory holds live keys only.
                del reps[key]
    if clock.fallbacks:
        log.info("float64 fallbacks of the float32 guards: %s", dict(clock.fallbacks))
    if stats is not None:
        stats["seconds"] = dict(clock.seconds)
        stats["fallbacks"] = dict(clock.fallbacks)
    return rows
