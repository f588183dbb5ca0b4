"""The smoke study through a real SLURM cluster (slurmctld, slurmd, slurmdbd, a fake GPU).

The cluster comes up on this machine (tests/cluster/slurm.sh) as root; the workflow runs
with `--profile profiles/slurm`, the profile users install. sacct, fed by slurmdbd, shows
what really ran.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
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
    study["layers_measures"] = ["cka", "jaccard"]
    study["figures"].setdefault("fig9", {})["measures"] = ["cka", "jaccard"]
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


def sacct(since: str, *, every_start: bool = False) -> list[dict[str, str]]:
    """One record per job; with every_start, one per start of a job SLURM requeued too."""
    fields = ["JobID", "JobName", "Comment", "State", "ReqTRES", "Account", "Timelimit", "Elapsed"]
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-a", "-S", since, f"--format={','.join(f + '%300' for f in fields)}",
         *(["-D"] if every_start else [])],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]


def rule_of(job: dict[str, str]) -> str:
    # The executor writes "rule_<name>_wildcards_..." into the job comment.
    comment = job["Comment"]
    return comment.removeprefix("rule_").split("_wildcards")[0]


def running_job(rule: str, seconds: float = 300) -> str:
    """The id of the first job of `rule` that SLURM shows running."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i|%k"],
                             capture_output=True, text=True, check=False).stdout  # fmt: skip
        for line in out.splitlines():
            job_id, comment = line.split("|", 1)
            if comment.startswith(f"rule_{rule}_"):
                return job_id
        time.sleep(0.5)
    raise AssertionError(f"no {rule} job was seen running in {seconds} s")


def wait_until(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.5)


def job_states(job_id: str) -> list[str]:
    """Every start of the job, requeued ones included (sacct -D)."""
    out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-j", job_id, "-o", "State"],
                         capture_output=True, text=True, check=False).stdout  # fmt: skip
    return out.split()


def node_state() -> str:
    return subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                          check=False).stdout.strip()  # fmt: skip


