"""Time the similarity measures: a per-pair float64 baseline against the workflow's path.

    python -m robuniv.bench similarity --n 10000 --json similarity_bench.json

Seven synthetic models with ImageNet penultimate widths see the same N inputs; the
baseline recomputes every measure per pair in float64 numpy as the paper authors' code does
(N x N Gram matrices, a zero-padded SVD, dense cosine matrices), the workflow path is one
`compare_pairs` call per kind of matrix, as a similarity job runs it. Both run in the same
process, one after the other, so their ratio is measured under the same machine load.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from robuniv.similarity import MEASURES, SHARED_STAGES, compare_pairs

# ImageNet penultimate widths: ResNet-18, four ResNet-50-like models, DenseNet-161, VGG-16.
WIDTHS = (512, 2048, 2048, 2048, 2048, 2208, 4096)
LATENT = 256
CLASSES = 1000
FEATURE_MEASURES = ("cka", "cka_unbiased", "procrustes_sim", "jaccard")
LOGIT_MEASURES = ("agreement", "jsd_sim")
DEFAULT_MEASURES = FEATURE_MEASURES + LOGIT_MEASURES
DEFAULT_K = (10, 100, 500)

Models = dict[str, np.ndarray]


def synthetic_models(
    n: int, seed: int = 0, widths: Sequence[int] = WIDTHS
) -> tuple[Models, Models]:
    """Correlated post-ReLU features and their logits for len(widths) models on n inputs.

    A shared latent matrix Z (n x LATENT, decaying column scales so that a few directions
    dominate, as in trained networks) is mapped per model by its own random matrix W, plus
    per-model noise and unit biases; ReLU leaves about 60 % exact zeros. Logits map each
    model's centred features back to the latent space (W^T) and on to CLASSES shared class
    prototypes, plus noise. Both float32, as the workflow stores them.

    Returns
    -------
    (features, logits): name -> (n x width) and name -> (n x CLASSES) float32 arrays.
    """
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((n, LATENT)) * np.geomspace(6.0, 0.05, LATENT)).astype(np.float32)
    # Class prototypes weighted towards the leading latent directions, which every model keeps.
    prototypes = rng.standard_normal((LATENT, CLASSES)) * np.geomspace(1.0, 0.01, LATENT)[:, None]
    prototypes = prototypes.astype(np.float32)
    features: Models = {}
    logits: Models = {}
    for i, width in enumerate(widths):
        name = f"m{i}_{width}"
        w = (rng.standard_normal((LATENT, width)) / math.sqrt(LATENT)).astype(np.float32)
        pre = z @ w
        pre += 0.3 * rng.standard_normal((n, width), dtype=np.float32)
        pre += rng.uniform(-1.5, 0.5, size=width).astype(np.float32)
        feats = np.maximum(pre, 0.0, out=pre)
        head = (w.T @ prototypes) * np.float32(20.0 * math.sqrt(LATENT) / width)
        out = (feats - feats.mean(axis=0)) @ head
        out += rng.standard_normal((n, CLASSES), dtype=np.float32)
        features[name], logits[name] = feats, out
    return features, logits


# ---------------------------------------------------------------------------------------------
# Baseline: each measure recomputed per pair in float64, as per-pair research code does.


def _centred64(x: np.ndarray) -> np.ndarray:
    c = x.astype(np.float64)
    c -= c.mean(axis=0)
    return c


def _centred_gram(x: np.ndarray) -> np.ndarray:
    """H X X^T H by row and column means, in place on the N x N Gram matrix."""
    x = x.astype(np.float64)
    gram = x @ x.T
    gram -= gram.mean(axis=0, keepdims=True)
    gram -= gram.mean(axis=1, keepdims=True)
    return gram


def _u_centred_gram(x: np.ndarray) -> np.ndarray:
    """The U-centred Gram matrix (Kornblith et al.'s debiased `center_gram`), in place."""
    x = x.astype(np.float64)
    gram = x @ x.T
    n = gram.shape[0]
    np.fill_diagonal(gram, 0.0)
    means = gram.sum(axis=0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    gram -= means[:, None]
    gram -= means[None, :]
    np.fill_diagonal(gram, 0.0)
    return gram


def _gram_cka(k: np.ndarray, l_: np.ndarray) -> float:
    # vdot on the flat arrays: one BLAS dot, no N x N temporary.
    kl, kk, ll = (float(np.vdot(a, b)) for a, b in ((k, l_), (k, k), (l_, l_)))
    return kl / math.sqrt(kk * ll)


def baseline_cka(x: np.ndarray, y: np.ndarray) -> float:
    return _gram_cka(_centred_gram(x), _centred_gram(y))


def baseline_cka_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    return _gram_cka(_u_centred_gram(x), _u_centred_gram(y))


def baseline_procrustes_sim(x: np.ndarray, y: np.ndarray) -> float:
    xs, ys = _centred64(x), _centred64(y)
    xs /= np.linalg.norm(xs)
    ys /= np.linalg.norm(ys)
    width = max(xs.shape[1], ys.shape[1])
    xs, ys = (np.pad(m, ((0, 0), (0, width - m.shape[1]))) for m in (xs, ys))
    return float(np.sum(np.linalg.svd(xs.T @ ys, compute_uv=False)))


def _baseline_neighbours(x: np.ndarray, ks: Sequence[int]) -> dict[int, np.ndarray]:
    c = _centred64(x)
    unit = c / np.linalg.norm(c, axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    return {k: np.argpartition(sim, -k, axis=1)[:, -k:] for k in ks}


def baseline_jaccard(x: np.ndarray, y: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    nx, ny = _baseline_neighbours(x, ks), _baseline_neighbours(y, ks)
    values = {}
    for k in ks:
        both = np.sort(np.concatenate([nx[k], ny[k]], axis=1), axis=1)
        shared = np.count_nonzero(both[:, 1:] == both[:, :-1], axis=1)
        values[k] = float(np.mean(shared / (2 * k - shared)))
    return values


def baseline_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))


def baseline_jsd_sim(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.special import rel_entr

    def softmax(z: np.ndarray) -> np.ndarray:
        z = z.astype(np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p, q = softmax(a), softmax(b)
    m = 0.5 * (p + q)
    jsd = 0.5 * (rel_entr(p, m).sum(axis=1) + rel_entr(q, m).sum(axis=1)) / math.log(2)
    return 1.0 - float(np.mean(jsd))


BASELINES: dict[str, Callable[..., float]] = {
    "cka": baseline_cka,
    "cka_unbiased": baseline_cka_unbiased,
    "procrustes_sim": baseline_procrustes_sim,
    "agreement": baseline_agreement,
    "jsd_sim": baseline_jsd_sim,
}

Key = tuple[str, str, str, "int | None"]


def _baseline(
    features: Models,
    logits: Models,
    pairs: list[tuple[str, str]],
    measures: Sequence[str],
    ks: Sequence[int],
) -> tuple[dict[Key, float], dict[str, float]]:
    values: dict[Key, float] = {}
    seconds = dict.fromkeys(measures, 0.0)
    for a, b in pairs:
        for measure in measures:
            data = logits if MEASURES.get(measure).kind == "predictive" else features
            start = time.perf_counter()
            if measure == "jaccard":
                for k, value in baseline_jaccard(data[a], data[b], ks).items():
                    values[(a, b, measure, k)] = value
            else:
                values[(a, b, measure, None)] = BASELINES[measure](data[a], data[b])
            seconds[measure] += time.perf_counter() - start
    return values, seconds


def _workflow(
    features: Models,
    logits: Models,
    pairs: list[tuple[str, str]],
    measures: Sequence[str],
    ks: Sequence[int],
    precision: str,
) -> tuple[dict[Key, float], dict[str, float], dict[str, int], float]:
    """Values, seconds per stage, guard fallbacks and wall seconds of the compare_pairs calls."""
    values: dict[Key, float] = {}
    seconds: dict[str, float] = {}
    fallbacks: dict[str, int] = {}
    wall = 0.0
    for data, kind in ((features, "representational"), (logits, "predictive")):
        chosen = [m for m in measures if MEASURES.get(m).kind == kind]
        if not chosen:
            continue
        stats: dict = {}
        start = time.perf_counter()
        rows = compare_pairs(data, pairs, chosen, jaccard_k=ks, precision=precision, stats=stats)
        wall += time.perf_counter() - start
        for row in rows:
            values[(row["a"], row["b"], row["measure"], row["k"])] = row["value"]
        for stage, s in stats["seconds"].items():
            seconds[stage] = seconds.get(stage, 0.0) + s
        for guard, count in stats["fallbacks"].items():
            fallbacks[guard] = fallbacks.get(guard, 0) + count
    return values, seconds, fallbacks, wall


def _seconds_per_pair(
    seconds: dict[str, float], wall: float, measures: Sequence[str], pairs: int
) -> dict[str, float]:
    """Workflow seconds per pair of each measure (jaccard: all its k together), for the cost
    planner (`robuniv.plan`): its own stage, an equal share of each shared stage among the
    measures that use it, and an equal share of the rest (checks, bookkeeping)."""
    own = {m: seconds.get(m, 0.0) for m in measures}
    for stage, users in SHARED_STAGES.items():
        users = [m for m in users if m in own]
        for m in users:
            own[m] += seconds.get(stage, 0.0) / len(users)
    rest = max(0.0, wall - sum(seconds.values())) / len(measures)
    return {m: (s + rest) / pairs for m, s in own.items()}


def _max_diff(x: dict[Key, float], y: dict[Key, float]) -> dict[str, float]:
    """Largest |x - y| per measure over the keys both hold."""
    out: dict[str, float] = {}
    for key in x.keys() & y.keys():
        out[key[2]] = max(out.get(key[2], 0.0), abs(x[key] - y[key]))
    return out


def run(
    n: int = 10000,
    seed: int = 0,
    measures: Sequence[str] = DEFAULT_MEASURES,
    jaccard_k: Sequence[int] = DEFAULT_K,
    include_baseline: bool = True,
    include_reference: bool = True,
    widths: Sequence[int] | None = None,
) -> dict:
    """Time baseline and workflow on the synthetic models; compare their values.

    Parameters
    ----------
    n : inputs (rows) per model.
    seed : seed of `synthetic_models`.
    measures : measure names (rtd is not benchmarked: its cost does not depend on these paths).
    jaccard_k : neighbourhood sizes for jaccard.
    include_baseline : time the per-pair float64 baseline (the slow part at large n).
    include_reference : also run ``compare_pairs(precision="float64")``, the float64 values
        the fast path must match within `robuniv.similarity.TOLERANCE`.
    widths : model widths; `WIDTHS` (ImageNet's) if None. Keep them below n: with n <= D the
        cross products are rank deficient and procrustes_sim needs SVDs on both paths.

    Returns
    -------
    dict of the numbers `main` prints (seconds, ratio, largest differences); see `main`.
    """
    unknown = [m for m in measures if m not in BASELINES and m != "jaccard"]
    if unknown:
        raise ValueError(f"no baseline for measures {unknown}; known: {list(DEFAULT_MEASURES)}")
    ks = sorted(set(jaccard_k))
    if "jaccard" in measures and (not ks or ks[0] < 1 or ks[-1] >= n):
        raise ValueError(f"jaccard_k must lie in [1, n - 1] = [1, {n - 1}], got {list(jaccard_k)}")
    widths = tuple(WIDTHS if widths is None else widths)
    load_before = os.getloadavg()
    features, logits = synthetic_models(n, seed, widths)
    names = list(features)
    pairs = list(itertools.combinations(names, 2))
    result: dict = {
        "n": n,
        "seed": seed,
        "widths": list(widths),
        "pairs": len(pairs),
        "measures": list(measures),
        "jaccard_k": ks,
        "load_average_before": [round(v, 2) for v in load_before],
    }
    values, seconds, fallbacks, wall = _workflow(features, logits, pairs, measures, ks, "float32")
    result.update(
        workflow_seconds=seconds,
        workflow_total_seconds=wall,
        workflow_fallbacks=fallbacks,
        shared_stages={k: [m for m in v if m in measures] for k, v in SHARED_STAGES.items()},
    )
    result["seconds_per_pair_measure"] = _seconds_per_pair(seconds, wall, measures, len(pairs))
    if include_reference:
        reference, _, _, ref_wall = _workflow(features, logits, pairs, measures, ks, "float64")
        diff = _max_diff(values, reference)
        result.update(
            reference_total_seconds=ref_wall,
            max_abs_diff_workflow_reference=max(diff.values(), default=0.0),
            max_abs_diff_workflow_reference_by_measure=diff,
        )
    if include_baseline:
        base_values, base_seconds = _baseline(features, logits, pairs, measures, ks)
        base_total = sum(base_seconds.values())
        diff = _max_diff(base_values, values)
        result.update(
            baseline_seconds=base_seconds,
            baseline_total_seconds=base_total,
            ratio=base_total / wall if wall > 0 else math.inf,
            max_abs_diff_baseline_workflow=max(diff.values(), default=0.0),
            max_abs_diff_baseline_workflow_by_measure=diff,
        )
    result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    return result


def format_report(result: dict) -> str:
    """The table `main` prints."""
    measures = result["measures"]
    base = result.get("baseline_seconds", {})
    flow = result["workflow_seconds"]
    d_base = result.get("max_abs_diff_baseline_workflow_by_measure", {})
    d_ref = result.get("max_abs_diff_workflow_reference_by_measure", {})

    def num(value: float | None, fmt: str) -> str:
        width = int(fmt.split(".")[0])
        return f"{'-':>{width}}" if value is None else format(value, fmt)

    widths = ", ".join(map(str, result["widths"]))
    ks = ", ".join(map(str, result["jaccard_k"]))
    header = (
        f"similarity bench: n = {result['n']}, {len(result['widths'])} models (widths {widths}), "
        f"{result['pairs']} pairs, jaccard k = {ks}, seed {result['seed']}"
    )
    calls = (
        "workflow = compare_pairs(features, pairs, feature measures) + compare_pairs(logits, "
        "pairs, agreement, jsd_sim): one call per matrix kind, as a similarity job runs it"
    )
    load = (
        f"load average before {result['load_average_before']}, after {result['load_average_after']}"
    )
    columns = (
        f"{'measure / stage':<54}{'baseline s':>12}{'workflow s':>12}"
        f"{'|base-wf|':>12}{'|wf-f64|':>12}"
    )
    lines = [header, calls, load, "", columns]
    for m in measures:
        lines.append(
            f"{m:<54}{num(base.get(m), '12.2f')}{flow.get(m, 0.0):12.2f}"
            f"{num(d_base.get(m), '12.1e')}{num(d_ref.get(m), '12.1e')}"
        )
    lines.append("shared work in the workflow (measures sharing it):")
    shown = set(measures)
    for stage, users in result["shared_stages"].items():
        if stage in flow and users:
            label = f"  {stage} [{', '.join(users)}]"
            lines.append(f"{label:<54}{'':>12}{flow[stage]:12.2f}")
            shown.add(stage)
    other = result["workflow_total_seconds"] - sum(flow.values())
    lines.append(f"{'  other (checks, bookkeeping)':<54}{'':>12}{other:12.2f}")
    lines.append(
        f"{'total':<54}{num(result.get('baseline_total_seconds'), '12.2f')}"
        f"{result['workflow_total_seconds']:12.2f}"
        f"{num(result.get('max_abs_diff_baseline_workflow'), '12.1e')}"
        f"{num(result.get('max_abs_diff_workflow_reference'), '12.1e')}"
    )
    if "ratio" in result:
        lines.append(f"ratio baseline / workflow: {result['ratio']:.1f}x")
    if "reference_total_seconds" in result:
        lines.append(
            'float64 reference (compare_pairs precision="float64"): '
            f"{result['reference_total_seconds']:.2f} s"
        )
    per_pair = ", ".join(f"{m} {s:.3g}" for m, s in result["seconds_per_pair_measure"].items())
    lines.append(f"guard fallbacks to float64: {result['workflow_fallbacks'] or 'none'}")
    lines.append(f"workflow seconds per pair, shared work split among its measures: {per_pair}")
    return "\n".join(lines)


def _write_json(path: Path, result: dict) -> None:
    """Set the "similarity" section of the bench JSON at `path` (created if missing),
    atomically: the file `python -m robuniv.plan --bench FILE` reads."""
    from robuniv.io import read_json, write_json

    data = read_json(path) if path.exists() else {}
    data["similarity"] = result
    write_json(path, data)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m robuniv.bench similarity [--n N] [--seed S] [--json FILE]
    [--no-baseline]``; prints the table of `format_report`."""
    parser = argparse.ArgumentParser(
        prog="python -m robuniv.bench similarity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=10000, help="inputs per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", type=Path, help='also merge the numbers into this JSON file ("similarity")'
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="time the workflow path only (fast)"
    )
    args = parser.parse_args(argv)
    try:
        result = run(
            n=args.n, seed=args.seed, jaccard_k=DEFAULT_K, include_baseline=not args.no_baseline
        )
    except ValueError as err:
        parser.error(str(err))
    print(format_report(result))
    if args.json is not None:
        _write_json(args.json, result)


if __name__ == "__main__":
    main()
