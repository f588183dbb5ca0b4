"""The paper's configs build their whole DAG (dry run) from well-formed dataset roots."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from robuniv.imagefolder import imagenet100_wnids

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / "experiments"

pytestmark = pytest.mark.workflow


def test_paper_config_is_the_three_studies() -> None:
    paper = yaml.safe_load((EXPERIMENTS / "paper.yaml").read_text())
    for name in ("imagenet1k", "imagenet100", "cifar10"):
        single = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())
        assert paper["studies"][name] == single["studies"][name]
        assert paper["resources"] == single["resources"]


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageNet root with 1000 class folders (the 100 ImageNet100 wnids among them) and a
    flat val with its label file, and a CIFAR-10 root: the layouts only, one image each.
    A dry run lists files and never decodes them."""
    work = tmp_path_factory.mktemp("paper")
    wnids = sorted(set(imagenet100_wnids()) | {f"n{99_000_000 + i:08d}" for i in range(900)})
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    root = work / "imagenet"
    (root / "val").mkdir(parents=True)
    lines = []
    for i, wnid in enumerate(wnids):
        (root / "train" / wnid).mkdir(parents=True)
        image.save(root / "train" / wnid / "a.JPEG")
        name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        image.save(root / "val" / name)
        lines.append(f"{name} {wnid}")
    (root / "val_labels.txt").write_text("\n".join(lines) + "\n")
    cifar = work / "resources" / "cifar10" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    batch = {"data": np.zeros((10, 3072), np.uint8), "labels": list(range(10))}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        with open(cifar / name, "wb") as fh:
            pickle.dump(batch, fh)
    return work


def dry_run(
    work: Path, config: str, env: dict[str, str] | None = None, *args: str
) -> subprocess.CompletedProcess:
    if env is None:
        env = {**os.environ, "IMAGENET_ROOT": str(work / "imagenet")}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile")]
        + ["--directory", str(work), "--configfile", str(EXPERIMENTS / config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def job_counts(output: str) -> dict[str, int]:
    counts = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and not parts[0].endswith(":"):
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def paper_slurm_dry_run(roots: Path) -> subprocess.CompletedProcess:
    """`snakemake -n` of paper.yaml through the SLURM profile: one dry run (about 10 s) for
    the job counts and the resources, as users see it before submitting."""
    env = {**os.environ, "IMAGENET_ROOT": str(roots / "imagenet"), "SBATCH_PARTITION": "gpu"}
    result = dry_run(roots, "paper.yaml", env, "--profile", str(REPO / "profiles" / "slurm"))
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_paper_dag_lists_every_job(paper_slurm_dry_run: subprocess.CompletedProcess) -> None:
    result = paper_slurm_dry_run
    counts = job_counts(result.stdout + result.stderr)
    # ImageNet1k: 26 released models imported, vgg16_bn at 0.25/0.5/1 trained;
    # ImageNet100: 4 archs x 5 eps; CIFAR-10: 7 archs x 4 eps.
    assert counts["import_checkpoint"] == 26 and counts["download_checkpoint"] == 26
    assert counts["train_model"] == 3 + 20 + 28
    assert counts["invert_images"] == 29 + 20 + 28
    # Per-eps jobs: 5 + 5 + 4 eps; similarity once per eps and input kind.
    assert counts["evaluate_models"] == counts["extract_activations"] == 5 + 5 + 4
    assert counts["compute_similarity"] == 2 * (5 + 5 + 4)
    assert counts["plot_fig4"] == 3


def test_planner_prices_exactly_the_jobs_snakemake_plans(
    paper_slurm_dry_run: subprocess.CompletedProcess,
) -> None:
    from robuniv.plan import job_counts as planned
    from robuniv.plan import load_config

    result = paper_slurm_dry_run
    counts = job_counts(result.stdout + result.stderr)
    counts.pop("total"), counts.pop("all")
    config = load_config(EXPERIMENTS / "paper.yaml", REPO / "rules/schemas/config.schema.yaml")
    assert planned(config) == counts


def test_paper_dag_through_the_slurm_profile_asks_gpus_for_network_rules(
    paper_slurm_dry_run: subprocess.CompletedProcess,
) -> None:
    result = paper_slurm_dry_run
    rule, resources = None, {}
    for line in result.stdout.splitlines():
        if line.startswith("rule "):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("resources:") and rule:
            resources.setdefault(rule, line.split(":", 1)[1])
    assert "gpu=1" in resources["train_model"] and "gpu=1" in resources["invert_images"]
    assert "gpu=" not in resources["compute_similarity"]
    assert "slurm_partition=gpu" in resources["train_model"]
    # The paper config's own sizes: a day of training per ImageNet100 model.
    assert "runtime=" in resources["train_model"] and "mem_mb=" in resources["train_model"]


def test_unset_imagenet_root_is_named(roots: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "IMAGENET_ROOT"}
    result = dry_run(roots, "imagenet1k.yaml", env)
    assert result.returncode != 0
    assert "$IMAGENET_ROOT" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("config", "loaded"),
    [("robustbench_cifar10_l2.yaml", 7), ("timm_imagenet.yaml", 5)],
)
def test_zoo_examples_load_every_model_and_train_none(
    roots: Path, config: str, loaded: int
) -> None:
    result = dry_run(roots, config)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = job_counts(result.stdout)
    print(config, jobs.get("total"), "jobs:", jobs)
    assert jobs["load_model"] == loaded and "train_model" not in jobs
    # Every loaded model is inverted and evaluated like a trained one.
    assert jobs["invert_images"] == loaded
    # The planner counts the same jobs, and says which work it cannot price.
    from robuniv.plan import load_bench, load_config, price

    rows = {w.rule: w for w in price(load_config(EXPERIMENTS / config), load_bench(None)[0])}
    assert rows["load_model"].jobs == loaded and rows["invert_images"].unpriced_units > 0
