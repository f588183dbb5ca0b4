"""Per-trial timing of RTD's H1 barcodes (robuniv.rtd), to find and watch stalls.

    python -m robuniv.bench_rtd                               # synthetic features, batch 500, 200
    python -m robuniv.bench_rtd --activations results/fashion_mnist/activations/eps*.h5 \
        --batches 100 --no-synthetic                          # a study's own features

Each RTD trial computes two barcodes, h1_total(A, B) and h1_total(B, A); every one is timed
(one giotto-ph thread) and the median, the maximum and the count above `--slow` seconds are
printed per data pair and batch, with the share of the slowest barcode's total that is
`robuniv.rtd.h0_part` (components, not cycles).

Data: synthetic post-ReLU features (a shared latent factor through random maps plus noise,
ReLU; with dead units, duplicate rows, and narrow layers whose inputs are often all-zero);
every pair of `*.npy` feature files in `--feats-dir`; every model pair of per-eps activation
files (`--activations`, their regular images and each inverted set).

What the numbers show (2-core machine, batch 500): ordinary post-ReLU features take about
1 s per barcode. A stall (10 s to minutes, 20-100x its mirror direction) needs a narrow
representation with many all-zero rows (inputs on which every unit is off) compared with a
wide one: in h1_total(B_wide, A_narrow) those rows are one point of min(A, B) but spread out
in B, and nearly all of the total is `h0_part` (many long bars). The time is then Ripser's
cohomology reduction: its stored reduction columns (the cocycles of the long bars) grow to
10^3-10^4 edges, each re-expanded into its ~2 batch cofacets at every column addition (8e7
heap insertions against 7e5 for the mirror direction). Ties are not the cause (randomly
breaking them, or permuting vertices, leaves the time unchanged), nor is the threshold
(giotto-ph already stops at the enclosing radius). An edge collapse makes the reduction
fast (0.2 s instead of 12 s, same value), but the collapsers of giotto-ph and gudhi
themselves take 27-71 s on these matrices.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robuniv import rtd as _rtd

H1Total = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class TrialTimes:
    """Seconds, H1 totals and their `h0_part`s per barcode: (trials, 2), columns h1(A, B), h1(B, A)."""

    seconds: np.ndarray
    h1: np.ndarray
    h0: np.ndarray

    @property
    def rtd(self) -> float:
        """The RTD value these barcodes give (as robuniv.similarity: exact mean)."""
        return math.fsum(self.h1.ravel().tolist()) / self.h1.size


def trial_times(
    X: np.ndarray,
    Y: np.ndarray,
    *,
    batch: int,
    trials: int,
    seed: int,
    h1_total: H1Total = _rtd.h1_total,
) -> TrialTimes:
    """Time both barcodes of each RTD trial of X and Y (rows as `robuniv.similarity.rtd`)."""
    X, Y = np.asarray(X), np.asarray(Y)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y need the same rows, got {X.shape[0]} and {Y.shape[0]}")
    seconds = np.zeros((trials, 2))
    h1 = np.zeros((trials, 2))
    h0 = np.zeros((trials, 2))
    for t, rows in enumerate(_rtd.trial_rows(X.shape[0], trials, batch, seed)):
        a = _rtd.normalised_distances(X[rows], "X")
        b = _rtd.normalised_distances(Y[rows], "Y")
        for j, (p, q) in enumerate(((a, b), (b, a))):
            start = time.perf_counter()
            h1[t, j] = h1_total(p, q)
            seconds[t, j] = time.perf_counter() - start
            h0[t, j] = _rtd.h0_part(p, q)
    return TrialTimes(seconds, h1, h0)


def post_relu(
    rng: np.random.Generator,
    latent: np.ndarray,
    width: int,
    *,
    noise: float = 0.5,
    shift: float = 0.0,
    dead: float = 0.0,
) -> np.ndarray:
    """relu(latent @ W + noise - shift) as float32, with a `dead` fraction of all-zero units."""
    w = rng.standard_normal((latent.shape[1], width)) / math.sqrt(latent.shape[1])
    x = latent @ w + noise * rng.standard_normal((latent.shape[0], width)) - shift
    x = np.maximum(x, 0.0)
    x[:, rng.random(width) < dead] = 0.0
    return x.astype(np.float32)


def synthetic_pairs(n: int = 1000, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Post-ReLU feature pairs of the same n inputs: ordinary, dead units + duplicates, narrow."""
    pairs = []
    configs = [
        ("relu64_vs_relu2048", {}, 64, 2048, 0.0),
        ("relu64_vs_relu256_dead30_dup5", {"dead": 0.3}, 64, 256, 0.05),
        # Narrow, shifted: about 7% (16 units) or 25% (4 units) of inputs switch every unit off.
        ("relu16sparse_vs_relu64", {"shift": 1.0}, 16, 64, 0.0),
        ("relu4sparse_vs_relu64", {"shift": 0.5}, 4, 64, 0.0),
    ]
    for k, (name, kw, dx, dy, dup) in enumerate(configs):
        rng = np.random.default_rng([seed, k])
        latent = rng.standard_normal((n, 8))
        x, y = post_relu(rng, latent, dx, **kw), post_relu(rng, latent, dy, **kw)
        if dup:  # the same input twice (duplicate rows in both representations)
            dst = rng.choice(n, size=int(dup * n), replace=False)
            src = rng.integers(0, n, size=dst.size)
            x[dst], y[dst] = x[src], y[src]
        pairs.append((name, x, y))
    return pairs


