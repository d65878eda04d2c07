"""The dashboard in a real headless Chromium against a real ``fastgate run`` with an admin listener.

Skipped only when chromium or chromedriver is missing (``scripts/install`` installs both on Debian, so CI runs it). A
gateway without an admin listener fails: the test waits for the admin port and then for the page's own data.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.admin.dashboard_support import admin_gateway, browser_paths, example_upstream, headless_chromium, stop
from tests.servers import REFUSED_PORT, GatewayProcess

pytestmark = [
    pytest.mark.skipif(
        browser_paths() is None,
        reason="chromium and chromedriver are not installed (scripts/install installs Debian's chromium and "
        "chromium-driver)",
    ),
    pytest.mark.timeout(240),
]

DEADLINE = 45.0  # seconds for each state the page must reach: generous, the machine is shared
TOKEN = "dash-s3cret"


def wait_for(driver: WebDriver, gateway: GatewayProcess, what: str, predicate: Callable[[WebDriver], bool]) -> None:
    try:
        WebDriverWait(
            driver,
            DEADLINE,
            poll_frequency=0.2,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        ).until(predicate)
    except TimeoutException:
        page = driver.find_element(By.TAG_NAME, "body").text
        pytest.fail(
            f"the dashboard never showed {what} within {DEADLINE} s\n--- page ---\n{page}\n--- gateway log ---\n"
            f"{gateway.log()[-4000:]}"
        )


def target_state(driver: WebDriver, address: str) -> str:
    """The state in the target's status cell; read in one script with the row's data-state, which must agree."""
    found = driver.execute_script(
        "const row = document.querySelector(`#upstreams tr[data-target='${arguments[0]}']`);"
        "return row && [row.dataset.state, row.querySelector('td.status').textContent, row.className];",
        address,
    )
    if found is None:
        raise NoSuchElementException(f"no row for {address}")
    state, text, row_class = found
    assert state == text and row_class == f"state-{text}", found
    return str(text)


def metric(driver: WebDriver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def test_dashboard_shows_targets_rates_and_a_stopped_target_turning_unhealthy(tmp_path: Path) -> None:
    with (
        example_upstream(tmp_path / "a.log") as (_, first),
        example_upstream(tmp_path / "b.log") as (second_process, second),
    ):
        config = {
            "upstreams": {
                "api": {
                    "targets": [{"url": f"http://{first}"}, {"url": f"http://{second}"}],
                    "health_check": {
                        "path": "/healthz",
                        "interval": 0.5,
                        "timeout": 1,
                        "unhealthy_threshold": 2,
                        "healthy_threshold": 1,
                    },
                },
                "broken": {"url": f"http://127.0.0.1:{REFUSED_PORT}"},
            },
            "routes": [{"prefix": "/broken", "upstream": "broken"}, {"prefix": "/", "upstream": "api"}],
        }
        with admin_gateway(config, tmp_path, token=TOKEN) as admin, headless_chromium() as driver:
            gateway = admin.gateway
            driver.get(admin.dashboard_url)
            assert driver.title == "fastgate dashboard"

            # The token from the fragment went out as the Bearer header: the polls succeed.
            wait_for(driver, gateway, "the live state", lambda d: metric(d, "connection") == "live")
            wait_for(
                driver,
                gateway,
                "both targets healthy",
                lambda d: target_state(d, first) == "healthy" and target_state(d, second) == "healthy",
            )
            routes = driver.find_elements(By.CSS_SELECTOR, "#routes tbody tr")
            assert len(routes) == 2 and "/broken" in routes[0].text and "api" in routes[1].text

            # Traffic while waiting: the rates come from the change of the totals between two polls.
            with httpx.Client(base_url=gateway.url, timeout=10) as client:

                def traffic_shown(d: WebDriver) -> bool:
                    for _ in range(5):
                        assert client.get("/hello").status_code == 200
                    rate = metric(d, "request-rate")
                    return (
                        re.fullmatch(r"[\d,.]+", rate) is not None
                        and float(rate.replace(",", "")) > 0
                        and all(metric(d, f"latency-{p}").endswith(" ms") for p in ("p50", "p90", "p99"))
                        and int(metric(d, "requests-total").replace(",", "")) >= 5
                    )

                wait_for(driver, gateway, "a request rate and latency percentiles", traffic_shown)
            assert metric(driver, "error-rate") == "0.00"
            assert driver.find_elements(By.CSS_SELECTOR, "#recent-errors tbody tr") == []

            # A 502 from the broken upstream shows up among the last errors.
            assert httpx.get(f"{gateway.url}/broken/x", timeout=10).status_code == 502

            def error_listed(d: WebDriver) -> bool:
                rows = d.find_elements(By.CSS_SELECTOR, "#recent-errors tbody tr")
                return bool(rows) and "502" in rows[0].text and "GET /broken/x" in rows[0].text

            wait_for(driver, gateway, "the 502 among the last errors", error_listed)
            assert int(metric(driver, "errors-total")) >= 1

            stop(second_process)
            wait_for(driver, gateway, f"{second} unhealthy", lambda d: target_state(d, second) == "unhealthy")
            assert target_state(driver, first) == "healthy"

            gateway.stop()
            wait_for(
                driver, gateway, "the disconnected state", lambda d: metric(d, "connection").startswith("disconnected")
            )
