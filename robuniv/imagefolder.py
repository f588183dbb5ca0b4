"""ImageNet1k and ImageNet100 read in place from an ImageNet root (SPEC 1 and 2).

An ImageNet root holds ``train/<wnid>/*.JPEG`` and ``val/``, the latter either in class
folders (``val/<wnid>/*.JPEG``) or flat (``val/*.JPEG``) with a label file. ImageNet100 is a
view of such a root restricted to the wnids in ``robuniv/data/imagenet100_wnids.txt``. Labels
are always the index of the wnid in the sorted list of classes in use.

Checking a root lists folders only and imports no torch, so the workflow can refuse a bad root
while it builds the DAG. Reading images imports torch, torchvision and PIL lazily.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from robuniv.data import DatasetError

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (".jpeg", ".jpg", ".png")
# Label files looked for in the root, in this order, when none is given.
VAL_LABEL_FILES: tuple[str, ...] = ("LOC_val_solution.csv", "val_labels.txt")
_WNID = re.compile(r"n\d{8}")
_LAYOUT = (
    "train/<wnid>/ folders of images (e.g. train/n01440764/x.JPEG), and val/ either with "
    "<wnid>/ folders or flat images plus a label file "
    f"({' or '.join(VAL_LABEL_FILES)} in the root, or given explicitly)"
)

# The robustness library's IMAGENET_PCA (robustness/data_augmentation.py), the RGB pixel
# covariance of ImageNet used by AlexNet-style lighting noise.
IMAGENET_PCA_EIGVAL: tuple[float, ...] = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC: tuple[tuple[float, ...], ...] = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def _check_wnids(wnids: Sequence[str], source: str) -> list[str]:
    bad = [w for w in wnids if not isinstance(w, str) or not _WNID.fullmatch(w)]
    if bad:
        raise ValueError(f"{source}: not WordNet ids (n + 8 digits): {bad[:5]}")
    duplicates = sorted(w for w, n in Counter(wnids).items() if n > 1)
    if duplicates:
        raise ValueError(f"{source}: duplicate wnids {duplicates[:5]}")
    return sorted(wnids)


def imagenet100_wnids() -> list[str]:
    """The 100 ImageNet100 classes (CMC list shipped with the package), sorted (SPEC 1).

    Returns
    -------
    list[str]
        100 distinct WordNet ids; the label of a class is its index here.
    """
    source = resources.files("robuniv").joinpath("data", "imagenet100_wnids.txt")
    wnids = [line.strip() for line in source.read_text().splitlines() if line.strip()]
    if len(wnids) != 100:
        raise DatasetError(f"{source} lists {len(wnids)} wnids, expected 100")
    return _check_wnids(wnids, str(source))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _class_folders(folder: Path) -> list[str]:
    """Sorted names of the visible subfolders of `folder`; all must be wnids."""
    names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    bad = [n for n in names if not _WNID.fullmatch(n)]
    if bad:
        raise DatasetError(
            f"{folder} holds folders that are not wnids: {bad[:5]}; expected {_LAYOUT}"
        )
    return names


def _image_names(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and _is_image(e.name))


def _has_image(folder: Path) -> bool:
    # Stops at the first image, so checking 1000 train folders stays a quick listing.
    with os.scandir(folder) as entries:
        return any(e.is_file() and _is_image(e.name) for e in entries)


def class_wnids(root: str | Path, *, wnids: Sequence[str] | None = None) -> list[str]:
    """The classes in use, sorted: all folders of ``root/train`` or the subset `wnids`.

    Parameters
    ----------
    root : str or Path
        ImageNet root holding ``train/<wnid>/``.
    wnids : sequence of str, optional
        A subset (e.g. :func:`imagenet100_wnids`); each needs a ``train/<wnid>/`` folder.

    Returns
    -------
    list[str]
        Sorted wnids; the label of a class is its index (SPEC 1).

    Raises
    ------
    DatasetError
        The root or its train folder is missing, holds non-wnid folders, or lacks subset classes.
    ValueError
        `wnids` holds malformed or duplicate ids.
    """
    root = Path(root)
    train = root / "train"
    if not root.is_dir():
        raise DatasetError(f"ImageNet root {str(root)!r} does not exist; expected {_LAYOUT}")
    if not train.is_dir():
        raise DatasetError(
            f"ImageNet train folder {str(train)!r} does not exist; expected {_LAYOUT}"
        )
    present = _class_folders(train)
    if not present:
        raise DatasetError(f"{train} holds no class folders; expected {_LAYOUT}")
    if wnids is None:
        return present
    wanted = _check_wnids(list(wnids), "wnid subset")
    missing = sorted(set(wanted) - set(present))
    if missing:
        raise DatasetError(
            f"{train} lacks {len(missing)} of the {len(wanted)} requested classes: "
            f"{missing[:10]}{' ...' if len(missing) > 10 else ''}; expected a folder per wnid"
        )
    return wanted


def _read_val_labels(path: Path) -> dict[str, str]:
    """File name (or, in Kaggle's CSV, file stem) -> wnid, from either label format."""
    lines = path.read_text().splitlines()
    kaggle = bool(lines) and lines[0].strip().startswith("ImageId,")
    entries: dict[str, str] = {}
    for number, line in enumerate(lines[1:] if kaggle else lines, start=2 if kaggle else 1):
        if not line.strip():
            continue
        if kaggle:
            # "ImageId,PredictionString": the first token is the wnid of the first box.
            image_id, _, predictions = line.partition(",")
            tokens = [image_id.strip(), *predictions.split()[:1]]
        else:
            tokens = line.split()
        if len(tokens) != 2 or not _WNID.fullmatch(tokens[1]):
            expected = "ImageId,<wnid> ..." if kaggle else "<file name> <wnid>"
            raise DatasetError(f"{path} line {number}: {line.strip()!r}; expected {expected!r}")
        entries[tokens[0]] = tokens[1]
    if not entries:
        raise DatasetError(f"{path} holds no labels; expected one '<file name> <wnid>' per line")
    return entries


def _val_files(
    root: Path, classes: list[str], val_labels: str | Path | None, *, subset: bool
) -> list[tuple[str, Path]]:
    """(wnid, path) of the validation images of `classes`; files of other classes are skipped
    only when `classes` is a subset."""
    val = root / "val"
    if not val.is_dir():
        raise DatasetError(f"ImageNet val folder {str(val)!r} does not exist; expected {_LAYOUT}")
    in_use = set(classes)
    folders = _class_folders(val)
    if folders:
        missing = sorted(in_use - set(folders))
        if missing:
            raise DatasetError(
                f"{val} has class folders but lacks {len(missing)} classes in use "
                f"{missing[:10]}; expected one folder per class of train/"
            )
        unknown = sorted(set(folders) - in_use)
        if unknown and not subset:
            raise DatasetError(
                f"{val} has folders of classes without a train/ folder in {root}: {unknown[:10]}"
            )
        return [(w, val / w / name) for w in classes for name in _image_names(val / w)]
    if val_labels is None:
        found = [root / name for name in VAL_LABEL_FILES if (root / name).is_file()]
        if not found:
            raise DatasetError(
                f"{val} is flat (no class folders) and no label file was given or found: "
                f"expected {' or '.join(str(root / n) for n in VAL_LABEL_FILES)}"
            )
        val_labels = found[0]
    labels_path = Path(val_labels)
    if not labels_path.is_file():
        raise DatasetError(f"val label file {str(labels_path)!r} does not exist")
    entries = _read_val_labels(labels_path)
    unknown_wnids = sorted({w for w in entries.values() if w not in in_use})
    if unknown_wnids and not subset:
        raise DatasetError(
            f"{labels_path} names wnids without a train/ folder in {root}: {unknown_wnids[:10]}"
        )
    files, unlabelled, matched = [], [], set()
    for name in _image_names(val):
        key = name if name in entries else name.rsplit(".", 1)[0]
        if key not in entries:
            unlabelled.append(name)
            continue
        matched.add(key)
        if entries[key] in in_use:
            files.append((entries[key], val / name))
    absent = sorted(k for k, w in entries.items() if w in in_use and k not in matched)
    problems = []
    if unlabelled:
        problems.append(f"images without a label ({len(unlabelled)}): {unlabelled[:5]}")
    if absent:
        problems.append(f"labelled files missing from {val} ({len(absent)}): {absent[:5]}")
    if problems:
        raise DatasetError(
            f"{val} and its label file {labels_path} disagree: {'; '.join(problems)}; "
            "expected one label per image"
        )
    return sorted(files)


def check_imagenet_root(
    root: str | Path,
    *,
    wnids: Sequence[str] | None = None,
    val_labels: str | Path | None = None,
    num_classes: int | None = None,
) -> None:
    """Raise DatasetError naming the path and what was expected there (SPEC 1).

    Only folders are listed and the label file read; no image is opened and torch is not
    imported, so the workflow calls this while it builds the DAG.

    Parameters
    ----------
    root : str or Path
        ImageNet root (see module docstring for the layouts).
    wnids : sequence of str, optional
        Restrict to these classes (ImageNet100: :func:`imagenet100_wnids`).
    val_labels : str or Path, optional
        Label file for a flat val folder; default: the first of `VAL_LABEL_FILES` in `root`.
    num_classes : int, optional
        The number of classes the study expects (1000 for ImageNet1k).
    """
    root = Path(root)
    classes = class_wnids(root, wnids=wnids)
    if num_classes is not None and len(classes) != num_classes:
        raise DatasetError(
            f"{root / 'train'} has {len(classes)} classes in use, expected {num_classes}"
        )
    empty = [w for w in classes if not _has_image(root / "train" / w)]
    if empty:
        raise DatasetError(
            f"{root / 'train'}: class folders without images {empty[:10]}; "
            f"expected {'/'.join(IMAGE_SUFFIXES)} files in each"
        )
    if not _val_files(root, classes, val_labels, subset=wnids is not None):
        raise DatasetError(f"{root / 'val'} holds no images of the {len(classes)} classes")


def imagenet_files(
    root: str | Path,
    split: Literal["train", "eval"],
    *,
    wnids: Sequence[str] | None = None,
    val_labels: str | Path | None = None,
) -> tuple[list[Path], np.ndarray]:
    """Image paths and labels of a split, sorted by class then file name (deterministic).

    Parameters
    ----------
    root : str or Path
        ImageNet root; ``train`` reads ``root/train``, ``eval`` reads ``root/val``.
    split : {"train", "eval"}
    wnids : sequence of str, optional
        Restrict to these classes; labels are then 0..len(wnids)-1 in sorted-wnid order.
    val_labels : str or Path, optional
        Label file for a flat val folder: Kaggle's ``LOC_val_solution.csv`` or lines
        ``<file name> <wnid>``; default: the first of `VAL_LABEL_FILES` in `root`.

    Returns
    -------
    paths : list[Path]
        (N,) image files.
    labels : np.ndarray
        (N,) int64, index of the file's wnid in :func:`class_wnids`.
    """
    root = Path(root)
    classes = class_wnids(root, wnids=wnids)
    if split == "train":
        pairs = [
            (w, root / "train" / w / n) for w in classes for n in _image_names(root / "train" / w)
        ]
    elif split == "eval":
        pairs = _val_files(root, classes, val_labels, subset=wnids is not None)
    else:
        raise ValueError(f"unknown split {split!r}; allowed: train, eval")
    if not pairs:
        raise DatasetError(f"{root} holds no {split} images of the {len(classes)} classes")
    index = {w: i for i, w in enumerate(classes)}
    labels = np.fromiter((index[w] for w, _ in pairs), dtype=np.int64, count=len(pairs))
    log.info("%s: %d %s images of %d classes", root, len(pairs), split, len(classes))
    return [p for _, p in pairs], labels


def _to_float() -> list[Callable]:
    import torch
    from torchvision.transforms import v2

    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()]


