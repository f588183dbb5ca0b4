"""`snakemake --report` of the smoke study opens in headless Chromium and shows every figure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from report_check import check_report, find_chromium
from smoke import FIGURES, STUDY, snakemake

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def report(smoke_runs: list[Path]) -> Path:
    if find_chromium() is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium)")
    pytest.importorskip("playwright", reason="pip install playwright (the dev extra)")
    workdir = smoke_runs[0]
    snakemake(workdir, workdir / "config.yaml", "--report", str(workdir / "report.html"))
    return workdir / "report.html"


def test_every_figure_is_shown_and_decoded(report: Path, tmp_path: Path) -> None:
    check = check_report(report, tmp_path / "shots")
    assert check.ok, check.summary()
    figures = report.parent / "results" / STUDY / "figures"
    expected = {f"results/{STUDY}/figures/{name}.png" for name in FIGURES}
    assert expected == {str(p.relative_to(report.parent)) for p in figures.glob("*.png")}
    assert set(check.shown) == expected
    assert all(size["width"] > 300 for size in check.shown.values())
    tables = {path for path in check.results if path.endswith((".csv", ".tsv"))}
    assert {Path(t).name for t in tables} == {"accuracy.tsv", "spearman.csv", "permutation.csv"}
    # One screenshot of the start page and one per figure, each a real PNG.
    assert len(check.screenshots) == 1 + len(FIGURES)
    assert all(shot.read_bytes()[:4] == b"\x89PNG" for shot in check.screenshots)


def test_captions_state_what_and_with_which_config(report: Path, tmp_path: Path) -> None:
    results = check_report(report, tmp_path / "shots").results
    captions = {Path(path).stem: entry["caption"] for path, entry in results.items()}
    assert all(caption.strip() for caption in captions.values())
    assert not any("System Message" in caption for caption in captions.values())
    # Values from tests/workflow/config.smoke.yaml, rendered into the captions.
    assert "runs 0, 1" in captions["fig1_predictive_regular"]
    assert "5 L2 PGD" in captions["fig2_inversions"]
    assert "999" in captions["permutation"] and "Adam lr 0.005" in captions["fig6_probes"]
    assert "3 epochs" in captions["fig6_probes"]


def test_a_broken_image_is_reported(report: Path, tmp_path: Path) -> None:
    html = report.read_text()
    # Garble the payload of the first embedded figure (PNG data URIs start with iVBOR).
    broken, n = re.subn(
        r"(data:image/png;[^,]*base64,)iVBOR[A-Za-z0-9+/]{64}", r"\1" + "A" * 69, html, count=1
    )
    assert n == 1
    copy = tmp_path / "broken.html"
    copy.write_text(broken)
    check = check_report(copy, tmp_path / "shots")
    assert not check.ok and len(check.broken) == 1
    assert len(check.shown) == len(FIGURES) - 1
