"""The smoke study through a real SLURM cluster (slurmctld, slurmd, slurmdbd, a fake GPU).

The cluster comes up on this machine (tests/cluster/slurm.sh) as root; the workflow runs
with `--profile profiles/slurm`, the profile users install. sacct, fed by slurmdbd, shows
what really ran.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "cluster" / "slurm.sh"
SMOKE = REPO / "tests" / "workflow" / "config.smoke.yaml"
PROFILE = REPO / "profiles" / "slurm"
GPU_RULES = {
    "train_model",
    "evaluate_models",
    "invert_images",
    "extract_activations",
    "extract_probe_features",
    "train_probes",
}

pytestmark = [pytest.mark.workflow, pytest.mark.slurm]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("bringing up SLURM needs root and apt-get (Debian)")
    installed = subprocess.run(
        [str(SCRIPT), "install"], capture_output=True, text=True, check=False
    )
    if installed.returncode != 0:
        pytest.skip(f"cannot install SLURM: {installed.stderr[-500:]}")
    # Not under pytest's tmp: its folders are private to root, and MariaDB runs as mysql.
    state = Path(tempfile.mkdtemp(prefix="robuniv-slurm-"))
    state.chmod(0o755)
    up = subprocess.run(
        [str(SCRIPT), "up", str(state)], capture_output=True, text=True, check=False
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield state
    finally:
        subprocess.run(
            [str(SCRIPT), "down", str(state)], capture_output=True, text=True, check=False
        )
        shutil.rmtree(state, ignore_errors=True)


def slurm_config(path: Path, data_root: Path) -> Path:
    """The smoke study with one run, and memory requests that fit the test node."""
    config = yaml.safe_load(SMOKE.read_text())
    study = config["studies"]["smoke"]
    study["dataset"]["root"] = str(data_root)
    study["runs"] = [0]
    # Fewer measures than the smoke study: each one is 4 more cluster jobs, not more coverage.
    study["similarity"]["measures"] = ["agreement", "jsd_sim", "cka", "jaccard"]
    study["figures"]["fig4"]["measures"] = ["cka", "jaccard"]
    study["agreement_subsets"]["measures"] = ["cka", "jaccard"]
    rules = ("train_model", "evaluate_models", "invert_images", "extract_activations",
             "extract_probe_features", "train_probes", "compute_similarity",
             "compute_agreement_subsets")  # fmt: skip
    config["resources"] = {rule: {"mem_mb": 1500, "runtime": 10} for rule in rules}
    path.write_text(yaml.safe_dump(config))
    return path


def run_slurm(workdir: Path, config: Path, *args: str, timeout: int = 1500, env=None):
    env = {**os.environ, "SBATCH_ACCOUNT": "robuniv", "PYTHONHASHSEED": "0", **(env or {})}
    command = [
        "timeout", "-s", "INT", str(timeout),  # the executor ignores SIGTERM while polling
        sys.executable, "-m", "snakemake", "--profile", str(PROFILE),
        "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(config), "--jobs", "2",
        # The profile waits 20 s before a job's first status check (kind to a real
        # slurmctld); the test cluster's jobs take seconds, so poll sooner.
        "--slurm-init-seconds-before-status-checks", "2", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


def sacct(since: str) -> list[dict[str, str]]:
    fields = ["JobID", "JobName", "Comment", "State", "ReqTRES", "Account"]
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-a", "-S", since, f"--format={','.join(f + '%300' for f in fields)}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]


def rule_of(job: dict[str, str]) -> str:
    # The executor writes "rule_<name>_wildcards_..." into the job comment.
    comment = job["Comment"]
    return comment.removeprefix("rule_").split("_wildcards")[0]


@pytest.fixture(scope="module")
def slurm_run(cluster: Path, tmp_path_factory: pytest.TempPathFactory, fashion_mnist_root: Path):
    workdir = tmp_path_factory.mktemp("slurm-smoke")
    config = slurm_config(workdir / "config.yaml", fashion_mnist_root)
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    started = time.monotonic()
    result = run_slurm(workdir, config)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir, config, since, time.monotonic() - started


def test_every_job_ran_on_slurm_and_gpu_rules_asked_for_a_gpu(slurm_run) -> None:
    workdir, _, since, seconds = slurm_run
    jobs = sacct(since)
    print(f"smoke study through SLURM: {len(jobs)} jobs in {seconds:.0f} s")
    for job in jobs[:5]:
        print("|".join(job.values()))
    assert jobs and all(job["State"] == "COMPLETED" for job in jobs), jobs
    assert all(job["Account"] == "robuniv" for job in jobs)
    rules = {rule_of(job) for job in jobs}
    assert GPU_RULES <= rules and "compute_similarity" in rules
    for job in jobs:
        asks_gpu = "gres/gpu=1" in job["ReqTRES"]
        assert asks_gpu == (rule_of(job) in GPU_RULES), job
    # Local rules (tables, figures) ran on the submit host, not as jobs.
    assert not rules & {"plot_fig4", "test_spearman", "aggregate_similarity"}
    assert (workdir / "results/smoke/figures/fig4_representational.png").exists()
    assert any((workdir / "logs" / "slurm").rglob("*.log"))


def test_one_figure_rebuilds_through_slurm(slurm_run) -> None:
    workdir, config, _, _ = slurm_run
    results = workdir / "results" / "smoke"
    for path in [
        *(results / "similarity" / "agreement_subsets").glob("*.tsv"),
        results / "tables" / "agreement_subsets.tsv",
        *(results / "tables").glob("permutation.*"),
        *(results / "figures").glob("fig5_*"),
    ]:
        path.unlink()
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    time.sleep(1)
    result = run_slurm(workdir, config, "fig5")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = sacct(since)
    assert [rule_of(job) for job in jobs] == ["compute_agreement_subsets"] * 2, jobs
    assert (results / "figures" / "fig5_agreement_subsets.pdf").exists()


def test_a_cancelled_job_is_retried_and_leaves_no_partial_output(slurm_run, tmp_path: Path) -> None:
    workdir, config, _, _ = slurm_run
    model = workdir / "results/smoke/models/vgg16_bn/eps1/run0.pt"
    target = "results/smoke/models/vgg16_bn/eps1/run0.pt"
    cancelled: list[str] = []

    def cancel_first_training_job() -> None:
        for _ in range(600):
            out = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i|%k"],
                                 capture_output=True, text=True, check=False).stdout  # fmt: skip
            for line in out.splitlines():
                job_id, comment = line.split("|", 1)
                if comment.startswith("rule_train_model"):
                    subprocess.run(["scancel", job_id], check=False)
                    cancelled.append(job_id)
                    return
            time.sleep(0.5)

    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    watcher = threading.Thread(target=cancel_first_training_job)
    watcher.start()
    result = run_slurm(workdir, config, "-f", target)
    watcher.join()
    assert cancelled, "no train_model job was seen running"
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    states = [job["State"] for job in sacct(since)]
    assert states[0].startswith("CANCELLED") and states[-1] == "COMPLETED", states
    assert model.exists()
    # Atomic writes: nothing half-written beside the checkpoint.
    leftovers = [p.name for p in model.parent.iterdir() if p.name != model.name]
    assert leftovers == [], leftovers


def test_apptainer_plumbing_through_slurm_gives_gpu_rules_nv(slurm_run, tmp_path: Path) -> None:
    """`--sdm apptainer` with a stand-in apptainer that logs each call and runs it here."""
    workdir, config, _, _ = slurm_run
    calls = tmp_path / "apptainer.log"
    env = {
        "PATH": f"{REPO / 'tests' / 'cluster' / 'bin'}:{os.environ['PATH']}",
        "ROBUNIV_APPTAINER_LOG": str(calls),
        "ROBUNIV_IMAGE_BIN": str(Path(sys.executable).parent),
    }
    # One cluster job (a GPU rule) and one local rule, both forced.
    targets = ["results/smoke/models/resnet18/eps0/run0.pt", "results/smoke/inputs/regular.tsv"]
    # mtime only: a new software environment (the image) would otherwise rerun everything.
    args = ["--sdm", "apptainer", "--rerun-triggers", "mtime", "-f", *targets]
    result = run_slurm(workdir, config, *args, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    execs = [line for line in calls.read_text().splitlines() if " exec " in line]
    assert any("pull" in line for line in calls.read_text().splitlines())
    # Every job ran inside the image the Snakefile names; the GPU rule got --nv.
    assert len(execs) == 2, execs
    train = [line for line in execs if "train_model" in line]
    assert train and "--nv" in train[0]
    assert all(".simg" in line for line in execs)
