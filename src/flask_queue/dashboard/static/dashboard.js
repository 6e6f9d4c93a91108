// The dashboard's overview redraws itself from <prefix>/api/stats every few seconds, and draws the queue sizes
// it has seen as an SVG chart (kept in sessionStorage, so a reload keeps the curve). Everything from the
// server goes into the page as text (textContent, setAttribute), never parsed as HTML.
//
// The chart plots each sample at its own time (the server's), however irregular the polling: a background
// tab is woken rarely (browsers throttle its timers, down to once a minute), a request may fail. A stretch
// with no sample is left blank instead of drawn as a line through values nobody saw, and when there are
// more samples than pixels each pixel keeps its lowest and highest, so a peak that was seen is never lost.
// The page polls again as soon as it is shown.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const WINDOW_S = 600; // the chart shows at most the last ten minutes
  const MIN_WINDOW_S = 60;
  const HIDDEN_REFRESH_MS = 5000; // a page nobody sees waits at least this long between two polls
  const MAX_DELAY_MS = 2147483647; // what setTimeout can wait; longer fires at once
  const SERIES = [
    { key: "queued", label: "tasks waiting", cls: "c-queued" },
    { key: "running", label: "tasks running", cls: "c-running" },
    { key: "requests", label: "requests waiting", cls: "c-requests" },
  ];

  // el("td", {class: "num"}, child, "text", ...): an element; strings become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null && value !== false) node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // The same formats as the page's Jinja filters (fq_ago, fq_ms).
  function ago(then, now) {
    if (then === null || then === undefined) return "–";
    const s = Math.max(now - then, 0);
    if (s < 60) return Math.round(s) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    if (s < 86400) return Math.floor(s / 3600) + " h";
    return Math.floor(s / 86400) + " d";
  }

  function ms(value) {
    if (value === null || value === undefined) return "–";
    if (value >= 1000) return (value / 1000).toFixed(1) + " s";
    return value >= 10 ? Math.round(value) + " ms" : value.toFixed(1) + " ms";
  }

  function num(value, limit) {
    return el("td", { class: "num" }, String(value), limit === undefined ? null : el("small", {}, "/" + limit));
  }

  function replaceRows(id, rows, empty, columns) {
    const table = document.getElementById(id);
    if (!table) return;
    const body = table.tBodies[0];
    if (rows.length === 0) rows = [el("tr", { class: "empty" }, el("td", { colspan: columns }, empty))];
    body.replaceChildren(...rows);
  }

  // Sections -------------------------------------------------------------------------------------------------

  const NONE = "\u2013"; // an en dash: no value
  const DOWN = "Unavailable: the task backend does not answer.";

  function drawTiles(data) {
    const set = (id, value) => {
      const node = document.getElementById(id);
      if (node) node.textContent = String(value);
    };
    if (data.tasks) {
      const up = data.tasks.up;
      for (const key of ["queued", "running", "scheduled", "failed"]) {
        set("tile-" + key, up ? data.tasks.totals[key] : NONE);
      }
      set("tile-workers", up ? data.tasks.workers.length : NONE);
    }
    if (data.requests) set("tile-requests", requestsWaiting(data.requests));
  }

  // The banner that says the task backend does not answer, and why.
  function drawBackend(tasks) {
    const banner = document.getElementById("tasks-down");
    if (!banner) return;
    banner.hidden = tasks.up;
    const reason = document.getElementById("tasks-down-error");
    if (reason) reason.textContent = tasks.up ? "" : tasks.error;
  }

  function requestsWaiting(lanes) {
    return Object.values(lanes).reduce((sum, lane) => sum + lane.waiting, 0);
  }

  function drawLanes(lanes) {
    const rows = Object.entries(lanes).map(([name, lane]) => {
      const reasons = el("td", { class: "reasons" });
      for (const [reason, count] of Object.entries(lane.rejected)) {
        if (count) reasons.append(el("span", { class: "reason r-" + reason }, reason.replace(/_/g, " ") + " " + count));
      }
      if (!reasons.childNodes.length) reasons.append(el("span", { class: "muted" }, "none"));
      return el("tr", {},
        el("th", { scope: "row" }, name),
        num(lane.running, lane.limits.concurrency),
        num(lane.waiting, lane.limits.max_queue_size),
        el("td", { class: "num wide" }, String(lane.admitted)),
        reasons,
        el("td", { class: "num wide" }, ms(lane.wait_ms.p50)),
        el("td", { class: "num" }, ms(lane.wait_ms.p99)));
    });
    replaceRows("lanes", rows, "No lane.", 7);
  }

  function drawQueues(tasks, base) {
    const rows = Object.entries(tasks.queues || {}).map(([name, c]) => el("tr", {},
      el("th", { scope: "row" }, el("a", { href: base + "jobs?queue=" + encodeURIComponent(name) }, name)),
      num(c.queued), num(c.scheduled), num(c.running),
      el("td", { class: c.failed ? "num bad" : "num" }, String(c.failed)),
      el("td", { class: "num wide" }, String(c.expired)),
      el("td", { class: "num wide" }, String(c.succeeded))));
    replaceRows("task-queues", rows, tasks.up ? "No job yet." : DOWN, 7);
  }

  // A worker's busy and done figures are those of its last heartbeat: its age stands beside them.
  function drawWorkers(tasks, now) {
    const rows = (tasks.workers || []).map((w) => el("tr", {},
      el("th", { scope: "row", title: w.name }, w.host, el("small", {}, ":" + w.pid)),
      el("td", { class: "wide" }, w.queues ? w.queues.join(", ") : "all"),
      num(w.running, w.threads),
      num(w.processed),
      el("td", { class: "num beat" }, ago(w.seen_at, now) + " ago")));
    replaceRows("workers", rows, tasks.up ? "No worker is running: jobs wait until one starts." : DOWN, 5);
  }

  function action(base, job, token) {
    let verb = null;
    if (["failed", "cancelled", "expired"].includes(job.status)) verb = "retry";
    else if (["queued", "scheduled", "deferred"].includes(job.status)) verb = "cancel";
    if (!verb) return null;
    return el("form", { method: "post", action: base + "jobs/" + encodeURIComponent(job.id) + "/" + verb },
      el("input", { type: "hidden", name: "csrf_token", value: token }),
      el("button", { type: "submit", class: verb === "retry" ? "act" : "act quiet" },
        verb === "retry" ? "Retry" : "Cancel"));
  }

  // What each job table shows, but for the ages: while it stays the same only the ages are rewritten, so that
  // a button is never replaced under the pointer that is about to click it.
  const shownJobs = {};

  function drawJobs(id, jobs, now, base, token, empty) {
    const table = document.getElementById(id);
    if (!table) return;
    const key = JSON.stringify([jobs, empty]);
    if (shownJobs[id] === key) {
      const ages = table.querySelectorAll("td.age");
      jobs.forEach((job, i) => { if (ages[i]) ages[i].textContent = ago(job.enqueued_at, now); });
      return;
    }
    shownJobs[id] = key;
    const rows = jobs.map((job) => el("tr", {},
      el("td", { class: "id" }, el("a", { href: base + "jobs/" + encodeURIComponent(job.id) }, job.id)),
      el("td", { class: "call" }, el("code", {}, job.call), job.error ? el("div", { class: "error" }, job.error) : null),
      el("td", { class: "wide" }, job.queue),
      el("td", { class: "status" }, el("span", { class: "badge s-" + job.status }, job.status)),
      el("td", { class: "num wide" }, job.attempts + "/" + (job.retries + 1)),
      el("td", { class: "num age" }, ago(job.enqueued_at, now)),
      el("td", { class: "actions" }, action(base, job, token))));
    replaceRows(id, rows, empty, 7);
  }

  // The chart --------------------------------------------------------------------------------------------------

  function loadHistory(key) {
    try {
      const saved = JSON.parse(sessionStorage.getItem(key) || "[]");
      return Array.isArray(saved) ? saved.filter((p) => p && typeof p.t === "number") : [];
    } catch (error) {
      return [];
    }
  }

  function saveHistory(key, history) {
    try {
      sessionStorage.setItem(key, JSON.stringify(history));
    } catch (error) {
      // Storage full or disabled: the chart still works for this page's lifetime.
    }
  }

  function niceMax(value) {
    if (value <= 4) return 4;
    const step = Math.pow(10, Math.floor(Math.log10(value)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= value) return m * step;
    return 10 * step;
  }

  // A new sample in the history, which stays in the order of the samples' own times (not of arrival: servers'
  // clocks differ a little), one per time, within a window of the newest sample's time.
  function addSample(history, point) {
    const kept = history.filter((p) => Math.abs(p.t - point.t) < WINDOW_S && p.t !== point.t);
    kept.push(point);
    return kept.sort((a, b) => a.t - b.t);
  }

  // What the chart draws, apart from drawing it: a pure function of the samples, whatever their cadence.
  //   samples: [{t: seconds, queued: n, ...}] in any order; a value missing from a sample is unknown there.
  //   keys: the series; now: the window's end; columns: pixels across; maxGap: seconds between two samples
  //   past which the line is broken (nothing is known in between).
  // Returns {t0, span, top, series: {key: [run, ...]}}, a run being [[t, value], ...] in time order, at most
  // four points per pixel column (the first, lowest, highest and last of it), so that no peak is dropped.
  function plot(samples, keys, now, columns, maxGap) {
    const shown = samples
      .filter((p) => p && typeof p.t === "number" && p.t > now - WINDOW_S && p.t <= now)
      .sort((a, b) => a.t - b.t);
    const span = Math.min(WINDOW_S, Math.max(MIN_WINDOW_S, now - (shown.length ? shown[0].t : now)));
    const t0 = now - span;
    const cols = Math.max(1, Math.floor(columns));
    let top = 0;
    const series = {};
    for (const key of keys) {
      const runs = [];
      let run = null;
      let last = -Infinity;
      for (const p of shown) {
        const v = p[key];
        if (typeof v !== "number" || !Number.isFinite(v)) {
          run = null; // unknown here: the line stops
          continue;
        }
        top = Math.max(top, v);
        if (run === null || p.t - last > maxGap) {
          run = [];
          runs.push(run);
        }
        run.push([p.t, v]);
        last = p.t;
      }
      series[key] = runs.map((r) => thin(r, t0, span, cols));
    }
    return { t0: t0, span: span, top: niceMax(top), series: series };
  }

  function thin(run, t0, span, cols) {
    if (run.length <= 4 * cols) return run;
    const out = [];
    let column = null;
    let picked = [];
    const flush = () => {
      const unique = [...new Set(picked)].sort((a, b) => a[0] - b[0]);
      out.push(...unique);
    };
    for (const point of run) {
      const c = Math.min(cols - 1, Math.floor(((point[0] - t0) / span) * cols));
      if (c !== column) {
        if (column !== null) flush();
        column = c;
        picked = [point, point, point, point]; // first, lowest, highest, last
        continue;
      }
      if (point[1] < picked[1][1]) picked[1] = point;
      if (point[1] > picked[2][1]) picked[2] = point;
      picked[3] = point;
    }
    if (column !== null) flush();
    return out;
  }

  function drawChart(history, series, now, maxGap) {
    const box = document.getElementById("chart");
    const legend = document.getElementById("legend");
    if (!box) return;
    // Drawn at the box's own pixel size, so that the text is never stretched (a phone gets a narrower plot).
    const W = Math.max(box.clientWidth, 240), H = 180, L = 34, R = 6, T = 10, B = 22;
    const data = plot(history, series.map((s) => s.key), now, W - L - R, maxGap);
    const top = data.top;
    const x = (t) => (L + ((t - data.t0) / data.span) * (W - L - R)).toFixed(1);
    const y = (v) => (T + (1 - v / top) * (H - T - B)).toFixed(1);
    const chart = svg("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, class: "plot" });
    for (const v of [0, top / 2, top]) {
      chart.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: v ? "grid" : "axis" }));
      chart.append(svg("text", { x: L - 6, y: Number(y(v)) + 4, "text-anchor": "end" }, String(Math.round(v * 10) / 10)));
    }
    chart.append(svg("text", { x: L, y: H - 5 }, "\u2212" + Math.round(data.span) + " s"));
    chart.append(svg("text", { x: W - R, y: H - 5, "text-anchor": "end" }, "now"));
    for (const s of series) {
      for (const run of data.series[s.key]) {
        const points = run.map(([t, v]) => x(t) + "," + y(v));
        if (run.length === 1) {
          // A lone sample (the page was hidden, or requests failed, around it): a dot, not a line.
          chart.append(svg("circle", { cx: x(run[0][0]), cy: y(run[0][1]), r: 2.5, class: "dot " + s.cls }));
          continue;
        }
        if (s.key === "queued") {
          const area = "M" + x(run[0][0]) + "," + y(0) + " L" + points.join(" L") +
            " L" + x(run[run.length - 1][0]) + "," + y(0) + " Z";
          chart.append(svg("path", { d: area, class: "area " + s.cls }));
        }
        chart.append(svg("polyline", { points: points.join(" "), class: "line " + s.cls }));
      }
    }
    box.replaceChildren(chart);
    if (legend) {
      const last = history[history.length - 1] || {};
      legend.replaceChildren(...series.map((s) => {
        const value = typeof last[s.key] === "number" ? String(last[s.key]) : NONE;
        return el("span", { class: "key " + s.cls }, s.label + " ", el("b", {}, value));
      }));
    }
  }

  // The loop -----------------------------------------------------------------------------------------------------

  function start(root) {
    const statsURL = root.dataset.stats;
    const base = root.dataset.base;
    const refreshMs = Math.min(MAX_DELAY_MS, Math.max(250, Number(root.dataset.refresh) * 1000));
    // Samples further apart than twice what the page waits (hidden: 5 s), and a second, are not joined by a line.
    const maxGap = (2 * Math.max(refreshMs, HIDDEN_REFRESH_MS)) / 1000 + 1;
    const token = document.querySelector('meta[name="csrf-token"]').content;
    const live = document.getElementById("live");
    const historyKey = "flask-queue:history:" + base;
    let history = loadHistory(historyKey);

    function draw(data) {
      const now = data.time;
      drawTiles(data);
      const series = [];
      const point = { t: now };
      if (data.tasks) {
        const tasks = data.tasks;
        drawBackend(tasks);
        drawQueues(tasks, base);
        drawWorkers(tasks, now);
        drawJobs("failed", tasks.failed || [], now, base, token, tasks.up ? "No failed job." : DOWN);
        drawJobs("recent", tasks.recent || [], now, base, token, tasks.up ? "No job yet." : DOWN);
        if (tasks.up) {
          point.queued = tasks.totals.queued;
          point.running = tasks.totals.running;
        }
        series.push(SERIES[0], SERIES[1]);
      }
      if (data.requests) {
        drawLanes(data.requests);
        point.requests = requestsWaiting(data.requests);
        series.push(SERIES[2]);
      }
      history = addSample(history, point);
      saveHistory(historyKey, history);
      drawChart(history, series, history[history.length - 1].t, maxGap);
    }

    let timer = null;
    let fetching = false;

    function schedule() {
      clearTimeout(timer);
      const wait = document.hidden ? Math.max(refreshMs, HIDDEN_REFRESH_MS) : refreshMs;
      timer = setTimeout(refresh, wait);
    }

    async function refresh() {
      if (fetching) return;
      fetching = true;
      clearTimeout(timer);
      try {
        const response = await fetch(statsURL, {
          cache: "no-store", credentials: "same-origin", headers: { Accept: "application/json" },
        });
        if (!response.ok) throw new Error("HTTP " + response.status);
        draw(await response.json());
        live.classList.remove("stale");
        live.textContent = "live";
      } catch (error) {
        live.classList.add("stale");
        live.textContent = "not updating (" + error.message + ")";
      } finally {
        fetching = false;
        schedule();
      }
    }

    // Back in view: the figures and the chart catch up at once rather than at the next (throttled) tick.
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refresh();
    });
    refresh();
  }

  // For the tests and for anyone scripting the page: the chart's data, as a pure function.
  window.FlaskQueueDashboard = Object.freeze({ plot: plot });

  document.addEventListener("DOMContentLoaded", function () {
    const root = document.getElementById("dashboard");
    if (root) start(root);
  });
})();
