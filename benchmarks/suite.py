"""``engine bench``: how fast every event becomes a decision, next to what the broker, Redis and
Faust themselves allow, on the embedded stack.

One run, in this order (each phase is described in ``benchmarks/README.md``):
  1. floors: raw produce -> consume on the same broker at the target rate (``bench-floor``),
     raw Redis round trip (PING), and a pass-through Faust agent (``passthrough.py``, started
     while the engine's worker joins): its latency at the target rate and its throughput;
  2. warm-up: the catalogue entries and opening stock of the items the run touches;
  3. the rate ladder: open-loop steps of real events (``openloop.Mix``), each measured end to
     end per decision (input -> recommendation state, order -> stocking state, event -> price
     message on ``prices``), per stage (the workers' Prometheus histograms, scraped before and
     after) and per process (CPU); the step at the target rate also carries the query load
     (recommendation and price endpoints, open loop);
  4. throughput: a burst sent as fast as the producer goes; events/s from first send until
     every decision caught up; again with a second worker unless ``--no-scaling``;
  5. a screenshot of the status page, if Chromium is installed.
Results: ``bench.json``, ``report.md`` and PNG plots in the results folder; ``--json`` prints the
headline figures as one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson
import procstat
from aiokafka import TopicPartition
from openloop import (
    FLOOR_TOPIC,
    PASS_DONE_TOPIC,
    PASS_TOPIC,
    Generator,
    Latencies,
    Mix,
    Observer,
    Sent,
    floor_latencies,
    interleaved,
    match,
    passthrough_done,
    passthrough_latencies,
)
from prometheus_client.parser import text_string_to_metric_families
from report import machine_info

from engine.cli import add_bench_arguments
from engine.config import Settings, load_settings
from engine.contracts import Catalogue, Rejection, Validator, load_catalogue
from engine.core.compose import PRICE_SIGNALS
from engine.embedded import ManagedProcess, create_topics
from engine.latency import SUB_BUCKETS, LatencyHistogram
from engine.replay.run import build_records
from engine.replay.sources import Record
from engine.stack import Stack, embedded_stack, say
from engine.store import StateStore
from engine.views import live_workers

HERE = Path(__file__).resolve().parent
SOURCES = ("rees46", "online_retail", "competitor_prices", "hammer")
DECISIONS = ("recommendations", "stocking", "price")
#: The issue's targets: p99 within this of the broker's own p99 at TARGET_RATE events/s;
#: throughput at least this share of the pass-through agent's; query p99 under this at
#: QUERY_RATE requests/s while loaded.
TARGET_RATE, TARGET_MARGIN_MS, TARGET_THROUGHPUT_SHARE = 2_000.0, 15.0, 0.70
QUERY_RATE, QUERY_TARGET_P99_MS = 500.0, 5.0
#: Longest wait for a backlog to clear between phases (not measured).
SETTLE_TIMEOUT_S = 180.0
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999), ("max", 1.0))


class Plan:
    def __init__(self, quick: bool, rates: Sequence[float] | None, seconds: float | None,
                 slo_ms: float, scaling: bool) -> None:
        self.quick = quick
        self.rates = sorted(rates or ((500.0, TARGET_RATE) if quick else
                                      (250.0, 500.0, 1_000.0, 1_500.0, TARGET_RATE, 3_000.0,
                                       4_000.0, 6_000.0)))
        if TARGET_RATE not in self.rates:
            self.rates = sorted({*self.rates, TARGET_RATE})
        self.seconds = seconds or (6.0 if quick else 15.0)
        self.floor_seconds = 4.0 if quick else 10.0
        self.burst = 6_000 if quick else 30_000
        self.drain_timeout = 20.0 if quick else 45.0
        self.slo_ms = slo_ms
        self.scaling = scaling and not quick
        self.query_seconds = min(self.seconds, 5.0 if quick else 10.0)

    def live_events(self) -> int:
        steps = sum(int(r * self.seconds) for r in self.rates)
        bursts = self.burst * (2 if self.scaling else 1)
        total = steps + bursts + (int(TARGET_RATE * self.seconds) if self.scaling else 0)
        # the floors send the first live events again, to their own topics
        return max(total, int(TARGET_RATE * self.floor_seconds), self.burst)


# --- percentiles and histograms -------------------------------------------------------------


def percentiles(ms: np.ndarray) -> dict[str, float | int | None]:
    if not len(ms):
        return {"count": 0, **{name: None for name, _ in QUANTILES}}
    ranked = np.sort(ms)
    out: dict[str, float | int | None] = {"count": int(len(ranked))}
    for name, q in QUANTILES:   # nearest rank
        out[name] = round(float(ranked[max(0, math.ceil(q * len(ranked)) - 1)]), 2)
    return out


def hdr_counts(ms: np.ndarray) -> dict[str, int]:
    """An HDR-style log histogram for the JSON (``engine.latency``'s buckets, the workers'):
    bucket lower bound (ms) -> count."""
    hist = LatencyHistogram()
    hist.record_many(ms.tolist())
    return {f"{2 ** (b / SUB_BUCKETS) / 1000:.4g}": n for b, n in sorted(hist.counts.items())}


def scrape(url: str) -> dict[tuple[str, str, str], float]:
    """Histogram samples of a /metrics page: (metric, label, le) -> cumulative count; empty
    when the process has gone (a worker that left during a rebalance)."""
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            text = response.read().decode()
    except OSError:
        return {}
    out: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in ("engine_stage_seconds", "engine_delivery_seconds",
                               "engine_event_to_state_seconds"):
            continue
        for s in family.samples:
            label = s.labels.get("stage") or s.labels.get("topic", "")
            if s.name.endswith("_bucket"):
                key = (family.name, label, s.labels["le"])
            elif s.name.endswith("_count"):
                key = (family.name, label, "count")
            else:
                continue
            out[key] = out.get(key, 0.0) + s.value
    return out


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus's estimate: linear inside the bucket holding rank q (cumulative counts)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower
            inside = count - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, count
    return lower


def stage_figures(before: dict[tuple[str, str, str], float],
                  after: dict[tuple[str, str, str], float]) -> dict[str, dict[str, Any]]:
    """Per stage (label), the count and p50/p99 in ms between two scrapes."""
    grouped: dict[tuple[str, str], list[tuple[float, float]]] = {}
    counts: dict[tuple[str, str], float] = {}
    for (metric, label, le), value in after.items():
        delta = value - before.get((metric, label, le), 0.0)
        if le == "count":
            counts[(metric, label)] = delta
        else:
            grouped.setdefault((metric, label), []).append((float(le), delta))
    out: dict[str, dict[str, Any]] = {}
    for key, buckets in grouped.items():
        buckets.sort()
        if not counts.get(key):
            continue
        p50, p99 = histogram_quantile(buckets, 0.5), histogram_quantile(buckets, 0.99)
        name = {"engine_stage_seconds": key[1]}.get(
            key[0], f"{key[0].removeprefix('engine_').removesuffix('_seconds')} {key[1]}")
        out[name] = {"count": int(counts[key]),
                                     "p50_ms": None if p50 is None else round(p50 * 1000, 2),
                                     "p99_ms": None if p99 is None else round(p99 * 1000, 2)}
    return out


# --- the run --------------------------------------------------------------------------------


class Bench:
    def __init__(self, stack: Stack, plan: Plan, mix: Mix, warm: int, users: list[str],
                 items: list[str], passthrough: ManagedProcess | None) -> None:
        self.stack, self.plan, self.mix, self.warm = stack, plan, mix, warm
        self.settings, self.catalogue = stack.settings, load_catalogue()
        self.users, self.items = users, items
        self.passthrough = passthrough
        self.store = StateStore.open(self.settings.redis)
        self.obs = Observer(self.settings, self.catalogue, self.store)
        self.gen = Generator(self.settings)
        self.next = warm      # the next live event to send
        self.extra: list[ManagedProcess] = []   # worker processes the bench started itself
        self.result: dict[str, Any] = {}

    async def run(self) -> dict[str, Any]:
        """The phases, stopped early by Ctrl-C, SIGTERM or a child of the stack that died."""
        try:
            await self.obs.start()
            await asyncio.to_thread(self.gen.load, self.mix.wire(0, len(self.mix)))
            phases = asyncio.create_task(self._phases())
            while not phases.done():
                reason = self.stack.supervisor.wait(timeout=0.001)
                if reason is not None:
                    self.result["stopped_by"] = reason.message
                    phases.cancel()
                    await asyncio.wait({phases}, timeout=10.0)
                    break
                await asyncio.wait({phases}, timeout=0.5)
            if "stopped_by" not in self.result:
                phases.result()   # re-raise what went wrong
        finally:
            self.result["observer_error"] = self.obs.error
            await self.obs.stop()
            self.gen.close()
            await self.store.close()
        return self.result

    async def _phases(self) -> None:
        await self._floors()
        await self._warm_up()
        await self._ladder()
        self.result["throughput"] = {"workers_1": await self._burst()}
        if self.plan.scaling:
            await self._scaling()

    # -- floors ------------------------------------------------------------------------------

    async def _floors(self) -> None:
        plan = self.plan
        n = int(TARGET_RATE * plan.floor_seconds)
        say(f"floors: raw broker produce -> consume at {TARGET_RATE:,.0f}/s for "
            f"{plan.floor_seconds:.0f} s")
        since = time.time()
        sent = await self.gen.run(self.warm, self.warm + n, TARGET_RATE, FLOOR_TOPIC)
        await asyncio.sleep(1.0)
        ms, lost = floor_latencies(self.obs, sent, since)
        broker = {"rate_eps": TARGET_RATE, **percentiles(ms), "lost": lost,
                  "generator_late_ms": percentiles(sent.late * 1000)}
        say(f"  broker p50 {broker['p50']} ms, p99 {broker['p99']} ms")
        client = self.store.client
        pings = []
        for _ in range(2000):
            started = time.perf_counter()
            await client.ping()
            pings.append((time.perf_counter() - started) * 1000)
        redis_rtt = percentiles(np.array(pings))
        say(f"  redis PING p50 {redis_rtt['p50']} ms, p99 {redis_rtt['p99']} ms")
        self.result["floors"] = {"broker": broker, "redis_ping_ms": redis_rtt,
                                 "broker_histogram": hdr_counts(ms)}
        if self.passthrough is not None:
            self.result["floors"]["passthrough"] = await self._passthrough()
            self.passthrough.stop()   # its idle fetch loop would take CPU from the engine

    async def _passthrough(self) -> dict[str, Any]:
        plan = self.plan
        say("floors: pass-through Faust agent (waiting for it to join its group)")
        deadline = time.time() + 120
        while True:   # a probe record comes back once the agent has its partitions
            since = time.time()
            await self.gen.run(self.warm, self.warm + 1, None, PASS_TOPIC, lead_s=0)
            await asyncio.sleep(2.0)
            if passthrough_done(self.obs, since)[0] or time.time() > deadline:
                break
        n = int(TARGET_RATE * plan.floor_seconds)
        since = time.time()
        sent = await self.gen.run(self.warm, self.warm + n, TARGET_RATE, PASS_TOPIC)
        await asyncio.sleep(1.0)
        ms = passthrough_latencies(self.obs, since)
        latency = {"rate_eps": TARGET_RATE, **percentiles(ms)}
        say(f"  pass-through p50 {latency['p50']} ms, p99 {latency['p99']} ms "
            f"(includes one more broker hop)")
        since = time.time()
        sent = await self.gen.run(self.warm, self.warm + plan.burst, None, PASS_TOPIC, 0)
        produced_s = sent.wall_s
        while True:
            count, last = passthrough_done(self.obs, since)
            if count >= plan.burst or time.time() - since > plan.drain_timeout:
                break
            await asyncio.sleep(0.2)
        first_due = float(sent.due.min())
        eps = count / (last - first_due) if last and count else None
        say(f"  pass-through throughput {eps or 0:,.0f} events/s ({count:,} events; the "
            f"producer took {produced_s:.1f} s)")
        return {"latency": latency, "throughput_eps": None if eps is None else round(eps),
                "burst": plan.burst, "reported": count, "producer_s": round(produced_s, 2)}

    # -- engine ------------------------------------------------------------------------------

    async def _warm_up(self) -> None:
        say(f"warm-up: {self.warm:,} catalogue entries and opening stock of the items the run "
            "touches")
        started = time.time()
        sent = await self.gen.run(0, self.warm, None)
        await self._drained(0, sent, started, SETTLE_TIMEOUT_S)
        say(f"  applied in {time.time() - started:.1f} s")

    async def _ladder(self) -> None:
        """Step up until a step is not sustained; then measure the target rate (if not done
        yet) and stop: past the ceiling every step only builds a backlog to wait for."""
        plan, steps = self.plan, []
        for rate in plan.rates:
            if steps and not steps[-1]["sustained"] and rate != TARGET_RATE:
                if rate < TARGET_RATE:
                    continue    # straight to the target rate
                break           # the target is measured and the ceiling passed
            step = await self._step(rate, plan.seconds, queries=rate == TARGET_RATE)
            steps.append(step)
            if not step["sustained"] and rate >= TARGET_RATE:
                break
        if steps and not steps[-1]["sustained"]:
            say("  past the ceiling: the ladder stops here")
        self.result["steps"] = steps

    async def _step(self, rate: float, seconds: float, *, queries: bool = False,
                    label: str = "") -> dict[str, Any]:
        n = int(rate * seconds)
        start = self.next
        self.next += n
        say(f"step{label}: {n:,} events at {rate:,.0f}/s"
            + (f", with {QUERY_RATE:,.0f} queries/s" if queries else ""))
        urls = await self._metrics_urls()
        before = {u: await asyncio.to_thread(scrape, u) for u in urls}
        pids = self._pids()
        cpu_before, cpu_at = procstat.snapshot(pids), time.time()
        self.obs.forget(time.time() - 1)
        since = time.time()
        query_task = asyncio.create_task(self._queries(start_delay=1.0)) if queries else None
        try:
            return await self._measure(rate, start, n, since, urls, before, pids, cpu_before,
                                       cpu_at, query_task)
        finally:
            if query_task is not None and not query_task.done():
                query_task.cancel()

    async def _measure(self, rate: float, start: int, n: int, since: float,
                       urls: dict[str, str], before: dict[str, Any], pids: dict[str, int],
                       cpu_before: dict[str, float | None], cpu_at: float,
                       query_task: asyncio.Task[dict[str, Any]] | None) -> dict[str, Any]:
        sent = await self.gen.run(start, start + n, rate)
        cpu = procstat.cores_used(cpu_before, procstat.snapshot(pids), time.time() - cpu_at)
        drain_s = await self._drained(start, sent, since, self.plan.drain_timeout)
        lat = match(self.obs, self.mix, start, sent, since)
        if drain_s >= self.plan.drain_timeout:   # let the backlog go before the next phase
            say("  waiting for the backlog to clear (not measured)")
            await self._drained(start, sent, since, SETTLE_TIMEOUT_S)
        after = {u: await asyncio.to_thread(scrape, u) for u in urls}
        stages: dict[str, Any] = {}
        for url, role in urls.items():
            if not before[url] or not after[url]:
                continue   # not reachable at one of the scrapes
            for name, fig in stage_figures(before[url], after[url]).items():
                stages[f"{role}: {name}"] = fig
        step = self._describe(rate, sent, lat, drain_s, stages, cpu)
        if query_task is not None:
            step["queries"] = await query_task
            self.result["queries"] = step["queries"]
        d = step["decisions"]
        say("  p99 ms: " + ", ".join(f"{k} {d[k]['p99']}" for k in DECISIONS)
            + f"; caught up {drain_s:.2f} s after the last send"
            + ("" if step["sustained"] else " (NOT sustained)"))
        return step

    def _describe(self, rate: float, sent: Sent, lat: Latencies, drain_s: float,
                  stages: dict[str, Any], cpu: dict[str, float]) -> dict[str, Any]:
        return {
            "rate_eps": rate, "sent": len(sent.offset), "failed_sends": sent.failed,
            "send_wall_s": round(sent.wall_s, 2),
            "generator_late_ms": percentiles(sent.late * 1000),
            "dead_lettered": lat.dead_lettered,
            "decisions": {k: {**percentiles(lat.ms[k]), "missing": lat.missing[k]}
                          for k in DECISIONS},
            "histograms": {k: hdr_counts(lat.ms[k]) for k in DECISIONS},
            "drain_s": round(drain_s, 2),
            # kept up: caught up within a second of the schedule's end, and nothing missing
            "sustained": bool(drain_s <= max(1.0, 0.1 * self.plan.seconds)
                              and not any(lat.missing.values())),
            "stages": stages, "cpu_cores": cpu,
        }

    async def _drained(self, start: int, sent: Sent, since: float, timeout: float) -> float:
        """Wait until state covers every event sent and the item stages caught up with
        price-signals; return the seconds from the last due time until then."""
        last_due = float(sent.due.max()) if len(sent.due) else time.time()
        targets: dict[tuple[str, int], int] = {}
        for i, (p, o) in enumerate(zip(sent.partition, sent.offset, strict=True)):
            key = (self.mix.topic[start + i], int(p))
            targets[key] = max(targets.get(key, -1), int(o))
        deadline = last_due + timeout
        consumer = self.obs._consumer
        assert consumer is not None
        signal_tps = [TopicPartition(PRICE_SIGNALS, p)
                      for p in range(self.catalogue.topics[PRICE_SIGNALS].partitions)]
        inputs_done = False
        while time.time() < deadline:
            if not inputs_done:
                marks = {k: await self.store.watermark(*k) for k in targets}
                inputs_done = all(marks[k] >= v for k, v in targets.items())
            if inputs_done:
                # read each time: a batch's signals are acknowledged after its state is written
                ends = await consumer.end_offsets(signal_tps)
                marks2 = [await self.store.watermark(PRICE_SIGNALS, tp.partition)
                          for tp in signal_tps]
                if all(m >= ends[tp] - 1 for m, tp in zip(marks2, signal_tps, strict=True)):
                    await asyncio.sleep(0.5)   # the last price messages on their way
                    return max(0.0, time.time() - 0.5 - last_due)
            await asyncio.sleep(0.05)
        return max(0.0, time.time() - last_due)

    async def _burst(self, label: str = "") -> dict[str, Any]:
        n = self.plan.burst
        start = self.next
        self.next += n
        say(f"throughput{label}: {n:,} events as fast as the producer sends them")
        pids = self._pids()
        cpu_before, cpu_at = procstat.snapshot(pids), time.time()
        since = time.time()
        self.obs.forget(since - 1)
        sent = await self.gen.run(start, start + n, None, lead_s=0.1)
        drain_s = await self._drained(start, sent, since, SETTLE_TIMEOUT_S)
        done_at = float(sent.due.max()) + drain_s
        cpu = procstat.cores_used(cpu_before, procstat.snapshot(pids), time.time() - cpu_at)
        eps = n / (done_at - float(sent.due.min()))
        say(f"  {eps:,.0f} events/s with every decision (producer {n / sent.wall_s:,.0f}/s)")
        return {"events": n, "throughput_eps": round(eps), "producer_eps": round(n / sent.wall_s),
                "cpu_cores": cpu}

    async def _scaling(self) -> None:
        say("scaling: a second worker process joins (rebalance)")
        env = {**os.environ, "ENGINE_KAFKA_URL": self.settings.kafka.url,
               "ENGINE_REDIS_URL": self.settings.redis.url,
               "ENGINE_KAFKA_CREATE_TOPICS": "false"}
        second = ManagedProcess("worker-2", [sys.executable, "-m", "engine", "worker"],
                                self.stack.run_dir / "worker-2.log", env=env)
        second.start()
        self.extra.append(second)
        try:
            deadline = time.time() + 120
            while time.time() < deadline:
                workers = [w for w in await self._workers()
                           if w["role"] != "pricing" and w["assigned"]]
                if len(workers) >= 2 and not await self._rebalancing():
                    break
                await asyncio.sleep(1.0)
            else:
                self.result["scaling_error"] = "the second worker did not get partitions"
                return
            say(f"  two workers share the partitions ({time.time() - deadline + 120:.0f} s)")
            self.result["throughput"]["workers_2"] = await self._burst(" (2 workers)")
            self.result["steps_2_workers"] = [await self._step(TARGET_RATE, self.plan.seconds,
                                                               label=" (2 workers)")]
        finally:
            second.stop()
            self.extra.remove(second)

    async def _workers(self) -> list[dict[str, Any]]:
        return await live_workers(self.store, self.settings.api.worker_stale_after_s)

    async def _rebalancing(self) -> bool:
        covered = [tp for w in await self._workers() if w["role"] != "pricing"
                   for tp in w["assigned"]]
        return len(covered) != len(set(covered)) or \
            set(covered) != {f"{t.name}:{p}" for t in self.catalogue.consumed
                             if t.name != PRICE_SIGNALS for p in range(t.partitions)}

    async def _metrics_urls(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for w in await self._workers():
            if w.get("metrics_url"):
                role = "item_stages" if w["role"] == "pricing" else "inputs"
                if role in out.values():
                    role += f"@{w['pid']}"
                out[w["metrics_url"]] = role
        return out

    def _pids(self) -> dict[str, int]:
        pids: dict[str, int] = {"bench": os.getpid()}
        if self.gen.process.pid:
            pids["generator"] = self.gen.process.pid
        for proc in [*self.stack.supervisor.processes, *self.extra]:
            if proc.pid is None:
                continue
            pids[proc.name] = proc.pid
            for n, child in enumerate(procstat.children(proc.pid)):
                pids[f"{proc.name}.child{n}"] = child
        return pids

    async def _queries(self, start_delay: float) -> dict[str, Any]:
        """The query load, from a child process so it does not share this one's GIL."""
        await asyncio.sleep(start_delay)
        requests = query_mix(self.users, self.items, int(QUERY_RATE * self.plan.query_seconds))
        ctx = mp.get_context("spawn")
        with ctx.Pool(1) as pool:
            samples = await asyncio.to_thread(pool.apply, query_child,
                                              (self.stack.api_url, requests, QUERY_RATE))
        return describe_queries(samples, self.plan.query_seconds)