def feature_pairs(folder: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Every pair of `*.npy` feature files in `folder` (not `*_logits.npy`) with equal rows."""
    files = sorted(p for p in folder.glob("*.npy") if not p.name.endswith("_logits.npy"))
    arrays = {p.stem: np.load(p) for p in files}
    return [
        (f"{a} | {b}", arrays[a], arrays[b])
        for a, b in itertools.combinations(arrays, 2)
        if arrays[a].shape[0] == arrays[b].shape[0]
    ]


def _summary(seconds: np.ndarray, slow: float) -> str:
    s = seconds.ravel()
    return f"{np.median(s):7.3f} {s.max():7.2f} {int(np.sum(s > slow)):3d}/{s.size:<3d}"


def _h0_share(times: TrialTimes) -> str:
    """The slowest barcode's share of its total that `h0_part` gives (what makes it slow)."""
    i = np.unravel_index(np.argmax(times.seconds), times.seconds.shape)
    total = times.h1[i]
    return f"{times.h0[i] / total:6.0%}" if total > 0 else f"{'-':>6}"


def activation_pairs(paths: Sequence[Path]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Every model pair of per-eps activation files, on the regular and each inverted set."""
    import h5py

    from robuniv.groups import REGULAR_GROUP

    pairs = []
    for path in paths:
        with h5py.File(path, "r") as fh:
            models = [f"{arch}/{run}" for arch in fh for run in fh[arch]]
            inputs = [REGULAR_GROUP] + [f"inverted/{m}" for m in models]
            features = {(m, i): fh[f"{m}/{i}/features"][()] for m in models for i in inputs}
        for a, b in itertools.combinations(models, 2):
            # As the workflow compares them: on the regular images and on each one's inverted set.
            for kind in (REGULAR_GROUP, f"inverted/{a}", f"inverted/{b}"):
                name = f"{path.stem} {a} | {b} on {kind}"
                pairs.append((name, features[(a, kind)], features[(b, kind)]))
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robuniv.bench_rtd", description=__doc__)
    parser.add_argument("--feats-dir", type=Path, default=None)
    parser.add_argument("--activations", type=Path, nargs="*", default=[])
    parser.add_argument("--batches", default="500,200", help="comma-separated batch sizes")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=1000, help="rows of the synthetic features")
    parser.add_argument("--slow", type=float, default=3.0, help="seconds that count as a stall")
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--summary", action="store_true", help="one line over all pairs")
    args = parser.parse_args(argv)
    # The table's last column says what the slow-barcode warnings would.
    logging.getLogger(_rtd.__name__).setLevel(logging.ERROR)
    batches = [int(b) for b in args.batches.split(",")]
    data = [] if args.no_synthetic else synthetic_pairs(args.n, args.seed)
    if args.feats_dir is not None:
        data += feature_pairs(args.feats_dir)
    data += activation_pairs(args.activations)
    width = max([len(name) for name, _, _ in data] + [4])
    print(f"per-barcode seconds (one thread), {args.trials} trials x 2 directions")
    print(
        f"{'data':<{width}} {'batch':>5} | {'median':>7} {'max':>7} >{args.slow:g}s"
        "     h0 of the slowest"
    )
    every: dict[int, list[np.ndarray]] = {batch: [] for batch in batches}
    for name, x, y in data:
        for batch in batches:
            if batch > x.shape[0]:
                continue
            times = trial_times(x, y, batch=batch, trials=args.trials, seed=args.seed)
            every[batch].append(times.seconds.ravel())
            if not args.summary:
                print(
                    f"{name:<{width}} {batch:>5} | {_summary(times.seconds, args.slow)}"
                    f"  {_h0_share(times)}",
                    flush=True,
                )
    for batch, runs in every.items():
        if runs:
            print(f"all {len(runs)} pairs {batch:>5} | {_summary(np.concatenate(runs), args.slow)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
