"""Representation Topology Divergence internals (Barannikov et al. 2022; SPEC 5).

`robuniv.similarity` registers the `rtd` measure and caches each matrix's trial distances;
this module holds the numerical pieces: the seeded trial rows, the normalised distance
matrices and the H1 barcode of the RTD matrix (giotto-ph on CPU).

What a barcode's total is made of. RTD's R-Cross-Barcode_1(A, B) is the barcode of the
relative homology H1(VR(min(A, B)), VR(A)) (Barannikov et al. 2022), so `h1_total(a, b)` is
the integral over the scale of its dimension. The exact sequence of the pair splits that
dimension, at every scale, into (i) the connected components VR(A) has beyond those of
VR(min(A, B)), whose integral is the difference of the two minimum spanning trees'
lengths (`h0_part`, exact, milliseconds), and (ii) the H1 classes of VR(min(A, B)) that no
cycle of VR(A) maps to, whose integral lies between 0 and VR(min(A, B))'s own H1 total.
Part (i) is what makes some barcodes slow: inputs that B puts close together (all-zero rows
of a narrow layer) but A spreads out give many long bars, whose cocycles Ripser's cohomology
reduction grows to 10^3-10^4 edges. Part (ii) needs image persistence, which no library
here computes, so the whole barcode still comes from giotto-ph.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import numpy.typing as npt
from scipy.spatial.distance import pdist, squareform

Matrix = npt.NDArray[np.float64]
Indices = npt.NDArray[np.intp]

log = logging.getLogger(__name__)

# RTD divides each distance matrix by this quantile of its entries (SPEC 5, as Barannikov et
# al.'s code), which makes RTD invariant to isotropic scaling.
RTD_QUANTILE = 0.9

# A barcode slower than this (issue 9's bound per trial, one thread) is explained in the log.
SLOW_BARCODE_S = 3.0


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


def h1_total(a: Matrix, b: Matrix, label: str = "") -> float:
    """Sum of finite H1 bar lengths of the matrix [[0, A^T], [A, min(A, B)]] (Barannikov et al.).

    A barcode slower than `SLOW_BARCODE_S` is logged as a warning naming `label`, with the
    share of its total that `h0_part` gives, so a slow RTD job says why it is slow.
    """
    start = time.perf_counter()
    total = _h1_total(a, b)
    seconds = time.perf_counter() - start
    # The share costs a spanning tree: only when the warning is shown (bench_rtd silences it).
    if seconds > SLOW_BARCODE_S and log.isEnabledFor(logging.WARNING):
        share = h0_part(a, b) / total if total > 0 else 0.0
        log.warning(
            "rtd barcode %s took %.1f s: %.0f%% of its total %.6g is components "
            "(robuniv.rtd.h0_part: inputs that one representation puts close together and the "
            "other spreads out, such as all-zero rows of a narrow layer), whose long bars "
            "Ripser reduces slowly",
            label or f"of {a.shape[0]} rows",
            seconds,
            100 * share,
            total,
        )
    return total


def _h1_total(a: Matrix, b: Matrix) -> float:
    n = a.shape[0]
    m = np.zeros((2 * n, 2 * n))
    m[n:, :n] = a
    m[:n, n:] = a.T
    m[n:, n:] = np.minimum(a, b)
    import gph  # imports scikit-learn (about 1 s): only jobs that compute RTD pay for it

    # Cost (robuniv.bench_rtd): about 1 s at batch 500 on ordinary features, 10 s to minutes
    # when `h0_part` is most of the total (module docstring). Tried on those and no faster,
    # values equal: ties broken or vertices permuted; the scale cut into windows; edge
    # collapse first (giotto-ph's or gudhi's collapser alone takes 27-71 s at batch 500).
    bars = gph.ripser_parallel(
        m, maxdim=1, metric="precomputed", collapse_edges=False, n_threads=1
    )["dgms"][1]
    # giotto-ph filters in float32 (so RTD carries about 7 significant digits); sum in float64.
    bars = bars.astype(np.float64)
    finite = np.isfinite(bars[:, 1])
    return float(np.sum(bars[finite, 1] - bars[finite, 0]))


def spanning_tree_length(d: Matrix) -> float:
    """Total length of a minimum spanning tree of the complete graph on `d`'s rows (Prim, O(n^2)).

    Zero off-diagonal entries are edges of length 0 (scipy.sparse.csgraph would drop them).
    """
    n = d.shape[0]
    joined = np.zeros(n, dtype=bool)
    joined[0] = True
    reach = d[0].astype(np.float64)
    lengths = []
    for _ in range(n - 1):
        j = int(np.argmin(np.where(joined, np.inf, reach)))
        lengths.append(float(reach[j]))
        joined[j] = True
        np.minimum(reach, d[j], out=reach)
    return math.fsum(lengths)


def h0_part(a: Matrix, b: Matrix) -> float:
    """The part of `h1_total(a, b)` due to components: MST(a) - MST(min(a, b)) (module docstring).

    The H1 classes give the rest, so 0 <= h1_total(a, b) - h0_part(a, b) <= the H1 total of
    VR(min(a, b)). A barcode whose total is mostly this part is one Ripser reduces slowly.
    """
    return spanning_tree_length(a) - spanning_tree_length(np.minimum(a, b))
