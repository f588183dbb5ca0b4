"""Running the smoke study (config.smoke.yaml) through real Snakemake, for the workflow tests."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "tests" / "workflow" / "config.smoke.yaml"
STUDY = "smoke"
# The figures every study produces (rules/common.smk FIGURES), by file name.
FIGURES = (
    "fig1_predictive_regular",
    "fig2_inversions",
    "fig3_predictive_inverted",
    "fig4_representational",
    "fig5_agreement_subsets",
    "fig6_probes",
    "fig7_agreement_bounds",
    "fig8_jaccard_k",
    "fig9_depth",
)


def command(workdir: Path, config: Path, *args: str) -> list[str]:
    snakefile = ["--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    return [sys.executable, "-m", "snakemake", *snakefile, "--configfile", str(config), *args]


def snakemake(
    workdir: Path, config: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    cmd = command(workdir, config, "--cores", "2", *args)
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


def write_config(path: Path, data_root: Path, **changes: object) -> Path:
    config = yaml.safe_load(SMOKE.read_text())
    study = config["studies"][STUDY]
    study["dataset"]["root"] = str(data_root)
    for dotted, value in changes.items():
        node = study
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(config))
    return path


def planned_jobs(workdir: Path, config: Path, *targets: str) -> dict[str, int]:
    """Rule -> job count of a dry run (what Snakemake would run now)."""
    result = subprocess.run(
        command(workdir, config, "-n", *targets),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    if "Nothing to be done" in result.stdout + result.stderr:
        return {}
    return job_table(result.stdout + result.stderr)


def job_table(output: str) -> dict[str, int]:
    """Rule -> job count of the table a Snakemake run prints before its first job."""
    jobs: dict[str, int] = {}
    lines = iter(output.splitlines())
    for line in lines:
        if line.startswith("job") and "count" in line:
            break
    for line in lines:
        parts = line.split()
        if parts and parts[0] == "total":
            break
        if len(parts) == 2 and parts[1].isdigit():
            jobs[parts[0]] = int(parts[1])
    return jobs


@dataclass
class Interference:
    """What two snakemake calls did in the folder of a running smoke study."""

    plain: subprocess.CompletedProcess
    rerun_incomplete: subprocess.CompletedProcess
    first_still_running: bool
    locks: Path


@dataclass
class SmokeSession:
    """The session's two smoke runs, and what interfering with the second one did."""

    runs: list[Path]
    interference: Interference
    # One SIGKILLed job per heavy rule in the second run (tests/workflow/faults.py).
    faults: list = field(default_factory=list)
