"""A study of a trained, a RobustBench-loaded and a timm-loaded model, through Snakemake to
Fig 9, on real Fashion-MNIST; and the one-line refusals of bad `models:` entries.

No hub access here: each library's architecture is built locally and its weights saved where
its loader looks first (RobustBench's model_dir/<dataset>/<threat_model>/<name>.pt, a local
file for timm), so the real loaders run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from smoke import STUDY, planned_jobs, snakemake, write_config

from robuniv import io

pytestmark = pytest.mark.workflow
pytest.importorskip("timm")

RB_NAME = "Sehwag2021Proxy_R18"
TIMM_NAME = "test_byobnet.r160_in1k"


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import timm

    from robuniv.zoo import _robustbench_models

    root = tmp_path_factory.mktemp("zoo-files")
    torch.manual_seed(0)
    rb = _robustbench_models("test", "cifar10", "L2")[RB_NAME]["model"]()
    rb_file = root / "cache" / "robustbench" / "cifar10" / "L2" / f"{RB_NAME}.pt"
    rb_file.parent.mkdir(parents=True)
    torch.save({"state_dict": rb.state_dict()}, rb_file)
    timm_file = root / "byob.pth"
    torch.save(timm.create_model(TIMM_NAME, num_classes=10).state_dict(), timm_file)
    return {"cache": root / "cache", "timm": timm_file}


def zoo_config(
    path: Path, data_root: Path, files: dict[str, Path], models: list[dict], layers: dict
) -> Path:
    return write_config(
        path,
        data_root,
        archs=["resnet18"],
        runs=[0],
        layers=layers,
        models=models,
        model_cache=str(files["cache"]),
    )


# Three layers of each model, by its own module names (loaded models by their id).
LAYERS = {
    "resnet18": ["layer1", "layer2", "layer3"],
    "rb_r18": ["layer1", "layer2", "layer3"],
    "timm_byob": ["stages.0", "stages.1", "stages.2"],
}


def good_models(files: dict[str, Path]) -> list[dict]:
    return [
        {"id": "rb_r18", "source": "robustbench", "name": RB_NAME, "dataset": "cifar10",
         "threat_model": "L2", "eps": 1},
        {"id": "timm_byob", "source": "timm", "name": TIMM_NAME, "num_classes": 10,
         "path": str(files["timm"]), "eps": 0},
    ]  # fmt: skip


def test_trained_robustbench_and_timm_models_go_through_to_fig9(
    tmp_path: Path, fashion_mnist_root: Path, zoo_files: dict[str, Path]
) -> None:
    config = zoo_config(
        tmp_path / "config.yaml", fashion_mnist_root, zoo_files, good_models(zoo_files), LAYERS
    )
    jobs = planned_jobs(tmp_path, config, "fig9")
    assert jobs["load_model"] == 2 and jobs["train_model"] == 2 and jobs["plot_fig9"] == 1
    snakemake(tmp_path, config, "fig9")
    results = tmp_path / "results" / STUDY
    for model in ("rb_r18/eps1", "timm_byob/eps0"):
        assert (results / "models" / model / "loaded.pt").is_file()
    assert (results / "figures" / "fig9_depth.png").read_bytes().startswith(b"\x89PNG")
    table = io.read_table(results / "tables" / "similarity.tsv")
    cka = table[table["measure"] == "cka"]
    pairs = {(a, b) for a, b in zip(cka["model_a"], cka["model_b"], strict=True)}
    # Each eps compares the trained ResNet-18 with the loaded model of that eps.
    assert pairs == {("rb_r18", "resnet18"), ("resnet18", "timm_byob")}, pairs
    loaded = io.read_h5_meta(results / "activations" / "eps1.h5", "rb_r18/run0")
    assert loaded["layer"] == "linear:in"
    print(
        "zoo study:",
        dict(sorted(jobs.items())),
        "\n",
        cka[["eps", "model_a", "model_b", "inputs", "layer", "value"]].to_string(),
    )


def test_bad_entries_are_refused_in_one_line_with_nothing_written(
    tmp_path: Path, fashion_mnist_root: Path, zoo_files: dict[str, Path]
) -> None:
    truncated = tmp_path / "truncated.pth"
    data = zoo_files["timm"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    timm_entry = {"source": "timm", "name": TIMM_NAME, "num_classes": 10, "eps": 0}
    models = [
        {**timm_entry, "id": "bad_hash", "path": str(zoo_files["timm"]), "sha256": "0" * 64},
        {**timm_entry, "id": "truncated", "path": str(truncated)},
        {"id": "bad_name", "source": "robustbench", "name": "Sehwag2021", "dataset": "cifar10",
         "threat_model": "L2", "eps": 1},
    ]  # fmt: skip
    config = zoo_config(tmp_path / "config.yaml", fashion_mnist_root, zoo_files, models, {})
    targets = [
        f"results/{STUDY}/models/bad_hash/eps0/loaded.pt",
        f"results/{STUDY}/models/truncated/eps0/loaded.pt",
        f"results/{STUDY}/models/bad_name/eps1/loaded.pt",
    ]
    result = snakemake(tmp_path, config, "--keep-going", *targets, check=False)
    assert result.returncode != 0
    lines = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.startswith("robuniv: ")
    ]
    print("\n".join(lines))
    assert len(lines) == 3, result.stdout + result.stderr
    expected = {
        "bad_hash": "the config pins 0000",
        "truncated": "is truncated",
        "bad_name": "no such RobustBench model for cifar10 L2; nearest: Sehwag2021Proxy",
    }
    for model, reason in expected.items():
        assert any(f"model '{model}'" in line and reason in line for line in lines), model
    assert not list((tmp_path / "results").rglob("*.pt"))
