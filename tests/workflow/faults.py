"""SIGKILL one job of each heavy rule at a seeded moment while the smoke study runs, and
rerun as a user would, until the study completes (the fault matrix of tests/workflow).

A job is the Python process of its rule's script (Snakemake runs `python
.snakemake/scripts/tmpXXXX.<rule>.py`); its log (opened by robuniv.log.to_file) says which
job it is and how far it got. Each rule's kill waits for a line of that log that puts the
job inside its work (training: epoch 1's resume file exists, so the kill lands in epoch 2
and the rerun resumes; the others: their progress bar has started), then a seeded delay. A job that ends before its kill is not counted; the next job of the rule is tried.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Training's countdown starts when epoch 1's resume file exists (the log line of epoch 1
# comes just before it is written).
RESUME_FILE = "<resume file>"
# Rule -> (log text that starts the countdown, longest seeded delay in seconds).
FAULTS: dict[str, tuple[str, float]] = {
    "train_model": (RESUME_FILE, 0.1),
    "invert_images": ("inversion:", 0.3),
    "extract_activations": ("%|", 0.2),
    # The first pairs loop computes cka, cka_unbiased, procrustes_sim, jaccard and rtd.
    "compute_similarity": ("pairs:", 0.05),
    "train_probes": ("probe epochs:", 0.05),
}


@dataclass
class Fault:
    """One SIGKILL and what followed it."""

    rule: str
    job_log: str
    delay_s: float
    last_log_line: str
    snakemake_rc: int
    snakemake_said: str
    rerun_args: list[str] = field(default_factory=list)


def _job_processes(workdir: Path, rule: str) -> dict[int, Path]:
    """pid -> log file of every running job of `rule` in `workdir`."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            if not any(part.endswith(f".{rule}.py".encode()) for part in cmdline):
                continue
            if Path(entry.path, "cwd").resolve() != workdir.resolve():
                continue
            logs = [
                Path(os.readlink(fd.path))
                for fd in os.scandir(Path(entry.path, "fd"))
                if os.readlink(fd.path).endswith(".log")
            ]
        except OSError:  # the process ended while we looked
            continue
        own = [log for log in logs if (workdir / "logs") in log.parents]
        if own:
            found[int(entry.name)] = own[0]
    return found


def run_with_faults(
    command: list[str], workdir: Path, env: dict[str, str], seed: int, first: subprocess.Popen
) -> list[Fault]:
    """Kill one job of each rule of FAULTS in the running Snakemake `first`, rerunning
    `command` (adding --rerun-incomplete when Snakemake asks for it) after each, until every
    rule had its kill and a run completed. Raises if the study cannot complete."""
    rng = np.random.default_rng(seed)
    pending = list(FAULTS)
    faults: list[Fault] = []
    process = first
    args: list[str] = []
    for _ in range(3 * len(FAULTS)):
        killed = None
        while pending and killed is None and process.poll() is None:
            for rule in pending:
                # One rule at a time would miss rules whose jobs run now; poll them all.
                killed = _kill_one_nowait(workdir, rule, rng, process)
                if killed is not None:
                    pending.remove(rule)
                    break
            else:
                time.sleep(0.005)
        out, _ = process.communicate(timeout=900)
        if killed is None:
            if process.returncode != 0:
                raise AssertionError(f"the smoke run failed without a fault:\n{out[-5000:]}")
            if pending:
                raise AssertionError(f"the study completed before {pending} could be killed")
            return faults
        rule, log, delay, last = killed
        faults.append(Fault(rule, log, delay, last, process.returncode, out[-3000:], args))
        # As a user would: rerun; with --rerun-incomplete if Snakemake says so.
        args = ["--rerun-incomplete"] if "--rerun-incomplete" in out else []
        process = subprocess.Popen(
            [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=env, cwd=workdir,
        )  # fmt: skip
    raise AssertionError(f"gave up after {len(faults)} faults; still pending: {pending}")


# (pid, rule) -> (when its trigger showed, its seeded delay).
_armed: dict[tuple[int, str], tuple[float, float]] = {}


def _kill_one_nowait(
    workdir: Path, rule: str, rng: np.random.Generator, snakemake: subprocess.Popen
) -> tuple[str, str, float, str] | None:
    """One poll: if a job of `rule` has shown its trigger for its seeded delay, SIGKILL it."""
    trigger, longest = FAULTS[rule]
    now = time.monotonic()
    for pid, log in _job_processes(workdir, rule).items():
        key = (pid, rule)
        # logs/<output path>.log -> <output path>.pt.resume (training's trigger)
        resume = workdir / log.relative_to(workdir / "logs").with_suffix(".pt.resume")
        if key not in _armed:
            if trigger == RESUME_FILE:
                if not resume.exists():
                    continue
            else:
                try:
                    text = log.read_text(errors="replace")
                except OSError:
                    continue
                if trigger not in text:
                    continue
            _armed[key] = (now, float(rng.uniform(0, longest)))
        armed_at, delay = _armed[key]
        if now - armed_at < delay:
            continue
        if trigger == RESUME_FILE and not resume.exists():
            # Training has finished (it deletes its resume file last) and the process is
            # only exiting: a kill now would leave nothing to resume from (seen in CI when
            # the poll saw the file late). Not counted; the next training job is tried.
            continue
        try:
            lines = log.read_text(errors="replace").replace("\r", "\n").strip().splitlines()
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        return rule, str(log.relative_to(workdir)), delay, lines[-1][:160] if lines else ""
    return None
