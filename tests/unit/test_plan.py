"""The planner: jobs and units per rule from a config, hours from a bench file."""

from __future__ import annotations

from pathlib import Path

import pytest

from robuniv.bench import config_networks
from robuniv.plan import load_config, price, render

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "rules" / "schemas" / "config.schema.yaml"


def default_config() -> dict:
    return load_config(REPO / "config.yaml", SCHEMA)


def flat_bench(config: dict, seconds: float = 1e-3, device: str = "cpu") -> dict:
    """Every per-unit cost the same, so hours are units x seconds."""
    fields = (
        "train_pgd_s_per_image",
        "train_clean_s_per_image",
        "inversion_s_per_image_step",
        "evaluate_s_per_image",
        "forward_s_per_image",
    )
    networks = {key: dict.fromkeys(fields, seconds) for key in config_networks(config)}
    measures = ["cka", "cka_unbiased", "procrustes_sim", "jaccard", "agreement", "jsd_sim"]
    return {
        "networks": {
            "device": device,
            "device_name": "test",
            "threads": 2,
            "probe_s_per_sample_epoch": seconds,
            "per_network": networks,
        },
        "similarity": {"n": 1000, "seconds_per_pair_measure": dict.fromkeys(measures, seconds)},
        "rtd": {"batch": 100, "seconds_per_barcode": seconds},
    }


def test_units_follow_the_config() -> None:
    config = default_config()
    study = config["studies"]["fashion_mnist"]
    rows = {w.rule: w for w in price(config, flat_bench(config))}
    train = rows["train_model"]
    assert train.jobs == 32
    assert train.units == 32 * study["train"]["n_images"] * study["train"]["epochs"]
    inversion = rows["invert_images"]
    assert inversion.units == 32 * study["inputs"]["n_inverted"] * study["inversion"]["steps"]
    # Per eps: every one of its 8 models on the regular images and on all 8 inverted sets.
    n_reg, n_inv = study["inputs"]["n_regular"], study["inputs"]["n_inverted"]
    assert rows["extract_activations"].jobs == 4
    assert rows["extract_activations"].units == 4 * 8 * (n_reg + 8 * n_inv)
    # 28 regular and 56 inverted pairs per eps, 7 measures.
    assert rows["compute_similarity"].jobs == 8
    assert rows["compute_similarity"].units == 4 * (28 + 56) * 7


def test_hours_are_units_times_measured_seconds() -> None:
    config = default_config()
    rows = {w.rule: w for w in price(config, flat_bench(config, seconds=2e-3))}
    train = rows["train_model"]
    assert train.seconds == pytest.approx(train.units * 2e-3)
    assert train.resource == "CPU (bench machine)"
    gpu = {w.rule: w for w in price(config, flat_bench(config, device="cuda"))}
    assert gpu["invert_images"].resource == "GPU"
    assert gpu["compute_similarity"].resource == "CPU"


def test_output_names_resources_and_says_when_no_gpu_was_measured() -> None:
    config = default_config()
    bench = flat_bench(config)
    text = render(price(config, bench), bench, "test.json")
    assert "no GPU measurement" in text
    assert "total CPU (bench machine)" in text and "jobs: 103" in text


def test_a_network_missing_from_the_bench_is_named() -> None:
    config = default_config()
    bench = flat_bench(config)
    bench["networks"]["per_network"].pop(next(iter(bench["networks"]["per_network"])))
    with pytest.raises(KeyError, match="no measurement of .*python -m robuniv.bench networks"):
        price(config, bench)


def test_paper_config_is_priced_with_the_shipped_cpu_bench() -> None:
    from robuniv.plan import load_bench

    config = load_config(REPO / "experiments" / "paper.yaml", SCHEMA)
    bench, source = load_bench(None)
    rows = {w.rule: w for w in price(config, bench)}
    assert "shipped" in source
    assert rows["train_model"].seconds > 0 and rows["invert_images"].seconds > 0
    assert rows["compute_similarity"].seconds > 0
