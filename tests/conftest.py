"""Shared fixtures: the real Fashion-MNIST root (Debian package or torchvision download)."""

from __future__ import annotations

from pathlib import Path

import pytest

from robuniv.data import DatasetError, check_root, fetch

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST_ROOT = REPO / "resources" / "fashion_mnist"


@pytest.fixture(scope="session")
def fashion_mnist_root() -> Path:
    """The real dataset; `./run.sh test` fetches it first, this only fills a gap."""
    try:
        check_root("fashion_mnist", FASHION_MNIST_ROOT)
    except DatasetError:
        fetch("fashion_mnist", FASHION_MNIST_ROOT)
    return FASHION_MNIST_ROOT
