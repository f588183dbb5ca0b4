"""The similarity bench (robuniv.bench_similarity): runs end to end at small n, its baseline
agrees with the workflow path, its report and JSON carry the numbers. No timing assertions:
the machine is shared."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from robuniv import bench_similarity as bench
from robuniv.similarity import TOLERANCE

# Small stand-ins for the ImageNet widths, below n so that no cross product is rank deficient.
SMALL_WIDTHS = (16, 48, 48, 64)


def test_synthetic_models_are_seeded_correlated_post_relu_float32() -> None:
    features, logits = bench.synthetic_models(200, seed=3, widths=SMALL_WIDTHS)
    again, _ = bench.synthetic_models(200, seed=3, widths=SMALL_WIDTHS)
    assert list(features) == list(logits) == ["m0_16", "m1_48", "m2_48", "m3_64"]
    for name, x in features.items():
        assert x.dtype == np.float32 and x.shape == (200, int(name.split("_")[1]))
        assert np.array_equal(x, again[name])
        assert x.min() == 0.0 and 0.3 < np.mean(x == 0) < 0.9  # ReLU: many exact zeros
        assert logits[name].shape == (200, bench.CLASSES) and logits[name].dtype == np.float32
    # A shared latent factor: models as wide as the latent agree far above the chance level of
    # 1 / 1000 classes (narrow ones cannot carry it into their logits).
    _, logits = bench.synthetic_models(300, seed=3, widths=(512, 512))
    labels = [np.argmax(z, axis=1) for z in logits.values()]
    assert np.mean(labels[0] == labels[1]) > 0.05


def test_run_at_small_n_reports_a_finite_ratio_and_agreeing_values() -> None:
    result = bench.run(n=300, jaccard_k=(5, 20), widths=SMALL_WIDTHS)
    assert result["pairs"] == 6
    assert math.isfinite(result["ratio"]) and result["ratio"] > 0
    assert set(result["baseline_seconds"]) == set(bench.DEFAULT_MEASURES)
    assert result["max_abs_diff_baseline_workflow"] <= TOLERANCE
    assert result["max_abs_diff_workflow_reference"] <= TOLERANCE
    assert set(result["max_abs_diff_baseline_workflow_by_measure"]) == set(bench.DEFAULT_MEASURES)
    assert {"cross product", "knn graph"} <= result["workflow_seconds"].keys()
    assert min(result["seconds_per_pair_measure"].values()) > 0
    report = bench.format_report(result)
    for line in ("ratio baseline / workflow", "cross product [cka, cka_unbiased, procrustes_sim]"):
        assert line in report


def test_baseline_functions_match_the_library_on_one_pair() -> None:
    from robuniv import similarity

    features, logits = bench.synthetic_models(150, seed=1, widths=(12, 20))
    x, y = features.values()
    a, b = logits.values()
    for name in ("cka", "cka_unbiased", "procrustes_sim"):
        expected = similarity.MEASURES.get(name).fn(x, y)
        assert bench.BASELINES[name](x, y) == pytest.approx(expected, abs=1e-12), name
    assert bench.baseline_jaccard(x, y, [7])[7] == similarity.jaccard(x, y, k=7)
    assert bench.baseline_agreement(a, b) == similarity.agreement(a, b)
    assert bench.baseline_jsd_sim(a, b) == pytest.approx(similarity.jsd_sim(a, b), abs=1e-12)


def test_main_prints_the_table_and_merges_its_section_into_the_json(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench, "WIDTHS", SMALL_WIDTHS)
    monkeypatch.setattr(bench, "DEFAULT_K", (5,))
    out = tmp_path / "bench.json"
    out.write_text(json.dumps({"networks": {"device": "cpu"}}))  # another bench's section
    bench.main(["--n", "120", "--seed", "2", "--json", str(out), "--no-baseline"])
    printed = capsys.readouterr().out
    assert "similarity bench: n = 120" in printed and "total" in printed
    data = json.loads(out.read_text())
    assert data["networks"] == {"device": "cpu"}
    section = data["similarity"]
    assert section["n"] == 120 and section["seed"] == 2 and "ratio" not in section
    # The planner's input: seconds per pair of each measure, shared work split among them.
    per_pair = section["seconds_per_pair_measure"]
    assert set(per_pair) == set(bench.DEFAULT_MEASURES) and min(per_pair.values()) > 0
    assert sum(per_pair.values()) * section["pairs"] == pytest.approx(
        section["workflow_total_seconds"]
    )
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # no temporary left


def test_run_rejects_measures_without_a_baseline_and_bad_k() -> None:
    with pytest.raises(ValueError, match=r"no baseline for measures \['rtd'\]"):
        bench.run(n=50, measures=("cka", "rtd"), widths=SMALL_WIDTHS)
    with pytest.raises(ValueError, match=r"jaccard_k must lie in \[1, n - 1\] = \[1, 49\]"):
        bench.run(n=50, jaccard_k=(10, 50), widths=SMALL_WIDTHS)
