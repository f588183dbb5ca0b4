"""The study's shared input sets (SPEC section 3): regular images and inversion pairs.

Both are drawn once per study from the evaluation split with their own seeds and
then serve every model and every measure, so all comparisons see the same rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from robuniv.data import sample_indices

REGULAR_COLUMNS = ("index", "label")
PAIR_COLUMNS = ("target", "target_label", "seed", "seed_label")


def regular_inputs(labels: np.ndarray, n: int | None, seed: int) -> pd.DataFrame:
    """A seeded uniform sample of `n` images of the split (all when n is None)."""
    index = sample_indices(len(labels), n, seed)
    return pd.DataFrame({"index": index, "label": np.asarray(labels)[index]})


def inversion_pairs(labels: np.ndarray, n: int, seed: int) -> pd.DataFrame:
    """`n` target images, each with a seed image drawn from a *different* class.

    Targets are a seeded uniform sample of the split; each seed is drawn uniformly
    from all images whose label differs from its target's.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if classes.size < 2:
        raise ValueError(f"inversion needs at least two classes, the split has {classes.tolist()}")
    if n > len(labels):
        raise ValueError(f"asked for {n} inversion pairs, the split has {len(labels)} images")
    targets = sample_indices(len(labels), n, seed)
    rng = np.random.default_rng([seed, 1])  # independent of the target draw
    seeds = np.empty_like(targets)
    by_class = {c: np.flatnonzero(labels != c) for c in classes}
    for i, target in enumerate(targets):
        pool = by_class[labels[target]]
        seeds[i] = pool[rng.integers(len(pool))]
    return pd.DataFrame(
        {
            "target": targets,
            "target_label": labels[targets],
            "seed": seeds,
            "seed_label": labels[seeds],
        }
    )
