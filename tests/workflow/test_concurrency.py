"""Two Snakemake processes in one folder, and two studies in one config."""

from __future__ import annotations

from pathlib import Path

import yaml
from smoke import STUDY, SmokeSession, snakemake, write_config


def test_a_second_snakemake_in_a_running_folder_stops_and_harms_nothing(
    smoke_session: SmokeSession,
) -> None:
    """Two snakemake calls in the folder of the second smoke run while it ran (conftest).

    That they harmed nothing is test_smoke's byte-identity test: the disturbed run's
    results/ has the bytes of the undisturbed one's.
    """
    seen = smoke_session.interference
    assert seen.first_still_running, "the smoke run ended before the others reached the lock"
    said = seen.plain.stdout + seen.plain.stderr
    assert seen.plain.returncode != 0
    # Which check comes first depends on whether a job of the first had started yet.
    assert "IncompleteFilesException" in said or "cannot be locked" in said, said[-2000:]
    said = seen.rerun_incomplete.stdout + seen.rerun_incomplete.stderr
    assert seen.rerun_incomplete.returncode != 0
    assert "cannot be locked" in said, said[-2000:]
    # Snakemake removed its lock when the run ended.
    assert not seen.locks.exists() or not any(seen.locks.iterdir())


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
