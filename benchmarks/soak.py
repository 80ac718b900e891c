"""Soak: the embedded stack under steady load for a long time; does memory stay flat?

    python benchmarks/soak.py                      # 30 minutes at 320 events/s (half the
                                                   # ceiling measured by `engine bench`)
    python benchmarks/soak.py --minutes 5 --rate 200 --out /tmp/soak
    python benchmarks/soak.py --minutes 6 --hiccup-at 2 --hiccup-s 60   # a stalled worker

Real events (the bench's mix: REES46, Online Retail, competitor prices in the demo's topic
shares, after the catalogue and opening stock of the items they touch) are sent open loop at a
fixed rate; the cycle repeats with suffixed event ids (DERIVED, as in `engine bench`), so users
and items come back and every per-user and per-item structure meets its pruning bound. A query
client asks the API for recommendations and prices meanwhile. Every 10 s it samples the RSS of
the worker (with its item-stage and view children) and of the API from /proc, Redis's
used_memory and key count, the events applied, and the lag: input records sent (by the
schedule) minus those the Redis watermarks show applied. ``--hiccup-at M --hiccup-s S`` stops
the worker and its children (SIGSTOP) at minute M for S seconds: the lag must come back to 0.

Verdict, written to ``benchmarks/results/soak/`` (``soak.json``, ``report.md``): RSS of the
last fifth of the run against the second fifth (the first is warm-up), per process, must be
within 10 %; Redis memory's growth over the second half is reported next to its key count, and
must level off (the bounds: state/KEYS.md's caps per user, item, neighbour list and the dedupe
window).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import redis
import requests
from kafka import KafkaConsumer, TopicPartition

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from benchmarks.openloop import Generator  # noqa: E402
from benchmarks.procstat import children  # noqa: E402
from benchmarks.report import machine_info  # noqa: E402
from benchmarks.suite import build  # noqa: E402
from engine.config import Settings, load_settings  # noqa: E402
from engine.contracts import load_catalogue  # noqa: E402
from engine.core.compose import PRICE_SIGNALS  # noqa: E402
from engine.stack import embedded_stack, say  # noqa: E402
from engine.store import StateStore  # noqa: E402

SAMPLE_S = 10.0
CHUNK_S = 60.0
#: Half of the 1-worker throughput `engine bench` measured on the 2-core machine (640/s).
DEFAULT_RATE = 320.0


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, MB."""
    total = 0
    for p in [pid, *children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class Schedule:
    """Input records sent by now, as the open-loop schedule has them (the generator keeps to
    it; how late it ran is reported apart)."""

    def __init__(self) -> None:
        self.base, self.t0, self.rate = 0, time.monotonic(), 0.0

    def at(self, base: int, rate: float) -> None:
        self.base, self.t0, self.rate = base, time.monotonic(), rate

    def sent(self, cap: int) -> int:
        return min(self.base + int((time.monotonic() - self.t0) * self.rate), cap)


def item_lag(consumer: KafkaConsumer, client: redis.Redis, store: StateStore,
             partitions: int) -> int:
    """price-signals records not yet applied by the item stages (the broker's listed ends,
    which Tansu gives a batch short at most)."""
    tps = [TopicPartition(PRICE_SIGNALS, p) for p in range(partitions)]
    ends = consumer.end_offsets(tps)
    marks = client.mget([store.shard(PRICE_SIGNALS, p) + "wm" for p in range(partitions)])
    return sum(max(ends[tp] - (int(m) + 1 if m is not None else 0), 0)
               for tp, m in zip(tps, marks, strict=True))


def sample(stack: Any, client: redis.Redis, started: float, wm_keys: list[str],
           sent: int, items_behind: int) -> dict[str, Any]:
    procs = {p.name: p.pid for p in stack.supervisor.processes if p.pid}
    info = client.info("memory")
    stats = client.hgetall(f"{stack.settings.redis.namespace}:workers")
    applied = sum(orjson.loads(v).get("applied", 0) for v in stats.values())
    inputs = sum(int(v) + 1 for v in client.mget(wm_keys) if v is not None)
    pipe = client.pipeline(transaction=False)
    for key in wm_keys:   # the dedupe window of each input shard (``ids``, next to ``wm``)
        pipe.zcard(key[:-2] + "ids")
    remembered = sum(pipe.execute())
    return {"t_s": round(time.monotonic() - started, 1),
            "worker_rss_mb": round(rss_mb(procs["worker"]), 1),
            "api_rss_mb": round(rss_mb(procs["api"]), 1),
            "redis_used_mb": round(info["used_memory"] / 2**20, 1),
            "redis_keys": client.dbsize(), "applied": applied,
            "lag": max(sent - inputs, 0), "item_lag": items_behind,
            "dedupe_ids": remembered}


def hiccup(pid: int, at_s: float, pause_s: float, stop: threading.Event,
           log: list[dict[str, float]], started: float) -> None:
    """Stop the worker and its children at ``at_s`` for ``pause_s`` seconds."""
    if stop.wait(at_s):
        return
    procs = [pid, *children(pid)]
    for p in procs:
        os.kill(p, signal.SIGSTOP)
    log.append({"stopped_at_s": round(time.monotonic() - started, 1)})
    stop.wait(pause_s)
    for p in procs:
        os.kill(p, signal.SIGCONT)
    log[-1]["resumed_at_s"] = round(time.monotonic() - started, 1)


def queries(api_url: str, users: list[str], items: list[str], rps: float,
            stop: threading.Event, counts: dict[str, Any]) -> None:
    session = requests.Session()
    i = 0
    while not stop.is_set():
        paths = [f"/v1/users/{users[i % len(users)]}/recommendations",
                 f"/v1/items/{items[i % len(items)]}/price"]
        try:
            response = session.get(api_url + paths[i % 2], timeout=5)
            status = str(response.status_code)
            counts[status] = counts.get(status, 0) + 1
            if status not in ("200", "404") and f"why {status}" not in counts:
                counts[f"why {status}"] = response.text[:200]   # the first one, as an example
        except requests.RequestException:
            counts["error"] = counts.get("error", 0) + 1
        i += 1
        stop.wait(1.0 / rps)


def mean(rows: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] for r in rows) / max(len(rows), 1)


