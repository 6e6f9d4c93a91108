// The demo page: adds work through POST /api/work, fires bursts through POST /api/bursts, and redraws from
// /api/tasks, /api/stats and /api/bursts.
// Everything shown is put in the page with textContent, never parsed as HTML.
"use strict";

(function () {
  const REFRESH_MS = 300;
  // Known rejection reasons, in the order shown; any other reason the stats carry is shown after them.
  const REASONS = ["full", "timeout", "too_old", "shed", "disconnected"];
  const REASON_LABELS = { too_old: "too old", disconnected: "client gone" };

  function reasonLabel(reason) {
    return REASON_LABELS[reason] || reason.replace(/_/g, " ");
  }

  function reasonClass(reason) {
    return REASONS.includes(reason) ? reason : "other";
  }

  // el("div", {class: "x"}, child, "text", ...): an element; strings become text nodes.
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

  function duration(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms >= 1000) return (ms / 1000).toFixed(ms >= 10000 ? 0 : 1) + "\u00a0s";
    if (ms >= 10) return Math.round(ms) + "\u00a0ms";
    return ms.toFixed(1) + "\u00a0ms";
  }

  function seconds(value) {
    return value === null || value === undefined ? "none" : String(value);
  }

  // Lanes --------------------------------------------------------------------------------------------

  function slots(count, filled) {
    const box = el("div", { class: "slots", "aria-hidden": "true" });
    for (let i = 0; i < count; i++) box.append(el("span", { class: i < filled ? "slot on" : "slot" }));
    return box;
  }

  function meter(kind, label, value, capacity) {
    return el(
      "div",
      { class: "meter " + kind },
      el("span", { class: "label" }, label),
      slots(capacity, value),
      el("span", { class: "num" }, String(value), el("small", {}, " / " + capacity))
    );
  }

  function count(label, value, cls) {
    return el(
      "div",
      { class: (cls || "") + (value === 0 ? " zero" : "") },
      el("dt", {}, label),
      el("dd", {}, String(value))
    );
  }

  function percentiles(label, p) {
    return el("tr", {}, el("th", { scope: "row" }, label), el("td", {}, duration(p.p50)),
      el("td", {}, duration(p.p95)), el("td", {}, duration(p.p99)));
  }

  function laneCard(name, lane) {
    const limits = lane.limits;
    const maxAge = limits.max_age === null ? "" : " · max age " + limits.max_age + "\u00a0s";
    const counts = el("dl", { class: "counts" }, count("admitted", lane.admitted, "admitted"));
    const reasons = REASONS.filter((r) => r in lane.rejected)
      .concat(Object.keys(lane.rejected).filter((r) => !REASONS.includes(r)));
    for (const reason of reasons) {
      counts.append(count(reasonLabel(reason), lane.rejected[reason], "r-" + reasonClass(reason)));
    }
    return el(
      "article",
      { class: "card lane", "aria-label": "lane " + name },
      el("header", {},
        el("h2", {}, name),
        el("span", { class: "limits" },
          limits.concurrency + "\u00a0at once · " + limits.max_queue_size + "\u00a0waiting · " +
          limits.queue_timeout + "\u00a0s timeout" + maxAge)),
      meter("running", "running", lane.running, limits.concurrency),
      meter("waiting", "waiting", lane.waiting, limits.max_queue_size),
      counts,
      el("table", { class: "pct" },
        el("thead", {}, el("tr", {}, el("th", {}, ""), el("th", { scope: "col" }, "p50"),
          el("th", { scope: "col" }, "p95"), el("th", { scope: "col" }, "p99"))),
        el("tbody", {},
          percentiles("wait in line", lane.wait_ms),
          percentiles("service", lane.service_ms)))
    );
  }

  function drawLanes(stats) {
    const cards = Object.entries(stats.lanes).map(([name, lane]) => laneCard(name, lane));
    document.getElementById("lanes").replaceChildren(...cards);
  }

  // Bursts -------------------------------------------------------------------------------------------

  function segment(cls, n) {
    const span = el("span", { class: cls });
    span.style.flexGrow = String(n);
    return span;
  }

  function retryAfter(r) {
    if (r.retry_after_min === null) return "no Retry-After";
    const range = r.retry_after_min === r.retry_after_max
      ? String(r.retry_after_min) : r.retry_after_min + "–" + r.retry_after_max;
    return "Retry-After " + range + "\u00a0s";
  }

  function burstItem(b) {
    const bar = el("div", { class: "bar", role: "img",
      "aria-label": b.ok + " succeeded, " + (b.size - b.answered) + " pending of " + b.size });
    const outcomes = el("ul", { class: "outcomes" });
    if (b.ok) {
      bar.append(segment("c-ok", b.ok));
      outcomes.append(el("li", { class: "c-ok" }, b.ok + " × 200",
        el("span", { class: "ra" }, " · slowest " + duration(b.ok_ms_max))));
    }
    for (const r of b.rejected) {
      const cls = "c-" + reasonClass(r.reason);
      bar.append(segment(cls, r.count));
      outcomes.append(el("li", { class: cls }, r.count + " × " + r.status + " " + reasonLabel(r.reason),
        el("span", { class: "ra" }, " · " + retryAfter(r))));
    }
    if (b.errors) {
      bar.append(segment("c-other", b.errors));
      outcomes.append(el("li", { class: "c-other" }, b.errors + " × connection error"));
    }
    const pending = b.size - b.answered;
    if (pending) {
      bar.append(segment("c-pending", pending));
      outcomes.append(el("li", { class: "c-pending" }, pending + " waiting for an answer"));
    }
    return el(
      "li",
      { class: "burst" },
      el("div", { class: "burst-head" },
        el("b", {}, "#" + b.id),
        el("span", {}, b.size + " × ", el("code", {}, "GET " + b.path)),
        b.important ? el("span", { class: "tag" }, "important") : null,
        el("span", { class: "progress" },
          (b.done ? "done in " : "") + duration(b.elapsed_ms) + " · " + b.answered + "/" + b.size + " answered")),
      bar,
      outcomes
    );
  }

  function drawBursts(data) {
    document.getElementById("no-bursts").hidden = data.bursts.length > 0;
    document.getElementById("bursts").replaceChildren(...data.bursts.map(burstItem));
  }

  // Tasks --------------------------------------------------------------------------------------------------

  function drawTasks(totals) {
    for (const status of ["queued", "running", "succeeded", "failed"]) {
      const node = document.getElementById("tasks-" + status);
      node.textContent = String(totals[status]);
      node.parentElement.classList.toggle("zero", totals[status] === 0);
    }
  }

  async function addWork(fail) {
    const message = document.getElementById("work-message");
    message.textContent = "";
    try {
      const response = await fetch("/api/work", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ fail: fail }),
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        message.textContent = "Not added: " + (body.error || "HTTP " + response.status) + ".";
      }
    } catch (error) {
      message.textContent = "Could not reach the demo: " + error.message;
    }
    refreshTasks();
  }

  async function refreshTasks() {
    try {
      drawTasks(await getJSON("/api/tasks"));
    } catch (error) {
      // The main loop shows that the page is not updating.
    }
  }

  // Refresh loop ---------------------------------------------------------------------------------------

  async function getJSON(url) {
    const response = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(url + ": HTTP " + response.status);
    return response.json();
  }

  async function refresh() {
    const live = document.getElementById("live");
    try {
      const [stats, bursts, tasks] = await Promise.all(
        [getJSON("/api/stats"), getJSON("/api/bursts"), getJSON("/api/tasks")]);
      drawLanes(stats);
      drawBursts(bursts);
      drawTasks(tasks);
      live.classList.remove("stale");
      live.textContent = "● live";
    } catch (error) {
      live.classList.add("stale");
      live.textContent = "● not updating (" + error.message + ")";
    }
    setTimeout(refresh, document.hidden ? 2000 : REFRESH_MS);
  }

  // Firing ---------------------------------------------------------------------------------------------

  let messageTimer = null;

  function say(text) {
    const message = document.getElementById("message");
    message.textContent = text;
    clearTimeout(messageTimer);
    if (text) messageTimer = setTimeout(() => { message.textContent = ""; }, 5000);
  }

  async function fire(target, size, important) {
    say("");
    try {
      const response = await fetch("/api/bursts", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ target: target, size: size, important: important }),
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        say("Not fired: " + (body.error || "HTTP " + response.status) + ".");
      }
    } catch (error) {
      say("Could not reach the demo: " + error.message);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.getElementById("add-work").addEventListener("click", () => addWork(false));
    document.getElementById("add-failing").addEventListener("click", () => addWork(true));
    const important = document.getElementById("important");
    const panel = document.querySelector(".fire");
    important.addEventListener("change", () => panel.classList.toggle("important-on", important.checked));
    for (const button of document.querySelectorAll("button[data-target]")) {
      button.addEventListener("click", () =>
        fire(button.dataset.target, Number(button.dataset.size), important.checked));
    }
    refresh();
  });
})();
