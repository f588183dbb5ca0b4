"""Open a Snakemake HTML report in headless Chromium, show every figure, check it loaded.

    python tests/workflow/report_check.py report.html --screenshots DIR

Clicks through the report as a reader does: each result category, then each result's
"view" (eye) button; an image result must then be on screen as an <img> the browser has
decoded (complete, natural width > 0). Every network request must stay inside the file
(data:, file:, blob:, about:): the page is self-contained. Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
LOCAL_SCHEMES = ("data:", "file:", "blob:", "about:")


def find_chromium() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class ReportCheck:
    results: dict[str, dict] = field(default_factory=dict)  # path -> name, caption, mime
    shown: dict[str, dict] = field(default_factory=dict)  # image path -> width, height
    broken: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)

    @property
    def images(self) -> list[str]:
        return [path for path in self.results if path.endswith((".png", ".jpg", ".svg"))]

    @property
    def ok(self) -> bool:
        shown_all = set(self.shown) == set(self.images)
        return shown_all and not self.broken and not self.external_requests

    def summary(self) -> str:
        return json.dumps(
            {
                "results": len(self.results),
                "images": len(self.images),
                "shown": len(self.shown),
                "broken": self.broken,
                "external_requests": self.external_requests,
                "screenshots": [str(p) for p in self.screenshots],
            },
            indent=2,
        )


def check_report(
    html: str | Path, screenshots: str | Path, *, chromium: str | None = None
) -> ReportCheck:
    """Open `html`, display each image result through the report's own buttons, check them."""
    from playwright.sync_api import sync_playwright

    executable = chromium or find_chromium()
    if executable is None:
        raise FileNotFoundError(f"no Chromium found (looked for {', '.join(CHROMIUM_CANDIDATES)})")
    out = Path(screenshots)
    out.mkdir(parents=True, exist_ok=True)
    check = ReportCheck()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.on(
                "request",
                lambda request: (
                    None
                    if request.url.startswith(LOCAL_SCHEMES)
                    else check.external_requests.append(request.url)
                ),
            )
            url = Path(html).resolve().as_uri()
            _open(page, url)
            check.results = page.evaluate(
                """Object.fromEntries(Object.entries(results).map(([path, r]) =>
                    [path, {name: r.name, caption: r.caption,
                            mime: r.data_uri.slice(5, r.data_uri.indexOf(';'))}]))"""
            )
            check.screenshots.append(out / "report.png")
            page.screenshot(path=check.screenshots[-1])
            categories = page.evaluate("Object.keys(categories)")
            for category in categories:
                _open(page, url)  # back to the main menu
                _show_category(page, category, check, out)
        finally:
            browser.close()
    return check


def _open(page, url: str) -> None:
    page.goto(url)
    page.wait_for_function("typeof app !== 'undefined' && typeof results === 'object'")


def _show_category(page, category: str, check: ReportCheck, out: Path) -> None:
    page.get_by_text(category, exact=True).first.click()
    page.wait_for_timeout(300)
    subcategories = page.evaluate(f"Object.keys(categories[{json.dumps(category)}])")
    if len(subcategories) > 1:  # the menu lists subcategories first
        for sub in subcategories:
            page.get_by_text(sub, exact=True).first.click()
            page.wait_for_timeout(300)
            _view_rows(page, check, out)
            page.get_by_text(category, exact=True).first.click()  # back to the list
    else:
        _view_rows(page, check, out)


def _view_rows(page, check: ReportCheck, out: Path) -> None:
    buttons = page.locator("a[iconname=eye]")
    for i in range(buttons.count()):
        buttons.nth(i).click()
        page.wait_for_timeout(300)
        shown = page.evaluate(
            """() => {
                const img = [...document.querySelectorAll('img')]
                    .find(i => Object.values(results).some(r => r.data_uri === i.src));
                if (!img) return null;
                const path = Object.keys(results).find(p => results[p].data_uri === img.src);
                return {path, complete: img.complete, width: img.naturalWidth,
                        height: img.naturalHeight};
            }"""
        )
        if shown is None:  # a table: the eye button downloads it instead of showing it
            continue
        if shown["complete"] and shown["width"] > 0:
            check.shown[shown["path"]] = {"width": shown["width"], "height": shown["height"]}
        elif shown["path"] not in check.broken:
            check.broken.append(shown["path"])
        shot = out / (Path(shown["path"]).stem + ".png")
        page.screenshot(path=shot)
        check.screenshots.append(shot)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--screenshots", type=Path, default=Path("report-screenshots"))
    args = parser.parse_args(argv)
    check = check_report(args.report, args.screenshots)
    print(check.summary())
    return 0 if check.ok else 1


if __name__ == "__main__":
    sys.exit(main())
