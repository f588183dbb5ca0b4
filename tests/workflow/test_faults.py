"""The fault matrix: one job of each heavy rule SIGKILLed in the second smoke run
(tests/workflow/faults.py, seeded), then rerun as a user would. That the results are the
undisturbed run's, byte for byte, is test_smoke's byte-identity test."""

from __future__ import annotations

import re

from faults import FAULTS
from smoke import STUDY, SmokeSession


def test_every_heavy_rule_was_killed_once_and_the_rerun_completed(
    smoke_session: SmokeSession,
) -> None:
    faults = smoke_session.faults
    print(
        "\nrule                  job log                                              delay  snakemake  rerun with"
    )
    for f in faults:
        print(
            f"{f.rule:<22}{f.job_log:<53}{f.delay_s:5.2f}s  rc {f.snakemake_rc:<7}"
            f"{' '.join(f.rerun_args) or '(plain)'}\n    last log line: {f.last_log_line}"
        )
    assert sorted(f.rule for f in faults) == sorted(FAULTS)
    for fault in faults:
        # Snakemake saw the job die and stopped with an error naming the rule.
        assert fault.snakemake_rc != 0
        assert f"Error in rule {fault.rule}" in fault.snakemake_said, fault.snakemake_said


def test_the_killed_training_resumed_from_its_epoch(smoke_session: SmokeSession) -> None:
    (train,) = [f for f in smoke_session.faults if f.rule == "train_model"]
    # Killed in epoch 2 (after epoch 1's resume file was written); the rerun resumed.
    log = (smoke_session.runs[1] / train.job_log).read_text()
    assert re.search(r"resumed from \S+\.resume after epoch [12]", log), log[-2000:]


def test_no_temporary_or_partial_file_is_left(smoke_session: SmokeSession) -> None:
    workdir = smoke_session.runs[1]
    results = workdir / "results" / STUDY
    leftovers = [
        str(p.relative_to(workdir))
        for p in results.rglob("*")
        if p.name.endswith((".tmp", ".resume")) or p.name.startswith(".")
    ]
    assert not leftovers, leftovers
    incomplete = workdir / ".snakemake" / "incomplete"
    assert not incomplete.exists() or not any(incomplete.rglob("*")), list(incomplete.rglob("*"))
