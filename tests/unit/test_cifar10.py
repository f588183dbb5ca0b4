"""The CIFAR-10 loader on real CIFAR-10 test images (the foolbox wheel's PNGs), written in
torchvision's layout, through one training step, activations and similarity at full size."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import pickletools
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from robuniv import data
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


# --- what unpickling a batch may do ----------------------------------------------------


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch can be extended
    """Writes bytes as Python 2 str (SHORT_BINSTRING/BINSTRING), as cPickle wrote the
    published batches, instead of Python 3's `_codecs.encode` call."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def genuine_format(images: np.ndarray, labels: np.ndarray) -> bytes:
    """A batch as the published files are: a protocol-2 dict with Python 2 str keys,
    `data` a uint8 (N, 3072) array pickled by numpy 1 (numpy.core), `labels` a list."""
    batch = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": labels.tolist(),
        b"data": np.ascontiguousarray(images.reshape(len(images), -1)),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(batch)
    # numpy 2 names its module numpy._core; the published files, written by numpy 1, numpy.core.
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def globals_named(raw: bytes) -> set[str]:
    return {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(raw) if op.name == "GLOBAL"}


def write_root(root: Path, test_batch: bytes, cifar_root: Path) -> Path:
    """A copy of `cifar_root` whose test_batch holds `test_batch`."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for f in (cifar_root / "cifar-10-batches-py").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "test_batch").write_bytes(test_batch)
    return root


@pytest.fixture(autouse=True)
def fresh_md5_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees its own md5 warnings (they are given once per file and process)."""
    monkeypatch.setattr(data, "_MD5_WARNED", set())


@pytest.mark.parametrize("protocol", ["genuine", 2, 4, 5])
def test_batches_in_every_format_load_the_same_arrays(
    protocol: str | int, tmp_path: Path, cifar_root: Path, foolbox_data: Path
) -> None:
    images, labels = cifar_pngs(foolbox_data)
    if protocol == "genuine":
        raw = genuine_format(images, labels)
        assert globals_named(raw) == {
            "numpy.core.multiarray._reconstruct",
            "numpy.ndarray",
            "numpy.dtype",
        }
    else:
        batch = {"data": images.reshape(len(images), -1), "labels": labels.tolist()}
        raw = pickle.dumps(batch, protocol=protocol)
    root = write_root(tmp_path, raw, cifar_root)
    got_images, got_labels = data.DATASETS.get("cifar10").load_arrays(root, "eval")
    assert got_images.dtype == np.uint8 and np.array_equal(got_images, images)
    assert got_labels.dtype == np.int64 and np.array_equal(got_labels, labels)


class _RunsCode:
    def __init__(self, call: object, args: tuple) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple:
        return self.call, self.args


@pytest.mark.parametrize("how", ["path_touch", "os_system"])
def test_a_batch_that_would_run_code_is_refused_and_nothing_runs(
    how: str, tmp_path: Path, cifar_root: Path
) -> None:
    pwned = tmp_path / "pwned"
    payload = (
        _RunsCode(Path.touch, (pwned,))
        if how == "path_touch"
        else _RunsCode(os.system, (f"touch {pwned}",))
    )
    raw = pickle.dumps({"data": payload, "labels": [0]})
    # os.system lives in (and is pickled as) posix on Linux, nt on Windows.
    global_name = "pathlib.Path.touch" if how == "path_touch" else f"{os.system.__module__}.system"
    root = write_root(tmp_path / "root", raw, cifar_root)
    with pytest.raises(DatasetError) as caught:
        open_split("cifar10", root, "eval")
    message = str(caught.value)
    assert message == (
        f"{root / 'cifar-10-batches-py' / 'test_batch'}: refused to unpickle global "
        f"'{global_name}' (CIFAR-10 batches hold only numpy arrays and lists)"
    )
    assert not pwned.exists()


def test_codecs_encode_is_admitted_for_latin1_only(tmp_path: Path, cifar_root: Path) -> None:
    raw = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    root = write_root(tmp_path, raw, cifar_root)
    with pytest.raises(DatasetError, match="test_batch is not a CIFAR-10 batch: .*'rot13'"):
        open_split("cifar10", root, "eval")


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"not a pickle", "UnpicklingError"),
        (pickle.dumps({"data": 1})[:-5], "UnpicklingError|EOFError"),
        (pickle.dumps([1, 2, 3]), "holds a list, not a dict"),
        (pickle.dumps({"labels": [0]}), "'data'"),
    ],
)
def test_a_batch_that_is_not_one_is_a_one_line_error(
    raw: bytes, why: str, tmp_path: Path, cifar_root: Path
) -> None:
    root = write_root(tmp_path, raw, cifar_root)
    with pytest.raises(DatasetError, match=f"test_batch is not a CIFAR-10 batch: .*({why})") as e:
        open_split("cifar10", root, "eval")
    assert "\n" not in str(e.value) and e.value.__cause__ is None


def test_md5_is_checked_before_unpickling_and_warns_once(
    tmp_path: Path, cifar_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = pickle.dumps({"data": _RunsCode(os.system, ("true",)), "labels": [0]})
    root = write_root(tmp_path, raw, cifar_root)
    path = root / "cifar-10-batches-py" / "test_batch"
    caplog.set_level(logging.WARNING, logger="robuniv.data")
    for _ in range(2):
        with pytest.raises(DatasetError, match="refused to unpickle"):
            open_split("cifar10", root, "eval")
    warnings = [r.getMessage() for r in caplog.records if "md5" in r.getMessage()]
    actual = hashlib.md5(raw).hexdigest()
    assert warnings == [
        (
            f"{path}: md5 {actual} is not the published 40351d587109b95175f43aff81a1287e; "
            "not the official CIFAR-10 file, read anyway (only numpy arrays and lists are unpickled)"
        )
    ]


def test_a_file_with_the_published_md5_loads_without_a_warning(
    tmp_path: Path,
    cifar_root: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = write_root(
        tmp_path, (cifar_root / "cifar-10-batches-py/test_batch").read_bytes(), cifar_root
    )
    digest = hashlib.md5((root / "cifar-10-batches-py/test_batch").read_bytes()).hexdigest()
    monkeypatch.setitem(data._CIFAR10_MD5, "test_batch", digest)
    caplog.set_level(logging.WARNING, logger="robuniv.data")
    assert len(open_split("cifar10", root, "eval")) == 20
    assert not [r for r in caplog.records if "md5" in r.getMessage()]
