"""Headless Chromium for the tests of the operator's screen: Debian's /usr/bin/chromium driven by Playwright.

Playwright's own browser download is never used (scripts/setup installs the `chromium` package), so the tests
need nothing fetched at run time (SCREEN_CHROMIUM names another binary). Screenshots go to $SCREEN_ARTIFACTS when
set, else under the test's tmp_path, and their paths are printed. (Not AMFLOW_…: the station reads every AMFLOW_
variable as a setting and refuses one it does not know.)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, ViewportSize, sync_playwright

SCREEN: ViewportSize = {"width": 1920, "height": 1080}
"""The station's touchscreen."""


def chromium_binary() -> str:
    found = os.environ.get("SCREEN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).exists():
        raise RuntimeError("chromium is not installed: run scripts/setup (it installs the Debian chromium package)")
    return found


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_binary(),
            headless=True,
            # no sandbox: the tests run as root in CI containers, where Chromium's sandbox cannot start
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield browser
        finally:
            browser.close()


def screen_page(browser: Browser, url: str) -> tuple[Page, list[str]]:
    """A 1920×1080 touch page at `url`, and the list its script errors and console errors are collected into."""
    page = browser.new_page(viewport=SCREEN, has_touch=True)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(url)
    return page, errors


def artifacts(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("SCREEN_ARTIFACTS") or tmp_path / "artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def screenshot(page: Page, directory: Path, name: str) -> Path:
    path = directory / f"{name}.png"
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path
