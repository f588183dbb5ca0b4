"""The CIFAR-10 loader on real CIFAR-10 test images (the foolbox wheel's PNGs), written in
torchvision's layout, through one training step, activations and similarity at full size."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robuniv.activations import extract
from robuniv.data import DatasetError, check_root, load_labels, open_split
from robuniv.models import ModelSpec, build_model, default_layer
from robuniv.similarity import cka, jaccard
from robuniv.train import TrainConfig, train_model


def cifar_pngs(data: Path) -> tuple[np.ndarray, np.ndarray]:
    files = sorted(data.glob("cifar10_*.png"))
    assert len(files) == 20, files
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    labels = np.array([int(f.stem.split("_")[2]) for f in files])
    return images.transpose(0, 3, 1, 2), labels


@pytest.fixture(scope="module")
def cifar_root(foolbox_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision's cifar-10-batches-py layout holding the real images (train = test here)."""
    images, labels = cifar_pngs(foolbox_data)
    root = tmp_path_factory.mktemp("cifar10")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    batch = {"data": images.reshape(len(images), -1), "labels": labels.tolist()}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, fh)
    return root


def test_loader_returns_the_real_pixels_and_labels(cifar_root: Path, foolbox_data: Path) -> None:
    images, labels = cifar_pngs(foolbox_data)
    ds = open_split("cifar10", cifar_root, "eval")
    assert len(ds) == 20
    x, y = ds[3]
    assert x.shape == (3, 32, 32)
    assert np.array_equal((x.numpy() * 255).round().astype(np.uint8), images[3])
    assert y == labels[3]
    assert len(load_labels("cifar10", cifar_root, "train")) == 100  # five batches


def test_missing_batch_is_named(cifar_root: Path, tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DatasetError, match="data_batch_1"):
        check_root("cifar10", tmp_path)


def test_corrupt_batch_is_named(tmp_path: Path, cifar_root: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in (cifar_root / "cifar-10-batches-py").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({"data": np.zeros(7, np.uint8), "labels": []}, fh)
    with pytest.raises(DatasetError, match="test_batch is not a CIFAR-10 batch"):
        open_split("cifar10", tmp_path, "eval")


def test_full_size_models_train_extract_and_compare(cifar_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    train_set = open_split("cifar10", cifar_root, "train", indices=np.arange(16), augment=True)
    eval_set = open_split("cifar10", cifar_root, "eval")
    features = {}
    for arch in ("resnet18", "vgg16"):
        spec = ModelSpec(arch, num_classes=10, variant="cifar")
        model = build_model(spec, seed=0)
        config = TrainConfig(epochs=1, batch_size=16, eps=0.5, seed=0, lr=0.01)
        train_model(
            model,
            train_set,
            config,
            checkpoint=tmp_path / f"{arch}.pt",
            resume_state=tmp_path / f"{arch}.resume",
        )
        f, logits = extract(model, eval_set, layer=default_layer(spec), batch_size=8)
        assert logits.shape == (20, 10) and np.isfinite(f).all()
        features[arch] = f
    assert features["resnet18"].shape[1] == 512 and features["vgg16"].shape[1] == 512
    value = cka(features["resnet18"], features["vgg16"])
    assert 0.0 < value < 1.0
    assert 0.0 <= jaccard(features["resnet18"], features["vgg16"], k=5) <= 1.0