def verdict(samples: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(samples)
    lags = [s["lag"] for s in samples]
    items = [s.get("item_lag", 0) for s in samples]
    out_lag = {"max": max(lags, default=0), "final": lags[-1] if lags else None,
               "back_to_zero": bool(lags) and lags[-1] == 0,
               "item_stages_max": max(items, default=0),
               "item_stages_final": items[-1] if items else None}
    fifth = max(n // 5, 1)
    early, late = samples[fifth:2 * fifth], samples[-fifth:]
    half = samples[n // 2:]
    out: dict[str, Any] = {"lag": out_lag}
    for key in ("worker_rss_mb", "api_rss_mb"):
        a, b = mean(early, key), mean(late, key)
        out[key] = {"early": round(a, 1), "late": round(b, 1),
                    "growth_pct": round(100 * (b - a) / a, 1) if a else None,
                    "flat_within_10pct": bool(a) and abs(b - a) / a <= 0.10}
    if half:
        first, last = half[0], half[-1]
        hours = (last["t_s"] - first["t_s"]) / 3600 or 1
        out["redis"] = {"used_mb_start": samples[0]["redis_used_mb"],
                        "used_mb_mid": first["redis_used_mb"], "used_mb_end": last["redis_used_mb"],
                        "growth_mb_per_hour_second_half": round(
                            (last["redis_used_mb"] - first["redis_used_mb"]) / hours, 1),
                        "keys_mid": first["redis_keys"], "keys_end": last["redis_keys"],
                        "dedupe_ids_mid": first.get("dedupe_ids"),
                        "dedupe_ids_end": last.get("dedupe_ids")}
    return out


async def soak(stack: Any, settings: Settings, minutes: float, rate: float, query_rps: float,
               hiccup_at: float | None = None, hiccup_s: float = 60.0) -> dict[str, Any]:
    catalogue = load_catalogue()
    total = int(minutes * 60 * rate)
    mix, warm, users, items = build(settings, catalogue, total)
    gen = Generator(stack.settings)
    client = redis.Redis.from_url(stack.settings.redis.url, decode_responses=True)
    store = StateStore(client, stack.settings.redis.namespace)   # type: ignore[arg-type]
    wm_keys = [store.shard(t.name, p) + "wm" for t in catalogue.inputs
               for p in range(t.partitions)]
    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    counts: dict[str, Any] = {}
    hiccups: list[dict[str, float]] = []
    schedule = Schedule()
    started = time.monotonic()

    consumer = KafkaConsumer(bootstrap_servers=stack.settings.kafka.url)
    signal_partitions = catalogue.topics[PRICE_SIGNALS].partitions

    async def sampler() -> None:
        while not stop.is_set():
            behind = item_lag(consumer, client, store, signal_partitions)
            samples.append(sample(stack, client, started, wm_keys, schedule.sent(len(mix)),
                                  behind))
            await asyncio.sleep(SAMPLE_S)

    sampling = asyncio.create_task(sampler())
    asker = threading.Thread(target=queries, daemon=True,
                             args=(stack.api_url, users, items, query_rps, stop, counts))
    try:
        gen.load(mix.wire(0, warm))
        await gen.run(0, warm, None)
        schedule.at(warm, 0.0)
        asker.start()
        if hiccup_at is not None:
            worker = next(p.pid for p in stack.supervisor.processes if p.name == "worker")
            threading.Thread(target=hiccup, daemon=True, args=(
                worker, hiccup_at * 60 - (time.monotonic() - started), hiccup_s, stop,
                hiccups, started)).start()
        step = int(CHUNK_S * rate)
        late = 0.0
        for start in range(warm, len(mix), step):
            stop_at = min(start + step, len(mix))
            gen.load(mix.wire(start, stop_at))
            schedule.at(start, rate)
            sent = await gen.run(0, stop_at - start, rate)
            late = max(late, float(sent.late.max()) if len(sent.late) else 0.0)
            if samples:
                say(f"  soak   {samples[-1]['t_s'] / 60:5.1f} min  {samples[-1]}")
        schedule.at(len(mix), 0.0)
        # the last records: wait (up to ten minutes) for the lag to come back to 0
        deadline = time.monotonic() + 600
        while samples and (samples[-1]["lag"] > 0 or samples[-1]["item_lag"] > 0) \
                and time.monotonic() < deadline:
            await asyncio.sleep(SAMPLE_S)
    finally:
        stop.set()
        await sampling
        gen.close()
        client.close()
        consumer.close()
    return {"minutes": minutes, "rate_eps": rate, "events": len(mix) - warm, "warm_up": warm,
            "generator_max_late_s": round(late, 2), "queries": counts, "hiccups": hiccups,
            "samples": samples, "verdict": verdict(samples)}


def report(result: dict[str, Any]) -> str:
    v = result["verdict"]
    lines = ["# Soak", "", f"{result['minutes']} minutes at {result['rate_eps']:g} events/s "
             f"({result['events']:,} events; queries {result['queries']}).", "",
             "| process | RSS early (MB) | RSS late (MB) | growth | flat within 10 % |",
             "|---|---:|---:|---:|---|"]
    for key, name in (("worker_rss_mb", "worker (+ children)"), ("api_rss_mb", "API")):
        r = v[key]
        lines.append(f"| {name} | {r['early']} | {r['late']} | {r['growth_pct']} % | "
                     f"{'yes' if r['flat_within_10pct'] else 'NO'} |")
    lag = v["lag"]
    lines += ["", f"Lag (input records sent by the schedule, not yet applied): at most "
              f"{lag['max']:,}, at the end {lag['final']}"
              f"{' (back to 0)' if lag['back_to_zero'] else ' (NOT back to 0)'}; item stages "
              f"(price-signals records) at most {lag['item_stages_max']:,}, at the end "
              f"{lag['item_stages_final']}; generator at most "
              f"{result['generator_max_late_s']} s behind its schedule."]
    for h in result.get("hiccups", []):
        lines.append(f"Worker stopped (SIGSTOP) at {h.get('stopped_at_s')} s, resumed at "
                     f"{h.get('resumed_at_s')} s.")
    r = v.get("redis", {})
    lines += ["", f"Redis used memory: {r.get('used_mb_start')} MB at the start, "
              f"{r.get('used_mb_mid')} MB at half time, {r.get('used_mb_end')} MB at the end "
              f"({r.get('growth_mb_per_hour_second_half')} MB/hour over the second half); keys "
              f"{r.get('keys_mid')} -> {r.get('keys_end')}; event ids remembered for "
              f"deduplication {r.get('dedupe_ids_mid')} -> {r.get('dedupe_ids_end')} (capped at "
              f"validation.dedupe_window per input shard).", "",
              f"Machine: {result['machine']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=DEFAULT_RATE, help="events/s")
    ap.add_argument("--query-rps", type=float, default=20.0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "soak")
    ap.add_argument("--hiccup-at", type=float, default=None, metavar="MINUTE",
                    help="stop the worker (SIGSTOP) at this minute")
    ap.add_argument("--hiccup-s", type=float, default=60.0, help="for this many seconds")
    args = ap.parse_args(argv)
    settings = load_settings(None, os.environ)
    say(f"soak: {args.minutes:g} minutes at {args.rate:g} events/s")
    with embedded_stack(settings, os.environ) as stack:
        result = asyncio.run(soak(stack, settings, args.minutes, args.rate, args.query_rps,
                                  args.hiccup_at, args.hiccup_s))
    result["machine"] = machine_info()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    (args.out / "report.md").write_text(report(result))
    print(report(result))
    v = result["verdict"]
    return 0 if v["worker_rss_mb"]["flat_within_10pct"] and v["api_rss_mb"][
        "flat_within_10pct"] and v["lag"]["back_to_zero"] else 1


if __name__ == "__main__":
    sys.exit(main())
