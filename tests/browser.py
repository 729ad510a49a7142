"""A page opened in real headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright for Python;
never ``playwright install``): what it logged, what it fetched, what it shows.

Flags for a closed network: no sandbox (root in a container), no GPU, no QUIC, no first-run, background
networking, component updates or sync, and a fresh profile (``launch_persistent_context`` on a new temporary
directory is Playwright's ``--user-data-dir``).

``python tests/browser.py PAGE.html OUT.png`` writes a screenshot (how ``docs/report.png`` is made).
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass
class Visit:
    console: list[tuple[str, str]] = field(default_factory=list)   # (type, text) of every console message
    page_errors: list[str] = field(default_factory=list)            # uncaught exceptions
    failed: list[str] = field(default_factory=list)                 # requests that failed (URL: reason)
    requested: list[str] = field(default_factory=list)              # every URL the page asked for
    text: str = ""                                                  # the body's rendered text
    images: list[dict[str, Any]] = field(default_factory=list)      # per <img>: complete, naturalWidth, src prefix
    scripts: int = 0
    title: str = ""

    @property
    def errors(self) -> list[str]:
        return [t for kind, t in self.console if kind == "error"] + self.page_errors


def visit(page_path: Path, screenshot: Path | None = None, *, width: int = 1200, height: int = 1000) -> Visit:
    from playwright.sync_api import sync_playwright

    out = Visit()
    with tempfile.TemporaryDirectory(prefix="costwatch-chromium-") as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": width, "height": height}, offline=True)
        try:
            page = ctx.new_page()
            page.on("console", lambda m: out.console.append((m.type, m.text)))
            page.on("pageerror", lambda e: out.page_errors.append(str(e)))
            page.on("requestfailed", lambda r: out.failed.append(f"{r.url[:120]}: {r.failure}"))
            page.on("request", lambda r: out.requested.append(r.url))
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            out.title = page.title()
            out.text = page.inner_text("body")
            out.images = page.eval_on_selector_all("img", """els => els.map(e => ({
                complete: e.complete, width: e.naturalWidth, src: e.getAttribute('src').slice(0, 22)}))""")
            out.scripts = page.evaluate("document.querySelectorAll('script').length")
            if screenshot is not None:
                page.screenshot(path=str(screenshot))
        finally:
            ctx.close()
    return out


if __name__ == "__main__":  # pragma: no cover - a maintenance tool
    v = visit(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{len(v.images)} images, {len(v.errors)} console errors, {len(v.failed)} failed requests")
