"""Two complete runs of the smoke study, shared by every workflow test of the session.

While the second run works, two more `snakemake` processes are started in its folder, as
a user might by mistake (what they did is kept for tests/workflow/test_concurrency.py), and
then one job of each heavy rule is SIGKILLed at a seeded moment and the study rerun as a
user would (tests/workflow/faults.py; the fault matrix is kept for test_faults.py). The
byte-identity test then shows that none of it changed a byte of the results.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from faults import Fault, run_with_faults
from smoke import Interference, SmokeSession, command, snakemake, write_config

FAULT_SEED = 11


def _run_with_interference(workdir: Path, config: Path) -> tuple[Interference, list[Fault]]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    run = command(workdir, config, "--cores", "2")
    first = subprocess.Popen(
        run, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        # Snakemake locks the folder once the DAG is built, before the first job starts.
        locks = workdir / ".snakemake" / "locks"
        deadline = time.monotonic() + 300
        while not (locks.is_dir() and any(locks.iterdir())):
            if first.poll() is not None:
                raise AssertionError(f"smoke run failed:\n{first.communicate()[0]}")
            assert time.monotonic() < deadline, "the smoke run never took its lock"
            time.sleep(0.1)
        # A plain second run stops at the lock, or, once a job of the first has started, at
        # its outputs marked incomplete; with --rerun-incomplete (as the SLURM profile sets
        # it, and as that message advises) it must stop at the lock, not delete the running
        # jobs' files.
        plain = snakemake(workdir, config, check=False)
        rerun = snakemake(workdir, config, "--rerun-incomplete", check=False)
        still_running = first.poll() is None
        faults = run_with_faults(run, workdir, env, FAULT_SEED, first)
    finally:
        if first.poll() is None:
            first.kill()
    return Interference(plain, rerun, still_running, locks), faults


@pytest.fixture(scope="session")
def smoke_session(
    tmp_path_factory: pytest.TempPathFactory, fashion_mnist_root: Path
) -> SmokeSession:
    runs = []
    for i in range(2):
        workdir = tmp_path_factory.mktemp(f"smoke{i}")
        config = write_config(workdir / "config.yaml", fashion_mnist_root)
        if i == 0:
            snakemake(workdir, config)
        else:
            interference, faults = _run_with_interference(workdir, config)
        runs.append(workdir)
    return SmokeSession(runs, interference, faults)


@pytest.fixture(scope="session")
def smoke_runs(smoke_session: SmokeSession) -> list[Path]:
    """Two complete runs of the smoke study in separate folders."""
    return smoke_session.runs
