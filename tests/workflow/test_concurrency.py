"""Two Snakemake processes in one folder, and two studies in one config."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import yaml
from smoke import STUDY, command, snakemake, write_config

# Every model of the smoke study: with one core, long enough (8 training jobs) for the
# second process to build its DAG and reach the lock while the first still holds it.
MODELS = [
    f"results/{STUDY}/models/{arch}/eps{eps}/run{run}.pt"
    for arch in ("resnet18", "vgg16_bn")
    for eps in (0, 1)
    for run in (0, 1)
]


def test_a_second_snakemake_in_the_same_folder_stops_at_the_lock_and_harms_nothing(
    tmp_path: Path, fashion_mnist_root: Path, smoke_runs: list[Path]
) -> None:
    config = write_config(tmp_path / "config.yaml", fashion_mnist_root)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    first = subprocess.Popen(
        command(tmp_path, config, "--cores", "1", *MODELS),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        # Snakemake locks the folder once the DAG is built, before the job starts.
        locks = tmp_path / ".snakemake" / "locks"
        deadline = time.monotonic() + 120
        while not (locks.is_dir() and any(locks.iterdir())):
            assert first.poll() is None, first.communicate()[0]
            assert time.monotonic() < deadline, "the first snakemake never took its lock"
            time.sleep(0.1)
        # A plain second run stops at the lock, or, once the first's job has started, at its
        # outputs marked incomplete;
        # with --rerun-incomplete (as the SLURM profile sets it, and as that message advises)
        # it must stop at the lock rather than delete the running job's files.
        plain = snakemake(tmp_path, config, *MODELS, check=False)
        second = snakemake(tmp_path, config, "--rerun-incomplete", *MODELS, check=False)
        still_running = first.poll() is None
        out, _ = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert still_running, "the first snakemake ended before the second reached the lock"
    assert plain.returncode != 0
    # Which check comes first depends on whether the first's job has started yet.
    said = plain.stdout + plain.stderr
    assert "IncompleteFilesException" in said or "cannot be locked" in said, said[-2000:]
    assert second.returncode != 0
    assert "cannot be locked" in second.stdout + second.stderr
    assert first.returncode == 0, out
    # Harms nothing: the first run's checkpoints have the bytes of an undisturbed run's.
    for model in MODELS:
        assert (tmp_path / model).read_bytes() == (smoke_runs[0] / model).read_bytes(), model
    assert not any(locks.iterdir())


def test_two_studies_in_one_config_share_no_output_file(
    tmp_path: Path, fashion_mnist_root: Path
) -> None:
    config_path = write_config(tmp_path / "config.yaml", fashion_mnist_root)
    config = yaml.safe_load(config_path.read_text())
    config["studies"]["other"] = config["studies"][STUDY]
    config_path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, config_path, "--summary")
    rows = [line.split("\t") for line in result.stdout.splitlines()[1:] if line.strip()]
    outputs = [row[0] for row in rows]
    assert len(outputs) == len(set(outputs)) > 100
    owners = {path: [s for s in (STUDY, "other") if f"/{s}/" in f"/{path}"] for path in outputs}
    # Every file belongs to exactly one study (results/, logs/ and benchmarks/ alike).
    assert all(len(studies) == 1 for studies in owners.values()), [
        path for path, studies in owners.items() if len(studies) != 1
    ]
    by_study = {s: {p for p, o in owners.items() if o == [s]} for s in (STUDY, "other")}
    assert len(by_study[STUDY]) == len(by_study["other"])
