"""Recommendation benchmark: query latency under load, and the update's cost per event.

1. Query latency (issue 3's target: p99 under 5 ms at 500 requests/s while the worker
   consumes). The embedded stack (broker, Valkey, Faust worker and API, each its own process)
   starts, and REES46 and Online Retail are backfilled until state holds every event. Then:
   a. baseline: a few requests of each kind, one at a time, worker idle, with Redis's own time
      per request (INFO commandstats) and the API's (its histogram) beside the client's;
   b. while the REES46 clickstream is replayed again at 1,000 events/s (new offsets, so new
      events that the worker applies): the capacity (a closed loop, 8 requests in flight), then
      an open-loop load at 500 and at 200 requests/s. The mix is 70 % personal lists, 20 %
      similar items, 10 % personal lists with a context item. Each request has a fixed due time
      and its latency counts from then (or from its send, if the generator sent it early). A
      stall therefore delays every request queued behind it and is not hidden (no coordinated
      omission). The API's histogram (``engine_api_request_seconds``, read from ``/metrics``
      before and after) shows how much of that time is the server's.
2. Update cost. The real events are applied in-process to a private Valkey through
   ``StateStore.apply``, 100 events of one topic partition per call, once with the activity
   core alone and once with the composed decision core (activity + recommendations). The
   difference is what the recommendation update costs per event. Median of ``--repeat`` rounds.

Users, items and the request mix are drawn from the REES46 data with a fixed seed, so the same
files give the same requests on every run. Usage::

    python benchmarks/reco_queries.py [--quick] [--repeat K] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import itertools
import math
import multiprocessing as mp
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import procstat
from prometheus_client.parser import text_string_to_metric_families
from workload import BATCH, TP, Workload, build_workload, interleave, publish_results, say

from engine.config import Settings, load_settings
from engine.contracts import Rejection, Validator, load_catalogue
from engine.core.activity import dead_letter_ops, ops_for
from engine.core.compose import decision_core
from engine.embedded import start_redis
from engine.replay.publish import publish
from engine.replay.run import build_records
from engine.replay.sources import Record
from engine.stack import Stack, embedded_stack
from engine.store import StateStore
from engine.views import event_to_state_latency, pipeline_stats

SEED = 20_240_503
TARGET_P99_MS, TARGET_RATE = 5.0, 500.0
RATES = (500.0, 200.0)
LOAD_S, QUICK_LOAD_S = 20.0, 10.0
#: Unloaded baseline: requests of each kind, one at a time (default, --quick).
BASELINE_PER_KIND, QUICK_BASELINE_PER_KIND = 20, 10
#: Capacity: this many requests kept in flight (closed loop) for this long, replay running.
SATURATION_CLIENTS, SATURATION_S = 8, 6.0
#: Request mix: personal lists, similar items, personal lists with a context item.
MIX = (("user", 0.7), ("similar", 0.2), ("user_context", 0.1))
#: Share of personal-list requests for user ids the engine has never seen (cold start).
UNKNOWN_USERS = 0.2
K = 10
BACKFILL_SOURCES = ("rees46", "online_retail")
REPLAY_RATE, REPLAY_LEAD_S = 1_000.0, 3.0
#: Plenty for 500 requests/s at the target latency (about 2 in flight). When all are busy,
#: requests wait in the client, on the clock.
CONNECTIONS = 32
#: A request unanswered after this long counts as an error (its latency as this long).
REQUEST_TIMEOUT_S = 5.0
SETTLE_TIMEOUT_S = 60.0
#: asyncio sleeps in whole milliseconds (epoll), so the generator wakes up to 1 ms early rather
#: than late. Latency counts from the later of due time and send, so early sends gain nothing.
TIMER_SLACK_S = 0.001
DRAIN_TIMEOUT_S = 240.0
ROUTES = ("/v1/users/{user_id}/recommendations", "/v1/items/{item_id}/similar")
#: Commands that are not the API's reads: the worker's apply script, and INFO itself.
REDIS_NOT_READS = frozenset({"cmdstat_evalsha", "cmdstat_eval", "cmdstat_info",
                             "cmdstat_config"})
API_ERROR = re.compile(r"(Redis error|unhandled error) serving \S+?: (.*)")
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999), ("max", 1.0))
#: kind, latency (s), generator lateness (s), HTTP status, items returned, error ("" if none)
Sample = tuple[str, float, float, int, int, str]


# --- requests ---------------------------------------------------------------------------


def request_mix(records: Sequence[Record], count: int, seed: int) -> list[tuple[str, str]]:
    """(kind, path) pairs: users and items drawn uniformly from the distinct REES46 ids."""
    rng = random.Random(seed)
    users = sorted({r.event["user_id"] for r in records if "user_id" in r.event})
    items = sorted({r.event["item_id"] for r in records if "item_id" in r.event})
    kinds, weights = [k for k, _ in MIX], [w for _, w in MIX]
    out: list[tuple[str, str]] = []
    for kind in rng.choices(kinds, weights, k=count):
        if kind == "similar":
            out.append((kind, f"/v1/items/{quote(rng.choice(items))}/similar?k={K}"))
            continue
        known = rng.random() >= UNKNOWN_USERS
        user = rng.choice(users) if known else f"bench-new-{rng.randrange(10**9)}"
        path = f"/v1/users/{quote(user)}/recommendations?k={K}"
        if kind == "user_context":
            path += f"&context_item={quote(rng.choice(items))}"
        out.append((kind, path))
    return out


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class HttpPool:
    """Keep-alive HTTP/1.1 connections over asyncio streams. No client library sits between
    the clock and the socket, so the generator takes as little of the shared CPU as it can.
    Last in, first out: a light load keeps reusing a few warm connections."""

    def __init__(self, url: str, size: int) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.idle: asyncio.LifoQueue[Conn | None] = asyncio.LifoQueue()
        for _ in range(size):
            self.idle.put_nowait(None)   # connected on first use

    async def get(self, path: str) -> tuple[int, bytes]:
        conn = await self.idle.get()
        try:
            if conn is not None:
                try:
                    return self._release(conn, *await self._exchange(conn, path))
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                        raise
                    # Closed by the server while idle (uvicorn's keep-alive timeout is 5 s),
                    # before any byte of an answer: safe to send the GET again, as clients do.
                    conn[1].close()
            conn = await asyncio.open_connection(self.host, self.port)
            return self._release(conn, *await self._exchange(conn, path))
        except BaseException:
            if conn is not None:
                conn[1].close()
            self.idle.put_nowait(None)
            raise

    async def _exchange(self, conn: Conn, path: str) -> tuple[int, bytes, bool]:
        reader, writer = conn
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(b":") for line in lines[1:] if line)}
        if b"content-length" not in headers:
            raise ValueError(f"GET {path}: status {status} without content-length")
        body = await reader.readexactly(int(headers[b"content-length"]))
        return status, body, headers.get(b"connection", b"").lower() != b"close"

    def _release(self, conn: Conn, status: int, body: bytes, keep: bool) -> tuple[int, bytes]:
        if not keep:
            conn[1].close()
        self.idle.put_nowait(conn if keep else None)
        return status, body

    async def close(self) -> None:
        while not self.idle.empty():
            conn = self.idle.get_nowait()
            if conn is not None:
                conn[1].close()


async def _one(pool: HttpPool, kind: str, path: str, due: float) -> Sample:
    started = time.perf_counter()
    status, items, error = 0, 0, ""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            status, body = await pool.get(path)
        if status == 200:
            items = len(orjson.loads(body)["items"])
        else:
            error = f"http_{status}"
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, KeyError) as exc:
        error = type(exc).__name__
    return (kind, time.perf_counter() - max(due, started), started - due, status, items, error)


async def open_loop(pool: HttpPool, requests: Sequence[tuple[str, str]], rate: float
                    ) -> tuple[list[Sample], float]:
    """Request i is due at i / rate: the schedule never waits for answers. Returns the samples
    and the wall time from the first due time to the last answer."""
    start = time.perf_counter() + 0.05
    tasks = []
    for i, (kind, path) in enumerate(requests):
        due = start + i / rate
        delay = due - time.perf_counter() - TIMER_SLACK_S
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(pool, kind, path, due)))
    samples = await asyncio.gather(*tasks)
    return samples, time.perf_counter() - start


def percentiles(values: Sequence[float], scale: float = 1e3) -> dict[str, float]:
    """Nearest-rank percentiles, in ms for seconds."""
    ranked = sorted(values)
    return {name: round(ranked[max(0, math.ceil(q * len(ranked)) - 1)] * scale, 3)
            for name, q in QUANTILES} if ranked else {}


def describe(samples: Sequence[Sample], wall: float) -> dict[str, Any]:
    ok = [s for s in samples if not s[5]]
    latencies = [s[1] for s in samples]
    return {
        "sent": len(samples), "ok": len(ok), "achieved_rps": round(len(ok) / wall, 1),
        "errors": len(samples) - len(ok),
        "errors_by_reason": dict(Counter(s[5] for s in samples if s[5])),
        "latency_ms": {**percentiles(latencies),
                       "mean": round(statistics.fmean(latencies) * 1e3, 3)},
        "by_kind": {kind: {"requests": len(lat), **percentiles(lat)} for kind, _ in MIX
                    if (lat := [s[1] for s in samples if s[0] == kind])},
        "generator_late_ms": percentiles([max(0.0, s[2]) for s in samples]),
        "short_lists": sum(1 for s in ok if s[4] < K),
    }


# --- the API's own histogram, and Redis's ------------------------------------------------


async def server_histogram(pool: HttpPool) -> dict[str, float]:
    """``engine_api_request_seconds`` of the two recommendation routes, summed: bucket upper
    bounds (s) -> cumulative count, plus ``sum`` and ``count``."""
    status, body = await pool.get("/metrics")
    if status != 200:
        raise RuntimeError(f"GET /metrics answered {status}")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        if family.name != "engine_api_request_seconds":
            continue
        for s in family.samples:
            if s.labels.get("route") not in ROUTES:
                continue
            if s.name.endswith("_bucket"):
                out[s.labels["le"]] = out.get(s.labels["le"], 0.0) + s.value
            elif s.name.endswith(("_sum", "_count")):
                what = s.name.rsplit("_", 1)[1]
                out[what] = out.get(what, 0.0) + s.value
    return out


def server_side(before: dict[str, float], after: dict[str, float], client_mean_ms: float
                ) -> dict[str, Any]:
    """What the API's middleware measured between two scrapes: mean, and percentile bounds
    from the histogram's buckets (``None``: beyond the last bucket, 0.5 s)."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    count = delta.get("count", 0.0)
    if not count:
        return {"count": 0}
    bounds = sorted((float(le), n) for le, n in delta.items() if le not in ("sum", "count"))

    def upper(q: float) -> float | None:
        le = next(le for le, n in bounds if n >= q * count)
        return le * 1e3 if math.isfinite(le) else None

    mean_ms = delta["sum"] / count * 1e3
    return {"count": int(count), "mean_ms": round(mean_ms, 3),
            "share_within_5ms": round(dict(bounds)[0.005] / count, 4),
            "p50_at_most_ms": upper(0.5), "p99_at_most_ms": upper(0.99),
            "share_of_client_mean": round(mean_ms / client_mean_ms, 3) if client_mean_ms else None}