# --- query load -----------------------------------------------------------------------------


def query_mix(users: list[str], items: list[str], count: int) -> list[tuple[str, str]]:
    """Half personal lists, a quarter similar items, a quarter item prices (fixed seed)."""
    rng = random.Random(20_261_123)
    out = []
    for _ in range(count):
        r = rng.random()
        if r < 0.5:
            out.append(("recommendations", f"/v1/users/{quote(rng.choice(users))}"
                                           "/recommendations?k=10"))
        elif r < 0.75:
            out.append(("similar", f"/v1/items/{quote(rng.choice(items))}/similar?k=10"))
        else:
            out.append(("price", f"/v1/items/{quote(rng.choice(items))}/price"))
    return out


def query_child(url: str, requests: list[tuple[str, str]], rate: float
                ) -> list[tuple[str, float, int]]:
    sys.path.insert(0, str(HERE))
    from reco_queries import HttpPool

    async def one(pool: Any, kind: str, path: str, due: float) -> tuple[str, float, int]:
        status = 0
        try:
            async with asyncio.timeout(5.0):
                status, _ = await pool.get(path)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            status = 0
        return kind, (time.perf_counter() - due) * 1000, status

    async def main() -> list[tuple[str, float, int]]:
        pool = HttpPool(url, 32)
        start = time.perf_counter() + 0.05
        tasks = []
        for i, (kind, path) in enumerate(requests):
            due = start + i / rate
            delay = due - time.perf_counter() - 0.001
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(pool, kind, path, due)))
        out = await asyncio.gather(*tasks)
        await pool.close()
        return out

    return asyncio.run(main())