def process_tree(root: int) -> set[int]:
    """root and every process under it, from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in tree:
                tree.add(child)
                todo.append(child)
    return tree


def kill_node(state: Path, job_id: str) -> None:
    """The node dies: slurmd, and the job's slurmstepd with everything it started, at once.

    Killing slurmd alone would leave the job running unseen (slurmstepd outlives slurmd),
    which is a crashed daemon, not a dead node.
    """
    stepds = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(f"slurmstepd: [{job_id}.".encode()):
                stepds.append(int(cmdline.parent.name))
        except OSError:
            continue
    assert stepds, f"no slurmstepd of job {job_id}"
    doomed = {int((state / "run" / "slurmd.pid").read_text())}
    # Stopped processes cannot fork, so the second look sees the whole tree.
    for _ in range(2):
        for stepd in stepds:
            doomed |= process_tree(stepd)
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def tables(workdir: Path) -> dict[str, bytes]:
    """The study's tables as bytes, the provenance's code version masked: in development the
    repository may be committed to between the fixture's run and a test's."""
    version = re.compile(rb'"code_version": "[^"]*"')
    return {
        p.name: version.sub(b'"code_version": "-"', p.read_bytes())
        for p in sorted((workdir / "results/smoke/tables").iterdir())
    }


def fault_summary(rule: str, fault: str, jobs: list[dict[str, str]], seconds: float) -> str:
    """One line per fault: SLURM's state for every start, and Snakemake's attempts (job ids)."""
    mine = [job for job in jobs if rule_of(job) == rule]
    states = [f"{job['JobID']}:{job['State']}({job['Timelimit']})" for job in mine]
    attempts = len({job["JobID"] for job in mine})
    return (f"fault: {rule} x {fault}: SLURM {' '.join(states)}; "
            f"{attempts} Snakemake attempt(s), {len(mine)} start(s); {seconds:.0f} s")  # fmt: skip


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


@pytest.mark.slurm_faults
def test_a_job_on_a_node_that_dies_is_requeued_and_the_tables_match(cluster, slurm_run) -> None:
    """slurmd and the job die mid-job; SLURM marks the node down and requeues the job
    (JobRequeue's default), the node comes back, and the rebuilt table equals the first."""
    workdir, config, _, _ = slurm_run
    before = tables(workdir)
    results = workdir / "results" / "smoke"
    (results / "similarity" / "agreement_subsets" / "eps0.tsv").unlink()
    (results / "tables" / "agreement_subsets.tsv").unlink()
    seen: dict[str, object] = {}

    def kill_and_revive() -> None:
        try:
            job_id = running_job("compute_agreement_subsets")
            time.sleep(2)  # mid-job: the job's Snakemake is loading or running the script
            kill_node(cluster, job_id)
            killed = time.monotonic()
            wait_until(lambda: "NODE_FAIL" in job_states(job_id), 90, "SLURM to see the node fail")
            seen["down"] = f"node {node_state()} {time.monotonic() - killed:.0f} s after the kill"
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            seen["error"] = error
        # The node comes back, whatever happened above (ReturnToService=2: usable as soon as
        # slurmd registers again).
        try:
            pid = int((cluster / "run" / "slurmd.pid").read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            subprocess.run(["slurmd"], check=True)
        try:
            wait_until(lambda: node_state() in {"idle", "mixed", "allocated"}, 90, "the node back")
        except AssertionError as error:
            seen.setdefault("error", error)

    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    time.sleep(1)
    started = time.monotonic()
    watcher = threading.Thread(target=kill_and_revive)
    watcher.start()
    # mtime only: just the deleted outputs, even if the repository changed since the fixture.
    target = "results/smoke/tables/agreement_subsets.tsv"
    result = run_slurm(workdir, config, "--rerun-triggers", "mtime", "--", target, timeout=600)
    watcher.join()
    jobs = sacct(since, every_start=True)
    summary = fault_summary(
        "compute_agreement_subsets", "node dies", jobs, time.monotonic() - started
    )
    print(summary, "|", seen.get("down"))
    assert "error" not in seen, f"{seen['error']!r}; {summary}"
    assert result.returncode == 0, summary + result.stdout[-3000:] + result.stderr[-3000:]
    assert [job["State"] for job in jobs] == ["NODE_FAIL", "COMPLETED"], summary
    after = tables(workdir)
    assert after.keys() == before.keys(), summary
    changed = [name for name in before if after[name] != before[name]]
    assert changed == [], f"tables differ from the undisturbed run's: {changed}; {summary}"
    # The killed writer left nothing half-written beside the outputs.
    left = sorted(p.name for p in (results / "similarity" / "agreement_subsets").iterdir())
    assert left == ["eps0.tsv", "eps1.tsv"], left


# Seconds of training, at the speed the fixture's run logged, for the time-limit test: past
# the first attempt's limit (1 min; slurmctld checks limits every 30 s, so the kill comes at
# 60 to 90 s) with room for a faster machine than that one-epoch measure says, and what is
# left after resuming fits the second attempt's 2 min (a third attempt has 3).
TRAIN_SECONDS = 120


def same_checkpoint(a: Path, b: Path) -> list[str]:
    """Keys where two checkpoints differ: weights bit for bit, history, settings; the
    provenance's code version aside (the repository may change between runs in development)."""
    import torch  # here: the module stays importable for collection without torch's start-up

    def flat(value, key=""):
        if isinstance(value, dict):
            for name, item in value.items():
                if name != "code_version":
                    yield from flat(item, f"{key}/{name}")
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                yield from flat(item, f"{key}/{i}")
        else:
            yield key, value

    left, right = (dict(flat(torch.load(p, weights_only=True))) for p in (a, b))
    differ = [k for k in left.keys() | right.keys() if k not in left or k not in right]
    for key in left.keys() & right.keys():
        x, y = left[key], right[key]
        if isinstance(x, torch.Tensor):
            if not (isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)):
                differ.append(key)
        elif x != y:
            differ.append(key)
    return sorted(differ)


@pytest.mark.slurm_faults
def test_a_job_past_its_time_limit_is_retried_with_more_time_and_resumes(
    slurm_run, tmp_path: Path
) -> None:
    """Training that outlasts its first attempt's 1 min: SLURM ends it (TIMEOUT), Snakemake
    retries with 2 min and twice the memory (runtime, mem_mb x attempt), training resumes
    from the last epoch the killed attempt saved, and the network equals, bit for bit, the one an undisturbed local run of the same config trains."""
    workdir, config, _, _ = slurm_run
    target = "results/smoke/models/vgg16_bn/eps1/run0.pt"
    log = workdir / "logs/results/smoke/models/vgg16_bn/eps1/run0.log"
    speed = re.findall(r"(\d+(?:\.\d+)?) img/s", log.read_text())
    assert speed, f"no training speed (img/s) in {log}"
    settings = yaml.safe_load(config.read_text())
    train = settings["studies"]["smoke"]["train"]
    # More epochs of the same training: a real job, slower than its limit.
    train["epochs"] = math.ceil(TRAIN_SECONDS * float(speed[-1]) / train["n_images"])
    settings["resources"]["train_model"]["runtime"] = 1  # minutes, SLURM's least
    folders = {name: tmp_path / name for name in ("slurm", "local")}
    for folder in folders.values():
        folder.mkdir()
        (folder / "config.yaml").write_text(yaml.safe_dump(settings))
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    time.sleep(1)
    started = time.monotonic()
    # The undisturbed run, plain local Snakemake on one core, beside the SLURM one.
    with open(tmp_path / "local.log", "w") as local_log:
        local = subprocess.Popen(
            ["timeout", "-s", "INT", "900", sys.executable, "-m", "snakemake", "--cores", "1",
             "--snakefile", str(REPO / "Snakefile"), "--directory", str(folders["local"]),
             "--configfile", str(folders["local"] / "config.yaml"), "--", target],
            stdout=local_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        result = run_slurm(folders["slurm"], folders["slurm"] / "config.yaml", target, timeout=900)
        local.wait()
    jobs = sacct(since, every_start=True)
    summary = fault_summary("train_model", f"time limit ({train['epochs']} epochs)", jobs,
                            time.monotonic() - started)  # fmt: skip
    print(summary)
    assert result.returncode == 0, summary + result.stdout[-3000:] + result.stderr[-3000:]
    assert local.returncode == 0, (tmp_path / "local.log").read_text()[-3000:]
    states = [job["State"] for job in jobs]
    assert states[0] == "TIMEOUT" and states[-1] == "COMPLETED", summary
    assert set(states[1:-1]) <= {"TIMEOUT"}, summary
    limits = [job["Timelimit"] for job in jobs]
    assert limits[:2] == ["00:01:00", "00:02:00"], f"runtime x attempt: {limits}; {summary}"
    mem = [job["ReqTRES"] for job in jobs[:2]]
    assert "mem=1500M" in mem[0] and "mem=3000M" in mem[1], f"mem_mb x attempt: {mem}"
    # Not asserted: an attempt that finishes training just at its limit still ends in
    # TIMEOUT, Snakemake deletes its checkpoint, and with the resume state gone (deleted on
    # completion) the next attempt starts at epoch 1; the network is the same either way.
    train_log = (folders["slurm"] / log.relative_to(workdir)).read_text()
    resumed = re.findall(r"resumed from \S+ after epoch (\d+)", train_log)
    print(
        f"  last attempt {'resumed after epoch ' + resumed[0] if resumed else 'began at epoch 1'}"
    )
    differ = same_checkpoint(folders["slurm"] / target, folders["local"] / target)
    assert differ == [], f"the retried training differs from the undisturbed one: {differ}"
    # The resume state is gone with the finished checkpoint, and nothing half-written is left.
    left = sorted(p.name for p in (folders["slurm"] / target).parent.iterdir())
    assert left == ["run0.pt"], left


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
