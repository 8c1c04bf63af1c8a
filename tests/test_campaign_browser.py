"""The campaign report in a real browser (Debian's chromium, headless, driven by selenium): the page loads
without console errors, the filters change what is shown, and a failure's evidence expands on a click.

The report comes from real cells (the suite on the model and on a seeded broken model, in processes of
their own) recorded as two campaigns in a fresh history, so the charts have two points.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from testbenches.campaign import history, html
from testbenches.campaign.cell import ROOT, run_cell
from testbenches.campaign.matrix import Cell
from testbenches.campaign.merge import Merged
from testbenches.peers.process import peer_missing, require_program

INSTALL = "apt-get install -y chromium chromium-driver"
BROKEN_ID = "FEAT-DEV-03"
PAGE_TIMEOUT = 30.0


def _cell(name: str, spec: str) -> Cell:
    return Cell(id=name, target=spec, seed=1, profile="short", settings={"max_examples": 5}, checks="test_features",
                timeout=120.0)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("campaign-html")
    good = run_cell(_cell("sim/base/short/s1", "sim:virtio-net"), str(tmp))
    broken = run_cell(_cell("broken/base/short/s1", "sim:virtio-net,model=tests.broken_models:FeaturesOkForUnoffered"),
                      str(tmp))
    assert good["outcome"] == broken["outcome"] == "ran", (good["log_tail"], broken["log_tail"])
    path = tmp / "report.html"
    with history.connect(tmp / "h.sqlite") as db:
        for records in ([good], [good, broken]):
            merged = Merged.build("browser", tmp / "c.toml", records)
            cid = history.record(db, merged, started=datetime.now(UTC), duration=1.0, rev=history.revision(ROOT),
                                 report=path)
        html.render(merged, history.changes(db, cid), history.area_trends(db, "browser"), path)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = require_program("chromium", INSTALL)
    driver_path = require_program("chromedriver", INSTALL)
    if importlib.util.find_spec("selenium") is None:
        peer_missing("selenium not installed: pip install selenium (the dev extra)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        driver.set_page_load_timeout(PAGE_TIMEOUT)
        yield driver
    finally:
        driver.quit()  # stops chromedriver and the browser it started


def _visible_rows(driver: Any) -> int:
    return int(driver.execute_script(
        "return Array.from(document.querySelectorAll('#matrix tbody tr')).filter(r => r.offsetParent !== null).length"))


def _select(driver: Any, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, element_id)).select_by_value(value)


def test_report_loads_filters_and_expands(browser: Any, report: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(report.as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    total = len(browser.find_elements(By.CSS_SELECTOR, "#matrix tbody tr"))
    assert total > 100 and _visible_rows(browser) == total
    assert "ids shown" in browser.find_element(By.ID, "shown").text
    # two campaigns in the history: every area's chart has two points
    assert len(browser.find_elements(By.CSS_SELECTOR, ".chart[data-area='FEAT'] circle")) == 2

    _select(browser, "f-status", "failed")
    failed_rows = _visible_rows(browser)
    assert 1 <= failed_rows < total
    shown_ids = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#matrix tbody tr td.rid") if r.is_displayed()]
    assert BROKEN_ID in shown_ids

    _select(browser, "f-cell", "0")  # the good model's cell: nothing failed there
    assert _visible_rows(browser) == 0
    heads = browser.find_elements(By.CSS_SELECTOR, "#matrix th.cellh")
    assert [h.is_displayed() for h in heads] == [True, False]
    _select(browser, "f-cell", "")
    _select(browser, "f-status", "")

    _select(browser, "f-area", "PCI")
    assert 0 < _visible_rows(browser) < total
    assert [c.get_attribute("data-area") for c in browser.find_elements(By.CSS_SELECTOR, ".chart")
            if c.is_displayed()] == ["PCI"]
    assert not browser.find_element(By.CSS_SELECTOR, f"details.failure[data-id='{BROKEN_ID}']").is_displayed()
    _select(browser, "f-area", "FEAT")

    failure = browser.find_element(By.CSS_SELECTOR, f"details.failure[data-id='{BROKEN_ID}']")
    evidence = failure.find_element(By.CSS_SELECTOR, ".evidence")
    assert failure.is_displayed() and not evidence.is_displayed()
    failure.find_element(By.TAG_NAME, "summary").click()
    assert evidence.is_displayed()
    assert "--cell broken/base/short/s1" in evidence.find_element(By.CSS_SELECTOR, "code.repro").text
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
