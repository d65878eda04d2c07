// fastgate dashboard: polls the admin API (/stats, /upstreams) every second and renders it.
// Plain DOM: every value from the API goes through textContent, never parsed as HTML.
// A token in the URL fragment (#token=...) is sent as "Authorization: Bearer ..."; the fragment never reaches a server.
"use strict";

(function () {
  const POLL_MS = 1000;
  const TIMEOUT_MS = 4000;
  const previous = new Map(); // pid -> {time, requests, errors}: rates come from one worker's own totals
  const HISTORY = 60; // samples in the rate chart (a minute at one poll a second)
  const history = [];
  let routeNames = new Map();

  function token() {
    const fragment = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    return fragment.get("token");
  }

  async function getJSON(path) {
    const headers = { Accept: "application/json" };
    const secret = token();
    if (secret) headers.Authorization = "Bearer " + secret;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
    try {
      const response = await fetch(new URL(path, document.baseURI), {
        headers, cache: "no-store", signal: controller.signal,
      });
      if (response.status === 401) {
        throw new Error(secret ? "unauthorized: wrong token" : "unauthorized: open this page as …/#token=YOUR_TOKEN");
      }
      if (!response.ok) throw new Error(path + ": HTTP " + response.status);
      return await response.json();
    } catch (error) {
      if (error.name === "AbortError") throw new Error(path + ": no answer in " + TIMEOUT_MS / 1000 + " s");
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  function $(id) {
    return document.getElementById(id);
  }

  function setText(element, text) {
    const value = text == null ? "" : String(text);
    if (element.textContent !== value) element.textContent = value;
  }

  function cell(text, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    setText(td, text);
    return td;
  }

  // Update a table body in place, one row per key, so rows (and the elements a test holds) stay put between polls.
  function syncRows(tbody, items, key, fill) {
    const existing = new Map();
    for (const row of tbody.rows) existing.set(row.dataset.key, row);
    let position = 0;
    for (const item of items) {
      const id = key(item, position);
      let row = existing.get(id);
      if (row) existing.delete(id);
      else {
        row = document.createElement("tr");
        row.dataset.key = id;
      }
      fill(row, item);
      if (tbody.rows[position] !== row) tbody.insertBefore(row, tbody.rows[position] || null);
      position += 1;
    }
    for (const row of existing.values()) row.remove();
  }

  function fillCells(row, values) {
    while (row.cells.length < values.length) row.appendChild(document.createElement("td"));
    values.forEach(([text, className], i) => {
      const td = row.cells[i];
      setText(td, text);
      const wanted = className || "";
      if (td.className !== wanted) td.className = wanted;
    });
  }

  function number(value) {
    return typeof value === "number" ? value.toLocaleString("en-US") : "–";
  }

  function rate(value) {
    if (value == null) return "–";
    return value < 10 ? value.toFixed(2) : value < 100 ? value.toFixed(1) : Math.round(value).toLocaleString("en-US");
  }

  function millis(value) {
    if (typeof value !== "number") return "–";
    return (value < 10 ? value.toFixed(2) : value < 100 ? value.toFixed(1) : Math.round(value)) + " ms";
  }

  function clock(seconds) {
    if (typeof seconds !== "number") return "";
    return new Date(seconds * 1000).toLocaleTimeString("en-GB", { hour12: false });
  }

  function routeName(route) {
    // a name that only repeats the index says nothing more
    return route.name != null && String(route.name) !== String(route.index) ? String(route.name) : "";
  }

  function targetState(target) {
    if (target.healthy === false) return "unhealthy";
    if (target.ejected) return "ejected";
    return "healthy";
  }

  function renderStats(stats) {
    const last = previous.get(stats.pid);
    let requestRate = null;
    let errorRate = null;
    if (last && stats.time > last.time && stats.requests >= last.requests && stats.errors >= last.errors) {
      const elapsed = stats.time - last.time;
      requestRate = (stats.requests - last.requests) / elapsed;
      errorRate = (stats.errors - last.errors) / elapsed;
    }
    if (last && requestRate == null && stats.time <= last.time) {
      requestRate = last.requestRate; // the same answer twice: keep what was shown
      errorRate = last.errorRate;
    }
    previous.delete(stats.pid); // re-inserted last: the map keeps the most recent pids only
    previous.set(stats.pid, { time: stats.time, requests: stats.requests, errors: stats.errors, requestRate, errorRate });
    if (previous.size > 64) previous.delete(previous.keys().next().value);
    if (requestRate != null && !(last && stats.time <= last.time)) {
      history.push([requestRate, errorRate]);
      if (history.length > HISTORY) history.shift();
      drawChart();
    }

    setText($("request-rate"), rate(requestRate));
    setText($("error-rate"), rate(errorRate));
    $("error-rate").classList.toggle("bad", errorRate != null && errorRate > 0);
    const latency = stats.latency_ms || {};
    setText($("latency-p50"), millis(latency.p50));
    setText($("latency-p90"), millis(latency.p90));
    setText($("latency-p99"), millis(latency.p99));
    setText($("requests-total"), number(stats.requests));
    setText($("errors-total"), number(stats.errors));
    setText($("worker"), "worker pid " + stats.pid + " · " + clock(stats.time));

    const routes = stats.routes || [];
    routeNames = new Map(routes.map((route) => [route.index, routeName(route) || "#" + route.index]));
    syncRows($("routes").tBodies[0], routes, (route) => String(route.index), (row, route) => {
      row.dataset.route = String(route.index);
      fillCells(row, [[route.index, "num"], [routeName(route) || "–"], [route.match, "code"], [route.upstream || "–"]]);
    });

    const errors = stats.recent_errors || [];
    syncRows($("recent-errors").tBodies[0], errors,
      (e, i) => [e.time, e.method, e.target, e.status, e.address].join(" ") + " " + i,
      (row, e) => {
        // a route is named by its index, or by its name when it has one
        const route = e.route == null ? "–" : typeof e.route === "string" ? e.route : routeNames.get(e.route) || "#" + e.route;
        fillCells(row, [
          [clock(e.time)], [e.status, "num bad"], [(e.method || "") + " " + (e.target || ""), "code"], [route],
          [e.upstream || "–"], [e.address || "–", "code"], [e.detail || "", "detail"],
        ]);
      });
    $("no-errors").hidden = errors.length > 0;
  }

  function drawChart() {
    const chart = $("rate-chart");
    const top = Math.max(1, ...history.map(([requests]) => requests)) * 1.1;
    const step = 600 / (HISTORY - 1);
    const offset = (HISTORY - history.length) * step;
    const points = (i) => history.map((sample, n) => (offset + n * step).toFixed(1) + "," +
      (63 - (sample[i] / top) * 60).toFixed(1)).join(" ");
    chart.querySelector(".requests").setAttribute("points", points(0));
    chart.querySelector(".errors").setAttribute("points", points(1));
    chart.dataset.samples = String(history.length);
  }

  function renderUpstreams(data) {
    const rows = [];
    for (const upstream of data.upstreams || []) {
      for (const target of upstream.targets || []) rows.push({ upstream, target });
    }
    syncRows($("upstreams").tBodies[0], rows, (r) => r.upstream.name + " " + r.target.address, (row, r) => {
      const state = targetState(r.target);
      row.dataset.upstream = r.upstream.name;
      row.dataset.target = r.target.address;
      row.dataset.state = state;
      row.className = "state-" + state;
      fillCells(row, [
        [r.upstream.name + (r.upstream.balancer ? " (" + r.upstream.balancer + ")" : "")],
        [r.target.address, "code"],
        [state, "status " + state],
        [number(r.target.weight), "num"],
        [number(r.target.active), "num"],
        [number(r.target.idle), "num"],
        [number(r.target.requests), "num"],
        [number(r.target.errors), "num" + (r.target.errors > 0 ? " bad" : "")],
      ]);
      const status = row.cells[2];
      const detail = r.target.healthy === false && r.target.ejected ? "failing active checks and ejected" : "";
      if (status.title !== detail) status.title = detail;
    });
  }

  function setConnection(state, text) {
    const element = $("connection");
    element.className = "connection " + state;
    setText(element, text);
    document.body.classList.toggle("stale", state === "disconnected");
  }

  async function poll() {
    try {
      const [stats, upstreams] = await Promise.all([getJSON("stats"), getJSON("upstreams")]);
      renderStats(stats);
      renderUpstreams(upstreams);
      setConnection("live", "live");
    } catch (error) {
      setConnection("disconnected", "disconnected: " + (error.message || error));
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  window.addEventListener("hashchange", () => previous.clear());
  poll();
})();
