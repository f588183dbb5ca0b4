"""Data-parallel training of one model through torchrun, from inside a running job.

A Snakemake job is one process; torchrun needs to start N. `launch_train` writes the
stage's arguments to a JSON file and runs `python -m torch.distributed.run --standalone
--nproc_per_node N -m robuniv.launch ARGS.json`; every rank then calls
`robuniv.pipeline.train_stage` with the same arguments (`train_model` reads WORLD_SIZE,
RANK and LOCAL_RANK and trains data-parallel). Rank output goes to the job's log.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def torchrun_command(args_file: str | Path, nproc_per_node: int) -> list[str]:
    """The torchrun call that runs `train_stage` on `nproc_per_node` local ranks."""
    if int(nproc_per_node) < 2:
        raise ValueError(
            f"torchrun is for 2 or more processes, got nproc_per_node={nproc_per_node}"
        )
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={int(nproc_per_node)}",
        "-m",
        "robuniv.launch",
        str(args_file),
    ]


def launch_train(
    stage_kwargs: Mapping[str, Any],
    *,
    nproc_per_node: int,
    threads: int,
    device: str,
    log_file: str | Path | None = None,
) -> None:
    """Run `train_stage(**stage_kwargs)` data-parallel on `nproc_per_node` local processes.

    `threads` (the job's cores) are shared out between the ranks; `device` is the config's
    choice ("auto", "cpu" or "cuda"), resolved by each rank. Raises RuntimeError with the
    exit status when any rank fails; the checkpoint is then not written (rank 0 writes it
    atomically at the very end).
    """
    payload = {
        "stage": dict(stage_kwargs),
        "threads": max(1, int(threads) // int(nproc_per_node)),
        "device": device,
    }
    with tempfile.TemporaryDirectory(prefix="robuniv-torchrun-") as tmp:
        args_file = Path(tmp) / "train_stage.json"
        args_file.write_text(json.dumps(payload, default=str))
        command = torchrun_command(args_file, nproc_per_node)
        log.info("launching %d ranks: %s", nproc_per_node, " ".join(command))
        env = {**os.environ, "OMP_NUM_THREADS": str(payload["threads"])}
        if log_file is None:
            result = subprocess.run(command, env=env, check=False)
        else:
            with open(log_file, "a") as sink:
                result = subprocess.run(command, env=env, stdout=sink, stderr=sink, check=False)
    if result.returncode != 0:
        where = f"; see {log_file}" if log_file else ""
        raise RuntimeError(
            f"torchrun training with {nproc_per_node} ranks failed with exit status "
            f"{result.returncode}{where}"
        )


def _rank_main(args_file: str) -> None:
    from robuniv.pipeline import train_stage
    from robuniv.runtime import setup_torch

    payload = json.loads(Path(args_file).read_text())
    # The launcher already sends this process's stderr to the job's log.
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s rank {os.environ.get('RANK', '?')} %(levelname)s %(name)s: %(message)s",
    )
    device = setup_torch(payload["threads"], payload["device"])
    train_stage(**payload["stage"], device=device)


if __name__ == "__main__":
    _rank_main(sys.argv[1])
