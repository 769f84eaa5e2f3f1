"""`GET /dashboard` and `GET /history` on the admin port: the operator's view.

Called by operators in a browser (the page) and by that page and tools
(`/history`, the document `lb.admin.history.History.doc` builds; `since=<t>` returns
only the points and events after t). `lb.admin.app` routes both.

The page is self-contained: no external assets, no fonts, its charts are SVG
drawn by its own code (the admin port is often reachable only from the
machine itself). Once a second it fetches `history?since=<last point>` and
`stats` and shows, over the last five minutes: requests/s (also those
answered without a node, e.g. cache hits), p50 and p99
latency and errors/s for the whole proxy and per node, in-flight (total and
per node) and share per node, the cache hit rate, the proxy's memory (resident
memory of all its processes, the in-process cache's bytes against its budget),
the shadows' argmax agreement per model (`lb.rollout`), and events (node state
changes, nodes added or removed, reloads, rollouts) as markers on every time
axis and as a list; below, the current state from `/stats` as tables: nodes,
groups, shadows and rollouts of the models routed by group, cache, and each
process. With `serve --workers N` every figure
is the whole proxy's (the supervisor merges its workers, `lb.fleet`). Hovering
a chart reads all charts at that second. A failed fetch is shown and polling
goes on; a new process (pid) restarts the history. For tests, every series path
carries `data-series`, `data-kind` (total | direct | node | model) and
`data-points`; each routing row `data-model` and `data-group`.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from lb.admin.history import History

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tfserving-lb</title>
<link rel="icon" href="data:,">
<style>
 body { font: 14px system-ui, sans-serif; margin: 20px; color: #222; }
 h1 { font-size: 18px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 18px 0 6px; }
 .sub { color: #666; } #err { color: #cf222e; font-weight: bold; min-height: 1.2em; }
 #now { margin: 8px 0 12px; } #now span { margin-right: 18px; } #now b { font-size: 18px; }
 #charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr));
           gap: 6px 18px; }
 figure { margin: 0; } figcaption { font-weight: 600; }
 svg { width: 100%; height: auto; display: block; }
 svg text { font-size: 10px; fill: #666; } .yl { text-anchor: end; } .xl { text-anchor: middle; }
 .grid { stroke: #e6e6e6; } .cursor { stroke: #888; stroke-dasharray: 2 2; }
 .empty { font-size: 12px; text-anchor: middle; }
 .legend { font-size: 12px; color: #444; min-height: 1.3em; }
 .legend i { display: inline-block; width: 10px; height: 3px; margin: 0 4px 3px 10px; }
 .ev { stroke-width: 1.5; stroke-dasharray: 3 2; } .ev-bad { stroke: #cf222e; }
 .ev-good { stroke: #1a7f37; } .ev-node { stroke: #8250df; } .ev-config { stroke: #0969da; }
 li.ev-bad { color: #cf222e; } li.ev-good { color: #1a7f37; }
 table { border-collapse: collapse; margin-bottom: 14px; }
 th, td { padding: 3px 10px; text-align: right; border-bottom: 1px solid #ddd; }
 th:first-child, td:first-child { text-align: left; }
 td.healthy { color: #1a7f37; } td.ejected, td.unhealthy { color: #cf222e; font-weight: bold; }
 .bar { display: inline-block; height: 10px; background: #0969da; vertical-align: middle; }
</style></head>
<body>
<h1>tfserving-lb</h1>
<div class="sub" id="sub">loading /history ...</div>
<div id="err"></div>
<div id="now"></div>
<div id="charts"></div>
<h2>Events (last 5 minutes)</h2><ol id="events"></ol>
<h2>Now</h2>
<table id="nodes"><thead><tr><th>node</th><th>state</th><th>weight</th><th>effective</th>
<th>in flight</th><th>requests</th><th>errors</th><th>&tau; ms/unit</th><th>load</th>
<th>share</th><th></th></tr></thead><tbody></tbody></table>
<table id="routing"><thead><tr><th>model</th><th>group</th><th>share %</th>
<th>now %</th><th>health</th><th>routed</th><th>answered</th><th>errors</th><th>shadow</th>
<th>rollout</th></tr></thead><tbody></tbody></table>
<table id="cache"><thead><tr><th>cache</th><th>hits</th><th>misses</th><th>hit rate</th>
<th>coalesced</th><th>partial</th><th>errors</th><th>MB</th><th>budget MB</th></tr></thead>
<tbody></tbody></table>
<table id="procs"><thead><tr><th>process</th><th>worker</th><th>state</th><th>requests</th>
<th>in flight</th><th>RSS MB</th><th>CPU s</th><th>open fds</th><th>config</th></tr></thead>
<tbody></tbody></table>
<script>
"use strict";
const WINDOW_S = 300, MIN_SPAN_S = 30, W = 560, H = 160, L = 44, R = 10, T = 8, B = 18;
const PALETTE = ["#0969da", "#bf3989", "#1a7f37", "#bc4c00", "#8250df", "#0a7f86",
                 "#9a6700", "#cf222e", "#57606a", "#6639ba"];
const CHARTS = [
  {id: "rps", title: "requests/s", total: p => p.rps, node: n => n.rps,
   direct: p => p.direct_rps},
  {id: "p50", title: "p50 latency (ms)", total: p => p.p50_ms, node: n => n.p50_ms},
  {id: "p99", title: "p99 latency (ms)", total: p => p.p99_ms, node: n => n.p99_ms},
  {id: "errors", title: "errors/s (5xx)", total: p => p.eps, node: n => n.eps},
  {id: "inflight", title: "in flight", total: p => p.inflight, node: n => n.inflight},
  {id: "share", title: "share of node-answered requests", node: n => n.share, max: 1},
  {id: "hit", title: "cache hit rate", total: p => p.hit_rate, max: 1, label: "hit rate"},
  {id: "memory", title: "memory (MB)", lines: [
    {name: "RSS (all processes)", color: "#24292f", value: p => mb(p.memory?.rss_bytes)},
    {name: "cache", color: "#0969da", value: p => mb(p.memory?.cache_bytes)},
    {name: "cache budget", color: "#8c959f", value: p => mb(p.memory?.cache_budget_bytes)}]},
  {id: "agree", title: "shadow agreement (argmax, per model)", model: p => p.shadow, max: 1},
];
const mb = b => (b === null || b === undefined ? null : b / 2 ** 20);
const S = {points: [], events: [], nodes: [], models: [], since: null, pid: null,
           polls: 0, failures: 0, lastError: null, hoverT: null};
window.dashboard = S;
const colors = new Map();
let NS = null;

const $ = id => document.getElementById(id);
const pad = n => String(n).padStart(2, "0");
function clock(t, secs) {
  const d = new Date(t * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}` + (secs ? `:${pad(d.getSeconds())}` : "");
}
function fmt(v) {
  if (v === null || v === undefined) return "-";
  const a = Math.abs(v);
  return v.toFixed(a >= 100 || Number.isInteger(v) ? 0 : a >= 10 ? 1 : 2);
}
function color(name) {
  if (!colors.has(name)) colors.set(name, PALETTE[colors.size % PALETTE.length]);
  return colors.get(name);
}
function el(parent, tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  parent.append(e);
  return e;
}
function niceMax(m) {
  if (!(m > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(m));
  return [1, 2, 5, 10].map(f => f * p).find(v => v >= m);
}
function evClass(e) {
  if (e.kind === "state") return e.state === "healthy" ? "ev-good" : "ev-bad";
  if (e.kind === "added" || e.kind === "removed") return "ev-node";
  if (e.kind === "rollout") return /aborted/.test(e.text) ? "ev-bad" : "ev-config";
  return e.kind === "reload_failed" ? "ev-bad" : "ev-config";
}

function buildCharts() {
  for (const c of CHARTS) {
    const fig = document.createElement("figure");
    fig.innerHTML = `<figcaption>${c.title}</figcaption>` +
      `<svg viewBox="0 0 ${W} ${H}" data-chart="${c.id}"></svg><div class="legend"></div>`;
    $("charts").append(fig);
    c.svg = fig.querySelector("svg");
    c.legend = fig.querySelector(".legend");
    c.svg.addEventListener("mousemove", ev => hover(c, ev));
    c.svg.addEventListener("mouseleave", () => { S.hoverT = null; drawAll(); });
  }
  NS = CHARTS[0].svg.namespaceURI;
}

function seriesOf(c) {
  const out = [];
  if (c.total) out.push({name: c.label ?? "all", kind: "total", color: "#24292f",
                         value: p => c.total(p)});
  if (c.direct) out.push({name: "no node (cache)", kind: "direct", color: "#8c959f",
                          value: p => c.direct(p)});
  for (const l of c.lines ?? []) out.push({name: l.name, kind: "total", color: l.color,
                                           value: l.value});
  for (const name of c.node ? S.nodes : []) {
    out.push({name, kind: "node", color: color(name),
              value: p => (p.nodes[name] ? c.node(p.nodes[name]) : null)});
  }
  for (const name of c.model ? S.models : []) {
    out.push({name, kind: "model", color: color(`model ${name}`),
              value: p => (c.model(p) ?? {})[name] ?? null});
  }
  return out;
}

function frame() {
  const n = S.points.length;
  const t1 = n ? S.points[n - 1].t : Date.now() / 1000;
  // a young history fills the chart rather than its last few pixels
  const span = n ? Math.min(WINDOW_S, Math.max(MIN_SPAN_S, t1 - S.points[0].t)) : WINDOW_S;
  const t0 = t1 - span, step = span <= 60 ? 10 : span <= 150 ? 30 : 60;
  return {t0, t1, span, step, x: t => L + (t - t0) / span * (W - L - R)};
}

function drawChart(c, f) {
  const svg = c.svg, series = seriesOf(c);
  svg.replaceChildren();
  let top = 0;
  for (const s of series) for (const p of S.points) top = Math.max(top, s.value(p) ?? 0);
  top = c.max ?? niceMax(top);
  const y = v => T + (1 - v / top) * (H - T - B);
  for (const v of [0, top / 2, top]) {
    el(svg, "line", {x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid"});
    el(svg, "text", {x: L - 4, y: y(v) + 3, class: "yl"}, fmt(v));
  }
  for (let t = Math.ceil(f.t0 / f.step) * f.step; t <= f.t1; t += f.step) {
    el(svg, "line", {x1: f.x(t), x2: f.x(t), y1: T, y2: H - B, class: "grid"});
    el(svg, "text", {x: f.x(t), y: H - 5, class: "xl"}, clock(t, f.step < 60));
  }
  for (const e of S.events) {
    const line = el(svg, "line", {x1: f.x(e.t), x2: f.x(e.t), y1: T, y2: H - B,
                                  class: `ev ${evClass(e)}`});
    el(line, "title", {}, `${clock(e.t, true)} ${e.text}`);
  }
  if (!S.points.length) el(svg, "text", {x: W / 2, y: H / 2, class: "empty"}, "no data yet");
  for (const s of series) {
    let d = "", pen = "M", n = 0;
    for (const p of S.points) {
      const v = s.value(p);
      if (v === null || v === undefined) { pen = "M"; continue; }
      d += `${pen}${f.x(p.t).toFixed(1)},${y(v).toFixed(1)}`;
      pen = "L"; n++;
    }
    if (!n) continue;
    el(svg, "path", {d, fill: "none", stroke: s.color, "stroke-width": s.kind === "total" ? 2 : 1.3,
                     "data-series": s.name, "data-kind": s.kind, "data-points": n});
  }
  c.cursor = el(svg, "line", {y1: T, y2: H - B, class: "cursor", visibility: "hidden"});
  legend(c, f);
}

function pointAt(t) {
  let best = null;
  for (const p of S.points) if (best === null || Math.abs(p.t - t) < Math.abs(best.t - t)) best = p;
  return best;
}

function legend(c, f) {
  const p = S.hoverT === null ? S.points[S.points.length - 1] : pointAt(S.hoverT);
  c.legend.replaceChildren();
  if (!p) return;
  if (S.hoverT !== null) {
    c.cursor.setAttribute("x1", f.x(p.t)); c.cursor.setAttribute("x2", f.x(p.t));
    c.cursor.setAttribute("visibility", "visible");
  }
  c.legend.append(clock(p.t, true));
  for (const s of seriesOf(c)) {
    const sw = document.createElement("i"); sw.style.background = s.color;
    c.legend.append(sw, `${s.name} ${fmt(s.value(p))}`);
  }
}

function hover(c, ev) {
  const f = frame(), rect = c.svg.getBoundingClientRect();
  const px = (ev.clientX - rect.left) * W / rect.width;
  S.hoverT = f.t0 + (px - L) / (W - L - R) * f.span;
  for (const other of CHARTS) legend(other, f);
}

function drawNow() {
  const p = S.points[S.points.length - 1], now = $("now");
  now.replaceChildren();
  if (!p) return;
  for (const [id, v, unit] of [["rps", p.rps, "req/s"], ["p50", p.p50_ms, "ms p50"],
                               ["p99", p.p99_ms, "ms p99"], ["eps", p.eps, "errors/s"],
                               ["hit", p.hit_rate, "cache hit rate"],
                               ["rss", mb(p.memory?.rss_bytes), "MB resident"],
                               ["cache-mb", mb(p.memory?.cache_bytes),
                                `/ ${fmt(mb(p.memory?.cache_budget_bytes))} MB cache`]]) {
    const span = document.createElement("span"), b = document.createElement("b");
    b.id = `now-${id}`; b.textContent = fmt(v); span.append(b, ` ${unit}`); now.append(span);
  }
}

function drawEvents() {
  const list = $("events");
  list.replaceChildren();
  for (const e of [...S.events].reverse()) {
    const li = document.createElement("li");
    li.className = evClass(e); li.textContent = `${clock(e.t, true)}  ${e.text}`;
    list.append(li);
  }
  if (!S.events.length) list.append("no events");
}

function cell(row, text, cls) {
  const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls; return td;
}
function drawTable(s) {
  const body = document.querySelector("#nodes tbody"); body.replaceChildren();
  for (const n of s.nodes) {
    const r = body.insertRow(), state = n.state ?? (n.healthy ? "healthy" : "unhealthy");
    cell(r, n.name); cell(r, state, state); cell(r, fmt(n.weight));
    cell(r, fmt(n.effective_weight)); cell(r, n.inflight); cell(r, n.requests);
    cell(r, n.errors); cell(r, fmt(n.ewma_ms)); cell(r, fmt(n.load)); cell(r, fmt(n.share));
    const bar = document.createElement("span"); bar.className = "bar";
    bar.style.width = `${Math.round(200 * (n.share || 0))}px`; cell(r, "").append(bar);
  }
  drawRouting(s.routing ?? {});
  const c = s.cache, cb = document.querySelector("#cache tbody"); cb.replaceChildren();
  const r = cb.insertRow(), m = s.memory ?? {};
  for (const v of [c.backend, c.hits, c.misses, fmt(c.hit_rate), c.coalesced, c.partial,
                   c.errors, fmt(mb(m.cache_bytes)), fmt(mb(m.cache_budget_bytes))]) {
    cell(r, v ?? "");
  }
  const pb = document.querySelector("#procs tbody"); pb.replaceChildren();
  for (const p of s.processes ?? []) {
    const row = pb.insertRow(), mem = p.memory ?? {}, pr = p.process ?? {};
    for (const v of [p.pid, p.worker, p.state, p.requests?.total, p.inflight,
                     fmt(mb(mem.rss_bytes)), fmt(pr.cpu_seconds), pr.open_fds,
                     p.config?.version]) cell(row, v ?? "");
  }
}

function drawRouting(routing) {
  const body = document.querySelector("#routing tbody"); body.replaceChildren();
  for (const [model, m] of Object.entries(routing)) {
    for (const [group, g] of Object.entries(m.groups)) {
      const r = body.insertRow();
      r.dataset.model = model; r.dataset.group = group;
      cell(r, model); cell(r, group); cell(r, fmt(g.share)); cell(r, fmt(g.effective));
      cell(r, g.healthy ? "healthy" : "none healthy", g.healthy ? "healthy" : "unhealthy");
      cell(r, g.routed); cell(r, g.answered); cell(r, g.errors);
      const sh = m.shadow && m.shadow.group === group ? m.shadow.window : null;
      cell(r, sh ? `agreement ${fmt(sh.agreement)}, max |diff| ${fmt(sh.max_abs_diff)}, ` +
                   `latency ×${fmt(sh.latency_ratio)} (${m.shadow.window.seconds} s)` : "");
      const ro = m.rollout && m.rollout.to === group ? m.rollout : null;
      cell(r, ro ? `${ro.state}, step ${ro.step}/${ro.steps.length} (${fmt(ro.share)} %)` +
                   (ro.reason ? `: ${ro.reason}` : "") : "",
           ro && ro.state === "aborted" ? "unhealthy" : "");
    }
  }
  if (!body.rows.length) { const r = body.insertRow(); cell(r, "no model routed by group"); }
}

function merge(h) {
  if (S.pid !== null && h.pid !== S.pid) {       // another process: start over
    Object.assign(S, {points: [], events: [], nodes: [], models: [], since: null});
  }
  S.pid = h.pid;
  const last = S.points.length ? S.points[S.points.length - 1].t : -Infinity;
  S.points.push(...h.points.filter(p => p.t > last));
  S.events.push(...h.events.filter(e => e.t > last));
  if (!S.points.length) return;
  const t1 = S.points[S.points.length - 1].t;
  S.points = S.points.filter(p => p.t > t1 - WINDOW_S);
  S.events = S.events.filter(e => e.t > t1 - WINDOW_S);
  S.since = t1;
  const names = new Set();
  for (const p of S.points) for (const name of Object.keys(p.nodes)) names.add(name);
  S.nodes = [...names];
  const models = new Set();
  for (const p of S.points) for (const name of Object.keys(p.shadow ?? {})) models.add(name);
  S.models = [...models];
}

function drawAll() {
  const f = frame();
  for (const c of CHARTS) drawChart(c, f);
}

async function json(reply) {
  const r = await reply;
  if (!r.ok) throw new Error(`${r.url}: HTTP ${r.status}`);
  return r.json();
}
const opts = () => ({cache: "no-store", signal: AbortSignal.timeout(4000)});

async function poll() {
  S.polls++;
  let h = null, s = null;
  const url = S.since === null ? "history" : `history?since=${S.since}`;
  try {
    [h, s] = await Promise.all([json(fetch(url, opts())), json(fetch("stats", opts()))]);
    S.lastError = null;
  } catch (e) {
    S.failures++; S.lastError = String(e);
  }
  setTimeout(poll, 1000);
  $("err").textContent = S.lastError === null ? "" :
    `cannot read /history or /stats: ${S.lastError} (${S.failures} failed polls; retrying)`;
  if (h === null) return;
  merge(h);
  $("sub").textContent = `policy ${s.policy} - ${(s.processes ?? []).length} process(es), ` +
    `pid ${s.pid} - ${S.points.length} s of history - config ${s.config?.version} - ` +
    `updated ${clock(Date.now() / 1000, true)}`;
  drawAll(); drawNow(); drawEvents(); drawTable(s);
}

buildCharts();
drawAll();
poll();
</script>
</body></html>
"""


async def handle_dashboard(request: web.Request) -> web.Response:
    del request
    return web.Response(text=PAGE, content_type="text/html",
                        headers={"Cache-Control": "no-store"})


def history_handler(history: History) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The `GET /history[?since=<unix seconds>]` handler over `history`."""

    async def handle_history(request: web.Request) -> web.Response:
        since: float | None = None
        raw = request.query.get("since")
        if raw is not None:
            try:
                since = float(raw)
            except ValueError:
                since = math.nan
            if not math.isfinite(since):
                return web.Response(status=400, content_type="application/json",
                                    body=orjson.dumps({"error": "since must be a number"}))
        return web.Response(body=orjson.dumps(history.doc(since)), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    return handle_history