async def settle(pool: HttpPool) -> tuple[dict[str, float], float]:
    """Scrape until the API's request count stops growing: requests whose clients gave up are
    finished too, so the next step starts on an idle API and the scrape counts them all."""
    started, last = time.perf_counter(), -1.0
    while True:
        hist = await server_histogram(pool)
        waited = time.perf_counter() - started
        if hist.get("count", 0.0) == last or waited > SETTLE_TIMEOUT_S:
            return hist, waited
        last = hist.get("count", 0.0)
        await asyncio.sleep(1.0)


async def redis_reads(store: StateStore) -> tuple[int, int]:
    """(calls, µs) of every command Redis ran so far, less the worker's scripts and INFO."""
    stats = await store.client.info("commandstats")
    rows = [v for k, v in stats.items() if k not in REDIS_NOT_READS]
    return sum(int(v["calls"]) for v in rows), sum(int(v["usec"]) for v in rows)


# --- the stack under load ----------------------------------------------------------------


def _replay_forever(settings: Settings, rate: float, stop: Any, out: Any) -> None:
    """Child process: the REES46 clickstream, pass after pass, at ``rate`` until ``stop``.

    A process of its own, not a thread: kafka-python's sends would hold the load generator's
    GIL and show up as client latency."""
    records = build_records(settings, ["rees46"], catalog=False)
    stats = publish(itertools.cycle(records), bootstrap=settings.kafka.url,
                    kafka_options=settings.kafka.kafka_python_options(), rate=rate,
                    progress=False, should_stop=stop.is_set)
    out.put({"sent": stats.total, "failed": stats.failed, "elapsed_s": stats.elapsed_s})


