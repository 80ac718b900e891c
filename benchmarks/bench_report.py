"""``engine bench``'s outputs: bench.json, report.md and the PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

DECISIONS = ("recommendations", "stocking", "price")
COLOURS = {"recommendations": "tab:blue", "stocking": "tab:green", "price": "tab:orange"}


def _ms(value: Any) -> str:
    return "–" if value is None else f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(r: dict[str, Any], plots: list[str]) -> str:
    h, m = r["headline"], r["machine"]
    out = [f"# engine bench{' --quick' if r['quick'] else ''}", "",
           f"Machine: {m['cpus']} cores ({m['cpu_model']}), Python {m['python']}; broker, Redis, "
           "workers, API and the load generator share these cores. Run took "
           f"{r['elapsed_s']} s. Events: real data ({', '.join(r['plan']['sources'])}), "
           f"{r['plan']['live_events']:,} live events after a warm-up of "
           f"{r['plan']['warm_up_events']:,} catalogue and stock records; repeated clickstream, "
           "cart and order events carry suffixed ids (derived).", "",
           "## Headline", ""]
    rows = [["rate (events/s)", _ms(h["rate_eps"])]]
    rows += [[f"event -> {k}, p99 (ms)", _ms(v)] for k, v in h["e2e_p99_ms"].items()]
    rows += [["broker floor, p99 (ms)", _ms(h["broker_floor_p99_ms"])],
             ["throughput with every decision (events/s)", _ms(h["throughput_eps"])],
             ["pass-through Faust agent (events/s)", _ms(h["passthrough_eps"])],
             ["query p99 at 500 requests/s, loaded (ms)", _ms(h["query_p99_ms"])]]
    out += [_table(["figure", "value"], rows), "", "## Ratios to the floors", ""]
    out += [_table(["ratio", "value"], [[k, _ms(v)] for k, v in r["ratios"].items()]), ""]
    out += ["## Targets", "",
            _table(["target", "measured", "met"],
                   [[t["target"], t["measured"] or "–", "yes" if t["met"] else "**no**"]
                    for t in r["targets"]]), ""]
    f = r.get("floors", {})
    rows = [["raw broker produce -> consume", *(_ms(f.get("broker", {}).get(q))
                                                for q in ("p50", "p90", "p99", "max"))],
            ["Redis PING (redis.asyncio)", *(_ms(f.get("redis_ping_ms", {}).get(q))
                                             for q in ("p50", "p90", "p99", "max"))]]
    if "passthrough" in f:
        lat = f["passthrough"]["latency"]
        rows.append(["pass-through Faust agent (+1 broker hop)",
                     *(_ms(lat.get(q)) for q in ("p50", "p90", "p99", "max"))])
    out += ["## Floors (ms)", "", _table(["floor", "p50", "p90", "p99", "max"], rows), ""]
    out += ["## Latency by rate (ms, from the scheduled send)", ""]
    rows = []
    for s in r.get("steps", []) + r.get("steps_2_workers", []):
        for k in DECISIONS:
            d = s["decisions"][k]
            rows.append([_ms(s["rate_eps"]), k, _ms(d["count"]), *(_ms(d[q]) for q in
                         ("p50", "p90", "p99", "p999", "max")), _ms(d["missing"]),
                         "yes" if s["sustained"] else "**no**"])
    out += [_table(["events/s", "decision", "events", "p50", "p90", "p99", "p99.9", "max",
                    "missing", "sustained"], rows), ""]
    c = r["ceiling"]
    out += [f"Throughput ceiling (highest sustained step with p99 <= {c['slo_ms']:.0f} ms): "
            + ", ".join(f"{k} {_ms(c[k])}" for k in DECISIONS) + " events/s.", ""]
    target = next((s for s in r.get("steps", []) if s["rate_eps"] == h["rate_eps"]), None)
    if target:
        out += [f"## Stages at {h['rate_eps']:,.0f} events/s (workers' histograms, ms)", "",
                "Per record: delivery (record timestamp -> the batch in the processor: broker "
                "and batching window) and event-to-state. Per batch: the rest.", "",
                _table(["process:metric:stage", "count", "p50", "p99"],
                       [[k, _ms(v["count"]), _ms(v["p50_ms"]), _ms(v["p99_ms"])]
                        for k, v in sorted(target["stages"].items())]), "",
                "CPU (cores busy during the step): " + ", ".join(
                    f"{k} {v}" for k, v in sorted(target["cpu_cores"].items(),
                                                  key=lambda kv: -kv[1])), ""]
    t = r.get("throughput", {})
    if t:
        rows = [[k.replace("_", " "), _ms(v["throughput_eps"]), _ms(v["producer_eps"])]
                for k, v in t.items()]
        out += ["## Throughput (burst)", "", _table(["run", "events/s", "producer events/s"],
                                                    rows), ""]
    q = r.get("queries")
    if q:
        rows = [[k, _ms(v["count"]), *(_ms(v[p]) for p in ("p50", "p99", "max"))]
                for k, v in {"all": q["latency_ms"], **q["by_kind"]}.items()]
        out += [f"## Queries at {q['rate_rps']:.0f} requests/s while loaded (ms)", "",
                _table(["kind", "requests", "p50", "p99", "max"], rows), "",
                f"Statuses: {q['statuses']}", ""]
    out += ["## Plots", ""] + [f"![{p}]({p})" for p in plots]
    if r.get("screenshot"):
        out += ["", f"![status page]({r['screenshot']})"]
    return "\n".join(out) + "\n"


def plot(r: dict[str, Any], out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        names.append(name)

    steps = r.get("steps", [])
    broker = r["headline"]["broker_floor_p99_ms"]
    if steps:
        fig, ax = plt.subplots(figsize=(8, 5))
        for k in DECISIONS:
            xs = [s["rate_eps"] for s in steps if s["decisions"][k]["p99"] is not None]
            ax.plot(xs, [s["decisions"][k]["p99"] for s in steps
                         if s["decisions"][k]["p99"] is not None], "o-", color=COLOURS[k],
                    label=f"{k} p99")
            ax.plot(xs, [s["decisions"][k]["p50"] for s in steps
                         if s["decisions"][k]["p99"] is not None], "o--", color=COLOURS[k],
                    alpha=0.5, label=f"{k} p50")
        if broker:
            ax.axhline(broker, color="grey", linestyle=":", label="broker floor p99")
        ax.axhline(r["ceiling"]["slo_ms"], color="red", linestyle=":", label="SLO")
        ax.set(xlabel="offered load (events/s)", ylabel="latency from scheduled send (ms)",
               yscale="log", title="Event -> decision latency against rate")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "latency_vs_rate.png")
        target = next((s for s in steps if s["rate_eps"] == r["headline"]["rate_eps"]), steps[-1])
        fig, ax = plt.subplots(figsize=(8, 5))
        series = {**{k: target["histograms"][k] for k in DECISIONS},
                  "broker floor": r.get("floors", {}).get("broker_histogram", {})}
        for k, hist in series.items():
            if not hist:
                continue
            xs = np.array([float(b) for b in hist])
            ys = np.array(list(hist.values()), dtype=float)
            order = np.argsort(xs)
            ax.step(xs[order], ys[order] / ys.sum(), where="post", label=k,
                    color=COLOURS.get(k, "grey"))
        ax.set(xscale="log", xlabel="latency (ms, log buckets: 16 per doubling)",
               ylabel="share of events", title=f"Latency histogram at "
               f"{target['rate_eps']:,.0f} events/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "latency_histogram.png")
        stages = {k: v for k, v in target["stages"].items() if v["p99_ms"] is not None}
        if stages:
            labels = sorted(stages)
            fig, ax = plt.subplots(figsize=(9, 0.35 * len(labels) + 1.5))
            y = np.arange(len(labels))
            ax.barh(y - 0.2, [stages[k]["p50_ms"] for k in labels], 0.4, label="p50")
            ax.barh(y + 0.2, [stages[k]["p99_ms"] for k in labels], 0.4, label="p99")
            ax.set_yticks(y, labels, fontsize=7)
            ax.set(xscale="log", xlabel="ms", title=f"Per-stage latency at "
                   f"{target['rate_eps']:,.0f} events/s (workers' histograms)")
            ax.legend(fontsize=8)
            ax.grid(True, axis="x", which="both", alpha=0.3)
            save(fig, "stages.png")
    bars = {"pass-through agent": r["headline"]["passthrough_eps"]}
    for k, v in r.get("throughput", {}).items():
        bars[f"engine, {k.replace('workers_', '')} worker(s)"] = v["throughput_eps"]
    bars = {k: v for k, v in bars.items() if v}
    if bars:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.bar(list(bars), list(bars.values()),
               color=["grey" if k.startswith("pass") else "tab:blue" for k in bars])
        ax.set(ylabel="events/s", title="Throughput (burst, every decision on)")
        save(fig, "throughput.png")
    return names


def write_report(r: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plots = plot(r, out)
    (out / "bench.json").write_bytes(orjson.dumps(r, option=orjson.OPT_INDENT_2))
    (out / "report.md").write_text(markdown(r, plots))
