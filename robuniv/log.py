"""Send a job's log records, warnings, tracebacks and tqdm progress to one file."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from types import TracebackType

# tqdm writes a line at most this often in log files: enough to see progress,
# few enough lines to read.
TQDM_MININTERVAL_S = 10.0


class UserError(ValueError):
    """Bad input a user can fix (a model that cannot be loaded, a damaged file).

    A job that dies of one prints its message as one line where Snakemake shows the job's
    output, not a traceback (which still goes to the job's log).
    """


def to_file(path: str | Path, level: int = logging.INFO) -> None:
    """Route logging, warnings, uncaught exceptions and stderr of this process to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the job
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    sys.stderr = stream

    def log_uncaught(
        kind: type[BaseException], value: BaseException, tb: TracebackType | None
    ) -> None:
        stream.write("".join(traceback.format_exception(kind, value, tb)))
        stream.flush()
        if isinstance(value, UserError):
            print(f"robuniv: {value}", file=sys.__stderr__, flush=True)
            return
        sys.__excepthook__(kind, value, tb)

    sys.excepthook = log_uncaught


def progress_kwargs() -> dict[str, object]:
    """tqdm keyword arguments that suit a log file as well as a terminal."""
    return {
        "mininterval": TQDM_MININTERVAL_S if not sys.stderr.isatty() else 0.1,
        "file": sys.stderr,
    }
