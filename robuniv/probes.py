"""Linear probes on frozen penultimate features (SPEC section 6, Fig 6).

A probe is a fresh linear layer trained on a model's penultimate features of the training
split: Adam, cosine schedule to `lr_min`, no feature normalisation, the best epoch kept by
accuracy on a held-back share of those features. Fig 6 then asks whether two probes agree
more or less than the two classifiers they were cut from.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from robuniv.config import PAIR_COLUMNS, ModelKey, pair_record, same_eps_pairs
from robuniv.log import progress_kwargs
from robuniv.similarity import agreement

log = logging.getLogger(__name__)

PROBE_COLUMNS = (
    *PAIR_COLUMNS,
    "classifier_agreement",
    "probe_agreement",
    "classifier_acc_a",
    "classifier_acc_b",
    "probe_acc_a",
    "probe_acc_b",
)


@dataclass(frozen=True)
class ProbeConfig:
    """The paper's probe training (SPEC 6); `val_fraction` of the features picks the epoch."""

    epochs: int = 30
    batch_size: int = 1024
    lr: float = 5e-3
    lr_min: float = 1e-6
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "lr_min": 0 <= self.lr_min <= self.lr,
            "val_fraction": 0 < self.val_fraction < 1,
        }
        bad = {name: getattr(self, name) for name, ok in checks.items() if not ok}
        if bad:
            raise ValueError(f"invalid probe settings {bad}; see ProbeConfig")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> ProbeConfig:
        """The config's `probes` block (keys beyond these, such as n_train, are ignored)."""
        return cls(**{name: options[name] for name in cls.__dataclass_fields__ if name in options})


@dataclass
class ProbeResult:
    weight: np.ndarray  # (C, D)
    bias: np.ndarray  # (C,)
    best_epoch: int  # 1-based
    history: list[dict[str, float]] = field(default_factory=list)

    def logits(self, features: npt.ArrayLike) -> np.ndarray:
        """The probe's logits (N x C, float32) on features (N x D)."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"features must be N x {self.weight.shape[1]}, got shape {x.shape}")
        return x @ self.weight.T + self.bias


def validation_split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train rows, validation rows) of n features; at least one of each."""
    n_val = round(n * val_fraction)
    if not 1 <= n_val < n:
        raise ValueError(
            f"val_fraction {val_fraction} of {n} features leaves {n_val} for validation "
            f"and {n - n_val} for training; both need at least one"
        )
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def train_probe(
    features: npt.ArrayLike,
    labels: npt.ArrayLike,
    config: ProbeConfig,
    *,
    n_classes: int,
    device: str = "cpu",
) -> ProbeResult:
    """Train a linear probe on frozen features; keep the epoch with the best validation accuracy.

    All features live on `device` at once (ImageNet's 1.28 M x 2048 floats are 10 GB:
    sample the training split for large studies). Deterministic on CPU for a given seed.
    """
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"features must be N x D and labels N, got {x.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got [{y.min()}, {y.max()}]")
    train_rows, val_rows = validation_split(len(y), config.val_fraction, config.seed)
    dev = torch.device(device)
    x_train, y_train = (
        torch.from_numpy(x[train_rows]).to(dev),
        torch.from_numpy(y[train_rows]).to(dev),
    )
    x_val, y_val = torch.from_numpy(x[val_rows]).to(dev), torch.from_numpy(y[val_rows]).to(dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        probe = nn.Linear(x.shape[1], n_classes).to(dev)
    optimizer = torch.optim.Adam(probe.parameters(), lr=config.lr)
    steps_per_epoch = math.ceil(len(train_rows) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs * steps_per_epoch, eta_min=config.lr_min
    )
    generator = torch.Generator().manual_seed(config.seed)
    best: tuple[float, int, dict[str, torch.Tensor]] = (-1.0, 0, {})
    history = []
    for epoch in tqdm(range(1, config.epochs + 1), desc="probe epochs", **progress_kwargs()):
        probe.train()
        order = torch.randperm(len(train_rows), generator=generator).to(dev)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = nn.functional.cross_entropy(probe(x_train[batch]), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        probe.eval()
        with torch.no_grad():
            val_acc = float((probe(x_val).argmax(1) == y_val).float().mean())
        history.append({"epoch": epoch, "train_loss": total / len(train_rows), "val_acc": val_acc})
        if val_acc > best[0]:
            best = (val_acc, epoch, {k: v.detach().clone() for k, v in probe.state_dict().items()})
    val_acc, best_epoch, state = best
    log.info(
        "probe: best validation accuracy %.4f at epoch %d of %d", val_acc, best_epoch, config.epochs
    )
    return ProbeResult(
        weight=state["weight"].cpu().numpy(),
        bias=state["bias"].cpu().numpy(),
        best_epoch=best_epoch,
        history=history,
    )


def probe_arrays(result: ProbeResult) -> dict[str, np.ndarray]:
    """A probe as HDF5 datasets (its history as parallel arrays)."""
    return {
        "weight": result.weight,
        "bias": result.bias,
        "train_loss": np.array([h["train_loss"] for h in result.history]),
        "val_acc": np.array([h["val_acc"] for h in result.history]),
    }


def probe_agreement_table(
    probes: Mapping[ModelKey, tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike]],
    *,
    study: str,
) -> pd.DataFrame:
    """Agreement of probe pairs vs agreement of the classifiers, per pair at the same eps.

    Parameters
    ----------
    probes : model -> (probe logits, classifier logits, labels) on the same held-out inputs.

    Returns
    -------
    pd.DataFrame with columns `PROBE_COLUMNS`.
    """
    labels = None
    for key, (probe_logits, classifier_logits, truth) in probes.items():
        if labels is None:
            labels = np.asarray(truth)
        elif not np.array_equal(labels, truth):
            raise ValueError(f"held-out labels of {key} differ from the other models'")
        if np.shape(probe_logits) != np.shape(classifier_logits):
            raise ValueError(
                f"{key}: probe logits {np.shape(probe_logits)} and classifier logits "
                f"{np.shape(classifier_logits)} must have one shape"
            )

    def accuracy(logits: npt.ArrayLike) -> float:
        return float(np.mean(np.asarray(logits).argmax(1) == labels))

    records = []
    for a, b in same_eps_pairs(probes):
        probe_a, classifier_a, _ = probes[a]
        probe_b, classifier_b, _ = probes[b]
        records.append(
            {
                **pair_record(study, a, b),
                "classifier_agreement": agreement(classifier_a, classifier_b),
                "probe_agreement": agreement(probe_a, probe_b),
                "classifier_acc_a": accuracy(classifier_a),
                "classifier_acc_b": accuracy(classifier_b),
                "probe_acc_a": accuracy(probe_a),
                "probe_acc_b": accuracy(probe_b),
            }
        )
    return pd.DataFrame.from_records(records, columns=list(PROBE_COLUMNS))
