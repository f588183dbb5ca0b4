"""Models from RobustBench, timm, torchvision and local files through their libraries' own
loaders (robuniv.zoo), offline: each architecture is built here and its weights saved where
the library's loader looks first, so the real loaders run, not mocks."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from robuniv.models import load_checkpoint, save_checkpoint
from robuniv.zoo import ModelEntry, ZooError, load_entry, load_model_stage, vet_file

pytest.importorskip("timm")
RB_NAME = "Sehwag2021Proxy_R18"  # a ResNet-18: the smallest CIFAR-10 L2 entry


def entry(**fields) -> ModelEntry:
    return ModelEntry.from_config({"id": "m", "eps": 0, **fields})


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache holding RobustBench's ResNet-18 where `load_model` looks first."""
    from robuniv.zoo import _robustbench_models

    root = tmp_path_factory.mktemp("zoo")
    net = _robustbench_models("test", "cifar10", "L2")[RB_NAME]["model"]()
    path = root / "robustbench" / "cifar10" / "L2" / f"{RB_NAME}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": net.state_dict()}, path)
    return root


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import timm

    torch.manual_seed(0)
    net = timm.create_model("test_byobnet.r160_in1k", num_classes=10)
    path = tmp_path_factory.mktemp("timm") / "byob.pth"
    torch.save(net.state_dict(), path)
    return path


def roundtrip(model, tmp_path: Path, x: torch.Tensor) -> None:
    """A loaded model, saved as a robuniv checkpoint and rebuilt, gives the same logits."""
    save_checkpoint(tmp_path / "m.pt", model, epoch=0)
    rebuilt, _ = load_checkpoint(tmp_path / "m.pt")
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_robustbench_model_loads_through_robustbench(cache: Path, tmp_path: Path) -> None:
    e = entry(source="robustbench", name=RB_NAME, dataset="cifar10", threat_model="L2")
    model = load_entry(e, cache_dir=cache, dataset="fashion_mnist")
    # RobustBench nets take [0, 1] CIFAR-sized images and normalise inside.
    assert model.spec.input_size == (32, 32) and model.spec.in_channels == 3
    assert model.spec.mean == (0.0,) * 3 and model.spec.penultimate == "linear:in"
    x = torch.rand(4, 1, 32, 32)  # Fashion-MNIST: grey, repeated to 3 channels
    assert model(x).shape == (4, 10)
    roundtrip(model, tmp_path, x)


def test_timm_model_loads_from_a_local_file(timm_file: Path, tmp_path: Path) -> None:
    e = entry(source="timm", name="test_byobnet.r160_in1k", num_classes=10, path=str(timm_file))
    model = load_entry(e, cache_dir=tmp_path, dataset="fashion_mnist")
    # Size and normalisation from timm's pretrained config, not the study's data.
    assert model.spec.input_size == (160, 160)
    assert model.spec.mean == pytest.approx((0.485, 0.456, 0.406))
    assert model.spec.penultimate == "head.fc:in"
    state = torch.load(timm_file, weights_only=True)
    assert torch.equal(model.model.state_dict()["stem.conv.weight"], state["stem.conv.weight"])
    roundtrip(model, tmp_path, torch.rand(2, 1, 32, 32))


def test_torchvision_weights_load_from_torch_hubs_cache(tmp_path: Path) -> None:
    import torchvision

    weights = torchvision.models.get_weight("MobileNet_V3_Small_Weights.IMAGENET1K_V1")
    cached = tmp_path / "torch" / "checkpoints" / os.path.basename(weights.url)
    cached.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), cached)
    e = entry(source="torchvision", weights="MobileNet_V3_Small_Weights.IMAGENET1K_V1")
    model = load_entry(e, cache_dir=tmp_path, dataset="imagenet1k")
    assert model.spec.arch == "mobilenet_v3_small" and model.spec.input_size == (224, 224)
    assert model.spec.penultimate == "classifier.3:in"
    roundtrip(model, tmp_path, torch.rand(1, 3, 224, 224))


def test_a_robuniv_checkpoint_file_brings_its_own_spec(tmp_path: Path) -> None:
    from robuniv.models import build_model
    from robuniv.pipeline import model_spec

    trained = build_model(model_spec("resnet18", "fashion_mnist", width=0.0625), seed=1)
    save_checkpoint(tmp_path / "mine.pt", trained, epoch=3)
    e = entry(source="file", arch="resnet18", path=str(tmp_path / "mine.pt"))
    model = load_entry(e, cache_dir=tmp_path, dataset="fashion_mnist")
    assert model.spec.width == 0.0625
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), trained.eval()(x))


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"source": "timm", "name": "resnet18x"}, "no such timm model; nearest: resnet18"),
        (
            {
                "source": "robustbench",
                "name": "Sehwag2021",
                "dataset": "cifar10",
                "threat_model": "L2",
            },
            "no such RobustBench model for cifar10 L2; nearest: Sehwag2021Proxy, Sehwag2021Proxy_R18",
        ),
        (
            {"source": "torchvision", "weights": "ResNet18_Weights.IMAGENET_V1"},
            "no such torchvision weights; nearest: ResNet18_Weights.IMAGENET1K_V1",
        ),
    ],
)
def test_unknown_names_are_refused_with_the_nearest(
    fields: dict, reason: str, cache: Path, tmp_path: Path
) -> None:
    with pytest.raises(ZooError) as err:
        load_model_stage(
            {"id": "bad", "eps": 0, **fields},
            cache_dir=cache,
            dataset={"name": "fashion_mnist"},
            output=tmp_path / "out.pt",
            provenance={},
        )
    message = str(err.value)
    assert "\n" not in message and message.startswith("model 'bad'") and reason in message
    assert not (tmp_path / "out.pt").exists()


def test_wrong_hash_and_truncated_file_are_refused_before_unpickling(
    timm_file: Path, tmp_path: Path
) -> None:
    fields = {"source": "timm", "name": "test_byobnet.r160_in1k", "num_classes": 10}
    with pytest.raises(ZooError, match=r"has sha256 [0-9a-f]{64}, the config pins 0{64}"):
        load_entry(entry(**fields, path=str(timm_file), sha256="0" * 64),
                   cache_dir=tmp_path, dataset="fashion_mnist")  # fmt: skip
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(timm_file.read_bytes()[: timm_file.stat().st_size // 2])
    with pytest.raises(ZooError, match="truncated"):
        load_entry(
            entry(**fields, path=str(truncated)), cache_dir=tmp_path, dataset="fashion_mnist"
        )


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _RunsCode(marker)}, hostile)
    e = entry(source="file", arch="resnet18", path=str(hostile))
    with pytest.raises(ZooError, match="does not load as plain weights"):
        vet_file(hostile, e)
    assert not marker.exists()
    # The same bytes with a plain pickle would have run it: the test can fail.
    with pytest.raises(Exception):  # noqa: B017 - torch.save's zip is not a bare pickle
        pickle.loads(hostile.read_bytes())
    assert not marker.exists()


def test_a_model_with_other_classes_is_refused(tmp_path: Path, timm_file: Path) -> None:
    e = entry(source="timm", name="test_byobnet.r160_in1k", num_classes=10, path=str(timm_file))
    with pytest.raises(ZooError, match="10 outputs, dataset 'imagenet1k' has 1000 classes"):
        load_entry(e, cache_dir=tmp_path, dataset="imagenet1k")
