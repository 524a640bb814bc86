"""Headless Chromium for the playground's browser tests, and what they leave behind on failure.

The browser is Debian's ``chromium`` driven through its ``chromium-driver`` (``.ci/chromium.sh``
installs both); nothing is downloaded. Without them the tests are skipped, and with CI=true
they fail instead, as a missing PostgreSQL does.

- ``open_browser`` (fixture): a factory, ``open_browser(width=1280, height=800)``, of fresh
  browsers whose viewport (not window) has that size; all are closed after the test.
  ``PHONE`` is the small viewport the layout must survive.
- On a failed test every browser it opened leaves its screenshot, the page's HTML and the
  console log under ``test-artifacts/browser/`` (git-ignored), named after the test.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
DESKTOP = (1280, 800)
PHONE = (390, 844)
#: Headless and quiet: no GPU, no sandbox (CI runs as root), /tmp instead of a small /dev/shm,
#: and no calls home (the tests have no network, and waiting on one would slow every start).
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-extensions", "--disable-sync",
         "--no-first-run", "--no-default-browser-check", "--mute-audio",
         "--disable-features=Translate,MediaRouter,OptimizationHints",
         "--lang=en-US", "--force-device-scale-factor=1"]

_DRIVERS = pytest.StashKey[list[Any]]()


def _missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (install Debian's {package}: .ci/chromium.sh)"
    try:
        import selenium  # noqa: F401  (the dev extra)
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


def require_browser() -> None:
    """Skip the test without a browser; fail it under CI=true, where CI must have installed one."""
    problem = _missing()
    if problem is None:
        return
    message = f"browser tests cannot run: {problem}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def new_browser(width: int, height: int) -> Any:
    """A headless Chromium whose viewport is ``width`` x ``height`` CSS pixels."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        set_viewport(driver, width, height)
    except Exception:
        driver.quit()
        raise
    return driver


def set_viewport(driver: Any, width: int, height: int) -> None:
    """Size the window so the page's viewport is exactly width x height: the window's own
    frame takes some of it, and how much differs between Chromium versions. A resize applies
    asynchronously (on a busy machine a read can still see the old size), so each one is
    measured once it has settled and corrected until the viewport is right."""
    window, actual = [width, height], None
    for _ in range(5):
        driver.set_window_size(*window)
        actual = _settled_viewport(driver)
        if actual == [width, height]:
            return
        window = [window[0] + width - actual[0], window[1] + height - actual[1]]
    raise AssertionError(f"viewport is {actual}, not {[width, height]}")


def _settled_viewport(driver: Any) -> list[int]:
    """The viewport once two reads 100 ms apart agree (or after two seconds)."""
    deadline, last = time.monotonic() + 2.0, None
    while True:
        now: list[int] = driver.execute_script("return [innerWidth, innerHeight]")
        if now == last or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(0.1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--readme-screenshot", action="store_true",
                     help="also save docs/img/playground.png from the playground's V1 test")


@pytest.fixture
def open_browser(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """``open_browser(width=1280, height=800)``: a fresh headless Chromium, closed after the
    test; its screenshot is kept if the test fails."""
    require_browser()
    drivers = request.node.stash.setdefault(_DRIVERS, [])

    def opener(width: int = DESKTOP[0], height: int = DESKTOP[1]) -> Any:
        driver = new_browser(width, height)
        drivers.append(driver)
        return driver

    yield opener
    for driver in drivers:
        driver.quit()
    drivers.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep what each browser showed when a test fails (before its fixtures close them)."""
    report = yield
    if report.failed and report.when in ("setup", "call"):
        for index, driver in enumerate(item.stash.get(_DRIVERS, [])):
            saved = save_artifacts(driver, f"{_slug(item.nodeid)}-{index}")
            report.sections.append(("browser artifacts", "\n".join(saved)))
    return report


def save_artifacts(driver: Any, name: str) -> list[str]:
    """The screenshot, HTML and console log of ``driver`` as ``ARTIFACTS/name.*``; returns
    what it saved (a browser that died saves what it still can)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    saved = []
    steps: list[tuple[str, Callable[[Path], object]]] = [
        ("png", lambda path: driver.save_screenshot(str(path))),
        ("html", lambda path: path.write_text(driver.page_source, encoding="utf-8")),
        ("console.txt", lambda path: path.write_text(
            "\n".join(f"{entry['level']} {entry['message']}"
                      for entry in driver.get_log("browser")), encoding="utf-8")),
    ]
    for suffix, save in steps:
        path = ARTIFACTS / f"{name}.{suffix}"
        try:
            save(path)
        except Exception as error:  # the browser may be the thing that failed
            saved.append(f"{path.name}: not saved ({type(error).__name__}: {error})")
        else:
            saved.append(str(path))
    return saved


def _slug(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("::", 1)[-1]).strip("_")[:120]
