"""ImageNet roots built from the real ImageNet JPEGs that ship in the foolbox 3.3.4 wheel."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robuniv.data import DatasetError
from robuniv.imagefolder import (
    IMAGENET_PCA_EIGVAL,
    IMAGENET_PCA_EIGVEC,
    ImageFileDataset,
    Lighting,
    check_imagenet_root,
    class_wnids,
    imagenet100_wnids,
    imagenet_eval_transform,
    imagenet_files,
    imagenet_train_transform,
)


def jpegs(data: Path) -> list[tuple[Path, int]]:
    """(file, ImageNet label) of the wheel's ImageNet images."""
    files = sorted(data.glob("imagenet_*.jpg"))
    assert len(files) == 20
    return [(f, int(f.stem.split("_")[2])) for f in files]


def label_wnids(data: Path) -> dict[int, str]:
    """Every third label gets a wnid outside ImageNet100; the rest ImageNet100 wnids in reverse,
    so sorted-wnid order differs from the labels' order."""
    labels = sorted({label for _, label in jpegs(data)})
    inside = iter(reversed(imagenet100_wnids()))
    return {
        label: f"n{label:08d}" if i % 3 == 2 else next(inside) for i, label in enumerate(labels)
    }


def val_name(source: Path) -> str:
    return f"ILSVRC2012_val_{int(source.stem.split('_')[1]):08d}.JPEG"


def build_root(dest: Path, data: Path, *, val: str = "folders") -> Path:
    """An ImageNet root of symlinks: every image in train/ and val/ (layout `val`), plus
    dest/LOC_val_solution.csv (flat layout only) and dest/val_labels.txt naming the val files."""
    wnid_of = label_wnids(data)
    csv, txt = ["ImageId,PredictionString"], []
    for source, label in jpegs(data):
        wnid = wnid_of[label]
        (dest / "train" / wnid).mkdir(parents=True, exist_ok=True)
        (dest / "train" / wnid / source.name).symlink_to(source)
        folder = dest / "val" / (wnid if val == "folders" else "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / val_name(source)).symlink_to(source)
        csv.append(f"{val_name(source)[:-5]},{wnid} 1 2 300 400 {wnid} 5 6 70 80")
        txt.append(f"{val_name(source)}  {wnid}")
    if val == "flat":
        (dest / "LOC_val_solution.csv").write_text("\n".join(csv) + "\n")
    (dest / "val_labels.txt").write_text("\n".join(txt) + "\n")
    return dest


def pairs(files: list[Path], labels: np.ndarray) -> list[tuple[str, int]]:
    """(source image, label) pairs, comparable across layouts."""
    return [(f.resolve().name, int(y)) for f, y in zip(files, labels)]


def test_imagenet100_wnids_are_100_sorted_distinct_wordnet_ids() -> None:
    wnids = imagenet100_wnids()
    assert len(set(wnids)) == 100 and wnids == sorted(wnids)
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)


def test_train_labels_are_indices_in_sorted_wnid_order_sorted_by_class_then_name(
    foolbox_data: Path, tmp_path: Path
) -> None:
    root = build_root(tmp_path, foolbox_data)
    files, labels = imagenet_files(root, "train")
    wnids = class_wnids(root)
    wnid_of = label_wnids(foolbox_data)
    assert wnids == sorted(wnid_of.values()) and labels.dtype == np.int64
    assert len(files) == 20 and np.all(np.diff(labels) >= 0)
    for f, y in zip(files, labels):
        assert f.parent.name == wnids[y] == wnid_of[int(f.resolve().stem.split("_")[2])]
    assert files == sorted(files, key=lambda f: (f.parent.name, f.name))
    # The two images of label 609 share a class.
    assert len({y for f, y in zip(files, labels) if f.name.endswith("_609.jpg")}) == 1


def test_class_folder_and_flat_val_give_the_same_files_and_labels(
    foolbox_data: Path, tmp_path: Path
) -> None:
    folders = build_root(tmp_path / "folders", foolbox_data, val="folders")
    flat = build_root(tmp_path / "flat", foolbox_data, val="flat")
    expected = pairs(*imagenet_files(folders, "train"))
    from_folders = pairs(*imagenet_files(folders, "eval"))
    from_csv = pairs(*imagenet_files(flat, "eval"))  # LOC_val_solution.csv found in the root
    (flat / "LOC_val_solution.csv").unlink()
    from_txt = pairs(*imagenet_files(flat, "eval"))  # then val_labels.txt
    (flat / "val_labels.txt").rename(flat / "renamed.txt")
    from_explicit = pairs(*imagenet_files(flat, "eval", val_labels=flat / "renamed.txt"))
    assert sorted(from_folders) == sorted(expected)
    assert from_folders == from_csv == from_txt == from_explicit


