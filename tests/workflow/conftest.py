"""Two complete runs of the smoke study, shared by every workflow test of the session."""

from __future__ import annotations

from pathlib import Path

import pytest
from smoke import snakemake, write_config


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory, fashion_mnist_root: Path) -> list[Path]:
    """Two complete runs of the smoke study in separate folders."""
    runs = []
    for i in range(2):
        workdir = tmp_path_factory.mktemp(f"smoke{i}")
        config = write_config(workdir / "config.yaml", fashion_mnist_root)
        snakemake(workdir, config)
        runs.append(workdir)
    return runs
