"""The smoke study through real Snakemake: whole DAG, rebuild rules, determinism, config errors."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from robuniv import io

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "tests" / "workflow" / "config.smoke.yaml"
STUDY = "smoke"

pytestmark = pytest.mark.workflow


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
    jobs: dict[str, int] = {}
    in_table = False
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith("job") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
                jobs[parts[0]] = int(parts[1])
            elif parts and parts[0] == "total":
                break
    return jobs


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory, fashion_mnist_root: Path) -> list[Path]:
    """Two complete runs of the smoke study in separate folders."""
    runs = []
    for i in range(2):
        workdir = tmp_path_factory.mktemp(f"smoke{i}")
        config = write_config(workdir / "config.yaml", fashion_mnist_root)
        snakemake(workdir, config)
        runs.append(workdir)
    return runs


def test_whole_dag_produces_every_figure_and_table(smoke_runs: list[Path]) -> None:
    results = smoke_runs[0] / "results" / STUDY
    for name in (
        "fig1_predictive_regular",
        "fig3_predictive_inverted",
        "fig4_representational",
        "fig8_jaccard_k",
    ):
        assert (results / "figures" / f"{name}.pdf").read_bytes().startswith(b"%PDF")
        assert (results / "figures" / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    similarity = io.read_table(results / "tables" / "similarity.tsv")
    measures = set(similarity["measure"])
    assert measures == {
        "cka",
        "cka_unbiased",
        "procrustes_sim",
        "jaccard",
        "rtd",
        "agreement",
        "jsd_sim",
    }
    # 2 archs x 2 eps: per eps one regular pair and two inverted comparisons.
    per_measure = similarity[similarity["measure"] == "cka"]
    assert len(per_measure) == 2 * (1 + 2)
    assert set(similarity.loc[similarity["measure"] == "jaccard", "k"]) == {5, 10}
    assert np.isfinite(similarity["value"]).all()
    accuracy = io.read_table(results / "tables" / "accuracy.tsv")
    assert len(accuracy) == 2
    assert (results / "tables" / "accuracy.tex").read_text().count(r"\\") >= 2
    # Every job wrote a log.
    assert any((smoke_runs[0] / "logs").rglob("*.log"))


def test_two_runs_give_identical_similarity_tables(smoke_runs: list[Path]) -> None:
    tables = [run / "results" / STUDY / "tables" / "similarity.tsv" for run in smoke_runs]
    assert filecmp.cmp(*tables, shallow=False)
    acc = [run / "results" / STUDY / "tables" / "accuracy.tsv" for run in smoke_runs]
    assert filecmp.cmp(*acc, shallow=False)


def test_activation_files_carry_provenance(smoke_runs: list[Path]) -> None:
    path = smoke_runs[0] / "results" / STUDY / "activations" / "resnet18" / "eps1" / "run0.h5"
    meta = io.read_h5_meta(path)
    assert (
        meta["arch"] == "resnet18" and meta["eps"] == 1.0 and len(meta["checkpoint_sha256"]) == 64
    )
    assert meta["layer"] == "fc:in"
    regular = io.read_h5(path, "regular")
    assert regular["features"].shape[0] == regular["logits"].shape[0] == 64
    inverted = io.read_h5(path, "inverted/vgg16_bn/run0")
    assert inverted["features"].shape[0] == 48


def test_complete_run_has_nothing_to_do(smoke_runs: list[Path]) -> None:
    config = smoke_runs[0] / "config.yaml"
    assert planned_jobs(smoke_runs[0], config) == {}


def test_changing_one_figure_option_reruns_only_that_figure(
    smoke_runs: list[Path], fashion_mnist_root: Path
) -> None:
    workdir = smoke_runs[1]
    config = write_config(
        workdir / "fig4.yaml", fashion_mnist_root, **{"figures.fig4.jaccard_k": 10}
    )
    assert planned_jobs(workdir, config) == {"all": 1, "plot_fig4": 1}


def test_adding_an_eps_trains_only_the_new_models(
    smoke_runs: list[Path], fashion_mnist_root: Path
) -> None:
    workdir = smoke_runs[1]
    config = write_config(workdir / "eps.yaml", fashion_mnist_root, eps=[0, 0.5, 1])
    jobs = planned_jobs(workdir, config)
    assert jobs["train_model"] == 2
    assert jobs["invert_images"] == 2 and jobs["extract_activations"] == 2
    assert jobs["evaluate_model"] == 2


def test_fig_target_rebuilds_after_deletion(smoke_runs: list[Path]) -> None:
    workdir = smoke_runs[1]
    (workdir / "results" / STUDY / "figures" / "fig1_predictive_regular.png").unlink()
    assert planned_jobs(workdir, workdir / "config.yaml", "fig1") == {"fig1": 1, "plot_fig1": 1}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"archs": ["resnet18", "alexnet"]}, "alexnet"),
        ({"eps": [0, "one"]}, "one"),
        ({"dataset.root": "/nonexistent/fmnist"}, "/nonexistent/fmnist"),
        ({"similarity.jaccard_k": [5, 100]}, "jaccard_k"),
    ],
)
def test_bad_config_stops_before_any_job_naming_the_value(
    tmp_path: Path, fashion_mnist_root: Path, change: dict, message: str
) -> None:
    config = write_config(tmp_path / "bad.yaml", fashion_mnist_root, **change)
    result = snakemake(tmp_path, config, "-n", check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_lint_and_snakefmt_are_clean(fashion_mnist_root: Path) -> None:
    bin_dir = Path(sys.executable).parent
    lint = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--snakefile", str(REPO / "Snakefile")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    snakefmt = shutil.which("snakefmt", path=str(bin_dir)) or "snakefmt"
    fmt = subprocess.run(
        [snakefmt, "--check", "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
