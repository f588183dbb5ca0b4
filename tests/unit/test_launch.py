"""The train_model rule's torchrun path: 2 real ranks (gloo on CPU) train one study model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from robuniv.launch import launch_train, torchrun_command
from robuniv.models import load_checkpoint

TRAIN = {
    "n_images": 64,
    "epochs": 1,
    "augment": False,
    "batch_size": 16,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "lr_step_epochs": 1,
    "lr_gamma": 0.1,
    "attack_steps": 2,
    "seed": 0,
    "num_workers": 0,
    "amp": False,
    "channels_last": False,
    "nproc_per_node": 2,
}


def stage(root: Path, checkpoint: Path, **train: object) -> dict:
    return {
        "arch": "vgg16_bn",
        "eps": 0.5,
        "run": 0,
        "model": {"width": 0.0625, "adapt_stem": None},
        "dataset": {"name": "fashion_mnist", "root": str(root)},
        "train": {**TRAIN, **train},
        "checkpoint": str(checkpoint),
        "provenance": {"study": "launch-test"},
    }


def test_command_runs_this_python_under_torchrun(tmp_path: Path) -> None:
    command = torchrun_command(tmp_path / "a.json", 4)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc_per_node=4" in command and command[-1] == str(tmp_path / "a.json")
    with pytest.raises(ValueError, match="nproc_per_node=1"):
        torchrun_command(tmp_path / "a.json", 1)


def test_two_ranks_train_one_checkpoint(fashion_mnist_root: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    log_file = tmp_path / "train.log"
    launch_train(
        stage(fashion_mnist_root, checkpoint),
        nproc_per_node=2,
        threads=2,
        device="cpu",
        log_file=log_file,
    )
    _, ckpt = load_checkpoint(checkpoint)
    meta = ckpt["robuniv"]
    assert meta["world_size"] == 2
    assert meta["train_subset_size"] == 64
    assert len(meta["history"]) == 1
    text = log_file.read_text()
    assert "rank 0" in text and "rank 1" in text
    assert not Path(f"{checkpoint}.resume").exists()


def test_failed_rank_raises_and_writes_nothing(fashion_mnist_root: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    # 15 images per global batch cannot split over 2 ranks: every rank refuses to train.
    with pytest.raises(RuntimeError, match="2 ranks failed with exit status"):
        launch_train(
            stage(fashion_mnist_root, checkpoint, batch_size=15),
            nproc_per_node=2,
            threads=2,
            device="cpu",
            log_file=tmp_path / "train.log",
        )
    assert not checkpoint.exists()
    assert "divisible by the world size 2" in (tmp_path / "train.log").read_text()
