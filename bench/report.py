"""Aggregation across rounds (medians; ratios taken within a round, then median'd) and the table, JSON and chart."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Run:
    """One (round, scenario, proxy) measurement."""

    round: int
    scenario: str
    proxy: str
    status: str  # ok | unavailable | failed
    reason: str = ""
    unit: str = ""
    value: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    bytes: int = 0
    duration_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    in_flight_at_end: int | None = None
    idle_rss_mb: float | None = None
    peak_rss_mb: float | None = None
    cpu_us_per_request: float | None = None  # the proxy's CPU time during the run / requests answered


@dataclass
class Summary:
    scenario: str
    proxy: str
    status: str
    reason: str
    unit: str
    rounds: int
    value: float | None
    vs_nginx: float | None
    vs_direct: float | None
    p99_ms: float | None
    errors: int | None
    timeouts: int | None
    idle_rss_mb: float | None
    peak_rss_mb: float | None
    cpu_us_per_request: float | None = None


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarize(runs: list[Run], scenarios: list[str], proxies: list[str]) -> list[Summary]:
    ok = {(r.round, r.scenario, r.proxy): r for r in runs if r.status == "ok"}
    out = []
    for sc in scenarios:
        for px in proxies:
            mine = [r for r in runs if r.scenario == sc and r.proxy == px]
            good = [r for r in mine if r.status == "ok"]

            def ratios(ref: str, good: list[Run] = good, sc: str = sc) -> list[float]:
                refs = [(r, ok.get((r.round, sc, ref))) for r in good]
                return [r.value / b.value for r, b in refs if b is not None and b.value > 0]

            bad = next((r for r in mine if r.status != "ok"), None)
            peaks = [r.peak_rss_mb for r in good if r.peak_rss_mb is not None]
            idles = [r.idle_rss_mb for r in good if r.idle_rss_mb is not None]
            errs = [float(sum(r.errors.values())) for r in good]
            touts = [float(r.errors.get("timeout", 0) + r.errors.get("unanswered", 0)) for r in good]
            out.append(
                Summary(
                    scenario=sc,
                    proxy=px,
                    status="ok" if good else (bad.status if bad else "not run"),
                    reason="" if good or bad is None else bad.reason,
                    unit=good[0].unit if good else "",
                    rounds=len(good),
                    value=_median([r.value for r in good]),
                    vs_nginx=_median(ratios("nginx")),
                    vs_direct=_median(ratios("direct")),
                    p99_ms=_median([r.p99_ms for r in good if r.requests]),
                    errors=None if not errs else round(statistics.median(errs)),
                    timeouts=None if not touts else round(statistics.median(touts)),
                    idle_rss_mb=_median(idles),
                    peak_rss_mb=max(peaks) if peaks else None,
                    cpu_us_per_request=_median([r.cpu_us_per_request for r in good if r.cpu_us_per_request]),
                )
            )
    return out


def _num(x: float | None, fmt: str = "{:,.0f}") -> str:
    return "–" if x is None else fmt.format(x)


def markdown(summaries: list[Summary], titles: dict[str, str], proxies: list[str]) -> str:
    lines = [
        "| scenario | " + " | ".join(proxies) + " |",
        "|---|" + "---|" * len(proxies),
    ]
    by_key = {(s.scenario, s.proxy): s for s in summaries}
    for sc, title in titles.items():
        cells = []
        for px in proxies:
            s = by_key.get((sc, px))
            if s is None or s.value is None:
                cells.append(s.status if s else "–")
                continue
            cell = _num(s.value)
            if px != "nginx" and s.vs_nginx is not None:
                cell += f" ({s.vs_nginx:.2f}×)"
            if sc == "S5" and s.errors is not None:
                cell += f", {s.errors} err"
            cells.append(cell)
        lines.append(f"| {sc} {title} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| scenario | proxy | result | × nginx | × direct | p99 ms | errors (timeouts) | idle RSS MB | peak RSS MB "
        "| µs CPU/req |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        if s.status != "ok":
            lines.append(f"| {s.scenario} | {s.proxy} | {s.status}: {s.reason} | | | | | | | |")
            continue
        errors = f"{s.errors} ({s.timeouts})"
        lines.append(
            f"| {s.scenario} | {s.proxy} | {_num(s.value)} {s.unit} | {_num(s.vs_nginx, '{:.2f}')} | "
            f"{_num(s.vs_direct, '{:.2f}')} | {_num(s.p99_ms, '{:.1f}')} | {errors} | "
            f"{_num(s.idle_rss_mb, '{:.0f}')} | {_num(s.peak_rss_mb, '{:.0f}')} | "
            f"{_num(s.cpu_us_per_request, '{:.0f}')} |"
        )
    return "\n".join(lines) + "\n"


def write_json(path: Path, meta: dict[str, Any], runs: list[Run], summaries: list[Summary]) -> None:
    doc = {"meta": meta, "summary": [asdict(s) for s in summaries], "runs": [asdict(r) for r in runs]}
    path.write_text(json.dumps(doc, indent=1) + "\n")


def write_chart(path: Path, summaries: list[Summary], titles: dict[str, str], proxies: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [p for p in proxies if p != "nginx" and any(s.proxy == p and s.vs_nginx for s in summaries)]
    by_key = {(s.scenario, s.proxy): s for s in summaries}
    scenarios = list(titles)
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=80)
    width = 0.8 / max(1, len(shown))
    for i, px in enumerate(shown):
        xs, ys, zeros = [], [], []
        for j, sc in enumerate(scenarios):
            s = by_key.get((sc, px))
            x = j + (i - (len(shown) - 1) / 2) * width
            if s is not None and s.vs_nginx:
                xs.append(x)
                ys.append(s.vs_nginx)
            elif s is not None and s.vs_nginx == 0:
                zeros.append(x)
        bars = ax.bar(xs, ys, width, label=px)
        ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=6, rotation=90, padding=2)
        for x in zeros:  # a log axis cannot show 0
            ax.annotate("0", (x, 0.02), xycoords=("data", "axes fraction"), ha="center", fontsize=6)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_yscale("log")
    ax.set_ylabel("throughput ÷ nginx (same round, median)")
    ax.set_xticks(range(len(scenarios)), [f"{sc}\n{titles[sc]}" for sc in scenarios], fontsize=7)
    ax.set_title("Reverse proxies on one pinned core, relative to nginx (log scale; dashed line = nginx)", fontsize=9)
    if shown:
        ax.legend(fontsize=7, ncols=min(6, len(shown)), loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
