from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from robuniv.models import ModelSpec, RobustModel, build_model, load_checkpoint
from robuniv.train import TrainConfig, evaluate_model, train_model

SPEC = ModelSpec(
    "resnet18", 2, variant="cifar", width=0.0625, in_channels=1, mean=(0.5,), std=(0.25,)
)
CONFIG = TrainConfig(
    epochs=2, batch_size=32, eps=0.25, seed=3, lr=0.05, lr_step_epochs=2, lr_gamma=0.5
)


class ToyImages(Dataset):
    """Two classes of 1x16x16 images: class 0 brighter on top, class 1 at the bottom.

    `noise` adds Gaussian noise per access from the global torch RNG, as augmentation does,
    so runs depend on the RNG state the training loop keeps.
    """

    def __init__(self, n: int, seed: int, noise: float = 0.0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 2
        images = torch.rand(n, 1, 16, 16, generator=g) * 0.5 + 0.25
        sign = (1 - 2 * self.labels).float().view(-1, 1, 1, 1)
        images[:, :, :8] += 0.15 * sign
        images[:, :, 8:] -= 0.15 * sign
        self.images, self.noise = images, noise

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index]
        if self.noise:
            x = (x + self.noise * torch.randn_like(x)).clamp(0, 1)
        return x, int(self.labels[index])


class Interrupted(Exception):
    pass


class Reads(Dataset):
    """`data` that records which items are read and fails after `limit` reads, like a job
    killed mid-epoch."""

    def __init__(self, data: Dataset, limit: int | None = None) -> None:
        self.data, self.limit, self.indices = data, limit, []

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if len(self.indices) == self.limit:
            raise Interrupted
        self.indices.append(index)
        return self.data[index]


def train(
    tmp: Path, config: TrainConfig = CONFIG, data: Dataset | None = None, init_seed: int = 0
) -> tuple[RobustModel, list[dict]]:
    model = build_model(SPEC, seed=init_seed)
    history = train_model(
        model,
        ToyImages(96, seed=1, noise=0.05) if data is None else data,
        config,
        checkpoint=tmp / "model.pt",
        resume_state=tmp / "model.pt.resume",
        extra={"note": "test"},
    )
    return model, history


def same_weights(a: RobustModel, b: RobustModel) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[RobustModel, list[dict], Path]:
    tmp = tmp_path_factory.mktemp("trained")
    model, history = train(tmp, dataclasses.replace(CONFIG, epochs=4))
    return model, history, tmp