def describe_queries(samples: list[tuple[str, float, int]], seconds: float) -> dict[str, Any]:
    """Latency of the answered requests (200, or 404 for an item without a price yet); the
    others (503 when the API sheds load, 0 for no answer in 5 s) count in ``ok_share``."""
    ok = np.array([ms for _, ms, status in samples if status in (200, 404)])
    statuses: dict[str, int] = {}
    for _, _, status in samples:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {"rate_rps": QUERY_RATE, "seconds": seconds, "sent": len(samples),
            "statuses": statuses, "ok_share": round(len(ok) / len(samples), 4) if samples else 0,
            "latency_ms": percentiles(ok),
            "by_kind": {kind: percentiles(np.array([ms for k, ms, s in samples
                                                    if k == kind and s in (200, 404)]))
                        for kind in ("recommendations", "similar", "price")}}


# --- assembling -----------------------------------------------------------------------------


def build(settings: Settings, catalogue: Catalogue, count: int
          ) -> tuple[Mix, int, list[str], list[str]]:
    """The run's events: warm-up first, then ``count`` live ones; users and items to query."""
    validator = Validator(catalogue, settings.validation)
    records: list[Record] = build_records(settings, SOURCES, inventory=True)
    live = interleaved(records, count)
    touched = {str(e["item_id"]) for _, _, e in live if "item_id" in e}
    for _, _, e in live:
        for line in e.get("lines", ()):
            touched.add(str(line.get("item_id")))
    mix = Mix()
    for r in records:
        if r.topic in ("catalog", "inventory") and str(r.event.get("item_id")) in touched:
            mix.add(r.topic, r.key, r.event, True, catalogue)
    warm = len(mix)
    now_ms = int(time.time() * 1000)
    for topic, key, event in live:
        checked = validator.check(topic, orjson.dumps(event), now_ms)
        mix.add(topic, key, event, not isinstance(checked, Rejection), catalogue)
    users = sorted({str(e["user_id"]) for t, _, e in live if t == "clicks"})[:5000]
    priced = sorted({str(r.event["item_id"]) for r in records if r.topic == "catalog"
                     and str(r.event.get("item_id")) in touched})
    return mix, warm, users, priced


