"""Damaged and hostile input through Snakemake (issue 11, item 2).

A copy of a finished smoke run is damaged in several independent places at once and the
jobs that read them are rerun in one `snakemake --keep-going` call: each failing job must
print one line naming the file and what is wrong, leave no output (not even a temporary
file), and not stop the jobs that do not read the damage.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from smoke import STUDY, job_table, snakemake, write_config

from robuniv import io

RESULTS = f"results/{STUDY}"


@contextlib.contextmanager
def _same_mtime(path: Path) -> Iterator[Path]:
    """Damage `path` without making it newer, so Snakemake reruns only the forced jobs."""
    before = path.stat(follow_symlinks=False)
    yield path
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns), follow_symlinks=False)


def _truncate(path: Path) -> None:
    with _same_mtime(path):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path: Path) -> None:
    """Random bytes over the start, where HDF5 keeps its superblock."""
    with _same_mtime(path):
        data = bytearray(path.read_bytes())
        data[:512] = np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))


def _damaged_dataset(root: Path, copy: Path) -> Path:
    """`root` with a truncated train-labels file; the other files are links to the originals."""
    raw, out = root / "FashionMNIST" / "raw", copy / "FashionMNIST" / "raw"
    out.mkdir(parents=True)
    for source in raw.iterdir():
        target = out / source.name
        if source.name == "train-labels-idx1-ubyte":
            target.write_bytes(source.read_bytes()[:-10])
        else:
            target.symlink_to(source.resolve())
        stat = source.stat()
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns), follow_symlinks=False)
    return copy


@contextlib.contextmanager
def _full_disk(folder: Path) -> Iterator[bool]:
    """A filled 64 KiB tmpfs over `folder` (root only); yields whether it could be mounted."""
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        if mounted:
            with contextlib.suppress(OSError), open(folder / "filler", "wb") as fh:
                while True:
                    fh.write(b"\0" * 4096)
                    fh.flush()
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)


def test_damaged_inputs_fail_alone_with_one_line_each(
    smoke_runs: list[Path], tmp_path: Path, fashion_mnist_root: Path
) -> None:
    work = tmp_path / "run"
    shutil.copytree(smoke_runs[0], work, symlinks=True)
    results = work / RESULTS
    config = write_config(
        work / "config.yaml", _damaged_dataset(fashion_mnist_root, tmp_path / "data")
    )
    train_labels = tmp_path / "data" / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte"

    _truncate(results / "activations" / "eps0.h5")
    _truncate(results / "models" / "resnet18" / "eps0" / "run0.pt")
    _garble(results / "inverted" / "vgg16_bn" / "eps1" / "run0.h5")
    # A diverged model: 4 of the 48 rows of one inverted set's features, the regular
    # images' rows of the same file untouched.
    diverged = "resnet18/run0/inverted/vgg16_bn/run0"
    with _same_mtime(results / "activations" / "eps1.h5") as path, h5py.File(path, "r+") as fh:
        features = fh[f"{diverged}/features"]
        features[:3] = np.nan
        features[3, 0] = np.inf
    bounds = results / "tables" / "agreement_bounds.tsv"
    with _same_mtime(bounds):
        io.write_table(bounds, io.read_table(bounds).drop(columns=["agreement"]))

    # Target -> the one line its job must print; each reads one damaged file.
    failing = {
        f"{RESULTS}/similarity/regular/eps0.tsv": f"{RESULTS}/activations/eps0.h5: "
        "not a readable HDF5 file (truncated or damaged)",
        f"{RESULTS}/similarity/inverted/eps1.tsv": f"{RESULTS}/activations/eps1.h5: features "
        f"of '{diverged}' holds NaN or inf in 4 of 48 rows (a diverged model?)",
        f"{RESULTS}/evaluation/eps0.tsv": f"{RESULTS}/models/resnet18/eps0/run0.pt: "
        "not a readable checkpoint (truncated or damaged)",
        f"{RESULTS}/figures/fig2_inversions.pdf": f"{RESULTS}/inverted/vgg16_bn/eps1/run0.h5: "
        "not a readable HDF5 file (truncated or damaged)",
        f"{RESULTS}/figures/fig7_agreement_bounds.pdf": f"{RESULTS}/tables/agreement_bounds.tsv: "
        "agreement-bound table lacks columns ['agreement']; it has ",
        f"{RESULTS}/probes/features/eps1.h5": f"{train_labels} holds 59990 bytes, its header "
        "says (60000,)",
    }
    # Another eps's job, reading the regular images' rows of the file a diverged model spoilt.
    independent = work / RESULTS / "similarity" / "regular" / "eps1.tsv"
    before = independent.stat().st_mtime_ns

    with _full_disk(results / "figures") as full:
        if full:
            pdf = f"{RESULTS}/figures/fig5_agreement_subsets.pdf"
            failing[pdf] = f"disk full writing {pdf}"
        targets = [*failing, str(independent.relative_to(work))]
        # Only the named jobs run: the damage keeps old mtimes, and the config's new dataset
        # root is a changed parameter that must not rerun everything.
        run = snakemake(
            work,
            config,
            "--keep-going",
            "--rerun-triggers",
            "mtime",
            "--forcerun",
            *targets,
            "--",
            *targets,
            check=False,
        )
        output = run.stdout + run.stderr
        left = {p for p in failing if (work / p).exists()}
        temporary = sorted(str(p) for p in results.rglob(".*.tmp"))

    assert run.returncode != 0, output
    assert job_table(output) == {
        "compute_similarity": 3,
        "evaluate_models": 1,
        "extract_probe_features": 1,
        "plot_fig2": 1,
        "plot_fig7": 1,
        **({"plot_fig5": 1} if full else {}),
    }, output
    lines = [line for line in output.splitlines() if line.startswith("robuniv: ")]
    assert len(lines) == len(failing), "\n".join(lines)
    for target, message in failing.items():
        assert sum(line.startswith(f"robuniv: {message}") for line in lines) == 1, (
            target,
            message,
            lines,
        )
    assert not left, f"outputs of failed jobs left behind: {left}"
    assert not temporary, f"temporary files left behind: {temporary}"
    assert independent.stat().st_mtime_ns > before, output
    assert pd.notna(io.read_table(independent)["value"]).all()