class Replay:
    def __init__(self, settings: Settings, rate: float) -> None:
        ctx = mp.get_context("spawn")
        self.stop_event, self.out = ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=_replay_forever, name="bench-replay", daemon=True,
                                args=(settings, rate, self.stop_event, self.out))

    def __enter__(self) -> Replay:
        self.proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(10)

    def result(self) -> dict[str, Any]:
        self.stop_event.set()
        got: dict[str, Any] = self.out.get(timeout=30)
        return got


class Bench:
    """The stack's handles, and the running count of events published to it."""

    def __init__(self, stack: Stack, store: StateStore, pool: HttpPool) -> None:
        self.stack, self.store, self.pool = stack, store, pool
        self.catalogue = load_catalogue()
        self.published = 0
        #: processes beyond the stack's to account CPU for (the replay's child)
        self.pids: dict[str, int] = {}

    def check(self) -> None:
        reason = self.stack.supervisor.wait(timeout=0.001)
        if reason is not None:
            raise RuntimeError(f"the stack stopped: {reason.message}")

    async def events_in(self) -> int:
        return int((await pipeline_stats(self.store, self.catalogue))["events_in"])

    async def drain(self) -> float:
        """Wait until state accounts for every published event; seconds waited."""
        started = time.monotonic()
        while (n := await self.events_in()) < self.published:
            self.check()
            if time.monotonic() - started > DRAIN_TIMEOUT_S:
                raise RuntimeError(f"state has {n:,} of {self.published:,} events after "
                                   f"{DRAIN_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.2)
        return time.monotonic() - started

    async def views_caught_up(self) -> None:
        """Wait until the view projector has no backlog, so the baseline is the steady state."""
        started = time.monotonic()
        key = self.store.key("view:dirty")
        while await self.store.client.scard(key):
            self.check()
            if time.monotonic() - started > DRAIN_TIMEOUT_S:
                raise RuntimeError(f"the view projector still has a backlog after "
                                   f"{DRAIN_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.2)
        say(f"views: projector caught up in {time.monotonic() - started:.1f} s")

    async def backfill(self) -> dict[str, Any]:
        settings = self.stack.settings
        records = build_records(settings, list(BACKFILL_SOURCES))
        say(f"backfill: {len(records):,} events ({', '.join(BACKFILL_SOURCES)} + catalogue)")
        started = time.monotonic()
        stats = await asyncio.to_thread(
            publish, records, bootstrap=settings.kafka.url,
            kafka_options=settings.kafka.kafka_python_options(), progress=False)
        if stats.failed:
            raise RuntimeError(f"backfill: {stats.failed} sends failed: {stats.first_error}")
        self.published += stats.total
        await self.drain()
        elapsed = time.monotonic() - started
        await self.views_caught_up()
        return {"events": stats.total, "seconds": round(elapsed, 1),
                "events_per_s": round(stats.total / elapsed)}

    async def baseline(self, requests: Sequence[tuple[str, str]], per_kind: int
                       ) -> dict[str, Any]:
        """Unloaded service time: one request at a time, no replay, by kind. Redis's own time
        per request comes from INFO commandstats, the API's from its histogram."""
        say(f"baseline: {per_kind} requests of each kind, one at a time, worker idle")
        out: dict[str, Any] = {}
        for kind, _ in MIX:
            paths = [p for k, p in requests if k == kind][:per_kind]
            hist, (calls, usec) = await server_histogram(self.pool), await redis_reads(self.store)
            latencies = []
            for path in paths:
                started = time.perf_counter()
                status, _ = await self.pool.get(path)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    raise RuntimeError(f"baseline: GET {path} answered {status}")
            calls_after, usec_after = await redis_reads(self.store)
            mean_ms = statistics.fmean(latencies) * 1e3
            server = server_side(hist, await server_histogram(self.pool), mean_ms)
            out[kind] = {"requests": len(paths), **percentiles(latencies),
                         "mean": round(mean_ms, 3), "api_mean_ms": server["mean_ms"],
                         "redis_ms_per_request": round((usec_after - usec) / len(paths) / 1e3, 3),
                         "redis_calls_per_request": round((calls_after - calls) / len(paths), 1)}
        return out

    async def measured(self, label: str, run: Callable[[], Awaitable[tuple[list[Sample], float]]]
                       ) -> dict[str, Any]:
        """One load step while the replay runs, with the API's and the worker's view of it."""
        latency_key = self.store.key("metrics:event_to_state")
        await self.store.client.delete(latency_key)
        before, events = await server_histogram(self.pool), await self.events_in()
        pids = {p.name: p.pid for p in self.stack.supervisor.processes if p.pid is not None}
        pids.update({f"{name} child {i}" if i else f"{name} child": child
                     for name, pid in list(pids.items())
                     for i, child in enumerate(procstat.children(pid))})
        pids.update(self.pids, generator=os.getpid())
        busy = procstat.snapshot(pids)
        cpu = time.process_time()
        samples, wall = await run()
        cpu = time.process_time() - cpu
        cores = procstat.cores_used(busy, procstat.snapshot(pids), wall)
        events = await self.events_in() - events
        after, settled = await settle(self.pool)
        self.check()
        out = describe(samples, wall)
        return {"step": label, "seconds": round(wall, 1), **out,
                "client_cpu_us_per_request": round(cpu / len(samples) * 1e6, 1),
                "cores_by_process": cores,
                "server": server_side(before, after, out["latency_ms"]["mean"]),
                "settle_s": round(settled, 1),
                "worker": {"applied_per_s": round(events / wall),
                           "event_to_state_ms": {k: None if v is None else round(v, 1) for k, v in
                                                 (await event_to_state_latency(self.store))
                                                 .summary().items()}}}


async def closed_loop(pool: HttpPool, requests: Sequence[tuple[str, str]], clients: int,
                      seconds: float) -> tuple[list[Sample], float]:
    """``clients`` requests in flight, each sent when the one before it is answered: how many
    the API completes per second at most (its capacity), whatever the latency."""
    queue = itertools.cycle(requests)
    samples: list[Sample] = []
    started = time.perf_counter()
    deadline = started + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            kind, path = next(queue)
            samples.append(await _one(pool, kind, path, time.perf_counter()))

    await asyncio.gather(*(client() for _ in range(clients)))
    return samples, time.perf_counter() - started


async def under_load(stack: Stack, seconds: float, per_kind: int) -> dict[str, Any]:
    store = StateStore.open(stack.settings.redis)
    pool = HttpPool(stack.api_url, CONNECTIONS)
    try:
        bench = Bench(stack, store, pool)
        filled = await bench.backfill()
        rees46 = build_records(stack.settings, ["rees46"], catalog=False)
        base = await bench.baseline(request_mix(rees46, 2_000, SEED + 1), per_kind)
        with Replay(stack.settings, REPLAY_RATE) as replay:
            if replay.proc.pid is not None:
                bench.pids["replay"] = replay.proc.pid
            await asyncio.sleep(REPLAY_LEAD_S)
            bench.check()
            say(f"capacity: {SATURATION_CLIENTS} requests in flight for {SATURATION_S:.0f} s, "
                f"replay at {REPLAY_RATE:,.0f} events/s")
            mix = request_mix(rees46, 10_000, SEED + 2)
            steps = [await bench.measured("capacity", partial(
                closed_loop, pool, mix, SATURATION_CLIENTS, SATURATION_S))]
            for rate in RATES:
                requests = request_mix(rees46, int(rate * seconds), SEED)
                say(f"load: {len(requests):,} requests at {rate:,.0f}/s for {seconds:.0f} s, "
                    f"replay at {REPLAY_RATE:,.0f} events/s")
                steps.append({"rate": rate, **await bench.measured(
                    f"{rate:.0f}/s", partial(open_loop, pool, requests, rate))})
            sent = await asyncio.to_thread(replay.result)
        if sent["failed"]:
            raise RuntimeError(f"replay: {sent['failed']} of {sent['sent']} sends failed")
        bench.published += sent["sent"]
        lag = bench.published - await bench.events_in()
    finally:
        await pool.close()
        await store.close()
    return {"backfill": filled, "baseline": base, "capacity": steps[0], "points": steps[1:],
            "replay": {"rate": REPLAY_RATE, "sent": sent["sent"], "lag_at_end": lag}}


def api_log_errors(run_dir: Path) -> dict[str, int]:
    """The API's own account of failed requests (it logs each one), most common first."""
    log = run_dir / "api.log"
    found = Counter(m.group(1) + ": " + m.group(2)[:160] for m in API_ERROR.finditer(
        log.read_text(errors="replace"))) if log.is_file() else Counter()
    return dict(found.most_common(5))


def run_stack(settings: Settings, seconds: float, per_kind: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="engine-reco-bench-") as tmp:
        emb = dataclasses.replace(settings.embedded, run_dir=tmp)
        try:
            with embedded_stack(dataclasses.replace(settings, embedded=emb), os.environ) as st:
                result = asyncio.run(under_load(st, seconds, per_kind))
                return {**result, "api_log_errors": api_log_errors(Path(tmp))}
        except BaseException:
            for log in sorted(Path(tmp).glob("*.log")):
                say(f"--- last lines of {log.name}\n" + "\n".join(
                    log.read_text(errors="replace").splitlines()[-15:]))
            raise


# --- update cost ------------------------------------------------------------------------


Core = Callable[[str, dict[str, Any]], list[Any]]


async def update_round(store: StateStore, core: Core,
                       batches: list[tuple[TP, list[tuple[int, Any]]]]) -> dict[str, float]:
    """The worker's update minus decode and Faust: the core's ops, then one apply per batch.
    Each batch is one topic's, so its time is also added up per topic (``us_<topic>``)."""
    events = Counter[str]()
    seconds: dict[str, float] = {}
    await store.client.flushdb()
    await store.client.config_resetstat()
    gc.collect()
    applied = 0
    clock = time.perf_counter
    for (topic, partition), batch in batches:
        started = clock()
        ops = [(offset, dead_letter_ops(c.reason) if isinstance(c, Rejection) else core(topic, c))
               for offset, c in batch]
        applied += (await store.apply(topic, partition, ops)).applied
        seconds[topic] = seconds.get(topic, 0.0) + clock() - started
        events[topic] += len(batch)
    total = events.total()
    if applied != total:
        raise RuntimeError(f"update: {applied} of {total} events applied")
    stats = await store.client.info("commandstats")
    usec = sum(stats.get(f"cmdstat_{c}", {}).get("usec", 0) for c in ("evalsha", "eval"))
    return {"us": sum(seconds.values()) / total * 1e6, "redis_us": usec / total,
            **{f"us_{t}": seconds[t] / n * 1e6 for t, n in events.items()}}


def core_us(core: Core, valid: Sequence[tuple[str, dict[str, Any]]], events: int) -> float:
    gc.collect()
    started = time.perf_counter()
    for topic, event in valid:
        core(topic, event)
    return (time.perf_counter() - started) / events * 1e6


async def measure_updates(settings: Settings, url: str, work: Workload, repeat: int
                          ) -> dict[str, Any]:
    cores: dict[str, Core] = {"activity": ops_for, "with_recommendations": decision_core(settings)}
    valid = [(t, c) for (t, _), c in zip(work.records, work.checked, strict=True)
             if not isinstance(c, Rejection)]
    batches = interleave(work.by_partition(
        lambda i: (work.records[i][1].offset, work.checked[i])), BATCH)
    events = len(work.records)
    ops = {name: sum(len(core(t, e)) for t, e in valid) +
           sum(len(o) for o, c in zip(work.ops, work.checked, strict=True)
               if isinstance(c, Rejection)) for name, core in cores.items()}
    reco_events = sum(1 for t, e in valid if len(cores["with_recommendations"](t, e)) >
                      len(ops_for(t, e)))
    store = StateStore.open(dataclasses.replace(settings.redis, url=url, namespace="bench"))
    rounds: list[dict[str, float]] = []
    try:
        for n in range(repeat):
            say(f"update cost, round {n + 1}/{repeat}: {events:,} events, batch {BATCH}")
            fig: dict[str, float] = {}
            order = list(cores) if n % 2 == 0 else list(reversed(cores))   # cancel drift
            for name in order:
                r = await update_round(store, cores[name], batches)
                r["core_us"] = core_us(cores[name], valid, events)
                fig |= {f"{name}_{what}": v for what, v in r.items()}
            for what in [k.removeprefix("activity_") for k in fig if k.startswith("activity_")]:
                fig[f"recommendations_{what}"] = (fig[f"with_recommendations_{what}"]
                                                  - fig[f"activity_{what}"])
            rounds.append(fig)
        await store.client.flushdb()
    finally:
        await store.close()
    return {"events": events, "recommendation_events": reco_events, "batch": BATCH,
            "events_by_topic": dict(Counter(t for t, _ in work.records).most_common()),
            "ops_per_event": {k: round(v / events, 2) for k, v in ops.items()},
            "figures": {k: {"median": round(statistics.median(r[k] for r in rounds), 2),
                            "runs": [round(r[k], 2) for r in rounds]} for k in rounds[0]},
            "repeat": repeat}


def run_updates(settings: Settings, repeat: int) -> dict[str, Any]:
    validator = Validator(load_catalogue(), settings.validation)
    say("update cost: building the workload from the replay data sets")
    work = build_workload(settings, validator, None)
    with tempfile.TemporaryDirectory(prefix="engine-reco-bench-") as tmp:
        proc = start_redis(Path(tmp), fresh=True)
        try:
            return asyncio.run(measure_updates(settings, proc.url, work, repeat))
        finally:
            proc.stop()


# --- report -----------------------------------------------------------------------------


def summarise(load: dict[str, Any], update: dict[str, Any], quick: bool, elapsed: float
              ) -> dict[str, Any]:
    at = {p["rate"]: p for p in load["points"]}[TARGET_RATE]
    f = {k: v["median"] for k, v in update["figures"].items()}
    return {
        "benchmark": "reco_queries", "quick": quick,
        "query_p99_ms_500rps": at["latency_ms"]["p99"],
        "query_p50_ms_500rps": at["latency_ms"]["p50"],
        "errors": at["errors"], "achieved_rps": at["achieved_rps"],
        "capacity_rps": load["capacity"]["achieved_rps"],
        "meets_target": at["latency_ms"]["p99"] < TARGET_P99_MS and not at["errors"],
        "update_us_per_event": {"activity": f["activity_us"],
                                "with_recommendations": f["with_recommendations_us"],
                                "recommendations": f["recommendations_us"]},
        "target": {"p99_ms": TARGET_P99_MS, "rate": TARGET_RATE},
        "mix": {**dict(MIX), "unknown_user_share": UNKNOWN_USERS, "k": K, "seed": SEED,
                "connections": CONNECTIONS, "request_timeout_s": REQUEST_TIMEOUT_S},
        "load": load, "update": update,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(),
                    "shared": "broker, Valkey, worker, API, replay producer and load generator "
                              "all on these cores"},
        "elapsed_s": round(elapsed, 1),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}" if value >= 100 else f"{value:.2f}"


def tables(r: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    load = r["load"]
    base = [[kind, str(v["requests"]), _ms(v["p50"]), _ms(v["p99"]), _ms(v["mean"]),
             _ms(v["api_mean_ms"]), _ms(v["redis_ms_per_request"]),
             f"{v['redis_calls_per_request']:,.0f}"] for kind, v in load["baseline"].items()]
    steps = [load["capacity"], *load["points"]]
    names = [f"closed loop, {SATURATION_CLIENTS} in flight",
             *(f"open loop, {p['rate']:,.0f}/s" for p in load["points"])]
    lat = [[name, f"{p['sent']:,}", f"{p['achieved_rps']:,.1f}",
            *(_ms(p["latency_ms"][q]) for q, _ in QUANTILES),
            f"{p['errors']:,}" + (f" ({n:,} timeouts)"
                                  if (n := p["errors_by_reason"].get("TimeoutError")) else "")]
           for name, p in zip(names, steps, strict=True)]
    side = [[name, f"{p['server'].get('count', 0):,}", _ms(p["server"].get("mean_ms")),
             f"{p['server'].get('share_within_5ms', 0):.0%}",
             "> 500" if p["server"].get("p99_at_most_ms") is None
             else f"≤ {p['server']['p99_at_most_ms']:g}",
             f"{p['client_cpu_us_per_request']:,.0f}", _ms(p["generator_late_ms"]["p99"]),
             f"{p['worker']['applied_per_s']:,}", _ms(p["worker"]["event_to_state_ms"]["p99"])]
            for name, p in zip(names, steps, strict=True)]
    who = sorted({n for p in steps for n in p.get("cores_by_process", {})})
    cores = [[name, *(f"{p.get('cores_by_process', {}).get(n, 0):.2f}" for n in who),
              f"{sum(p.get('cores_by_process', {}).values()):.2f}"]
             for name, p in zip(names, steps, strict=True)]
    kinds = [[name, kind, f"{v['requests']:,}", _ms(v["p50"]), _ms(v["p99"]), _ms(v["max"])]
             for name, p in zip(names, steps, strict=True) for kind, v in p["by_kind"].items()]
    u = r["update"]
    f = {k: v["median"] for k, v in u["figures"].items()}
    ope = u["ops_per_event"]
    update = [[name, f"{f[name + '_us']:.1f}", f"{f[name + '_redis_us']:.1f}",
               f"{f[name + '_core_us']:.2f}", f"{ope[name]:.2f}"]
              for name in ("activity", "with_recommendations")]
    update += [["recommendations (difference)", f"{f['recommendations_us']:.1f}",
                f"{f['recommendations_redis_us']:.1f}", f"{f['recommendations_core_us']:.2f}",
                f"{ope['with_recommendations'] - ope['activity']:.2f}"],
               [f"  same, per event the model consumes ({u['recommendation_events']:,})",
                f"{f['recommendations_us'] * u['events'] / u['recommendation_events']:.1f}",
                f"{f['recommendations_redis_us'] * u['events'] / u['recommendation_events']:.1f}",
                "", ""]]
    by_topic = [[topic, f"{n:,}", *(f"{f[f'{name}_us_{topic}']:.1f}" for name in
                                    ("activity", "with_recommendations", "recommendations"))]
                for topic, n in u["events_by_topic"].items()]
    return [
        ("Unloaded baseline: one request at a time, worker idle (ms)",
         ["kind", "requests", "p50", "p99", "mean", "API mean", "Redis time", "Redis calls"],
         base),
        (f"Under load, replay at {REPLAY_RATE:,.0f} events/s: client latency (ms, from the "
         "scheduled send)",
         ["step", "sent", "ok/s", "p50", "p90", "p99", "p99.9", "max", "errors"], lat),
        ("Under load: the API's own histogram, the generator, the worker",
         ["step", "API requests", "API mean ms", "API ≤ 5 ms", "API p99 ms",
          "client CPU µs/req", "generator late p99 ms", "worker events/s",
          "event→state p99 ms"], side),
        ("Cores kept busy, by process (from /proc; the machine has "
         f"{r['machine']['cpus']})", ["step", *who, "total"], cores),
        ("Latency by request kind (ms)", ["step", "kind", "requests", "p50", "p99", "max"],
         kinds),
        (f"Update cost per event (µs, {u['events']:,} events, batch {u['batch']}, median of "
         f"{u['repeat']})",
         ["core", "µs/event", "Redis µs/event", "core CPU µs/event", "ops/event"], update),
        ("Update cost by topic (µs/event, core + apply)",
         ["topic", "events", "activity", "with recommendations", "difference"], by_topic),
    ]


def header(r: dict[str, Any]) -> str:
    b, m, rp = r["load"]["backfill"], r["machine"], r["load"]["replay"]
    verdict = "met" if r["meets_target"] else "NOT met"
    return (f"Target p99 < {TARGET_P99_MS:g} ms at {TARGET_RATE:,.0f} requests/s: {verdict} "
            f"(p99 {_ms(r['query_p99_ms_500rps'])} ms, {r['errors']:,} errors; capacity "
            f"{r['capacity_rps']:,.1f} requests/s).\n"
            f"{m['cpus']} cores shared by broker, Valkey, worker, API, replay producer and load "
            f"generator; Python {m['python']}. Backfill {b['events']:,} events in "
            f"{b['seconds']} s. {CONNECTIONS} keep-alive connections; a request unanswered after "
            f"{REQUEST_TIMEOUT_S:g} s is an error and its latency counts as {REQUEST_TIMEOUT_S:g} "
            f"s (a lower bound). Replay: {rp['sent']:,} events at {rp['rate']:,.0f}/s, "
            f"{rp['lag_at_end']:,} not yet applied at the end. Run took {r['elapsed_s']:.0f} s.")


def render_text(r: dict[str, Any]) -> str:
    out = [header(r)]
    for title, head, rows in tables(r):
        wide = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
        out += ["", title] + ["  ".join(c.rjust(w) if i else c.ljust(w)
                                        for i, (c, w) in enumerate(zip(row, wide, strict=True)))
                              .rstrip() for row in [head, *rows]]
    if r["load"]["api_log_errors"]:
        out += ["", "API log, failed requests:"]
        out += [f"  {n:>6,}  {msg}" for msg, n in r["load"]["api_log_errors"].items()]
    return "\n".join(out)


def render_markdown(r: dict[str, Any]) -> str:
    out = ["# Recommendation benchmark", "", header(r).replace("\n", "  \n")]
    for title, head, rows in tables(r):
        out += ["", f"## {title}", "", "| " + " | ".join(head) + " |",
                "|---|" + "---:|" * (len(head) - 1)]
        out += ["| " + " | ".join(row) + " |" for row in rows]
    if r["load"]["api_log_errors"]:
        out += ["", "## API log, failed requests", ""]
        out += [f"* {n:,} × `{msg}`" for msg, n in r["load"]["api_log_errors"].items()]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_LOAD_S:.0f} s per load point, fewer baseline requests, "
                        "one update round")
    parser.add_argument("--repeat", type=int, default=None,
                        help="update-cost rounds; figures are medians (default 3, quick 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    args = parser.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    started = time.perf_counter()
    settings = load_settings()
    update = run_updates(settings, repeat)
    say("query latency: starting the embedded stack")
    load = run_stack(settings, QUICK_LOAD_S if args.quick else LOAD_S,
                     QUICK_BASELINE_PER_KIND if args.quick else BASELINE_PER_KIND)
    say("stopped: API, worker, Redis and broker")
    result = summarise(load, update, args.quick, time.perf_counter() - started)
    publish_results("reco_queries", result, as_json=args.json, text=render_text(result),
                    markdown=render_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
