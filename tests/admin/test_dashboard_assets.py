"""The dashboard's files: small, self-contained (no CDN, no external font), no HTML built from API data."""

from __future__ import annotations

import re
from importlib.resources import files

ASSETS = ("index.html", "dashboard.js", "dashboard.css")


def asset(name: str) -> str:
    return files("fastgate").joinpath("admin", "static", name).read_text(encoding="utf-8")


def test_dashboard_assets_stay_under_30_kb() -> None:
    total = sum(len(asset(name).encode()) for name in ASSETS)
    assert 0 < total < 30 * 1024, total


def test_dashboard_loads_nothing_but_its_own_files() -> None:
    page = asset("index.html")
    references = re.findall(r'\b(?:src|href)="([^"]*)"', page)
    assert set(references) == {"data:,", "dashboard.css", "dashboard.js", "stats", "upstreams"}
    assert "<style" not in page and not re.search(r"<script(?![^>]*\bsrc=)", page), "no inline script or style"
    css = asset("dashboard.css")
    assert "@import" not in css and "url(" not in css and "@font-face" not in css
    script = asset("dashboard.js")
    assert not re.search(r"https?://|\bimport\s*\(|\bimportScripts\b", script)


def test_dashboard_script_sets_api_text_without_parsing_html() -> None:
    script = asset("dashboard.js")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    assert "textContent" in script
