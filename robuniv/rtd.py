"""Representation Topology Divergence internals (Barannikov et al. 2022; SPEC 5).

`robuniv.similarity` registers the `rtd` measure and caches each matrix's trial distances;
this module holds the numerical pieces: the seeded trial rows, the normalised distance
matrices and the H1 barcode of the RTD matrix (giotto-ph on CPU).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.spatial.distance import pdist, squareform

Matrix = npt.NDArray[np.float64]
Indices = npt.NDArray[np.intp]

# RTD divides each distance matrix by this quantile of its entries (SPEC 5, as Barannikov et
# al.'s code), which makes RTD invariant to isotropic scaling.
RTD_QUANTILE = 0.9


def trial_rows(n: int, trials: int, batch: int, seed: int) -> list[Indices]:
    """The rows of each RTD trial: the same for every matrix with n rows (SPEC 5, seeded)."""
    rng = np.random.default_rng(seed)
    return [rng.choice(n, size=batch, replace=False) for _ in range(trials)]


def normalised_distances(x: np.ndarray, name: str) -> Matrix:
    """Euclidean distances between the rows of `x`, divided by their `RTD_QUANTILE` quantile."""
    # pdist, not a Gram-matrix shortcut: exact zeros on the diagonal, exact symmetry, no
    # cancellation for close points.
    d = squareform(pdist(x.astype(np.float64)))
    q = float(np.quantile(d, RTD_QUANTILE))
    if not q > 0:
        raise ValueError(
            f"{name}: the {RTD_QUANTILE} quantile of the RTD rows' distances is 0 (mostly "
            "duplicate rows); rtd is undefined"
        )
    return d / q


def h1_total(a: Matrix, b: Matrix) -> float:
    """Sum of finite H1 bar lengths of the matrix [[0, A^T], [A, min(A, B)]] (Barannikov et al.)."""
    n = a.shape[0]
    m = np.zeros((2 * n, 2 * n))
    m[n:, :n] = a
    m[:n, n:] = a.T
    m[n:, n:] = np.minimum(a, b)
    import gph  # imports scikit-learn (about 1 s): only jobs that compute RTD pay for it

    # collapse_edges=True takes minutes on this matrix instead of about a second (NOTES): the
    # collapser is slow on the all-zero block. Cost (see robuniv.bench_rtd): about 1 s at
    # batch 500 on ordinary features, but 10 s to minutes (mirror direction ~1 s) when `b` comes
    # from a narrow layer with many all-zero rows (one point of min(a, b), spread out in `a`):
    # Ripser's stored cocycles then grow to 1e3-1e4 edges. Neither ties nor the threshold
    # (giotto-ph already stops at the enclosing radius) cause it.
    bars = gph.ripser_parallel(
        m, maxdim=1, metric="precomputed", collapse_edges=False, n_threads=1
    )["dgms"][1]
    # giotto-ph filters in float32 (so RTD carries about 7 significant digits); sum in float64.
    bars = bars.astype(np.float64)
    finite = np.isfinite(bars[:, 1])
    return float(np.sum(bars[finite, 1] - bars[finite, 0]))