class Lighting:
    """AlexNet-style PCA lighting noise, as the robustness library's ``Lighting`` (SPEC 2).

    Adds ``eigvec @ (alpha * eigval)`` to every pixel, alpha ~ N(0, alphastd^2) per channel
    drawn from torch's global generator (so ``torch.manual_seed`` reproduces it).
    """

    def __init__(self, alphastd: float) -> None:
        if not alphastd >= 0:
            raise ValueError(f"alphastd must be >= 0, got {alphastd!r}")
        self.alphastd = alphastd

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Image (3 x H x W) in [0, 1] -> the same with lighting noise, clamped to [0, 1]."""
        import torch

        alpha = torch.randn(3) * self.alphastd
        rgb = torch.tensor(IMAGENET_PCA_EIGVEC) @ (alpha * torch.tensor(IMAGENET_PCA_EIGVAL))
        # robustness does not clamp, leaving pixels up to ~0.03 outside [0, 1]; models and the
        # PGD projection assume pixel space [0, 1] (SPEC 1, 2), so the clean input must lie in it.
        return (img + rgb.to(img.dtype).view(3, 1, 1)).clamp_(0.0, 1.0)


def imagenet_train_transform(size: int = 224) -> Callable[[Image], torch.Tensor]:
    """The robustness library's ImageNet training augmentation (SPEC 2).

    RandomResizedCrop(size), horizontal flip, ColorJitter(.1, .1, .1) on the PIL image, then a
    float tensor (3 x size x size) in [0, 1] with lighting noise 0.05. Random draws come from
    torch's global generator.
    """
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomResizedCrop(size),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1),
            *_to_float(),
            Lighting(0.05),
        ]
    )


def imagenet_eval_transform(size: int = 224, resize: int = 256) -> Callable[[Image], torch.Tensor]:
    """Resize(resize) + CenterCrop(size) to a float tensor (3 x size x size) in [0, 1] (SPEC 2)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(resize), v2.CenterCrop(size), *_to_float()])


class ImageFileDataset:
    """Images read from their files on access; items are (float 3 x H x W in [0, 1], label).

    Parameters
    ----------
    paths : sequence of str or Path
        (N,) image files, e.g. from :func:`imagenet_files`.
    labels : array-like of int
        (N,) labels.
    transform : callable, optional
        PIL RGB image -> float tensor; default: the image at its own size, scaled to [0, 1].
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: np.ndarray | Sequence[int],
        transform: Callable[[Image], torch.Tensor] | None = None,
    ) -> None:
        from torchvision.transforms import v2

        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.ndim != 1 or len(self.labels) != len(paths):
            raise ValueError(f"{len(paths)} paths but labels of shape {self.labels.shape}")
        # One bytes array instead of a list of objects: DataLoader workers then share its pages
        # (reference counting of 1.28M list items would copy them into every worker).
        self._paths = np.array([os.fsencode(p) for p in paths], dtype=np.bytes_)
        self.transform = transform if transform is not None else v2.Compose(_to_float())

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with Image.open(os.fsdecode(self._paths[index])) as img:
            rgb = img.convert("RGB")
        return self.transform(rgb), int(self.labels[index])
