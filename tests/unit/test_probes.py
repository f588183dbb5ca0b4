"""Linear probes (Fig 6): config, determinism, best epoch, beats chance on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robuniv import io
from robuniv.config import ModelKey
from robuniv.pipeline import (
    activations_stage,
    probe_features_stage,
    train_probes_stage,
    train_stage,
)
from robuniv.probes import ProbeConfig, probe_agreement_table, train_probe, validation_split

QUICK = ProbeConfig(epochs=8, batch_size=64, lr=5e-3)


def blobs(n: int = 400, d: int = 16, c: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, size=n)
    centres = rng.normal(scale=3.0, size=(c, d))
    return (centres[labels] + rng.normal(size=(n, d))).astype(np.float32), labels


def test_config_names_bad_values_and_reads_the_config_block() -> None:
    with pytest.raises(ValueError, match="'val_fraction': 1.0"):
        ProbeConfig(val_fraction=1.0)
    with pytest.raises(ValueError, match="'lr_min': 0.1"):
        ProbeConfig(lr=0.01, lr_min=0.1)
    block = {"n_train": 100, "epochs": 3, "batch_size": 8, "lr": 0.1, "lr_min": 0.0,
             "val_fraction": 0.2, "seed": 4}  # fmt: skip
    assert ProbeConfig.from_mapping(block) == ProbeConfig(3, 8, 0.1, 0.0, 0.2, 4)
    train, val = validation_split(10, 0.2, seed=0)
    assert len(val) == 2 and sorted([*train, *val]) == list(range(10))
    with pytest.raises(ValueError, match="leaves 0 for validation"):
        validation_split(3, 0.1, seed=0)


def test_training_is_deterministic_and_keeps_the_best_epoch() -> None:
    x, y = blobs()
    first = train_probe(x, y, QUICK, n_classes=4)
    second = train_probe(x, y, QUICK, n_classes=4)
    assert np.array_equal(first.weight, second.weight) and np.array_equal(first.bias, second.bias)
    val = [h["val_acc"] for h in first.history]
    assert len(val) == 8 and first.best_epoch == 1 + int(np.argmax(val))
    assert max(val) > 0.9
    other = train_probe(x, y, ProbeConfig(epochs=8, batch_size=64, seed=1), n_classes=4)
    assert not np.array_equal(first.weight, other.weight)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        train_probe(x, y, QUICK, n_classes=3)
    with pytest.raises(ValueError, match="features must be N x 16"):
        first.logits(x[:, :5])


def test_agreement_table_pairs_models_of_one_eps() -> None:
    labels = np.array([0, 1, 2, 0])
    eye = np.eye(3)
    probes = {
        ModelKey("a", 1.0, 0): (eye[[0, 1, 2, 0]], eye[[0, 1, 1, 0]], labels),
        ModelKey("b", 1.0, 0): (eye[[0, 1, 2, 1]], eye[[0, 1, 1, 1]], labels),
        ModelKey("c", 0.0, 0): (eye[[0, 0, 0, 0]], eye[[0, 1, 2, 0]], labels),
    }
    table = probe_agreement_table(probes, study="s")
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["model_a"], row["model_b"], row["eps"]) == ("a", "b", 1.0)
    assert row["probe_agreement"] == 0.75 and row["classifier_agreement"] == 0.75
    assert row["probe_acc_a"] == 1.0 and row["classifier_acc_b"] == 0.5
    with pytest.raises(ValueError, match="held-out labels"):
        probe_agreement_table(
            {**probes, ModelKey("d", 1.0, 0): (eye[[0] * 4], eye[[0] * 4], labels[::-1])},
            study="s",
        )


def test_stages_train_a_probe_that_beats_chance_on_fashion_mnist(
    fashion_mnist_root: Path, tmp_path: Path
) -> None:
    """A smoke-sized model (one epoch on 512 images) on real Fashion-MNIST: its probe beats
    chance (10 %) by far on held-out images."""
    dataset = {"name": "fashion_mnist", "root": str(fashion_mnist_root)}
    checkpoint = tmp_path / "model.pt"
    train = {"n_images": 512, "epochs": 1, "augment": False, "batch_size": 64, "lr": 0.1,
             "momentum": 0.9, "weight_decay": 5e-4, "lr_step_epochs": 1, "lr_gamma": 0.1,
             "lr_schedule": "step", "warmup_fraction": 0.1, "zero_init_residual": False,
             "attack_steps": 1, "seed": 0, "num_workers": 0, "amp": False,
             "channels_last": False}  # fmt: skip
    train_stage(
        arch="vgg16_bn", eps=0.0, run=0, model={"width": 0.0625, "adapt_stem": True},
        dataset=dataset, train=train, checkpoint=checkpoint, device="cpu", provenance={},
    )  # fmt: skip
    key = ModelKey("vgg16_bn", 0.0, 0)
    extraction = {"batch_size": 200, "amp": False, "channels_last": False}
    features = tmp_path / "features.h5"
    probe_features_stage(
        checkpoints={key: checkpoint}, dataset=dataset, n_train=600, seed=0,
        extraction=extraction, layers={}, device="cpu", output=features,
        provenance={"test": "probes"},
    )  # fmt: skip
    stored = io.read_h5(features, "vgg16_bn/run0/train")
    assert stored["features"].shape[0] == 600 == len(np.unique(stored["indices"]))
    assert io.read_h5_meta(features)["test"] == "probes"
    activations = tmp_path / "activations.h5"
    regular = pd.DataFrame({"index": np.arange(300), "label": np.zeros(300, int)})
    activations_stage(
        checkpoints={key: checkpoint}, regular=regular, inverted={}, dataset=dataset,
        extraction=extraction, layers={}, device="cpu", output=activations, provenance={},
    )  # fmt: skip
    output = tmp_path / "probes.h5"
    options = {"epochs": 30, "batch_size": 64, "lr": 5e-3, "lr_min": 1e-6,
               "val_fraction": 0.1, "seed": 0, "n_train": 600}  # fmt: skip
    train_probes_stage(
        models=[key], features_file=features, activations_file=activations, probe=options,
        device="cpu", output=output, provenance={"probe": "test"},
    )  # fmt: skip
    probe = io.read_h5(output, key.name)
    accuracy = np.mean(probe["probe_logits"].argmax(1) == probe["labels"])
    # Chance is 10 %: 300 held-out images put 25 % more than 8 standard errors above it.
    assert accuracy > 0.25, accuracy
    assert probe["classifier_logits"].shape == probe["probe_logits"].shape == (300, 10)
    assert 1 <= io.read_h5_meta(output, key.name)["best_epoch"] <= 30
