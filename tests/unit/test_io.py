from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robuniv import io


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
