"""A real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium) for
tests of HTML pages. No browser is downloaded: the system binaries are used or the test is skipped
with the reason (``DFER_REQUIRE_BROWSER=1``, set by ``.ci/run``, turns that skip into a failure)."""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser")


def _missing() -> str | None:
    if not any(shutil.which(n) for n in CHROMIUM_NAMES):
        return "no chromium on PATH (apt-get install chromium chromium-driver)"
    if not shutil.which("chromedriver"):
        return "no chromedriver on PATH (apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


def start_browser(width: int = 1280, height: int = 900):
    """A headless Chromium session that records the console (``console_errors``)."""
    why = _missing()
    if why:
        if os.environ.get("DFER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser tests must run here (DFER_REQUIRE_BROWSER=1) but {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = next(shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n))
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                "--disable-extensions", "--no-first-run", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))


def open_page(driver, path_or_url: str | Path, timeout: float = 20.0) -> None:
    """Load a page from disk (or a file:// URL with a fragment) and wait until its script marks it ready."""
    url = path_or_url if str(path_or_url).startswith("file://") else Path(path_or_url).resolve().as_uri()
    driver.get("about:blank")  # a new document even when only the fragment differs
    driver.get(url)
    end = time.time() + timeout
    while driver.execute_script("return document.body && document.body.getAttribute('data-ready')") != "1":
        if time.time() > end:
            raise AssertionError(f"{url} did not finish rendering in {timeout} s; console: {console_errors(driver)}")
        time.sleep(0.02)


def wait_for(condition, timeout: float = 10.0):
    """Poll ``condition()`` until it is truthy and return its value. The page applies a filter after the
    ``hashchange`` event and a search after a short debounce, so the DOM changes a moment after a click or a
    key press (longer on a loaded machine); a test waits for the change it caused instead of reading at once."""
    end = time.time() + timeout
    while True:
        value = condition()
        if value or time.time() > end:
            return value
        time.sleep(0.02)


def console_errors(driver) -> list[str]:
    """Console errors and uncaught exceptions since the last call (the log is drained)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def screenshot_stats(driver, path: Path) -> tuple[int, float]:
    """Save a screenshot to ``path``; return (distinct colours, pixel standard deviation)."""
    from PIL import Image

    png = driver.get_screenshot_as_png()
    path.write_bytes(png)
    with Image.open(io.BytesIO(png)) as im:
        arr = np.asarray(im.convert("RGB"))
    colours = len(np.unique(arr.reshape(-1, 3), axis=0))
    return colours, float(arr.std())
