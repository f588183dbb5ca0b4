"""Shared fixtures: the real Fashion-MNIST root (Debian package or torchvision download)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
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


FOOLBOX_WHEEL = "foolbox-3.3.4-py3-none-any.whl"
# A wheel placed here (e.g. by CI) is used instead of asking the package index.
CACHE = Path.home() / ".cache" / "robuniv-test-data"


@pytest.fixture(scope="session")
def foolbox_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel's foolbox/data folder: 20 ImageNet JPEGs named imagenet_<i>_<label>.jpg."""
    wheel = CACHE / FOOLBOX_WHEEL
    if not wheel.is_file():
        download = tmp_path_factory.mktemp("wheel")
        command = [sys.executable, "-m", "pip", "download", "foolbox==3.3.4", "--no-deps"]
        command += ["--only-binary=:all:", "-d", str(download)]
        done = subprocess.run(command, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"pip cannot fetch the foolbox 3.3.4 wheel: {done.stderr[-300:]}")
        wheel = download / FOOLBOX_WHEEL
    out = tmp_path_factory.mktemp("foolbox")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(out, [n for n in archive.namelist() if n.startswith("foolbox/data/")])
    return out / "foolbox" / "data"
