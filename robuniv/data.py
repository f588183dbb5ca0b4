"""Datasets: where they live, how to check and fetch them, and how to read a split.

Checking a dataset root needs no torch, so the workflow can refuse a bad root
before any job starts. Reading images imports torch lazily.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from robuniv.log import UserError
from robuniv.registry import Registry

if TYPE_CHECKING:
    import torch

    from robuniv.imagefolder import ImageFileDataset

log = logging.getLogger(__name__)

Split = Literal["train", "eval"]
SPLITS: tuple[str, ...] = ("train", "eval")

# Debian's dataset-fashion-mnist package; its files are re-gzipped, so torchvision's
# checksums fail on them and they are unpacked instead (NOTES.md, "Data available offline").
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class DatasetError(UserError):
    """A dataset root is missing or does not hold what the dataset needs."""


@dataclass(frozen=True)
class DatasetSpec:
    """What the rest of robuniv needs to know about one dataset.

    Small datasets are read whole into memory (`load_arrays`); image folders are listed
    (`list_files`) and decoded per item. `check` looks at the root without reading images.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model_variant: Literal["imagenet", "cifar"]
    fetch_hint: str
    required_files: tuple[str, ...] = ()
    load_arrays: Callable[[Path, Split], tuple[np.ndarray, np.ndarray]] | None = None
    list_files: Callable[[Path, Split], tuple[list[Path], np.ndarray]] | None = None
    check: Callable[[Path], None] | None = None
    fetch: Callable[[Path], None] | None = None
    # Names by label, for figures (empty: figures print "class <label>").
    class_names: tuple[str, ...] = ()
    # Published (train, eval) split sizes: what `robuniv.plan` prices a study with when
    # `n_images: null` asks for the whole split and the data is not on this machine.
    split_sizes: tuple[int, int] = (0, 0)


DATASETS: Registry[DatasetSpec] = Registry("dataset")


# --- Fashion-MNIST ---------------------------------------------------------

_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "eval": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format) without torch."""
    raw = path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DatasetError(f"{path} holds {data.size} bytes, its header says {shape}")
    return data.reshape(shape)


def _fashion_mnist_arrays(root: Path, split: Split) -> tuple[np.ndarray, np.ndarray]:
    raw = root / "FashionMNIST" / "raw"
    images = _read_idx(raw / _FMNIST_FILES[split][0])
    labels = _read_idx(raw / _FMNIST_FILES[split][1]).astype(np.int64)
    # A whole IDX file of the wrong length (another dataset's, a cut-down copy) would shift
    # every sampled index and every reported size, so the count is checked, not just the bytes.
    expected = DATASETS.get("fashion_mnist").split_sizes[SPLITS.index(split)]
    for name, array in ((_FMNIST_FILES[split][0], images), (_FMNIST_FILES[split][1], labels)):
        if len(array) != expected:
            raise DatasetError(
                f"{raw / name} holds {len(array)} items, Fashion-MNIST's {split} split has "
                f"{expected}"
            )
    # Pad 28x28 to 32x32 so every registry architecture (VGG's five poolings) fits.
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))[:, None]
    return images, labels


def _fetch_fashion_mnist(root: Path) -> None:
    raw = root / "FashionMNIST" / "raw"
    if DEBIAN_FASHION_MNIST.is_dir():
        raw.mkdir(parents=True, exist_ok=True)
        for name in (n for pair in _FMNIST_FILES.values() for n in pair):
            source = DEBIAN_FASHION_MNIST / f"{name}.gz"
            tmp = raw / f".{name}.tmp"
            with gzip.open(source, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            tmp.replace(raw / name)
        log.info("unpacked Fashion-MNIST from %s into %s", DEBIAN_FASHION_MNIST, raw)
        return
    from torchvision.datasets import FashionMNIST

    for train in (True, False):
        FashionMNIST(str(root), train=train, download=True)


DATASETS.register(
    "fashion_mnist",
    DatasetSpec(
        name="fashion_mnist",
        num_classes=10,
        in_channels=1,
        image_size=32,
        mean=(0.2860,),
        std=(0.3530,),
        model_variant="cifar",
        required_files=tuple(f"FashionMNIST/raw/{n}" for p in _FMNIST_FILES.values() for n in p),
        fetch_hint=(
            "install Debian's dataset-fashion-mnist (apt) or let torchvision download it: "
            "`python -m robuniv.data fetch fashion_mnist ROOT`"
        ),
        load_arrays=_fashion_mnist_arrays,
        fetch=_fetch_fashion_mnist,
        split_sizes=(60_000, 10_000),
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
)


# --- CIFAR-10 (torchvision's format) ----------------------------------------

# Published md5 of each file of the python version (torchvision.datasets.CIFAR10's
# train_list, test_list and meta). A mismatch is only warned about, see `_read_cifar10_batch`.
_CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as Python 3 writes bytes into protocol-2 pickles, latin1 only:
    the one use such files make of it, so no other codec is reachable from a file."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _cifar10_pickle_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR-10 batch may name, mapped to the objects they stand for.

    Genuine batches (Python 2 protocol-2 pickles) name numpy.core.multiarray._reconstruct,
    numpy.ndarray and numpy.dtype; copies written by numpy 2 name numpy._core, Python 3's
    protocol 2 adds _codecs.encode for bytes and protocol 5 numpy's _frombuffer. The numpy
    functions are taken from numpy's own pickling, so no private module is imported and
    the old and new module names both resolve to the installed numpy's function.
    """
    probe = np.zeros(1, np.uint8)
    reconstruct = probe.__reduce__()[0]
    frombuffer = probe.__reduce_ex__(5)[0]
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy.core.numeric", "_frombuffer"): frombuffer,
        ("numpy._core.numeric", "_frombuffer"): frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }


class _CifarBatchUnpickler(pickle.Unpickler):
    """Unpickling calls whatever globals a file names, so a crafted batch could run code.
    This one resolves only `_cifar10_pickle_globals()`; any other name is refused before
    anything is looked up, so it is never imported nor called."""

    def __init__(self, data: bytes, path: Path) -> None:
        # latin1 turns Python 2 str (keys, raw array bytes) into str, as torchvision reads them.
        super().__init__(io.BytesIO(data), encoding="latin1")
        self._path = path
        self._allowed = _cifar10_pickle_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DatasetError(
                f"{self._path}: refused to unpickle global '{module}.{name}' "
                "(CIFAR-10 batches hold only numpy arrays and lists)"
            ) from None


# Files already warned about in this process (each is read once per split opened).
_MD5_WARNED: set[Path] = set()


def _read_cifar10_batch(path: Path) -> object:
    """One batch file, checked against its published md5, then unpickled restrictedly.

    The restricted unpickler is the defence: it admits numpy arrays, lists, dicts and
    strings and nothing that runs code. The md5 only warns, because copies written locally
    in the same layout (tests, the workflow's dry-run fixtures, re-encoded mirrors) are
    read on purpose (torchvision's hard check is why it is not used); a researcher still
    sees, once per file, that the bytes are not the published ones.
    """
    data = path.read_bytes()
    expected = _CIFAR10_MD5.get(path.name)
    if expected is not None and path not in _MD5_WARNED:
        actual = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if actual != expected:
            _MD5_WARNED.add(path)
            log.warning(
                "%s: md5 %s is not the published %s; not the official CIFAR-10 file, "
                "read anyway (only numpy arrays and lists are unpickled)",
                path,
                actual,
                expected,
            )
    try:
        return _CifarBatchUnpickler(data, path).load()
    except DatasetError:
        raise
    except Exception as err:  # noqa: BLE001 - damaged bytes fail with many error types
        raise DatasetError(f"{path} is not a CIFAR-10 batch: {type(err).__name__}: {err}") from None


