"""Take docs/img/dashboard.png from a live gateway: ``scripts/dashboard-screenshot [OUT.png]``.

Starts ``fastgate run`` with an admin listener in front of three example upstreams and three dead addresses, so the
page shows every state: healthy targets, one failing its active checks (unhealthy), one ejected by outlier detection,
and 502s among the last errors. Traffic runs in a thread while the page is captured, so the rates are not zero.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.admin.dashboard_support import admin_gateway, example_upstream, headless_chromium
from tests.servers import free_port

TRAFFIC_LIMIT = 120.0  # seconds the traffic thread may run at most
CHART_SAMPLES = 45  # polls (seconds) of rates in the chart before the picture is taken
WIDTH = 1200
LEGACY_ERRORS = 6  # 502s from the dead legacy upstream, for the last errors table


def traffic(url: str, done: threading.Event) -> None:
    deadline = time.monotonic() + TRAFFIC_LIMIT
    with httpx.Client(base_url=url, timeout=10) as client:
        n = 0
        while not done.is_set() and time.monotonic() < deadline:
            n += 1
            with contextlib.suppress(httpx.HTTPError):
                client.get("/api/items" if n % 3 else "/search?q=gateway")
                if n % 150 == 0 and n <= 150 * LEGACY_ERRORS:
                    client.get("/legacy/report")
            time.sleep(0.01)


def state(driver: WebDriver, address: str) -> str:
    return (
        driver.find_element(By.CSS_SELECTOR, f'#upstreams tr[data-target="{address}"]').get_attribute("data-state")
        or ""
    )


def main(out: Path) -> None:
    dead = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        live = [stack.enter_context(example_upstream(tmp / f"upstream{i}.log"))[1] for i in range(3)]
        config = {
            "upstreams": {
                "api": {
                    "targets": [
                        {"url": f"http://{live[0]}"},
                        {"url": f"http://{live[1]}"},
                        {"url": f"http://{dead[0]}"},
                    ],
                    "health_check": {"path": "/healthz", "interval": 0.5, "timeout": 1, "unhealthy_threshold": 2},
                },
                "search": {
                    "targets": [{"url": f"http://{live[2]}"}, {"url": f"http://{dead[1]}"}],
                    "balancer": "least_request",
                    "outlier_detection": {"consecutive_failures": 3, "base_ejection_time": 300},
                },
                "legacy": {"url": f"http://{dead[2]}"},
            },
            "routes": [
                {"prefix": "/api", "upstream": "api"},
                {"prefix": "/search", "upstream": "search"},
                {"prefix": "/legacy", "upstream": "legacy"},
            ],
        }
        admin = stack.enter_context(admin_gateway(config, tmp, token="s3cret"))
        done = threading.Event()
        worker = threading.Thread(target=traffic, args=(admin.gateway.url, done), daemon=True)
        worker.start()
        stack.callback(worker.join, 15)
        stack.callback(done.set)
        driver = stack.enter_context(headless_chromium(WIDTH, 1000))
        driver.get(admin.dashboard_url)

        def ready(d: WebDriver) -> bool:
            rate = d.find_element(By.ID, "request-rate").text
            return (
                state(d, dead[0]) == "unhealthy"
                and state(d, dead[1]) == "ejected"
                and bool(d.find_elements(By.CSS_SELECTOR, "#recent-errors tbody tr"))
                and rate not in ("–", "0.00")
                and int(d.find_element(By.ID, "rate-chart").get_attribute("data-samples") or 0) >= CHART_SAMPLES
            )

        WebDriverWait(driver, 90, 0.2, (NoSuchElementException, StaleElementReferenceException)).until(ready)
        # The whole page in one picture: a viewport as tall as the document (a window size would include the
        # browser's own frame and is capped by the headless screen).
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        metrics = {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        WebDriverWait(driver, 5).until(lambda d: d.find_element(By.ID, "connection").text == "live")
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img/dashboard.png"))
