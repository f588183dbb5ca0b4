from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robuniv import io
from robuniv.log import UserError


def test_h5_round_trip_keeps_arrays_and_provenance(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    groups = {
        "regular": {
            "features": rng.normal(size=(5, 3)).astype(np.float32),
            "indices": np.arange(5),
        },
        "inverted/resnet18/run0": {"images": rng.integers(0, 255, (5, 1, 4, 4), dtype=np.uint8)},
    }
    meta = io.provenance(study="s", eps=0.25, checkpoint_sha256="ab" * 32)
    path = tmp_path / "a" / "act.h5"
    io.write_h5(path, groups, meta, group_meta={"regular": {"input_set": "regular"}})
    for name, arrays in groups.items():
        back = io.read_h5(path, name)
        assert back.keys() == arrays.keys()
        for key, value in arrays.items():
            assert back[key].dtype == value.dtype and np.array_equal(back[key], value)
    assert io.read_h5_meta(path) == meta
    assert io.read_h5_meta(path, "regular") == {"input_set": "regular"}
    assert meta["code_version"].startswith("0.1.0")


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "out.h5"
    with pytest.raises(TypeError, match="cannot record"):
        io.write_h5(path, {"/": {"x": np.zeros(3)}}, {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_old_file_on_error(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), io.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_table_round_trip_with_provenance_line(tmp_path: Path) -> None:
    table = pd.DataFrame({"a": [1, 2], "value": [0.1, 1 / 3], "s": ["x", "none"]})
    path = tmp_path / "t.tsv"
    io.write_table(path, table, {"study": "s"})
    back = io.read_table(path)
    assert list(back.columns) == ["a", "value", "s"]
    assert np.allclose(back["value"], table["value"], rtol=1e-9)
    assert io.read_table_meta(path) == {"study": "s"}
    first = path.read_bytes()
    io.write_table(path, table, {"study": "s"})
    assert path.read_bytes() == first


def test_csv_tables_are_comma_separated_and_read_back(tmp_path: Path) -> None:
    table = pd.DataFrame({"measure": ["cka", "rtd"], "p": [0.5, 1e-4]})
    path = tmp_path / "t.csv"
    io.write_table(path, table, {"study": "s"})
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# provenance: ")
    assert lines[1:] == ["measure,p", "cka,0.5", "rtd,0.0001"]
    pd.testing.assert_frame_equal(io.read_table(path), table)


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path: Path) -> None:
    from robuniv.io import atomic_path

    target = tmp_path / "run0.pt"
    stale = tmp_path / ".run0.pt.abcd1234.tmp"  # what SIGKILL inside atomic_path leaves
    stale.write_bytes(b"half")
    other = tmp_path / ".run1.pt.abcd1234.tmp"  # another output's: not ours to remove
    other.write_bytes(b"half")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert not stale.exists() and other.exists()


# --- Damaged input and a full disk: one message naming the file (issue 11) -----------------


def _h5_file(tmp_path: Path) -> Path:
    path = tmp_path / "eps0.h5"
    io.write_h5(path, {"m/regular": {"features": np.ones((64, 32), np.float32)}}, {"s": 1})
    return path


@pytest.mark.parametrize("damage", ["truncated", "garbled", "empty"])
def test_damaged_h5_is_named_in_one_line(tmp_path: Path, damage: str) -> None:
    path = _h5_file(tmp_path)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbled":
        path.write_bytes(bytes(range(256)) * 2 + data[512:])
    else:
        path.write_bytes(b"")
    message = f"{path}: not a readable HDF5 file (truncated or damaged)"
    for read in (io.read_h5, io.read_h5_meta):
        with pytest.raises(io.DamagedFileError) as err:
            read(path, "m/regular")
        assert str(err.value) == message
    assert isinstance(err.value, UserError)


def test_missing_h5_and_missing_group_are_not_called_damaged(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        io.read_h5(tmp_path / "nowhere.h5")
    with pytest.raises(KeyError, match="no group 'other'"):
        io.read_h5(_h5_file(tmp_path), "other")


def test_table_without_a_needed_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "similarity.tsv"
    io.write_table(path, pd.DataFrame({"measure": ["cka"], "k": [-1]}), {"study": "s"})
    with pytest.raises(io.MissingColumnsError) as err:
        io.read_table(path, columns=("measure", "value", "eps"))
    assert str(err.value) == (
        f"{path}: table lacks columns ['value', 'eps']; it has ['measure', 'k']"
    )
    # A check made later, where the table is used, still names the file.
    table = io.read_table(path)
    with pytest.raises(io.MissingColumnsError, match=f"^{path}: similarity table lacks"):
        io.require_columns(table[table["k"] < 0], ["value"], "similarity table")


def test_garbled_table_is_named(tmp_path: Path) -> None:
    path = tmp_path / "eps0.tsv"
    path.write_bytes(b"a\tb\n1\t2\n\xff\xfe\x00\x81\n")
    with pytest.raises(io.DamagedFileError, match=f"^{path}: not a readable table"):
        io.read_table(path)


def test_non_finite_rows_are_counted_and_named() -> None:
    features = np.ones((48, 4), np.float32)
    features[:3] = np.nan
    features[5, 1] = -np.inf
    with pytest.raises(io.DamagedFileError) as err:
        io.require_finite(features, "eps1.h5", "features of 'm/regular'")
    assert str(err.value) == (
        "eps1.h5: features of 'm/regular' holds NaN or inf in 4 of 48 rows (a diverged model?)"
    )
    indices = np.arange(4)
    assert io.require_finite(indices, "eps1.h5", "indices") is indices


def test_read_h5_refuses_non_finite_arrays_where_asked(tmp_path: Path) -> None:
    path = tmp_path / "eps0.h5"
    logits = np.zeros((10, 3), np.float32)
    logits[2, 1] = np.nan
    io.write_h5(path, {"m/regular": {"logits": logits, "indices": np.arange(10)}}, {})
    assert np.isnan(io.read_h5(path, "m/regular")["logits"][2, 1])
    with pytest.raises(io.DamagedFileError) as err:
        io.read_h5(path, "m/regular", finite=True)
    assert str(err.value) == (
        f"{path}: logits of 'm/regular' holds NaN or inf in 1 of 10 rows (a diverged model?)"
    )


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root only): a full disk a test can reach without filling a real one."""
    folder = tmp_path / "full"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)]
    if os.geteuid() != 0 or subprocess.run(mount, check=False, capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _save_torch(path: Path) -> None:
    import torch

    # Through a file object, as save_checkpoint does: torch then wraps the OSError.
    with io.atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save({"w": torch.ones(300, 300)}, fh)


def _save_pdf(path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.imshow(np.random.default_rng(0).random((300, 300)))
    try:
        with io.atomic_path(path) as tmp:
            fig.savefig(tmp, format="pdf")
    finally:
        plt.close(fig)


WRITERS = {
    "out.h5": lambda p: io.write_h5(p, {"/": {"x": np.ones((300, 300))}}, {"s": 1}),
    "out.tsv": lambda p: io.write_table(p, pd.DataFrame(np.ones((10_000, 10))), {"s": 1}),
    "out.json": lambda p: io.write_json(p, {"x": list(range(30_000))}),
    "out.pt": _save_torch,
    "out.pdf": _save_pdf,
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_full_disk_names_the_output_and_leaves_nothing(full_disk: Path, name: str) -> None:
    path = full_disk / name
    with pytest.raises(io.DiskFullError) as err:
        WRITERS[name](path)
    assert str(err.value) == f"disk full writing {path}"
    assert list(full_disk.iterdir()) == []


def test_a_failing_job_prints_one_line_and_logs_the_traceback(tmp_path: Path) -> None:
    path = tmp_path / "eps0.h5"
    path.write_bytes(b"not hdf5" * 100)
    log = tmp_path / "job.log"
    script = f"from robuniv import io, log; log.to_file({str(log)!r}); io.read_h5({str(path)!r})"
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr == f"robuniv: {path}: not a readable HDF5 file (truncated or damaged)\n"
    assert "Traceback" in log.read_text() and "OSError" in log.read_text()
