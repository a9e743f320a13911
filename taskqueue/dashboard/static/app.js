// The taskqueue dashboard's page: polls the JSON API and draws what it says.
//
// Plain browser JavaScript, no build step, nothing fetched but this
// dashboard's own API. Everything that comes from the queue (task names,
// errors, tracebacks) is untrusted: it goes into the page with textContent
// or an attribute, never as HTML. The server's Content-Security-Policy
// allows no inline script or style, so state is shown with classes and the
// `hidden` attribute, and the chart is SVG built with createElementNS.
//
// Actions (requeue, purge, cancel) exist only when /api/config says so:
// without them no control is created at all. Each action is a POST with
// "Authorization: Bearer <token>"; the token is asked for once, in a form
// of this page, and kept in this tab's sessionStorage (never a cookie, so a
// forged cross-site request carries nothing). A 403 forgets it and asks again.
// On a public address every read needs the token too: a 401 asks for it.

"use strict";

(function () {
  const TOKEN_KEY = "taskqueue.dashboard.token";
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const CANCELLABLE = new Set(["pending", "scheduled"]);
  const SVG = "http://www.w3.org/2000/svg";
  const WINDOW_SECONDS = 600;  // the chart's ten minutes
  const MAX_DEAD_SHOWN = 200;  // the newest ones; the count says how many there are
  const TOTALS = ["submitted", "succeeded", "failed", "cancelled", "retried", "pending",
                  "scheduled", "running", "workers"];

  const state = {
    actions: false,
    refreshMs: 1000,
    timer: null,
    ticking: false,
    again: false,          // a refresh was asked for while one ran
    lastUpdate: null,      // Date of the last complete refresh
    lastSeries: null,
    deadRows: new Map(),   // task_id -> its row, kept so an open <details> stays open
    deadCount: 0,
    lookedUp: null,        // the id in the lookup box's result
    lookedUpTerminal: false,  // it has ended (or is unknown): no need to ask again
    lookupSeq: 0,
    memoryToken: null,     // where the token lives if sessionStorage is unavailable
    tokenPrompt: null,     // the pending prompt's promise
    tokenDeclined: false,  // the form was cancelled: reads that need the token wait for a click
    configured: false,     // /api/config has been read
    messageTimer: null,
  };

  // -- small helpers ---------------------------------------------------------

  function byTestId(id) {
    return document.querySelector('[data-testid="' + id + '"]');
  }

  // An element with text (never HTML), classes, attributes and children.
  function el(tag, options, children) {
    const node = document.createElement(tag);
    applyOptions(node, options || {});
    for (const child of children || []) {
      if (child !== null && child !== undefined) {
        node.append(child);  // a string is appended as a text node
      }
    }
    return node;
  }

  function svgEl(tag, attributes, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      node.setAttribute(name, String(value));
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function applyOptions(node, options) {
    if (options.cls) node.className = options.cls;
    if (options.testid) node.dataset.testid = options.testid;
    if (options.text !== undefined && options.text !== null) node.textContent = String(options.text);
    if (options.title) node.title = options.title;
    for (const [name, value] of Object.entries(options.attrs || {})) {
      node.setAttribute(name, String(value));
    }
  }

  function setText(testid, text) {
    const node = byTestId(testid);
    if (node && node.textContent !== text) node.textContent = text;
  }

  function pad2(n) {
    return String(n).padStart(2, "0");
  }

  function fmtInt(n) {
    return typeof n === "number" ? n.toLocaleString("en-US") : "\u2013";
  }

  // A total for a card: exact up to 99,999, then shortened ("123.4k", "2.35M");
  // the card's title has the exact figure.
  function fmtCount(n) {
    if (typeof n !== "number") return "\u2013";
    if (n < 100000) return fmtInt(n);
    if (n < 1e6) return (n / 1e3).toFixed(1) + "k";
    if (n < 1e9) return (n / 1e6).toFixed(n < 1e7 ? 2 : 1) + "M";
    return (n / 1e9).toFixed(2) + "G";
  }

  function setCount(testid, n) {
    setText(testid, fmtCount(n));
    const node = byTestId(testid);
    const exact = fmtInt(n);
    if (node && node.title !== exact) node.title = exact;
  }

  function fmtClock(date) {
    return pad2(date.getHours()) + ":" + pad2(date.getMinutes()) + ":" + pad2(date.getSeconds());
  }

  function fmtWhen(epoch) {
    if (typeof epoch !== "number") return "\u2013";
    const date = new Date(epoch * 1000);
    const day = date.getFullYear() + "-" + pad2(date.getMonth() + 1) + "-" + pad2(date.getDate());
    return day + " " + fmtClock(date);
  }

  // A duration of a task (seconds, from the stats), to a readable unit.
  function fmtDuration(seconds) {
    if (typeof seconds !== "number" || !isFinite(seconds)) return "\u2013";
    if (seconds <= 0) return "0 ms";
    if (seconds < 0.001) return Math.max(1, Math.round(seconds * 1e6)) + " \u00b5s";
    if (seconds < 0.01) return (seconds * 1000).toFixed(2) + " ms";
    if (seconds < 1) return (seconds * 1000).toFixed(1) + " ms";
    if (seconds < 60) return seconds.toFixed(2) + " s";
    return fmtSpan(seconds);
  }

  // A span of wall time, to the second ("42 s", "3 min 05 s", "2 h 10 min").
  function fmtSpan(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + pad2(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + pad2(Math.floor((s % 3600) / 60)) + " min";
  }

  function fmtRate(perSecond) {
    if (typeof perSecond !== "number" || !isFinite(perSecond)) return "\u2013";
    if (perSecond >= 100) return Math.round(perSecond).toLocaleString("en-US");
    if (perSecond >= 10) return perSecond.toFixed(1);
    return perSecond.toFixed(2);
  }

  function nowSeconds() {
    return Date.now() / 1000;
  }

  // -- the API -----------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, body) {
      super((body && body.error) || "HTTP " + status);
      this.status = status;
      this.body = body;
    }
  }

  // GET from the API, with the token if this tab has one. On a public
  // address the dashboard answers 401 without it: ask for it (one form,
  // however many reads were refused at once) and try again.
  async function getJSON(path) {
    let refused = false;
    for (;;) {
      const token = readToken();
      const headers = { Accept: "application/json" };
      if (token) headers.Authorization = "Bearer " + token;
      const response = await fetch(path, {
        cache: "no-store", credentials: "same-origin", headers: headers,
      });
      let body = null;
      try {
        body = await response.json();
      } catch (error) {
        body = null;
      }
      if (response.status === 401) {
        const current = readToken();
        if (current && current !== token) continue;  // one came meanwhile: use it
        if (token) forgetToken();
        if (state.tokenDeclined) throw new HttpError(401, body);
        const typed = await askToken(refused || Boolean(token));
        if (!typed) {
          declineToken();
          throw new HttpError(401, body);
        }
        storeToken(typed);
        refused = true;
        continue;
      }
      if (!response.ok) throw new HttpError(response.status, body);
      return body;
    }
  }

  // The form was cancelled on a dashboard whose reads need the token: ask
  // no more until the user says so (a button in the top bar), rather than
  // at every refresh.
  function declineToken() {
    if (state.tokenDeclined) return;
    state.tokenDeclined = true;
    const again = el("button", { cls: "btn", testid: "token-needed", text: "Enter token",
                                 attrs: { type: "button" } });
    again.addEventListener("click", function () {
      state.tokenDeclined = false;
      again.remove();
      if (state.configured) refreshSoon();  // else start() asks again within 2 s
    });
    document.querySelector(".topbar-right").append(again);
  }

  // -- refreshing ---------------------------------------------------------------

  async function start() {
    wireLookup();
    window.addEventListener("resize", function () {
      if (state.lastSeries) drawChart(state.lastSeries);
    });
    let config = null;
    while (config === null) {
      try {
        config = await getJSON("/api/config");
      } catch (error) {
        showConnection(false);
        await new Promise(function (resolve) { setTimeout(resolve, 2000); });
      }
    }
    applyConfig(config);
    state.configured = true;
    const fromHash = taskIdFromHash();
    if (fromHash) lookup(fromHash);
    window.addEventListener("hashchange", function () {
      const id = taskIdFromHash();
      if (id) lookup(id);
    });
    tick();
  }

  function applyConfig(config) {
    state.actions = config.actions === true;
    const seconds = Number(config.refresh_seconds);
    state.refreshMs = seconds > 0 ? Math.min(60, seconds) * 1000 : 1000;
    setText("queue-name", String(config.name || ""));
    document.title = String(config.name || "queue") + " \u00b7 taskqueue";
    const mode = byTestId("mode");
    mode.textContent = state.actions ? "actions on" : "read-only";
    mode.classList.toggle("mode-actions", state.actions);
    setText("footer-mode", state.actions
      ? "Actions need the dashboard's token; it is kept in this tab only."
      : "Read-only: started without a token.");
    if (state.actions) {
      const purge = el("button", { cls: "btn btn-danger", testid: "purge-button", text: "Purge dead letters", attrs: { type: "button" } });
      purge.addEventListener("click", askPurge);
      byTestId("dead-actions").replaceChildren(purge);
    }
  }

  // One refresh of everything; the next is scheduled when this one ends, so
  // a slow server is never asked twice at once.
  async function tick() {
    if (state.ticking) {
      state.again = true;
      return;
    }
    state.ticking = true;
    clearTimeout(state.timer);
    let ok = true;
    try {
      if (state.tokenDeclined) {  // nothing to ask until the token is given
        ok = false;
        return;
      }
      const parts = [
        ["/api/stats", renderStats], ["/api/series", renderSeries],
        ["/api/overview", renderOverview], ["/api/dead?limit=" + MAX_DEAD_SHOWN, renderDead],
      ];
      const results = await Promise.allSettled(parts.map(function (part) { return getJSON(part[0]); }));
      results.forEach(function (result, i) {
        if (result.status !== "fulfilled") {
          ok = false;
          return;
        }
        try {
          parts[i][1](result.value);
        } catch (error) {
          ok = false;
          console.error("dashboard: cannot show " + parts[i][0], error);
        }
      });
      if (state.lookedUp !== null && !state.lookedUpTerminal) {
        await lookup(state.lookedUp, { quiet: true });
      }
    } finally {
      showConnection(ok);
      state.ticking = false;
      if (state.again) {
        state.again = false;
        state.timer = setTimeout(tick, 0);
      } else {
        state.timer = setTimeout(tick, state.refreshMs);
      }
    }
  }

  function refreshSoon() {
    clearTimeout(state.timer);
    tick();
  }

  function showConnection(ok) {
    const status = byTestId("status");
    if (ok) {
      state.lastUpdate = new Date();
      setText("status-text", "updated " + fmtClock(state.lastUpdate));
    } else {
      const since = state.lastUpdate ? " \u00b7 last update " + fmtClock(state.lastUpdate) : "";
      setText("status-text", (state.tokenDeclined ? "needs the dashboard's token" : "connection lost")
              + since);
    }
    status.classList.toggle("lost", !ok);
    status.classList.toggle("live", ok);
  }

  // -- totals and timings ------------------------------------------------------------

  function renderStats(stats) {
    for (const name of TOTALS) {
      setCount("total-" + name, stats[name]);
    }
    setCount("total-dead-letters", stats.dead_letters);
    const waiting = Math.max(0, (stats.pending || 0) - (stats.scheduled || 0));
    setText("total-waiting", fmtInt(waiting) + " waiting");
    setText("total-dropped", stats.dead_letters_dropped > 0
      ? fmtInt(stats.dead_letters_dropped) + " dropped" : "");
    setText("rate", fmtRate(stats.completed_per_second));
    for (const kind of ["wait", "run"]) {
      for (const p of ["p50", "p95", "p99"]) {
        setText(kind + "-" + p, fmtDuration(stats[kind + "_" + p]));
      }
    }
  }

  // -- the chart ---------------------------------------------------------------------

  function renderSeries(series) {
    state.lastSeries = series;
    drawChart(series);
    const points = series.points || [];
    const recent = rateOver(points, 10, function (p) { return p.submitted; });
    setText("rate-submitted", recent === null ? "" : "in " + fmtRate(recent) + " / s");
  }

  function completed(point) {
    return (point.succeeded || 0) + (point.failed || 0) + (point.cancelled || 0);
  }

  // The rate of a counter over the last `seconds` of samples (null: too few).
  function rateOver(points, seconds, value) {
    if (points.length < 2) return null;
    const last = points[points.length - 1];
    let first = points[0];
    for (let i = points.length - 1; i >= 0; i--) {
      first = points[i];
      if (last.t - points[i].t >= seconds) break;
    }
    const dt = last.t - first.t;
    return dt > 0 ? Math.max(0, value(last) - value(first)) / dt : null;
  }

  // Per-interval rates between successive samples: [{t, done, failed}].
  function ratesOf(points) {
    const rates = [];
    for (let i = 1; i < points.length; i++) {
      const a = points[i - 1];
      const b = points[i];
      const dt = b.t - a.t;
      if (!(dt > 0)) continue;
      rates.push({
        t: b.t,
        // A counter that went down is a restarted source, not negative work.
        done: Math.max(0, completed(b) - completed(a)) / dt,
        failed: Math.max(0, (b.failed || 0) - (a.failed || 0)) / dt,
      });
    }
    return rates;
  }

  // The smallest of 1, 2, 5 x 10^n at or above `value`.
  function niceCeil(value) {
    if (!(value > 0)) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (step * power >= value) return step * power;
    }
    return 10 * power;
  }

  function drawChart(series) {
    const box = byTestId("chart");
    const width = Math.max(320, Math.floor(box.clientWidth || 640));
    const height = 220;
    const pad = { left: 48, right: 14, top: 12, bottom: 26 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const rates = ratesOf(series.points || []);
    const end = rates.length ? Math.max(rates[rates.length - 1].t, nowSeconds() - 5) : nowSeconds();
    const begin = end - WINDOW_SECONDS;
    const shown = rates.filter(function (r) { return r.t >= begin; });
    const top = niceCeil(Math.max(1, ...shown.map(function (r) { return r.done; })));
    const x = function (t) { return pad.left + ((t - begin) / WINDOW_SECONDS) * plotW; };
    const y = function (v) { return pad.top + plotH - (v / top) * plotH; };

    const svg = svgEl("svg", {
      width: width, height: height, viewBox: "0 0 " + width + " " + height,
      class: "chart-svg", role: "img", "data-testid": "chart-svg",
      "aria-label": "completions per second, last ten minutes",
    });
    for (let i = 0; i <= 4; i++) {
      const value = (top * i) / 4;
      const gy = y(value);
      svg.append(svgEl("line", { x1: pad.left, x2: width - pad.right, y1: gy, y2: gy,
                                 class: i === 0 ? "axis" : "grid" }));
      svg.append(svgEl("text", { x: pad.left - 8, y: gy + 4, class: "tick tick-y" },
                       value >= 10 || value === 0 ? String(Math.round(value)) : value.toFixed(1)));
    }
    for (let m = 10; m >= 0; m -= 2) {
      const gx = x(end - m * 60);
      if (m !== 10 && m !== 0) {
        svg.append(svgEl("line", { x1: gx, x2: gx, y1: pad.top, y2: pad.top + plotH, class: "grid grid-v" }));
      }
      svg.append(svgEl("text", { x: gx, y: height - 8, class: "tick tick-x" + (m === 0 ? " tick-end" : m === 10 ? " tick-start" : "") },
                       m === 0 ? "now" : "\u2212" + m + " min"));
    }
    if (shown.length === 0) {
      svg.append(svgEl("text", { x: pad.left + plotW / 2, y: pad.top + plotH / 2, class: "chart-empty" },
                       "collecting samples\u2026"));
    } else {
      const base = y(0);
      const line = shown.map(function (r, i) {
        return (i ? "L" : "M") + x(r.t).toFixed(1) + " " + y(r.done).toFixed(1);
      }).join(" ");
      const firstX = x(shown[0].t).toFixed(1);
      const lastX = x(shown[shown.length - 1].t).toFixed(1);
      svg.append(svgEl("path", { d: "M" + firstX + " " + base + " " + line.replace(/^M/, "L") +
                                    " L" + lastX + " " + base + " Z", class: "area-done" }));
      svg.append(svgEl("path", { d: line, class: "line-done", "data-testid": "chart-line" }));
      if (shown.some(function (r) { return r.failed > 0; })) {
        const failed = shown.map(function (r, i) {
          return (i ? "L" : "M") + x(r.t).toFixed(1) + " " + y(Math.min(r.failed, top)).toFixed(1);
        }).join(" ");
        svg.append(svgEl("path", { d: failed, class: "line-failed" }));
      }
      const last = shown[shown.length - 1];
      svg.append(svgEl("circle", { cx: x(last.t), cy: y(last.done), r: 3, class: "dot-done" }));
      const peak = Math.max(...shown.map(function (r) { return r.done; }));
      svg.append(svgEl("text", { x: width - pad.right, y: pad.top - 1, class: "chart-note" },
                       "now " + fmtRate(last.done) + " / s \u00b7 peak " + fmtRate(peak) + " / s"));
    }
    box.replaceChildren(svg);
  }

  // -- what waits and runs -------------------------------------------------------------

  function taskLink(id) {
    const link = el("a", { cls: "task-id", text: id, attrs: { href: "#task=" + encodeURIComponent(id) } });
    link.addEventListener("click", function (event) {
      event.preventDefault();
      lookup(id);
      byTestId("lookup-result").scrollIntoView({ block: "nearest" });
    });
    return link;
  }

  function cell(content, cls) {
    return el("td", { cls: cls }, [content]);
  }

  function fillTable(testid, rows, emptyTestid) {
    byTestId(testid).replaceChildren(...rows);
    byTestId(emptyTestid).hidden = rows.length > 0;
    byTestId(testid).closest("table").classList.toggle("is-empty", rows.length === 0);
  }

  function renderOverview(overview) {
    const now = nowSeconds();
    const priorities = Object.entries(overview.pending_by_priority || {})
      .map(function (entry) { return [Number(entry[0]), entry[1]]; })
      .sort(function (a, b) { return b[0] - a[0]; });
    const most = Math.max(1, ...priorities.map(function (p) { return p[1]; }));
    fillTable("priority-rows", priorities.map(function (p) {
      const bar = svgEl("svg", { class: "bar", viewBox: "0 0 100 8", preserveAspectRatio: "none" });
      bar.append(svgEl("rect", { x: 0, y: 0, width: Math.max(1, (p[1] / most) * 100), height: 8 }));
      return el("tr", { testid: "priority-row" }, [
        cell(String(p[0])), cell(fmtInt(p[1]), "num"), el("td", { cls: "bar-col" }, [bar]),
      ]);
    }), "priorities-empty");

    fillTable("process-rows", (overview.processes || []).map(function (p) {
      return el("tr", { testid: "process-row" }, [
        cell(el("span", { cls: "mono", text: p.name })), cell(fmtInt(p.workers), "num"),
        cell(fmtInt(p.running), "num"), cell(fmtSpan(now - p.seen_at) + " ago", "num"),
      ]);
    }), "processes-empty");

    const running = overview.running || [];
    setText("running-count", running.length ? String(running.length) : "");
    fillTable("running-rows", running.map(function (t) {
      return el("tr", { testid: "running-row" }, [
        cell(taskLink(t.id)), el("td", { cls: "name-cell", text: t.name, title: t.name }),
        cell(fmtInt(t.attempts), "num"),
        cell(typeof t.started_at === "number" ? fmtClock(new Date(t.started_at * 1000)) : "\u2013", "num"),
        cell(typeof t.started_at === "number" ? fmtSpan(now - t.started_at) : "\u2013", "num"),
      ]);
    }), "running-empty");

    const scheduled = overview.scheduled || [];
    setText("scheduled-count", scheduled.length ? String(scheduled.length) : "");
    fillTable("scheduled-rows", scheduled.map(function (t) {
      return el("tr", { testid: "scheduled-row" }, [
        cell(taskLink(t.id)), el("td", { cls: "name-cell", text: t.name, title: t.name }),
        cell(String(t.priority), "num"), cell(fmtInt(t.attempts), "num"),
        cell(typeof t.due === "number" && Math.abs(t.due - now) < 43200
          ? fmtClock(new Date(t.due * 1000)) : fmtWhen(t.due), "num"),
        cell(typeof t.due === "number" ? (t.due > now ? fmtSpan(t.due - now) : "due") : "\u2013", "num"),
      ]);
    }), "scheduled-empty");
  }

  // -- dead letters ------------------------------------------------------------------

  function renderDead(dead) {
    const letters = (dead.dead_letters || []).slice(-MAX_DEAD_SHOWN).reverse();  // newest first
    const count = typeof dead.count === "number" ? dead.count : letters.length;
    state.deadCount = count;
    setText("dead-count", count ? (count > letters.length
      ? fmtInt(count) + " (newest " + letters.length + " shown)" : fmtInt(count)) : "");
    const wanted = new Set(letters.map(function (l) { return l.task_id; }));
    for (const [id, row] of state.deadRows) {
      if (!wanted.has(id)) {
        row.remove();
        state.deadRows.delete(id);
      }
    }
    const list = byTestId("dead-list");
    const rows = letters.map(function (letter) {
      let row = state.deadRows.get(letter.task_id);
      if (!row) {
        row = deadRow(letter);
        state.deadRows.set(letter.task_id, row);
      }
      return row;
    });
    const inOrder = rows.length === list.children.length &&
      rows.every(function (row, i) { return list.children[i] === row; });
    if (!inOrder) list.replaceChildren(...rows);  // moving a row keeps its <details> open
    byTestId("dead-empty").hidden = rows.length > 0;
    const purge = byTestId("purge-button");
    if (purge) purge.disabled = count === 0;
  }

  function deadRow(letter) {
    const head = el("div", { cls: "dead-head" }, [
      taskLink(letter.task_id),
      el("span", { cls: "name", testid: "dead-name", text: letter.name, title: letter.name }),
      el("span", { cls: "dead-meta", text: fmtInt(letter.attempts) + (letter.attempts === 1 ? " attempt" : " attempts") }),
      el("span", { cls: "dead-meta", text: "failed " + fmtWhen(letter.failed_at) }),
    ]);
    if (state.actions) {
      const button = el("button", { cls: "btn btn-small", testid: "requeue-button", text: "Requeue", attrs: { type: "button" } });
      button.addEventListener("click", function () { requeue(letter, button); });
      head.append(button);
    }
    const details = el("details", { cls: "dead-error" }, [
      el("summary", { testid: "dead-error", text: letter.error || "(no error message)" }),
      el("pre", { cls: "traceback", testid: "dead-traceback", text: letter.traceback || "(no traceback kept)" }),
    ]);
    return el("div", { cls: "dead-row", testid: "dead-row", attrs: { "data-task-id": letter.task_id } },
              [head, details]);
  }

  async function requeue(letter, button) {
    button.disabled = true;
    try {
      const answer = await act("/api/dead/" + encodeURIComponent(letter.task_id) + "/requeue");
      if (answer === null) return;
      if (answer.status === 200) {
        showMessage("Requeued " + letter.name + " (" + letter.task_id + ") as task " + answer.body.task_id + ".", "ok");
      } else if (answer.status === 404) {
        showMessage("That dead letter is gone (requeued or purged meanwhile).", "warn");
      } else {
        showMessage("Requeue refused: " + errorOf(answer), "error");
      }
    } finally {
      button.disabled = false;
      refreshSoon();
    }
  }

  // Purging is asked twice: the first click turns into a confirmation.
  function askPurge() {
    const box = byTestId("dead-actions");
    const yes = el("button", { cls: "btn btn-danger", testid: "purge-confirm", text: "Purge " + fmtInt(state.deadCount), attrs: { type: "button" } });
    const no = el("button", { cls: "btn", testid: "purge-keep", text: "Keep", attrs: { type: "button" } });
    const restore = function () {
      const purge = el("button", { cls: "btn btn-danger", testid: "purge-button", text: "Purge dead letters", attrs: { type: "button" } });
      purge.addEventListener("click", askPurge);
      purge.disabled = state.deadCount === 0;
      box.replaceChildren(purge);
    };
    yes.addEventListener("click", async function () {
      yes.disabled = true;
      no.disabled = true;
      try {
        const answer = await act("/api/dead/purge");
        if (answer !== null) {
          if (answer.status === 200) {
            showMessage("Purged " + fmtInt(answer.body.purged) + " dead letters.", "ok");
          } else {
            showMessage("Purge refused: " + errorOf(answer), "error");
          }
        }
      } finally {
        restore();
        refreshSoon();
      }
    });
    no.addEventListener("click", restore);
    box.replaceChildren(el("span", { cls: "confirm-text", text: "Forget every dead letter?" }), yes, no);
  }

  // -- looking a task up ----------------------------------------------------------------

  function taskIdFromHash() {
    const match = /^#task=(.+)$/.exec(window.location.hash);
    if (!match) return null;
    try {
      return decodeURIComponent(match[1]);
    } catch (error) {
      return null;
    }
  }

  function wireLookup() {
    byTestId("lookup-form").addEventListener("submit", function (event) {
      event.preventDefault();
      const id = byTestId("lookup-input").value.trim();
      if (id) lookup(id);
    });
  }

  async function lookup(id, options) {
    const quiet = options && options.quiet;
    const seq = ++state.lookupSeq;
    const input = byTestId("lookup-input");
    if (!quiet && input.value.trim() !== id) input.value = id;
    state.lookedUp = id;
    let info = null;
    let failure = null;
    try {
      info = await getJSON("/api/tasks/" + encodeURIComponent(id));
    } catch (error) {
      failure = error;
    }
    if (seq !== state.lookupSeq) return;  // a newer look-up has been asked for
    const result = byTestId("lookup-result");
    if (info !== null) {
      state.lookedUpTerminal = TERMINAL.has(info.state);
      result.replaceChildren(taskDetails(info));
    } else if (failure instanceof HttpError && failure.status === 404) {
      state.lookedUpTerminal = true;
      result.replaceChildren(el("p", { cls: "unknown", testid: "lookup-unknown" },
                                ["unknown task ", el("span", { cls: "mono", text: id })]));
    } else if (!quiet) {
      state.lookedUpTerminal = false;
      result.replaceChildren(el("p", { cls: "unknown", text: "cannot look it up: " + (failure ? failure.message : "no answer") }));
    }
  }

  function taskDetails(info) {
    const rows = [
      ["id", el("span", { cls: "mono", text: info.id })],
      ["name", el("span", { cls: "name-full", text: info.name })],
      ["state", el("span", { cls: "badge state-" + String(info.state).replace(/[^a-z]/g, ""), text: info.state })],
      ["attempts", fmtInt(info.attempts)],
      ["priority", String(info.priority)],
      ["submitted_at", fmtWhen(info.submitted_at)],
      ["started_at", fmtWhen(info.started_at)],
      ["finished_at", fmtWhen(info.finished_at)],
      ["due", fmtWhen(info.due)],
      ["error", info.error === null || info.error === undefined ? "\u2013" : el("span", { cls: "error-text", text: info.error })],
    ];
    const list = el("dl", { cls: "fields" });
    for (const [name, value] of rows) {
      list.append(el("dt", { text: name.replace("_at", "").replace("_", " ") }),
                  el("dd", { testid: "lookup-" + name.replace("_", "-") }, [value]));
    }
    const parts = [list];
    if (state.actions && CANCELLABLE.has(info.state)) {
      const button = el("button", { cls: "btn btn-danger", testid: "cancel-button", text: "Cancel task", attrs: { type: "button" } });
      button.addEventListener("click", function () { cancel(info.id, button); });
      parts.push(el("div", { cls: "lookup-actions" }, [button]));
    }
    return el("div", { cls: "task-details" }, parts);
  }

  async function cancel(id, button) {
    button.disabled = true;
    try {
      const answer = await act("/api/tasks/" + encodeURIComponent(id) + "/cancel");
      if (answer === null) return;
      if (answer.status === 200) {
        showMessage("Cancelled task " + id + ".", "ok");
      } else if (answer.status === 409) {
        showMessage("Task " + id + " has started or ended; it cannot be cancelled.", "warn");
      } else {
        showMessage("Cancel refused: " + errorOf(answer), "error");
      }
    } finally {
      button.disabled = false;
      state.lookedUpTerminal = false;
      refreshSoon();
    }
  }

  // -- actions and the token -------------------------------------------------------------

  function readToken() {
    try {
      return window.sessionStorage.getItem(TOKEN_KEY) || state.memoryToken;
    } catch (error) {
      return state.memoryToken;  // storage disabled: keep it for this page only
    }
  }

  function storeToken(token) {
    state.memoryToken = token;
    try {
      window.sessionStorage.setItem(TOKEN_KEY, token);
    } catch (error) {
      // kept in memory only
    }
  }

  function forgetToken() {
    state.memoryToken = null;
    try {
      window.sessionStorage.removeItem(TOKEN_KEY);
    } catch (error) {
      // nothing stored
    }
  }

  function errorOf(answer) {
    return (answer.body && answer.body.error) || "HTTP " + answer.status;
  }

  // POST an action with the token, asking for it first if there is none, and
  // again if the server refuses it. Null: the user gave up, or no answer.
  async function act(path) {
    let refused = false;
    for (;;) {
      let token = readToken();
      if (!token) {
        token = await askToken(refused);
        if (!token) return null;
        storeToken(token);
      }
      let response;
      try {
        response = await fetch(path, {
          method: "POST", cache: "no-store", credentials: "same-origin",
          headers: { Authorization: "Bearer " + token, Accept: "application/json" },
        });
      } catch (error) {
        showMessage("No answer from the dashboard: the action may not have been done.", "error");
        return null;
      }
      let body = null;
      try {
        body = await response.json();
      } catch (error) {
        body = null;
      }
      if (response.status === 403) {
        forgetToken();
        refused = true;
        continue;
      }
      return { status: response.status, body: body };
    }
  }

  // The token form (made the first time it is needed); resolves to the
  // token typed, or null if cancelled.
  function askToken(refused) {
    if (state.tokenPrompt) return state.tokenPrompt;
    state.tokenPrompt = new Promise(function (resolve) {
      const input = el("input", {
        testid: "token-input",
        attrs: { type: "password", name: "token", autocomplete: "off", spellcheck: "false",
                 "aria-label": "Dashboard token", required: "" },
      });
      const error = el("p", { cls: "token-error", testid: "token-error",
                              text: "The dashboard refused that token. Enter it again." });
      error.hidden = !refused;
      const submit = el("button", { cls: "btn btn-primary", testid: "token-submit", text: "Use token", attrs: { type: "submit" } });
      const dismiss = el("button", { cls: "btn", testid: "token-cancel", text: "Cancel", attrs: { type: "button" } });
      const form = el("form", { cls: "token-prompt", testid: "token-prompt", attrs: { role: "dialog", "aria-modal": "true", "aria-labelledby": "token-title" } }, [
        el("h2", { text: "Dashboard token", attrs: { id: "token-title" } }),
        el("p", { text: "Requeue, purge and cancel need the token this dashboard was started with, " +
                        "and so does every figure of a dashboard on a public address. It is kept in " +
                        "this browser tab only (sessionStorage), and sent with each request." }),
        error, input,
        el("div", { cls: "token-buttons" }, [dismiss, submit]),
      ]);
      const overlay = el("div", { cls: "overlay", testid: "token-overlay" }, [form]);
      const finish = function (value) {
        overlay.remove();
        state.tokenPrompt = null;
        resolve(value);
      };
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        const token = input.value.trim();
        if (!/^[\x21-\x7e]+$/.test(token)) {
          error.textContent = "A token is printable ASCII without spaces.";
          error.hidden = false;
          return;
        }
        finish(token);
      });
      dismiss.addEventListener("click", function () { finish(null); });
      overlay.addEventListener("keydown", function (event) {
        if (event.key === "Escape") finish(null);
      });
      document.body.append(overlay);
      input.focus();
    });
    return state.tokenPrompt;
  }

  function showMessage(text, kind) {
    const box = byTestId("action-message");
    box.textContent = text;
    box.className = "notice notice-" + kind;
    box.hidden = false;
    clearTimeout(state.messageTimer);
    state.messageTimer = setTimeout(function () { box.hidden = true; }, 8000);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