def test_imagenet100_view_keeps_only_listed_classes_with_labels_in_sorted_order(
    foolbox_data: Path, tmp_path: Path
) -> None:
    root = build_root(tmp_path, foolbox_data, val="flat")
    wnid_of = label_wnids(foolbox_data)
    subset = [w for w in reversed(imagenet100_wnids()) if w in wnid_of.values()][:5]
    for split in ("train", "eval"):
        files, labels = imagenet_files(root, split, wnids=subset)
        expected = [
            (s.name, sorted(subset).index(wnid_of[y]))
            for s, y in jpegs(foolbox_data)
            if wnid_of[y] in subset
        ]
        assert sorted(pairs(files, labels)) == sorted(expected)
        assert sorted(set(labels.tolist())) == list(range(5))
    # The real list: a view of a root holding all 100 classes (most empty here) and 6 others.
    for wnid in imagenet100_wnids():
        (root / "train" / wnid).mkdir(exist_ok=True)
    files, labels = imagenet_files(root, "eval", wnids=imagenet100_wnids())
    expected = [
        (s.name, imagenet100_wnids().index(wnid_of[y]))
        for s, y in jpegs(foolbox_data)
        if wnid_of[y] in imagenet100_wnids()
    ]
    assert 0 < len(expected) < 20 and sorted(pairs(files, labels)) == sorted(expected)


def break_root(root: Path, how: str) -> tuple[dict[str, object], str]:
    """Damage `root` in one way; return the keyword arguments to use and the expected message."""
    wnid = min((root / "train").iterdir()).name
    train, val = re.escape(str(root / "train")), re.escape(str(root / "val"))
    if how == "no root":
        return {"root": root / "nowhere"}, f"{re.escape(str(root / 'nowhere'))}'.*train/<wnid>/"
    if how == "no train":
        (root / "train").rename(root / "training")
        return {}, f"{train}'.*train/<wnid>/"
    if how == "no val":
        (root / "val").rename(root / "validation")
        return {}, f"{val}'.*val/"
    if how == "flat val without label file":
        (root / "LOC_val_solution.csv").unlink()
        (root / "val_labels.txt").unlink()
        return {}, f"{val} is flat.*{re.escape(str(root / 'LOC_val_solution.csv'))}"
    if how == "label file names an unknown file":
        with open(root / "val_labels.txt", "a") as f:
            f.write(f"ILSVRC2012_val_99999999.JPEG {wnid}\n")
        return {"val_labels": root / "val_labels.txt"}, (
            rf"disagree: labelled files missing from {val} \(1\): \['ILSVRC2012_val_99999999.JPEG'\];"
        )
    if how == "label file names an unknown wnid":
        text = (root / "val_labels.txt").read_text()
        (root / "val_labels.txt").write_text(text.replace(wnid, "n99999999", 1))
        return {"val_labels": root / "val_labels.txt"}, "without a train/ folder.*n99999999"
    if how == "label file line is no wnid":
        (root / "val_labels.txt").write_text("ILSVRC2012_val_00000001.JPEG 65\n")
        return {"val_labels": root / "val_labels.txt"}, "line 1.*<file name> <wnid>"
    if how == "image without a label":
        lines = (root / "val_labels.txt").read_text().splitlines()
        (root / "val_labels.txt").write_text("\n".join(lines[1:]))
        return {
            "val_labels": root / "val_labels.txt"
        }, r"disagree: images without a label \(1\): \['ILSVRC2012_val_00000000.JPEG'\];"
    if how == "subset with missing classes":
        return {"wnids": [wnid, "n09999999"]}, f"{train} lacks 1 of the 2 .*n09999999"
    if how == "folder that is not a wnid":
        (root / "train" / "cats").mkdir()
        return {}, f"{train} holds folders that are not wnids: \\['cats'\\]"
    raise ValueError(how)


@pytest.mark.parametrize(
    "how",
    [
        "no root",
        "no train",
        "no val",
        "flat val without label file",
        "label file names an unknown file",
        "label file names an unknown wnid",
        "label file line is no wnid",
        "image without a label",
        "subset with missing classes",
        "folder that is not a wnid",
    ],
)
def test_broken_root_fails_naming_the_path_and_the_expectation(
    foolbox_data: Path, tmp_path: Path, how: str
) -> None:
    root = build_root(tmp_path / "imagenet", foolbox_data, val="flat")
    check_imagenet_root(root)
    kwargs, message = break_root(root, how)
    kwargs = {"root": root, **kwargs}
    with pytest.raises(DatasetError, match=message):
        check_imagenet_root(**kwargs)
    with pytest.raises(DatasetError, match=message):
        imagenet_files(split="eval", **kwargs)


def test_check_rejects_empty_class_folders_and_a_wrong_class_count(
    foolbox_data: Path, tmp_path: Path
) -> None:
    root = build_root(tmp_path, foolbox_data)
    check_imagenet_root(root, num_classes=19)
    with pytest.raises(DatasetError, match=f"{re.escape(str(root))}/train has 19 .*expected 1000"):
        check_imagenet_root(root, num_classes=1000)
    (root / "train" / "n00000001").mkdir()
    with pytest.raises(DatasetError, match=r"class folders without images \['n00000001'\]"):
        check_imagenet_root(root)


