"""The built-in status page for SREs: ``GET /status`` (plain HTML and JavaScript, no build step,
nothing loaded from elsewhere) refreshed each second from ``GET /v1/status``.

``/v1/status`` returns cumulative figures read from Redis (events and dead letters per topic,
the workers' shared event-to-state histogram, live workers, the latest price changes of every
shard, open stocking signals); the page turns consecutive answers into rates and into latency
percentiles over the last ten seconds, so the API keeps no state of its own.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from engine import views
from engine.config import Settings
from engine.contracts import Catalogue
from engine.core.compose import PRICE_SIGNALS
from engine.latency import SUB_BUCKETS
from engine.stocking.query import StockingReader
from engine.store import StateStore

#: Price changes and open stocking signals the page lists.
RECENT = 15


class StatusRoutes:
    def __init__(self, settings: Settings, store: StateStore, catalogue: Catalogue,
                 stocking: StockingReader) -> None:
        self.settings, self.store, self.catalogue = settings, store, catalogue
        self.stocking = stocking
        self.router = APIRouter()
        self.router.add_api_route("/status", self.page, methods=["GET"],
                                  include_in_schema=False, response_class=HTMLResponse)
        self.router.add_api_route(
            "/v1/status", self.status, methods=["GET"], tags=["operations"],
            summary="Everything the status page shows: events and dead letters per topic "
            "(cumulative), the event-to-state latency histogram (bucket -> count, "
            f"{SUB_BUCKETS} buckets per doubling of microseconds), live workers, the latest "
            "price changes and the open stocking signals")

    async def page(self) -> HTMLResponse:
        return HTMLResponse(STATUS_HTML)

    async def status(self) -> dict[str, Any]:
        stats = await views.pipeline_stats(self.store, self.catalogue)
        histogram = await views.event_to_state_latency(self.store)
        workers = await views.live_workers(self.store, self.settings.api.worker_stale_after_s)
        now_ms = int(time.time() * 1000)
        spec = self.catalogue.topics[PRICE_SIGNALS]
        pipe = self.store.client.pipeline(transaction=False)
        for p in range(spec.partitions):
            pipe.lrange(self.store.shard(PRICE_SIGNALS, p) + "pxrecent", 0, RECENT - 1)
        recent = [orjson.loads(body) for rows in await pipe.execute() for body in rows]
        recent.sort(key=lambda c: -c.get("published_ms", 0))
        changes = await self.store.merged_counts(PRICE_SIGNALS, spec.partitions, "pxstats")
        stocking = await self.store.merged_counts(PRICE_SIGNALS, spec.partitions, "ststats")
        return {
            "now_ms": now_ms,
            "events": {"total": stats["events_in"], "valid": stats["valid"],
                       "dead_lettered": stats["dead_lettered"]},
            "topics": {name: {"valid": t["valid"], "dead_lettered": t["dead_lettered"],
                              "dlq": t["dlq"]} for name, t in stats["topics"].items()},
            "dlq": stats["dlq"],
            "latency": {"sub_buckets": SUB_BUCKETS, "count": histogram.total,
                        "since_start_ms": histogram.summary(),
                        "buckets": {str(b): n for b, n in sorted(histogram.counts.items())}},
            "workers": [{"id": w["id"], "role": w.get("role", "all"), "applied": w["applied"],
                         "partitions": len(w["assigned"]),
                         "heartbeat_age_s": round((now_ms - w["heartbeat_ms"]) / 1000, 1)}
                        for w in workers],
            "prices": {"changes": int(changes.get("changes", 0)),
                       "recent": [_change(c) for c in recent[:RECENT]]},
            "stocking": {"opened": int(stocking.get("open", 0)),
                         "cleared": int(stocking.get("cleared", 0)),
                         "open": [_signal(s) for s in await self.stocking.open_signals(
                             None, None, RECENT)]},
        }


def _change(c: dict[str, Any]) -> dict[str, Any]:
    return {"item_id": c["item_id"], "old_price": c.get("old_price"),
            "new_price": c["new_price"], "currency": c.get("currency"),
            "trigger": c.get("reason", {}).get("trigger"), "decision_id": c["decision_id"],
            "published_ms": c.get("published_ms")}


def _signal(s: dict[str, Any]) -> dict[str, Any]:
    keep = ("item_id", "dc", "suggested_transfer_qty", "source_dc", "on_hand", "confidence")
    return {k: s.get(k) for k in keep}


STATUS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Engine status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px/1.4 system-ui,sans-serif;margin:1.2rem auto;max-width:78rem;color:#222;
      padding:0 1rem}
 h1{font-size:1.35rem;margin:.2rem 0} h2{font-size:1.02rem;margin:.2rem 0 .4rem}
 .grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(22rem,1fr));gap:.9rem}
 .card{border:1px solid #ddd;border-radius:6px;padding:.6rem .8rem}
 .big{font-size:1.9rem;font-weight:600} .muted{color:#777;font-size:.85rem}
 table{border-collapse:collapse;width:100%} td,th{padding:.12rem .4rem;text-align:left;
 border-bottom:1px solid #eee;font-size:.85rem} td.n,th.n{text-align:right;
 font-variant-numeric:tabular-nums} .bad{color:#b71c1c} .ok{color:#2e7d32}
</style></head>
<body>
<h1>Streaming decision engine <span id="state" class="muted">connecting…</span></h1>
<div class="grid">
 <div class="card"><h2>Events</h2>
  <div><span class="big" id="rate-total">–</span> events/s
   <span class="muted">(last 10 s; <span id="events-total">–</span> since start)</span></div>
  <table id="topics"><thead><tr><th>topic</th><th class="n">events/s</th>
   <th class="n">applied</th><th class="n">dead-lettered</th></tr></thead><tbody></tbody></table>
 </div>
 <div class="card"><h2>Event → state latency (ms)</h2>
  <table id="latency"><thead><tr><th></th><th class="n">p50</th><th class="n">p90</th>
   <th class="n">p99</th><th class="n">p99.9</th><th class="n">max</th></tr></thead>
   <tbody><tr id="lat-window"><td>last 10 s</td><td class="n">–</td><td class="n">–</td>
    <td class="n">–</td><td class="n">–</td><td class="n">–</td></tr>
   <tr id="lat-start"><td>since start</td><td class="n">–</td><td class="n">–</td>
    <td class="n">–</td><td class="n">–</td><td class="n">–</td></tr></tbody></table>
  <p class="muted">From each record's timestamp to its state written in Redis, all workers
   (<span id="lat-count">–</span> events).</p>
  <h2>Workers</h2>
  <table id="workers"><thead><tr><th>worker</th><th>role</th><th class="n">partitions</th>
   <th class="n">applied</th><th class="n">heartbeat</th></tr></thead><tbody></tbody></table>
 </div>
 <div class="card"><h2>Dead letters <span class="muted">(<span id="dlq-total">–</span>)</span>
  </h2>
  <table id="dlq"><thead><tr><th>reason</th><th class="n">records</th></tr></thead>
   <tbody></tbody></table>
 </div>
 <div class="card"><h2>Recent price changes
  <span class="muted">(<span id="price-total">–</span> since start)</span></h2>
  <table id="prices"><thead><tr><th>item</th><th class="n">old</th><th class="n">new</th>
   <th>trigger</th><th class="n">ago</th></tr></thead><tbody></tbody></table>
 </div>
 <div class="card"><h2>Open stocking signals
  <span class="muted">(<span id="stock-opened">–</span> opened,
   <span id="stock-cleared">–</span> cleared)</span></h2>
  <table id="signals"><thead><tr><th>item</th><th>to</th><th>from</th>
   <th class="n">units</th><th class="n">confidence</th></tr></thead><tbody></tbody></table>
 </div>
</div>
<script>
"use strict";
const WINDOW_MS = 10000, history = [];
const fmt = (x, d) => x === null || x === undefined ? "–" :
  Number(x).toLocaleString("en", {maximumFractionDigits: d ?? 0});
function cell(text, numeric) {
  const td = document.createElement("td");
  td.textContent = text; if (numeric) td.className = "n"; return td;
}
function fill(id, rows) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...rows.map(r => {
    const tr = document.createElement("tr");
    r.forEach(([text, numeric]) => tr.appendChild(cell(text, numeric))); return tr;
  }));
}
function bucketMs(b, sub) { return Math.pow(2, (Number(b) + 0.5) / sub) / 1000; }
function percentiles(buckets, sub) {
  const keys = Object.keys(buckets).map(Number).sort((a, b) => a - b);
  const total = keys.reduce((s, k) => s + buckets[k], 0);
  const out = {};
  for (const [name, q] of [["p50", .5], ["p90", .9], ["p99", .99], ["p999", .999], ["max", 1]]) {
    if (!total) { out[name] = null; continue; }
    const rank = Math.max(1, Math.ceil(q * total)); let seen = 0;
    for (const k of keys) {
      seen += buckets[k];
      if (seen >= rank) { out[name] = bucketMs(k, sub); break; }
    }
  }
  return out;
}
function latencyRow(id, p) {
  const cells = document.querySelectorAll("#" + id + " td.n");
  ["p50", "p90", "p99", "p999", "max"].forEach((k, i) => { cells[i].textContent = fmt(p[k], 1); });
}
function render(s) {
  history.push(s);
  while (history.length > 2 && s.now_ms - history[1].now_ms >= WINDOW_MS) history.shift();
  const old = history[0], dt = Math.max((s.now_ms - old.now_ms) / 1000, 1e-9);
  const rate = (name, t) => {
    const prev = old.topics[name] || {valid: 0, dead_lettered: 0};
    return (t.valid + t.dead_lettered - prev.valid - prev.dead_lettered) / dt;
  };
  document.getElementById("rate-total").textContent = history.length < 2 ? "…" :
    fmt((s.events.total - old.events.total) / dt, 0);
  document.getElementById("events-total").textContent = fmt(s.events.total);
  fill("topics", Object.entries(s.topics).map(([name, t]) => [[name],
    [history.length < 2 ? "…" : fmt(rate(name, t), 0), true], [fmt(t.valid), true],
    [fmt(t.dead_lettered), true]]));
  const window = {};
  for (const [b, n] of Object.entries(s.latency.buckets)) {
    const d = n - ((old.latency.buckets || {})[b] || 0); if (d > 0) window[b] = d;
  }
  latencyRow("lat-window", history.length < 2 ? {} : percentiles(window, s.latency.sub_buckets));
  latencyRow("lat-start", s.latency.since_start_ms);
  document.getElementById("lat-count").textContent = fmt(s.latency.count);
  fill("workers", s.workers.map(w => [[w.id], [w.role], [fmt(w.partitions), true],
    [fmt(w.applied), true], [fmt(w.heartbeat_age_s, 1) + " s", true]]));
  const dlq = Object.entries(s.dlq).sort((a, b) => b[1] - a[1]);
  document.getElementById("dlq-total").textContent = fmt(s.events.dead_lettered);
  fill("dlq", dlq.map(([reason, n]) => [[reason], [fmt(n), true]]));
  document.getElementById("price-total").textContent = fmt(s.prices.changes);
  fill("prices", s.prices.recent.map(c => [[c.item_id], [fmt(c.old_price, 2), true],
    [fmt(c.new_price, 2) + " " + (c.currency || ""), true], [c.trigger || ""],
    [c.published_ms ? fmt((s.now_ms - c.published_ms) / 1000, 0) + " s" : "–", true]]));
  document.getElementById("stock-opened").textContent = fmt(s.stocking.opened);
  document.getElementById("stock-cleared").textContent = fmt(s.stocking.cleared);
  fill("signals", s.stocking.open.map(g => [[g.item_id], [g.dc], [g.source_dc || "supplier"],
    [fmt(g.suggested_transfer_qty), true], [fmt(g.confidence, 2), true]]));
  const state = document.getElementById("state");
  state.textContent = s.workers.length ? s.workers.length + " live worker(s)" : "no live worker";
  state.className = s.workers.length ? "ok" : "bad";
  document.body.dataset.updated = String(s.now_ms);
}
async function tick() {
  try {
    const r = await fetch("/v1/status", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
  } catch (e) {
    const state = document.getElementById("state");
    state.textContent = "unreachable: " + e.message; state.className = "bad";
  }
  setTimeout(tick, 1000);
}
tick();
</script>
</body></html>
"""