def _cifar10_arrays(root: Path, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's CIFAR-10 layout (python pickle batches), read without its checksum test.

    torchvision's own reader rejects copies written locally (their md5 differs), so the
    batches are read here, through an unpickler that admits only numpy arrays and lists.
    """
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        batch = _read_cifar10_batch(folder / name)
        try:
            if not isinstance(batch, dict):
                raise TypeError(f"holds a {type(batch).__name__}, not a dict")
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
        except (KeyError, ValueError, TypeError) as err:
            raise DatasetError(f"{folder / name} is not a CIFAR-10 batch: {err}") from None
        images.append(data)
    return np.concatenate(images), np.concatenate(labels)


def _fetch_cifar10(root: Path) -> None:
    from torchvision.datasets import CIFAR10

    for train in (True, False):
        CIFAR10(str(root), train=train, download=True)


DATASETS.register(
    "cifar10",
    DatasetSpec(
        name="cifar10",
        num_classes=10,
        in_channels=3,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2023, 0.1994, 0.2010),
        model_variant="cifar",
        class_names=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
        required_files=tuple(
            f"cifar-10-batches-py/{n}"
            for n in ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]
        ),
        fetch_hint="needs internet: `python -m robuniv.data fetch cifar10 ROOT` (torchvision download)",
        load_arrays=_cifar10_arrays,
        fetch=_fetch_cifar10,
        split_sizes=(50_000, 10_000),
    ),
)


# --- ImageNet1k and ImageNet100, read in place (robuniv.imagefolder) ---------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGENET_HINT = (
    "ILSVRC2012 cannot be downloaded automatically (it needs a licence): point dataset.root at "
    "a copy with train/<wnid>/ folders and val/ in class folders or flat with "
    "LOC_val_solution.csv or val_labels.txt in the root"
)


def _imagenet_subset(name: str) -> list[str] | None:
    from robuniv.imagefolder import imagenet100_wnids

    return imagenet100_wnids() if name == "imagenet100" else None


def _imagenet_check(name: str, num_classes: int) -> Callable[[Path], None]:
    def check(root: Path) -> None:
        from robuniv.imagefolder import check_imagenet_root

        check_imagenet_root(root, wnids=_imagenet_subset(name), num_classes=num_classes)

    return check


def _imagenet_list(name: str) -> Callable[[Path, Split], tuple[list[Path], np.ndarray]]:
    def list_files(root: Path, split: Split) -> tuple[list[Path], np.ndarray]:
        from robuniv.imagefolder import imagenet_files

        return imagenet_files(root, split, wnids=_imagenet_subset(name))

    return list_files


# ImageNet100 (the CMC class list): 126,689 training and 5,000 validation images.
for _name, _classes, _sizes in (
    ("imagenet1k", 1000, (1_281_167, 50_000)),
    ("imagenet100", 100, (126_689, 5_000)),
):
    DATASETS.register(
        _name,
        DatasetSpec(
            name=_name,
            num_classes=_classes,
            in_channels=3,
            image_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            model_variant="imagenet",
            fetch_hint=_IMAGENET_HINT,
            list_files=_imagenet_list(_name),
            split_sizes=_sizes,
            check=_imagenet_check(_name, _classes),
        ),
    )


# --- checking, fetching, reading ----------------------------------------------


def check_root(name: str, root: str | Path) -> None:
    """Raise DatasetError naming the path and what was expected there. No torch needed."""
    spec = DATASETS.get(name)
    root = Path(root)
    if not root.is_dir():
        expected = ", ".join(spec.required_files) or "the dataset"
        raise DatasetError(
            f"dataset {name!r}: root {str(root)!r} does not exist; expected a folder holding "
            f"{expected}. To get it: {spec.fetch_hint}"
        )
    missing = [f for f in spec.required_files if not (root / f).is_file()]
    if missing:
        raise DatasetError(
            f"dataset {name!r}: root {str(root)!r} lacks {', '.join(missing)}. "
            f"To get it: {spec.fetch_hint}"
        )
    if spec.check is not None:
        spec.check(root)


def fetch(name: str, root: str | Path) -> None:
    """Make dataset `name` available under `root` (local copy where one exists, else download)."""
    spec = DATASETS.get(name)
    root = Path(root)
    try:
        check_root(name, root)
        log.info("dataset %s already present in %s", name, root)
        return
    except DatasetError:
        pass
    if spec.fetch is None:
        raise DatasetError(f"dataset {name!r} cannot be fetched automatically: {spec.fetch_hint}")
    spec.fetch(root)
    check_root(name, root)


def load_labels(name: str, root: str | Path, split: Split) -> np.ndarray:
    """Labels of a split in file order, as int64 (no image is decoded)."""
    spec = DATASETS.get(name)
    if spec.load_arrays is not None:
        return spec.load_arrays(Path(root), split)[1]
    return spec.list_files(Path(root), split)[1]


def augmentation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The robustness library's training augmentation for 32x32 data (SPEC section 2)."""
    from torchvision.transforms import v2

    spec = DATASETS.get(name)
    return v2.Compose(
        [
            v2.RandomCrop(spec.image_size, padding=4),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.25, 0.25, 0.25),
            v2.RandomRotation(2),
        ]
    )


