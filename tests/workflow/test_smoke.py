"""The smoke study through real Snakemake: whole DAG, rebuild rules, determinism, config errors."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from smoke import FIGURES, REPO, STUDY, planned_jobs, snakemake, write_config

from robuniv import io

pytestmark = pytest.mark.workflow


def test_whole_dag_produces_every_figure_and_table(smoke_runs: list[Path]) -> None:
    results = smoke_runs[0] / "results" / STUDY
    for name in FIGURES:
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
    # 2 archs x 2 runs = 4 models per eps: 6 regular pairs, each compared on both of its
    # models' inverted sets; 2 of the 6 pairs are one architecture from two runs.
    cka = similarity[similarity["measure"] == "cka"]
    per_measure = cka[cka["layer"] == "penultimate"]
    assert len(per_measure) == 2 * (6 + 12)
    same_arch = per_measure[per_measure["model_a"] == per_measure["model_b"]]
    assert len(same_arch) == 2 * (2 + 4) and (same_arch["run_a"] != same_arch["run_b"]).all()
    assert set(similarity.loc[similarity["measure"] == "jaccard", "k"]) == {5, 10}
    assert np.isfinite(similarity["value"]).all()
    # Fig 9: three further layers per architecture, the same comparisons at each, by depth;
    # agreement, JSDSim and (by default) RTD stay with the penultimate layer.
    assert len(cka) == 4 * len(per_measure)
    deeper = similarity[similarity["layer"] != "penultimate"]
    assert set(deeper["measure"]) == {"cka", "cka_unbiased", "procrustes_sim", "jaccard"}
    depth = deeper.groupby("layer")["depth"].mean()
    assert list(depth.index) == ["L1", "L2", "L3"] and depth.is_monotonic_increasing
    assert depth.iloc[-1] < per_measure["depth"].min() < 1
    layer_cka = io.read_table(results / "similarity" / "layer_cka.tsv")
    assert len(layer_cka) == 4 * 4 and layer_cka["value"].between(0, 1).all()
    accuracy = io.read_table(results / "tables" / "accuracy.tsv")
    assert len(accuracy) == 2 * 2
    assert (results / "tables" / "accuracy.tex").read_text().count(r"\\") >= 2
    # Every job wrote a log.
    assert any((smoke_runs[0] / "logs").rglob("*.log"))


def test_two_runs_give_byte_identical_results(smoke_runs: list[Path]) -> None:
    """Every file under results/ (checkpoints, HDF5, tables, PDF and PNG figures) has the
    same bytes in two runs of one config in two folders; the first that differs is named."""
    trees = [sorted(p.relative_to(run) for p in (run / "results").rglob("*") if p.is_file())
             for run in smoke_runs]  # fmt: skip
    assert trees[0] == trees[1]
    assert len(trees[0]) > 50
    differing = [
        str(path)
        for path in trees[0]
        if not filecmp.cmp(smoke_runs[0] / path, smoke_runs[1] / path, shallow=False)
    ]
    assert not differing, f"first differing file: {differing[0]} ({len(differing)} differ)"


def test_activation_files_carry_provenance(smoke_runs: list[Path]) -> None:
    # One file per eps: every model of the eps on the regular images and on every inverted set.
    path = smoke_runs[0] / "results" / STUDY / "activations" / "eps1.h5"
    meta = io.read_h5_meta(path)
    assert meta["study"] == STUDY and meta["eps"] == 1.0 and "code_version" in meta
    model = io.read_h5_meta(path, "resnet18/run0")
    assert model["layer"] == "fc:in" and len(model["checkpoint_sha256"]) == 64
    regular = io.read_h5(path, "resnet18/run0/regular")
    assert regular["features"].shape[0] == regular["logits"].shape[0] == 64
    inverted = io.read_h5(path, "resnet18/run0/inverted/vgg16_bn/run1")
    assert inverted["features"].shape[0] == 48
    source = io.read_h5_meta(path, "resnet18/run0/inverted/vgg16_bn/run1")
    assert len(source["inverted_file_sha256"]) == 64


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
    # 2 archs x 2 runs at the new eps, and its per-eps jobs; the models of the other eps are
    # not touched, and probes and Fig 5 stay: 0.5 is not an extreme eps.
    assert jobs["train_model"] == jobs["invert_images"] == 4
    assert jobs["extract_activations"] == jobs["evaluate_models"] == 1
    assert jobs["compute_similarity"] == 2  # regular and inverted inputs at eps 0.5
    assert "train_probes" not in jobs and "compute_agreement_subsets" not in jobs


def test_fig_target_rebuilds_after_deletion(smoke_runs: list[Path]) -> None:
    workdir = smoke_runs[1]
    (workdir / "results" / STUDY / "figures" / "fig1_predictive_regular.png").unlink()
    assert planned_jobs(workdir, workdir / "config.yaml", "fig1") == {"fig1": 1, "plot_fig1": 1}


BAD_CONFIGS = [
    ({"archs": ["resnet18", "alexnet"]}, "alexnet"),
    ({"eps": [0, "one"]}, "one"),
    ({"dataset.root": "/nonexistent/fmnist"}, "/nonexistent/fmnist"),
    ({"similarity.jaccard_k": [5, 100]}, "jaccard_k"),
    # A misspelt module: the message offers the nearest names.
    ({"layers.resnet18": ["layer1", "layer2", "layr3"]}, "nearest module names: 'layer3'"),
]


@pytest.mark.parametrize(("change", "message"), [BAD_CONFIGS[0], BAD_CONFIGS[-1]])
def test_bad_config_stops_before_any_job_naming_the_value(
    tmp_path: Path, fashion_mnist_root: Path, change: dict, message: str
) -> None:
    config = write_config(tmp_path / "bad.yaml", fashion_mnist_root, **change)
    result = snakemake(tmp_path, config, "-n", check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(("change", "message"), BAD_CONFIGS)
def test_bad_config_is_named_by_the_checks_the_snakefile_runs(
    tmp_path: Path, fashion_mnist_root: Path, change: dict, message: str
) -> None:
    """rules/common.smk's checks (schema, check_config, check_layers) in this process: one
    Snakemake start per case would cost seconds each; the test above shows the Snakefile
    runs them and stops."""
    import yaml
    from snakemake.utils import validate

    from robuniv.config import check_config
    from robuniv.layer_config import check_layers

    path = write_config(tmp_path / "bad.yaml", fashion_mnist_root, **change)
    config = yaml.safe_load(path.read_text())
    # A schema error (WorkflowError) or a ConfigError.
    with pytest.raises(Exception) as caught:
        validate(config, str(REPO / "rules" / "schemas" / "config.schema.yaml"))
        check_config(config["studies"])
        check_layers(config["studies"])
    assert message in str(caught.value)


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


def test_statistics_tables_cover_every_analysis(smoke_runs: list[Path]) -> None:
    tables = smoke_runs[0] / "results" / STUDY / "tables"
    spearman = io.read_table(tables / "spearman.csv")
    assert set(spearman["pairs"]) == {"cross_arch", "same_arch"}
    assert set(spearman["inputs"]) == {"regular", "inverted"}
    assert spearman["p"].between(0, 1).all()
    permutation = io.read_table(tables / "permutation.csv")
    assert set(permutation["eps"]) == {0.0, 1.0}
    # 6 pairs (64 sign patterns) or fewer: enumerated exactly rather than drawn 999 times.
    assert (permutation["resamples"] <= 999).all() and permutation["p"].between(0, 1).all()
    for name in ("spearman", "permutation", "accuracy"):
        assert r"\begin{tabular}" in (tables / f"{name}.tex").read_text()
    bounds = io.read_table(tables / "agreement_bounds.tsv")
    # Agreement can never leave the hard limits its two accuracies allow.
    assert (bounds["hard_lower"] <= bounds["agreement"] + 1e-12).all()
    assert (bounds["agreement"] <= bounds["hard_upper"] + 1e-12).all()
    probes = io.read_table(tables / "probes.tsv")
    assert len(probes) == 2 * 6  # 6 pairs of 4 models at each of eps 0 and 1
    assert probes[["probe_agreement", "classifier_agreement"]].stack().between(0, 1).all()


def test_fig5_target_plans_only_what_fig5_needs(
    smoke_runs: list[Path], fashion_mnist_root: Path
) -> None:
    workdir = smoke_runs[1]
    results = workdir / "results" / STUDY
    fig5_only = [
        *(results / "similarity" / "agreement_subsets").glob("*.tsv"),
        results / "tables" / "agreement_subsets.tsv",
        *(results / "tables").glob("permutation.*"),
        *(results / "figures").glob("fig5_*"),
    ]
    # Moved aside, not deleted: the plan is the point (real rebuilds: the SLURM figure test
    # and the fault matrix), and the folder is whole again afterwards.
    aside = workdir / "aside"
    aside.mkdir()
    for i, path in enumerate(fig5_only):
        path.rename(aside / f"{i}")
    fig5 = "results/smoke/figures/fig5_agreement_subsets.pdf"
    expected = {"compute_agreement_subsets": 2, "test_permutation": 1, "plot_fig5": 1}
    try:
        assert planned_jobs(workdir, workdir / "config.yaml", fig5) == expected
    finally:
        for i, path in enumerate(fig5_only):
            (aside / f"{i}").rename(path)
        aside.rmdir()
    # More resamples: the tests and the figure rerun, the subsets' similarity does not.
    config = write_config(
        workdir / "resamples.yaml", fashion_mnist_root, **{"agreement_subsets.resamples": 1999}
    )
    assert planned_jobs(workdir, config, fig5) == {"test_permutation": 1, "plot_fig5": 1}