def test_adversarial_training_learns_separable_images(trained) -> None:
    model, history, _ = trained
    held_out = evaluate_model(model, ToyImages(64, seed=2), eps=0.25, batch_size=32)
    assert held_out["n"] == 64
    assert held_out["clean_acc"] > 0.9 and held_out["adv_acc"] > 0.8
    assert history[-1]["loss"] < history[0]["loss"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert [h["lr"] for h in history] == pytest.approx([0.05, 0.05, 0.025, 0.025])


def test_attacks_run_in_eval_mode_so_batch_norm_sees_only_trained_on_batches(trained) -> None:
    model, _, _ = trained
    # 96 images in batches of 32 for 4 epochs: one train-mode forward per batch.
    assert model.model.bn1.num_batches_tracked.item() == 4 * 3


def test_stronger_attacks_lower_accuracy_and_eps_zero_changes_nothing(trained) -> None:
    model, _, _ = trained
    data = ToyImages(64, seed=2)
    results = [evaluate_model(model, data, eps=eps, batch_size=32) for eps in (0.0, 0.25, 2.0)]
    assert results[0]["adv_acc"] == results[0]["clean_acc"]
    assert all(r["adv_acc"] <= r["clean_acc"] for r in results)
    assert results[2]["adv_acc"] < results[2]["clean_acc"]
    assert results[2]["adv_acc"] <= results[1]["adv_acc"]
    assert {r["clean_acc"] for r in results} == {results[0]["clean_acc"]}
    assert [r["eps"] for r in results] == [0.0, 0.25, 2.0]


def test_final_checkpoint_holds_weights_history_config_and_extra(trained) -> None:
    model, history, tmp = trained
    loaded, ckpt = load_checkpoint(tmp / "model.pt")
    assert same_weights(loaded, model)
    meta = ckpt["robuniv"]
    assert meta["history"] == history and meta["note"] == "test"
    assert meta["train_config"] == dataclasses.asdict(dataclasses.replace(CONFIG, epochs=4))
    assert ckpt["epoch"] == 4
    assert not (tmp / "model.pt.resume").exists()


def test_same_seed_gives_bit_identical_weights_and_leaves_global_rng_alone(tmp_path: Path) -> None:
    rng_before = torch.get_rng_state()
    a, history_a = train(tmp_path / "a")
    b, history_b = train(tmp_path / "b")
    c, _ = train(tmp_path / "c", dataclasses.replace(CONFIG, seed=4))
    assert same_weights(a, b)
    assert not same_weights(a, c)
    drop_speed = [{k: v for k, v in h.items() if k != "images_per_s"} for h in history_a]
    assert drop_speed == [{k: v for k, v in h.items() if k != "images_per_s"} for h in history_b]
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_run_interrupted_in_epoch_two_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    # Three epochs with a step at epoch 2: the learning-rate schedule must resume too.
    config = dataclasses.replace(CONFIG, epochs=3)
    uninterrupted, history = train(tmp_path / "a", config)
    data = ToyImages(96, seed=1, noise=0.05)
    with pytest.raises(Interrupted):
        train(tmp_path / "b", config, data=Reads(data, limit=len(data) + 40))
    _, state = load_checkpoint(tmp_path / "b" / "model.pt.resume")
    assert state["epoch"] == 1 and not (tmp_path / "b" / "model.pt").exists()
    # A fresh process builds its model anew (here even from another seed): weights come
    # from the resume state.
    resumed, resumed_history = train(tmp_path / "b", config, data=data, init_seed=9)
    assert same_weights(resumed, uninterrupted)
    assert [h["loss"] for h in resumed_history] == [h["loss"] for h in history]
    assert not (tmp_path / "b" / "model.pt.resume").exists()
    assert same_weights(load_checkpoint(tmp_path / "b" / "model.pt")[0], uninterrupted)


def test_each_epoch_reads_every_image_once_in_a_seeded_shuffled_order(tmp_path: Path) -> None:
    orders = []
    for seed in (3, 3, 4):
        reads = Reads(ToyImages(40, seed=1))
        train(tmp_path / str(len(orders)), dataclasses.replace(CONFIG, seed=seed), data=reads)
        orders.append([reads.indices[:40], reads.indices[40:]])
    assert all(sorted(epoch) == list(range(40)) for run in orders for epoch in run)
    assert orders[0] == orders[1] and orders[0] != orders[2]
    assert orders[0][0] != orders[0][1] and orders[0][0] != list(range(40))


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    data = ToyImages(96, seed=1, noise=0.05)
    with pytest.raises(Interrupted):
        train(tmp_path, data=Reads(data, limit=len(data) + 1))
    with pytest.raises(ValueError, match=r"lr 0.05 -> 0.1"):
        train(tmp_path, dataclasses.replace(CONFIG, lr=0.1), data=data)


def test_bfloat16_autocast_and_channels_last_train(tmp_path: Path) -> None:
    config = dataclasses.replace(CONFIG, epochs=1, amp=True, channels_last=True)
    model, history = train(tmp_path, config)
    assert torch.isfinite(torch.tensor(history[0]["loss"]))
    assert not same_weights(model, build_model(SPEC, seed=0))


def test_standard_training_at_eps_zero_reports_one_accuracy(tmp_path: Path) -> None:
    _, history = train(tmp_path, dataclasses.replace(CONFIG, epochs=1, eps=0.0))
    assert history[0]["clean_acc"] == history[0]["adv_acc"]


def test_extra_may_not_overwrite_training_metadata(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="history"):
        train_model(
            build_model(SPEC, seed=0),
            ToyImages(8, seed=1),
            CONFIG,
            checkpoint=tmp_path / "m.pt",
            resume_state=tmp_path / "m.pt.resume",
            extra={"history": []},
        )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("batch_size", 1.5),
        ("eps", -0.1),
        ("eps", float("nan")),
        ("seed", True),
        ("lr", 0.0),
        ("momentum", 1.0),
        ("weight_decay", -1e-4),
        ("attack_steps", -1),
        ("attack_step_size", 0.0),
        ("num_workers", -1),
    ],
)
def test_train_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(CONFIG, **{field: value})


def test_evaluating_an_empty_dataset_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        evaluate_model(build_model(SPEC, seed=0), ToyImages(0, seed=1), eps=0.25)
