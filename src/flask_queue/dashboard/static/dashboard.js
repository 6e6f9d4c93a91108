// The dashboard's overview redraws itself from <prefix>/api/stats every few seconds, and draws the queue sizes
// it has seen as an SVG chart (kept in sessionStorage, so a reload keeps the curve). Everything from the
// server goes into the page as text (textContent, setAttribute), never parsed as HTML.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const WINDOW_S = 600; // the chart shows at most the last ten minutes
  const MIN_WINDOW_S = 60;
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

  function drawTiles(data) {
    const set = (id, value) => {
      const node = document.getElementById(id);
      if (node) node.textContent = String(value);
    };
    if (data.tasks) {
      for (const key of ["queued", "running", "scheduled", "failed"]) set("tile-" + key, data.tasks.totals[key]);
      set("tile-workers", data.tasks.workers.length);
    }
    if (data.requests) set("tile-requests", requestsWaiting(data.requests));
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
    const rows = Object.entries(tasks.queues).map(([name, c]) => el("tr", {},
      el("th", { scope: "row" }, el("a", { href: base + "jobs?queue=" + encodeURIComponent(name) }, name)),
      num(c.queued), num(c.scheduled), num(c.running),
      el("td", { class: c.failed ? "num bad" : "num" }, String(c.failed)),
      el("td", { class: "num wide" }, String(c.succeeded))));
    replaceRows("task-queues", rows, "No job yet.", 6);
  }

  function drawWorkers(tasks, now) {
    const rows = tasks.workers.map((w) => el("tr", {},
      el("th", { scope: "row", title: w.name }, w.host, el("small", {}, ":" + w.pid)),
      el("td", { class: "wide" }, w.queues ? w.queues.join(", ") : "all"),
      num(w.running, w.threads),
      num(w.processed),
      el("td", { class: "num wide" }, ago(w.seen_at, now))));
    replaceRows("workers", rows, "No worker is running: jobs wait until one starts.", 5);
  }

  function action(base, job, token) {
    let verb = null;
    if (job.status === "failed" || job.status === "cancelled") verb = "retry";
    else if (job.status === "queued" || job.status === "scheduled") verb = "cancel";
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
    const key = JSON.stringify(jobs);
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

  function drawChart(history, series, now) {
    const box = document.getElementById("chart");
    const legend = document.getElementById("legend");
    if (!box) return;
    // Drawn at the box's own pixel size, so that the text is never stretched (a phone gets a narrower plot).
    const W = Math.max(box.clientWidth, 240), H = 180, L = 34, R = 6, T = 10, B = 22;
    const span = Math.min(WINDOW_S, Math.max(MIN_WINDOW_S, now - (history.length ? history[0].t : now)));
    const t0 = now - span;
    let top = 0;
    for (const p of history) for (const s of series) top = Math.max(top, p[s.key] || 0);
    top = niceMax(top);
    const x = (t) => L + ((t - t0) / span) * (W - L - R);
    const y = (v) => T + (1 - v / top) * (H - T - B);
    const chart = svg("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, class: "plot" });
    for (const v of [0, top / 2, top]) {
      chart.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: v ? "grid" : "axis" }));
      chart.append(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, String(Math.round(v * 10) / 10)));
    }
    chart.append(svg("text", { x: L, y: H - 5 }, "\u2212" + Math.round(span) + " s"));
    chart.append(svg("text", { x: W - R, y: H - 5, "text-anchor": "end" }, "now"));
    for (const s of series) {
      const points = history.map((p) => x(p.t).toFixed(1) + "," + y(p[s.key] || 0).toFixed(1));
      if (!points.length) continue;
      if (s.key === "queued") {
        const area = "M" + x(history[0].t).toFixed(1) + "," + y(0) + " L" + points.join(" L") +
          " L" + x(history[history.length - 1].t).toFixed(1) + "," + y(0) + " Z";
        chart.append(svg("path", { d: area, class: "area " + s.cls }));
      }
      chart.append(svg("polyline", { points: points.join(" "), class: "line " + s.cls }));
    }
    box.replaceChildren(chart);
    if (legend) {
      const last = history[history.length - 1] || {};
      legend.replaceChildren(...series.map((s) =>
        el("span", { class: "key " + s.cls }, s.label + " ", el("b", {}, String(last[s.key] || 0)))));
    }
  }

  // The loop -----------------------------------------------------------------------------------------------------

  function start(root) {
    const statsURL = root.dataset.stats;
    const base = root.dataset.base;
    const refreshMs = Math.max(250, Number(root.dataset.refresh) * 1000);
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
        drawQueues(data.tasks, base);
        drawWorkers(data.tasks, now);
        drawJobs("failed", data.tasks.failed, now, base, token, "No failed job.");
        drawJobs("recent", data.tasks.recent, now, base, token, "No job yet.");
        point.queued = data.tasks.totals.queued;
        point.running = data.tasks.totals.running;
        series.push(SERIES[0], SERIES[1]);
      }
      if (data.requests) {
        drawLanes(data.requests);
        point.requests = requestsWaiting(data.requests);
        series.push(SERIES[2]);
      }
      history = history.filter((p) => p.t > now - WINDOW_S && p.t < now);
      history.push(point);
      saveHistory(historyKey, history);
      drawChart(history, series, now);
    }

    async function refresh() {
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
      }
      setTimeout(refresh, document.hidden ? Math.max(refreshMs, 5000) : refreshMs);
    }

    refresh();
  }

  document.addEventListener("DOMContentLoaded", function () {
    const root = document.getElementById("dashboard");
    if (root) start(root);
  });
})();
