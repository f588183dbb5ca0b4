"""Atomic writes with provenance: HDF5 arrays, TSV tables, JSON metadata.

Every output is written under a temporary name in its own folder and renamed
into place, so a killed job never leaves a half-written file that looks done.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from robuniv import __version__
from robuniv.log import UserError

PROVENANCE_ATTR = "provenance"


class DamagedFileError(UserError):
    """An input file that cannot be read as what it should be (truncated, garbled)."""


class MissingColumnsError(UserError):
    """A table without a column its reader needs."""


class DiskFullError(UserError):
    """An output could not be written for want of space; nothing of it is left behind."""


# Errors that mean the file system ran out of room rather than that the writer is wrong.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def _no_space(err: BaseException) -> bool:
    """Whether `err`, or an error it was raised from, is a full disk.

    torch.save wraps the OSError of its file object in a RuntimeError, and matplotlib's PDF
    writer fails again while cleaning up after it, so the chain is searched, not just `err`.
    """
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _NO_SPACE:
            return True
        cause = cause.__cause__ or cause.__context__
    return False


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only on success.

    A full disk, here or in the caller's writing, raises DiskFullError naming `path`, with
    the temporary file removed: the traceback of a failed write says little a user can act on.
    """
    path = Path(path)
    try:
        with _atomic_path(path) as tmp:
            yield tmp
    except Exception as err:
        if _no_space(err):
            raise DiskFullError(f"disk full writing {path}") from err
        raise


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
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


@contextlib.contextmanager
def open_h5(path: str | Path) -> Iterator[h5py.File]:
    """`path` opened for reading; damage found while reading raises DamagedFileError.

    A truncated file fails on opening, a garbled one often only when a damaged object is
    read, so errors of the whole block count. h5py reports both as OSError; a missing
    group or dataset (KeyError) is the caller's to explain.
    """
    try:
        with h5py.File(path, "r") as fh:
            yield fh
    except FileNotFoundError:
        raise
    except OSError as err:
        # h5py's own message (in the job's log) names HDF5 internals, not what to do.
        raise DamagedFileError(f"{path}: not a readable HDF5 file (truncated or damaged)") from err


def read_h5(path: str | Path, group: str = "/", *, finite: bool = False) -> dict[str, np.ndarray]:
    """All datasets directly in `group` as arrays; with `finite`, none may hold NaN or inf."""
    with open_h5(path) as fh:
        if group not in fh:
            raise KeyError(f"{path}: no group {group!r}; groups: {list_groups(fh)}")
        node = fh[group]
        arrays = {name: item[()] for name, item in node.items() if isinstance(item, h5py.Dataset)}
    if finite:
        for name, array in arrays.items():
            require_finite(array, path, f"{name} of {group!r}")
    return arrays


def read_h5_meta(path: str | Path, group: str = "/") -> dict[str, Any]:
    with open_h5(path) as fh:
        raw = fh[group].attrs.get(PROVENANCE_ATTR)
        return json.loads(raw) if raw is not None else {}


def require_finite(array: np.ndarray, path: str | Path, what: str) -> np.ndarray:
    """`array` unchanged; DamagedFileError naming `path`, `what` and the bad rows otherwise.

    A diverged model writes NaN or inf features; every measure would turn them into NaN
    similarities that the tables and figures then show as if they were results.
    """
    if array.dtype.kind in "fc" and array.size and not np.isfinite(array).all():
        bad = int((~np.isfinite(array.reshape(len(array), -1))).any(axis=1).sum())
        raise DamagedFileError(
            f"{path}: {what} holds NaN or inf in {bad} of {len(array)} rows (a diverged model?)"
        )
    return array


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


def read_table(path: str | Path, columns: Iterable[str] = ()) -> pd.DataFrame:
    """A table written by `write_table` (its provenance line skipped).

    Raises MissingColumnsError naming `path` unless the table has every one of `columns`.
    The table remembers `path` (attrs["source"]), so `require_columns` checks made later,
    where a table is used, name the file too.
    """
    try:
        table = pd.read_csv(path, sep=_separator(path), comment="#")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DamagedFileError(f"{path}: not a readable table ({reason})") from err
    table.attrs["source"] = str(path)
    require_columns(table, columns)
    return table


def require_columns(table: pd.DataFrame, columns: Iterable[str], what: str = "table") -> None:
    """Raise MissingColumnsError naming the columns of `columns` that `table` lacks.

    The message starts with the file the table was read from, where `read_table` read it.
    """
    missing = [c for c in columns if c not in table.columns]
    if missing:
        source = table.attrs.get("source")
        where = f"{source}: " if source else ""
        raise MissingColumnsError(
            f"{where}{what} lacks columns {missing}; it has {list(table.columns)}"
        )


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
