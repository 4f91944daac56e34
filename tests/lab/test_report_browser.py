"""The report in a real browser: headless Chromium loads index.html from a tiny run of every claim.

Skips (saying why) when Chromium or chromedriver is missing, unless NORMLAB_REQUIRE_BROWSER=1 (CI), which turns a
missing browser into a failure. Debian: ``apt-get install -y chromium chromium-driver``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from _claims_tiny import tiny_report

REQUIRE = os.environ.get("NORMLAB_REQUIRE_BROWSER") == "1"


def _find(*names: str) -> str | None:
    for n in names:
        path = shutil.which(n)
        if path:
            return path
    return None


def _browser():
    chromium = _find("chromium", "chromium-browser", "google-chrome")
    driver = _find("chromedriver")
    missing = [n for n, p in (("chromium", chromium), ("chromedriver", driver)) if p is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install 'normlab[dev]')")
    if missing:
        msg = (f"browser test needs {', '.join(missing)}; on Debian: apt-get install -y chromium chromium-driver "
               "(set NORMLAB_REQUIRE_BROWSER=1 to make this a failure)")
        if REQUIRE:
            pytest.fail(msg)
        pytest.skip(msg)
    return chromium, driver


@pytest.fixture
def driver(tmp_path):
    chromium, chromedriver = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1280,2000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(chromedriver), options=opts)
    try:
        yield d
    finally:
        d.quit()


def test_report_renders_in_headless_chromium(driver, tmp_path):
    from selenium.webdriver.common.by import By

    results, paths, out, _ = tiny_report()
    driver.get(Path(paths["html"]).resolve().as_uri())
    assert driver.title == "normlab claims report"

    rows = driver.find_elements(By.CSS_SELECTOR, "#verdicts tr.verdict-row")
    ids = [r.get_attribute("data-claim") for r in rows]
    assert ids == [r.claim.id for r in results]  # one row per claim, in order
    for row, r in zip(rows, results):
        assert r.verdict.verdict in row.text
        link = row.find_element(By.CSS_SELECTOR, "a").get_attribute("href")
        target = link.split("#", 1)[1]
        assert driver.find_elements(By.ID, target), f"row {r.claim.id} links to missing section #{target}"

    images = driver.find_elements(By.TAG_NAME, "img")
    expected = sum(len(r.outcome.figures) for r in results if r.outcome)
    assert len(images) == expected and expected > 0
    for img in images:
        src = img.get_attribute("src")
        assert src.startswith("data:image/png;base64,"), "images must be inline (self-contained page)"
        width = driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
        assert width and width > 0, f"image not decoded: {img.get_attribute('alt')}"

    errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert errors == [], errors

    shot_dir = Path(os.environ.get("NORMLAB_SCREENSHOT_DIR") or tmp_path)
    shot_dir.mkdir(parents=True, exist_ok=True)
    shot = shot_dir / "claims-report.png"
    assert driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 1000