def test_check_imagenet_root_imports_neither_torch_nor_pil(
    foolbox_data: Path, tmp_path: Path
) -> None:
    root = build_root(tmp_path, foolbox_data, val="flat")
    code = (
        "import sys; from robuniv.imagefolder import check_imagenet_root, imagenet100_wnids; "
        f"check_imagenet_root({str(root)!r}); imagenet100_wnids(); "
        "print(sorted(m for m in ('torch', 'torchvision', 'PIL') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_items_without_transform_are_the_jpeg_pixels_at_true_resolution(
    foolbox_data: Path, tmp_path: Path
) -> None:
    files, labels = imagenet_files(build_root(tmp_path, foolbox_data), "eval")
    ds = ImageFileDataset(files, labels)
    assert len(ds) == 20 and ds.labels.dtype == np.int64
    sizes = set()
    for i in (0, [f.resolve().name for f in files].index("imagenet_10_541.jpg")):
        x, y = ds[i]
        pixels = np.asarray(Image.open(files[i]).convert("RGB"))
        assert y == labels[i] and isinstance(y, int) and x.dtype == torch.float32
        assert np.array_equal((x.numpy() * 255).round().astype(np.uint8), pixels.transpose(2, 0, 1))
        sizes.add(tuple(x.shape))
    assert sizes == {(3, 512, 512), (3, 683, 1024)}


@pytest.mark.parametrize("make", [imagenet_train_transform, imagenet_eval_transform])
def test_both_transforms_give_3x224x224_float_images_in_unit_range(
    foolbox_data: Path, tmp_path: Path, make: Callable
) -> None:
    ds = ImageFileDataset(*imagenet_files(build_root(tmp_path, foolbox_data), "train"), make())
    for i in range(len(ds)):
        x, y = ds[i]
        assert type(x) is torch.Tensor and x.shape == (3, 224, 224) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and y == ds.labels[i]


def test_train_transform_is_reproducible_under_a_seed_and_random_across_seeds(
    foolbox_data: Path, tmp_path: Path
) -> None:
    ds = ImageFileDataset(
        *imagenet_files(build_root(tmp_path, foolbox_data), "train"), imagenet_train_transform()
    )

    def draw(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return ds[3][0]

    assert torch.equal(draw(0), draw(0)) and not torch.equal(draw(0), draw(1))


def test_eval_transform_is_deterministic_resize_256_then_centre_crop_224(
    foolbox_data: Path, tmp_path: Path
) -> None:
    from torchvision.transforms import functional as F

    files, labels = imagenet_files(build_root(tmp_path, foolbox_data), "eval")
    index = [f.resolve().name for f in files].index("imagenet_10_541.jpg")
    x = ImageFileDataset(files, labels, imagenet_eval_transform())[index][0]
    # torchvision's classic (robustness-era) pipeline on the same 1024 x 683 JPEG.
    reference = F.to_tensor(
        F.center_crop(F.resize(Image.open(files[index]).convert("RGB"), 256), 224)
    )
    assert torch.allclose(x, reference, atol=1e-6)


def test_lighting_adds_the_robustness_pca_shift_per_channel() -> None:
    img = torch.full((3, 8, 8), 0.5)
    torch.manual_seed(7)
    out = Lighting(0.05)(img.clone())
    # robustness' Lighting.__call__, verbatim apart from names.
    torch.manual_seed(7)
    alpha = img.new().resize_(3).normal_(0, 0.05)
    eigval, eigvec = torch.tensor(IMAGENET_PCA_EIGVAL), torch.tensor(IMAGENET_PCA_EIGVEC)
    rgb = eigvec.clone().mul(alpha.view(1, 3).expand(3, 3))
    rgb = rgb.mul(eigval.view(1, 3).expand(3, 3)).sum(1).squeeze()
    assert torch.allclose(out, img.add(rgb.view(3, 1, 1).expand_as(img)), atol=1e-7)
    # Unlike robustness, the result stays in pixel space: black and white images, same draw.
    for base in (0.0, 1.0):
        torch.manual_seed(7)
        out = Lighting(0.05)(torch.full((3, 2, 2), base))
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    with pytest.raises(ValueError, match="alphastd must be >= 0, got -1"):
        Lighting(-1)


def test_full_size_resnet50_trains_a_step_on_real_224_images(
    foolbox_data: Path, tmp_path: Path
) -> None:
    from robuniv.models import ModelSpec, build_model

    root = build_root(tmp_path, foolbox_data)
    files, labels = imagenet_files(root, "train")
    ds = ImageFileDataset(files, labels, imagenet_train_transform())
    torch.manual_seed(0)
    x, y = map(torch.stack, zip(*[(ds[i][0], torch.tensor(ds[i][1])) for i in (0, 5, 10, 15)]))
    model = build_model(ModelSpec("resnet50", num_classes=len(class_wnids(root))), seed=0)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert x.shape == (4, 3, 224, 224) and torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert float(model.model.conv1.weight.grad.abs().sum()) > 0
