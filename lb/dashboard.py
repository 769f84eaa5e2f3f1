"""`GET /dashboard` on the admin port: one self-contained page over `/stats`.

Called by operators in a browser. The page has no external assets (the admin
port is often reachable only from the machine itself) and polls `/stats` once
a second: per-node state, weight and effective weight, in-flight, requests,
errors, τ, load and share, and the cache's hit rate. It reads nothing but
`/stats`, so it shows exactly the contract tools see.
"""

from __future__ import annotations

from aiohttp import web

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tfserving-lb</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 24px; color: #222; }
 h1 { font-size: 18px; margin: 0 0 4px; } .sub { color: #666; margin-bottom: 16px; }
 table { border-collapse: collapse; margin-bottom: 20px; }
 th, td { padding: 4px 12px; text-align: right; border-bottom: 1px solid #ddd; }
 th:first-child, td:first-child { text-align: left; }
 .healthy { color: #1a7f37; } .ejected, .unhealthy { color: #cf222e; font-weight: bold; }
 .bar { display: inline-block; height: 10px; background: #0969da; vertical-align: middle; }
</style></head>
<body>
<h1>tfserving-lb</h1>
<div class="sub" id="sub">loading /stats ...</div>
<table id="nodes"><thead><tr><th>node</th><th>state</th><th>weight</th><th>effective</th>
<th>in flight</th><th>requests</th><th>errors</th><th>&tau; ms/unit</th><th>load</th>
<th>share</th><th></th></tr></thead><tbody></tbody></table>
<table id="cache"><thead><tr><th>cache</th><th>hits</th><th>misses</th><th>hit rate</th>
<th>coalesced</th><th>partial</th><th>errors</th></tr></thead><tbody></tbody></table>
<script>
const fmt = (x, d) => (typeof x === "number" ? x.toFixed(d) : (x ?? ""));
function cell(row, text, cls) {
  const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls; return td;
}
async function tick() {
  try {
    const s = await (await fetch("stats", {cache: "no-store"})).json();
    document.getElementById("sub").textContent =
      `policy ${s.policy} - process ${s.pid} - ${new Date().toLocaleTimeString()}`;
    const body = document.querySelector("#nodes tbody"); body.replaceChildren();
    for (const n of s.nodes) {
      const r = body.insertRow(), state = n.state ?? (n.healthy ? "healthy" : "unhealthy");
      cell(r, n.name); cell(r, state, state); cell(r, fmt(n.weight, 2));
      cell(r, fmt(n.effective_weight, 2)); cell(r, n.inflight); cell(r, n.requests);
      cell(r, n.errors); cell(r, fmt(n.ewma_ms, 2)); cell(r, fmt(n.load, 3));
      cell(r, fmt(n.share, 3));
      const bar = document.createElement("span"); bar.className = "bar";
      bar.style.width = `${Math.round(200 * (n.share || 0))}px`; cell(r, "").append(bar);
    }
    const c = s.cache, cb = document.querySelector("#cache tbody"); cb.replaceChildren();
    const r = cb.insertRow();
    for (const [v, d] of [[c.backend], [c.hits], [c.misses], [c.hit_rate, 3],
                          [c.coalesced], [c.partial], [c.errors]]) cell(r, fmt(v, d ?? 0));
  } catch (e) {
    document.getElementById("sub").textContent = `cannot read /stats: ${e}`;
  }
}
tick(); setInterval(tick, 1000);
</script>
</body></html>
"""


async def handle_dashboard(request: web.Request) -> web.Response:
    del request
    return web.Response(text=PAGE, content_type="text/html",
                        headers={"Cache-Control": "no-store"})
