"""Atomic writes with provenance: HDF5 arrays, TSV tables, JSON metadata.

Every output is written under a temporary name in its own folder and renamed
into place, so a killed job never leaves a half-written file that looks done.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from robuniv import __version__

PROVENANCE_ATTR = "provenance"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A job killed while writing (SIGKILL, a node lost) leaves its temporary file; the job
    # that writes `path` next removes it. Only one job writes a given output at a time
    # (Snakemake locks its outputs), so any such file is stale.
    # mkstemp's random part is 8 characters.
    for stale in path.parent.glob(f".{glob.escape(path.name)}.{'?' * 8}.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> str:
    """Package version plus the git commit of the checkout it runs from, when there is one."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def provenance(**fields: Any) -> dict[str, Any]:
    """Provenance record: the given fields plus the code version."""
    record = {"code_version": code_version()}
    record.update(fields)
    return record


def to_json(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.ndarray,)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot record {type(value).__name__} in provenance: {value!r}")


@contextlib.contextmanager
def h5_writer(path: str | Path, meta: Mapping[str, Any]) -> Iterator[h5py.File]:
    """An HDF5 file to fill group by group, renamed to `path` only when the block succeeds.

    `meta` is the file's provenance (JSON attribute). Large outputs (a study's activations
    per eps) are written as they are computed instead of being held in memory.
    """
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as fh:
        fh.attrs[PROVENANCE_ATTR] = to_json(meta)
        yield fh


def set_meta(node: h5py.Group, meta: Mapping[str, Any]) -> None:
    node.attrs[PROVENANCE_ATTR] = to_json(meta)


def write_group(
    fh: h5py.File,
    group_name: str,
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Datasets `arrays` in group `group_name` ("" or "/" for the root), with provenance `meta`.

    No object timestamps (track_times=False): the same arrays give the same bytes.
    """
    group = fh.require_group(group_name) if group_name.strip("/") else fh
    if meta:
        set_meta(group, meta)
    for name, array in arrays.items():
        group.create_dataset(name, data=np.asarray(array), track_times=False)


def write_h5(
    path: str | Path,
    groups: Mapping[str, Mapping[str, np.ndarray]],
    meta: Mapping[str, Any],
    group_meta: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Write `{group: {name: array}}` atomically; `meta` is the file's provenance (JSON attr).

    Use group "" (or "/") for datasets at the root.
    """
    with h5_writer(path, meta) as fh:
        for group_name, arrays in groups.items():
            write_group(fh, group_name, arrays, (group_meta or {}).get(group_name))


def read_h5(path: str | Path, group: str = "/") -> dict[str, np.ndarray]:
    """All datasets directly in `group` as arrays."""
    with h5py.File(path, "r") as fh:
        if group not in fh:
            raise KeyError(f"{path}: no group {group!r}; groups: {list_groups(fh)}")
        node = fh[group]
        return {name: item[()] for name, item in node.items() if isinstance(item, h5py.Dataset)}


def read_h5_meta(path: str | Path, group: str = "/") -> dict[str, Any]:
    with h5py.File(path, "r") as fh:
        raw = fh[group].attrs.get(PROVENANCE_ATTR)
        return json.loads(raw) if raw is not None else {}


def list_groups(fh: h5py.File) -> list[str]:
    names: list[str] = []
    fh.visit(lambda name: names.append(name) if isinstance(fh[name], h5py.Group) else None)
    return names


def write_table(
    path: str | Path, table: pd.DataFrame, meta: Mapping[str, Any] | None = None
) -> None:
    """Write a table atomically, provenance in one leading `# provenance: {json}` line.

    Tab-separated, or comma-separated where `path` ends in ".csv". Provenance holds no
    timestamps, so the same inputs give byte-identical tables.
    """
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        if meta is not None:
            fh.write(f"# {PROVENANCE_ATTR}: {to_json(meta)}\n")
        table.to_csv(
            fh, sep=_separator(path), index=False, float_format="%.10g", lineterminator="\n"
        )


def read_table(path: str | Path) -> pd.DataFrame:
    """A table written by `write_table` (its provenance line skipped)."""
    return pd.read_csv(path, sep=_separator(path), comment="#")


def _separator(path: str | Path) -> str:
    return "," if str(path).endswith(".csv") else "\t"


def read_table_meta(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        first = fh.readline()
    prefix = f"# {PROVENANCE_ATTR}: "
    return json.loads(first[len(prefix) :]) if first.startswith(prefix) else {}


def write_json(path: str | Path, value: Mapping[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