class ImageArrayDataset:
    """A split held in memory as uint8 (N, C, H, W); items are (float image in [0,1], label)."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        import torch

        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index].float().div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[index])


def open_split(
    name: str,
    root: str | Path,
    split: Split,
    *,
    indices: np.ndarray | None = None,
    augment: bool = False,
) -> ImageArrayDataset | ImageFileDataset:
    """A split (optionally a subset of rows, in the given order) as a dataset of
    (float image in [0, 1], label). Arrays are held in memory; image folders are read
    in place, resized and cropped for evaluation or augmented for training."""
    check_root(name, root)
    spec = DATASETS.get(name)
    if spec.load_arrays is not None:
        images, labels = spec.load_arrays(Path(root), split)
    else:
        images, labels = spec.list_files(Path(root), split)
    if indices is not None:
        indices = np.asarray(indices, dtype=np.int64)
        bad = indices[(indices < 0) | (indices >= len(labels))]
        if bad.size:
            raise IndexError(
                f"indices {bad[:5].tolist()} outside the {split} split of {len(labels)}"
            )
        labels = labels[indices]
        images = images[indices] if spec.load_arrays is not None else [images[i] for i in indices]
    if spec.load_arrays is not None:
        return ImageArrayDataset(images, labels, augmentation(name) if augment else None)
    from robuniv.imagefolder import (
        ImageFileDataset,
        imagenet_eval_transform,
        imagenet_train_transform,
    )

    size = spec.image_size
    transform = imagenet_train_transform(size) if augment else imagenet_eval_transform(size)
    return ImageFileDataset(images, labels, transform)


def sample_indices(num_items: int, n: int | None, seed: int) -> np.ndarray:
    """A seeded uniform sample of `n` distinct indices of a split, sorted (all when n is None).

    Sorted so that reading is sequential; the sample is over the whole split, never a prefix.
    """
    if n is None or n >= num_items:
        return np.arange(num_items, dtype=np.int64)
    if n <= 0:
        raise ValueError(f"sample size must be positive, got {n}")
    return np.sort(np.random.default_rng(seed).choice(num_items, size=n, replace=False))


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m robuniv.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = sub.add_parser("fetch", help="make a dataset available under ROOT")
    fetch_cmd.add_argument("name", choices=DATASETS.names())
    fetch_cmd.add_argument("root")
    check_cmd = sub.add_parser("check", help="check that ROOT holds the dataset")
    check_cmd.add_argument("name", choices=DATASETS.names())
    check_cmd.add_argument("root")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        (fetch if args.command == "fetch" else check_root)(args.name, args.root)
    except DatasetError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"{args.name}: ok in {args.root}")


if __name__ == "__main__":
    _main()
