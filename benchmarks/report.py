"""Rendering the hot-path results: medians, table rows, text and markdown."""

from __future__ import annotations

import os
import platform
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from workload import APPLY_BATCHES, BATCH, SOURCES, Figures, Workload

from engine.contracts import Rejection

# --- report -----------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, Python and platform of the machine a benchmark ran on."""
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), model)
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "platform": platform.platform()}


def machine(server: dict[str, Any]) -> dict[str, Any]:
    return {**machine_info(), "redis_server": server, "redis_shares_cores": True}


def describe(work: Workload) -> dict[str, Any]:
    rejected = [c.reason for c in work.checked if isinstance(c, Rejection)]
    ops = sum(len(o) for o in work.ops)
    return {
        "sources": [*SOURCES, "derived catalogue"], "events": len(work.records),
        "by_topic": dict(Counter(t for t, _ in work.records).most_common()),
        "partitions": len({(t, r.partition) for t, r in work.records}),
        "dead_lettered": len(rejected), "by_reason": dict(Counter(rejected).most_common()),
        "ops": ops, "ops_per_event": round(ops / len(work.records), 3),
        "mean_bytes": round(sum(len(r.value or b"") for _, r in work.records)
                            / len(work.records), 1),
    }


def medians(rounds: list[Figures]) -> dict[str, dict[str, Any]]:
    """Median of each figure with its per-round values, so a noisy one shows itself."""
    return {k: {"median": statistics.median(r[k] for r in rounds),
                "runs": [round(r[k], 3) for r in rounds]} for k in rounds[0]}


def rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, median, note) for the console and the markdown table alike."""
    f = {k: v["median"] for k, v in result["figures"].items()}
    r = {k: v["median"] for k, v in result["ratios"].items()}
    n = result["sizes"]
    out = [
        ("a. orjson.loads only (baseline)", f"{f['decode_us']:.2f} µs/event", ""),
        ("a. decode + validate", f"{f['validate_us']:.2f} µs/event",
         f"{r['validate_vs_decode']:.1f}× bare decode"),
        ("b. ops_for (valid events)", f"{f['ops_us']:.2f} µs/event", ""),
        ("c. PING, raw socket", f"{f['ping_raw_us']:.0f} µs/call", "server + kernel"),
        ("c. PING, redis.asyncio", f"{f['ping_asyncio_us']:.0f} µs/call", "the engine's client"),
        ("c. HINCRBY pipelined, raw socket", f"{f['hincrby_raw_ops_s']:,.0f} ops/s",
         f"{n['hincrby_raw_ops']:,} ops in {n['hincrby_raw_round_trips']} round trips"),
        ("c. HINCRBY pipelined, redis.asyncio", f"{f['hincrby_asyncio_ops_s']:,.0f} ops/s",
         f"{n['hincrby_asyncio_ops']:,} ops in {n['hincrby_asyncio_round_trips']} round trips"),
    ]
    for size in APPLY_BATCHES:
        events_s = f[f"apply_{size}_events_s"]
        ope = n[f"apply_{size}_ops"] / n[f"apply_{size}_events"]
        note = (f"{events_s * ope:,.0f} ops/s; Redis {f[f'apply_{size}_redis_us']:.0f} of "
                f"{1e6 / events_s:.0f} µs/event; {n[f'apply_{size}_events']:,} events")
        if size == 1:
            note += f"; a call = {r['apply_1_call_vs_ping_asyncio']:.1f}× PING"
        out.append((f"d. StateStore.apply, batch={size}", f"{events_s:,.0f} events/s", note))
    out += [
        (f"e. BatchProcessor, batch={BATCH}", f"{f['processor_events_s']:,.0f} events/s",
         f"Redis {f['processor_redis_us']:.0f} of {1e6 / f['processor_events_s']:.0f} µs/event; "
         f"+{r['processor_extra_us']:.0f} µs/event over apply (a + b alone: "
         f"{f['validate_us'] + f['ops_us']:.0f})"),
        ("ratio: processor / apply batch=100", f"{r['processor_vs_apply_100']:.2f}", "events/s"),
        ("ratio: apply batch=100 / HINCRBY raw socket", f"{r['apply_100_vs_hincrby_raw']:.2f}",
         "ops/s"),
        ("ratio: apply batch=100 / HINCRBY redis.asyncio",
         f"{r['apply_100_vs_hincrby_asyncio']:.2f}", "ops/s"),
    ]
    return out


def header(result: dict[str, Any]) -> str:
    m, w = result["machine"], result["workload"]
    s = m["redis_server"]
    return (f"{w['events']:,} real events ({', '.join(w['sources'])}), {w['dead_lettered']:,} "
            f"dead-lettered, {w['ops_per_event']} ops/event, {w['partitions']} topic "
            f"partitions; median of {result['repeat']} rounds.\n"
            f"{m['cpus']} cores ({m['cpu_model']}), Python {m['python']}, {s['name']} "
            f"{s['version']} (appendonly {s['appendonly']}, fsync {s['appendfsync']}) on the "
            f"same cores; run took {result['elapsed_s']:.0f} s.")


def render_text(result: dict[str, Any]) -> str:
    table = rows(result)
    wide = [max(len(row[i]) for row in table) for i in range(2)]
    lines = [f"{a:<{wide[0]}}  {b:>{wide[1]}}  {c}".rstrip() for a, b, c in table]
    return header(result) + "\n\n" + "\n".join(lines)


def render_markdown(result: dict[str, Any]) -> str:
    lines = ["# Hot-path benchmark", "", header(result).replace("\n", "  \n"), "",
             "| figure | median | note |", "|---|---:|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows(result)]
    return "\n".join(lines) + "\n"