def headline(result: dict[str, Any]) -> dict[str, Any]:
    target = next((s for s in result.get("steps", []) if s["rate_eps"] == TARGET_RATE), None)
    floors = result.get("floors", {})
    queries = result.get("queries", {})
    return {
        "rate_eps": TARGET_RATE,
        "e2e_p99_ms": {k: target["decisions"][k]["p99"] if target else None for k in DECISIONS},
        "broker_floor_p99_ms": floors.get("broker", {}).get("p99"),
        "throughput_eps": result.get("throughput", {}).get("workers_1", {}).get(
            "throughput_eps"),
        "passthrough_eps": floors.get("passthrough", {}).get("throughput_eps"),
        "query_p99_ms": queries.get("latency_ms", {}).get("p99"),
    }


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    h = result["headline"]
    broker = h["broker_floor_p99_ms"]
    out: dict[str, Any] = {}
    for k, v in h["e2e_p99_ms"].items():
        if v is not None and broker:
            out[f"{k}_p99_minus_broker_p99_ms"] = round(v - broker, 1)
            out[f"{k}_p99_over_broker_p99"] = round(v / broker, 2)
    if h["throughput_eps"] and h["passthrough_eps"]:
        out["throughput_over_passthrough"] = round(h["throughput_eps"] / h["passthrough_eps"], 3)
    two = result.get("throughput", {}).get("workers_2", {}).get("throughput_eps")
    if two and h["throughput_eps"]:
        out["two_workers_over_one"] = round(two / h["throughput_eps"], 2)
    ping = result.get("floors", {}).get("redis_ping_ms", {}).get("p99")
    rec = h["e2e_p99_ms"].get("recommendations")
    if ping and rec:
        out["recommendations_p99_over_redis_ping_p99"] = round(rec / ping, 1)
    return out


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    h, r = result["headline"], result["ratios"]
    broker = h["broker_floor_p99_ms"]
    rows = []
    for k in DECISIONS:
        v = h["e2e_p99_ms"][k]
        rows.append({"target": f"{k}: p99 within {TARGET_MARGIN_MS:.0f} ms of the broker's p99 "
                     f"at {TARGET_RATE:,.0f} events/s",
                     "measured": None if v is None or broker is None else
                     f"{v} ms vs {broker} ms (+{v - broker:.1f} ms)",
                     "met": bool(v is not None and broker is not None
                                 and v - broker <= TARGET_MARGIN_MS)})
    share = r.get("throughput_over_passthrough")
    rows.append({"target": f"throughput with every decision >= {TARGET_THROUGHPUT_SHARE:.0%} of "
                 "the pass-through agent's, per worker",
                 "measured": None if share is None else
                 f"{h['throughput_eps']:,} vs {h['passthrough_eps']:,} events/s ({share:.0%})",
                 "met": bool(share is not None and share >= TARGET_THROUGHPUT_SHARE)})
    q, share = h["query_p99_ms"], result.get("queries", {}).get("ok_share")
    rows.append({"target": f"query p99 < {QUERY_TARGET_P99_MS:.0f} ms at {QUERY_RATE:.0f} "
                 "requests/s while loaded (and at least 99 % answered)",
                 "measured": None if q is None else f"{q} ms, {share:.1%} answered",
                 "met": bool(q is not None and q < QUERY_TARGET_P99_MS and share >= 0.99)})
    return rows


