from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from robuniv.data import (
    DATASETS,
    DatasetError,
    _read_idx,
    check_root,
    load_labels,
    open_split,
    sample_indices,
)
from robuniv.inputs import inversion_pairs, regular_inputs
from robuniv.log import UserError


def test_fashion_mnist_is_read_as_torchvision_reads_it(fashion_mnist_root: Path) -> None:
    from torchvision.datasets import FashionMNIST

    ours = open_split("fashion_mnist", fashion_mnist_root, "eval")
    theirs = FashionMNIST(str(fashion_mnist_root), train=False, download=False)
    assert len(ours) == 10_000
    # Padded 28 -> 32 with zeros, the original pixels untouched.
    assert np.array_equal(ours.images.numpy()[:, 0, 2:30, 2:30], theirs.data.numpy())
    assert ours.images.numpy()[:, :, :2].max() == 0
    assert np.array_equal(ours.labels, theirs.targets.numpy())


def test_items_are_float_images_in_unit_range_with_int_labels(fashion_mnist_root: Path) -> None:
    ds = open_split(
        "fashion_mnist", fashion_mnist_root, "train", indices=np.array([3, 1]), augment=True
    )
    x, y = ds[0]
    assert x.shape == (1, 32, 32) and str(x.dtype) == "torch.float32"
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y == int(load_labels("fashion_mnist", fashion_mnist_root, "train")[3])


def test_out_of_range_indices_are_named(fashion_mnist_root: Path) -> None:
    with pytest.raises(IndexError, match="70000"):
        open_split("fashion_mnist", fashion_mnist_root, "eval", indices=np.array([1, 70000]))


def test_missing_root_error_names_path_and_expected_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nowhere.*does not exist.*t10k-images-idx3-ubyte"):
        check_root("fashion_mnist", tmp_path / "nowhere")
    (tmp_path / "FashionMNIST" / "raw").mkdir(parents=True)
    with pytest.raises(DatasetError, match="lacks .*train-labels-idx1-ubyte"):
        check_root("fashion_mnist", tmp_path)


def test_unknown_dataset_lists_known_ones() -> None:
    with pytest.raises(KeyError, match="cifar10, fashion_mnist"):
        DATASETS.get("mnist")


def test_truncated_idx_file_is_rejected(tmp_path: Path, fashion_mnist_root: Path) -> None:
    raw = (fashion_mnist_root / "FashionMNIST/raw/t10k-labels-idx1-ubyte").read_bytes()
    bad = tmp_path / "labels"
    bad.write_bytes(raw[:-10])
    with pytest.raises(DatasetError, match="header says"):
        _read_idx(bad)
    gz = tmp_path / "labels.gz"
    gz.write_bytes(gzip.compress(raw))
    with pytest.raises(DatasetError, match="not an IDX file"):
        _read_idx(gz)


def test_sample_is_seeded_sorted_distinct_and_spans_the_split() -> None:
    a = sample_indices(10_000, 500, seed=3)
    assert np.array_equal(a, sample_indices(10_000, 500, seed=3))
    assert not np.array_equal(a, sample_indices(10_000, 500, seed=4))
    assert np.all(np.diff(a) > 0)
    # Never a prefix: the sample reaches the last fifth of the split.
    assert a.max() > 8_000
    assert np.array_equal(sample_indices(7, None, seed=0), np.arange(7))


def test_regular_inputs_carry_labels_of_their_indices() -> None:
    labels = np.arange(100) % 7
    table = regular_inputs(labels, 20, seed=0)
    assert list(table.columns) == ["index", "label"]
    assert np.array_equal(table["label"], labels[table["index"]])


def test_inversion_seeds_come_from_another_class_and_are_repeatable() -> None:
    labels = np.repeat(np.arange(10), 50)
    pairs = inversion_pairs(labels, 200, seed=1)
    assert (pairs["seed_label"] != pairs["target_label"]).all()
    assert np.array_equal(pairs["seed_label"], labels[pairs["seed"]])
    assert pairs.equals(inversion_pairs(labels, 200, seed=1))
    assert not pairs.equals(inversion_pairs(labels, 200, seed=2))


def test_inversion_needs_two_classes() -> None:
    with pytest.raises(ValueError, match=r"at least two classes.*\[4\]"):
        inversion_pairs(np.full(10, 4), 5, seed=0)


def _damaged_root(root: Path, copy: Path, name: str, data: bytes) -> Path:
    """`root` with file `name` replaced by `data`; the other files are links."""
    raw = copy / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for source in (root / "FashionMNIST" / "raw").iterdir():
        if source.name != name:
            (raw / source.name).symlink_to(source.resolve())
    (raw / name).write_bytes(data)
    return copy


def test_truncated_or_short_split_is_named_where_the_split_is_read(
    tmp_path: Path, fashion_mnist_root: Path
) -> None:
    name = "train-labels-idx1-ubyte"
    labels = (fashion_mnist_root / "FashionMNIST" / "raw" / name).read_bytes()
    cut = _damaged_root(fashion_mnist_root, tmp_path / "cut", name, labels[:-10])
    with pytest.raises(DatasetError) as err:
        load_labels("fashion_mnist", cut, "train")
    path = cut / "FashionMNIST" / "raw" / name
    assert str(err.value) == f"{path} holds 59990 bytes, its header says (60000,)"
    # A whole IDX file of 1000 labels: consistent in itself, wrong for the split.
    short = labels[:4] + (1000).to_bytes(4, "big") + labels[8:1008]
    small = _damaged_root(fashion_mnist_root, tmp_path / "small", name, short)
    with pytest.raises(DatasetError) as err:
        open_split("fashion_mnist", small, "train", indices=np.array([0]))
    path = small / "FashionMNIST" / "raw" / name
    assert str(err.value) == f"{path} holds 1000 items, Fashion-MNIST's train split has 60000"
    assert isinstance(err.value, UserError)