def ceiling(result: dict[str, Any], slo_ms: float) -> dict[str, Any]:
    out: dict[str, Any] = {"slo_ms": slo_ms}
    for k in DECISIONS:
        ok = [s["rate_eps"] for s in result.get("steps", []) if s["sustained"]
              and s["decisions"][k]["p99"] is not None and s["decisions"][k]["p99"] <= slo_ms]
        out[k] = max(ok) if ok else None
    return out


def screenshot(api_url: str, out: Path) -> str | None:
    """The status page in headless Chromium, if it is installed."""
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(b)), None)
    if browser is None:
        return None
    try:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", f"--screenshot={out}", "--window-size=1280,1100",
                        "--virtual-time-budget=6000", api_url + "/status"],
                       capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.name if out.is_file() else None


# --- entry point ----------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python benchmarks/suite.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_arguments(ap)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse(argv), load_settings(None, os.environ))


def run(args: argparse.Namespace, settings: Settings) -> int:
    plan = Plan(args.quick, args.rates, args.seconds, args.slo_ms, not args.no_scaling)
    out: Path = args.out or HERE / "results" / "bench"
    catalogue = load_catalogue()
    started = time.time()
    built: dict[str, Any] = {}

    def prepare() -> None:   # while the stack starts
        built["mix"] = build(settings, catalogue, plan.live_events())

    preparing = threading.Thread(target=prepare, daemon=True)
    preparing.start()
    passthrough: list[ManagedProcess] = []

    def extras(live: Settings) -> None:
        create_topics(live.kafka.url, [(FLOOR_TOPIC, 4, {}), (PASS_TOPIC, 4, {}),
                                       (PASS_DONE_TOPIC, 1, {})],
                      live.kafka.kafka_python_options())
        proc = ManagedProcess("passthrough", [sys.executable, str(HERE / "passthrough.py")],
                              Path(live.embedded.run_dir).resolve() / "passthrough.log",
                              env={"ENGINE_KAFKA_URL": live.kafka.url,
                                   "ENGINE_REDIS_URL": live.redis.url})
        proc.start()
        passthrough.append(proc)

    say(f"engine bench{' --quick' if plan.quick else ''}: starting the embedded stack")
    try:
        with embedded_stack(settings, os.environ, on_servers=extras) as stack:
            preparing.join()
            if "mix" not in built:
                raise RuntimeError("could not build the workload (see the error above)")
            mix, warm, users, items = built["mix"]
            bench = Bench(stack, plan, mix, warm, users, items,
                          passthrough[0] if passthrough else None)
            result = asyncio.run(bench.run())
            if result.get("stopped_by"):
                say(f"engine bench stopped: {result['stopped_by']}")
                return 130 if stack.supervisor.stop_requested.is_set() else 1
            out.mkdir(parents=True, exist_ok=True)
            result["screenshot"] = screenshot(stack.api_url, out / "status.png")
    finally:
        for proc in passthrough:
            proc.stop()
    result.update(machine=machine_info(), quick=plan.quick, elapsed_s=round(time.time() - started),
                  plan={"rates": plan.rates, "seconds": plan.seconds, "slo_ms": plan.slo_ms,
                        "burst": plan.burst, "floor_seconds": plan.floor_seconds,
                        "sources": SOURCES, "live_events": len(mix) - warm,
                        "warm_up_events": warm})
    result["headline"] = headline(result)
    result["ratios"] = ratios(result)
    result["targets"] = targets(result)
    result["ceiling"] = ceiling(result, plan.slo_ms)
    from bench_report import write_report
    write_report(result, out)
    say(f"written: {out}/bench.json, report.md and plots ({result['elapsed_s']} s)")
    if args.json:
        sys.stdout.write(orjson.dumps(result["headline"]).decode() + "\n")
    else:
        print((out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
