"""The ``engine`` command: the one place that reads the environment and wires things together.

Exit codes: 0 success, 1 the work ran but failed (for example the demo saw events go missing),
2 the engine could not start (configuration, missing binary, port in use, unreachable server),
130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from engine.config import Settings, load_settings
from engine.contracts import Catalogue, load_catalogue
from engine.errors import EngineError

log = logging.getLogger("engine")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overlay = args.config or os.environ.get("ENGINE_CONFIG")
        settings = load_settings(Path(overlay) if overlay else None, os.environ)
        handler: Callable[[argparse.Namespace, Settings], int] = args.handler
        return handler(args, settings)
    except EngineError as exc:
        print(f"engine: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engine", description="Streaming decision engine for e-commerce "
        "(recommendations, anticipatory stocking, prices) on Kafka and Redis.")
    parser.add_argument("--config", help="TOML file merged over config/default.toml "
                        "(default: $ENGINE_CONFIG)")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="start the embedded stack, replay real data, print a "
                          "summary, stop")
    demo.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    demo.add_argument("--sources", default="rees46,online_retail,competitor_prices",
                      help="comma-separated data sets to replay (rees46, online_retail, "
                      "competitor_prices, hammer)")
    demo.add_argument("--limit", type=int, default=None, help="events per data set at most")
    demo.add_argument("--no-invalid", action="store_true",
                      help="do not add the contracts' invalid examples to the replay")
    demo.set_defaults(handler=_demo)

    bench = sub.add_parser("bench", help="latency, throughput and query benchmarks on the "
                           "embedded stack, with floors; report and plots (source checkout)")
    add_bench_arguments(bench)
    bench.set_defaults(handler=_bench)

    up = sub.add_parser("up", help="start broker, Redis, worker and API on this machine until "
                        "Ctrl-C")
    up.set_defaults(handler=_up)

    worker = sub.add_parser("worker", help="run a Faust worker against kafka.url / redis.url")
    worker.add_argument("--loglevel", default="warn", choices=["crit", "error", "warn", "info",
                                                               "debug"], help="Faust log level")
    worker.add_argument("--role", default="all", choices=["all", "inputs", "pricing"],
                        help="all: the input topics, with the item stages (pricing, stocking) in "
                        "a child process (worker.pricing_child) or inline; inputs: only the "
                        "input topics; pricing: only the item stages on price-signals, in the "
                        "group <group_id>.pricing")
    worker.set_defaults(handler=_worker)

    views = sub.add_parser("views", help="run the recommendation view projector against "
                           "redis.url (each worker starts one as its child by default)")
    views.set_defaults(handler=_views)

    api = sub.add_parser("api", help="run the HTTP API against kafka.url / redis.url")
    api.add_argument("--host", default=None)
    api.add_argument("--port", type=int, default=None)
    api.set_defaults(handler=_api)

    replay = sub.add_parser("replay", help="publish real data sets to the input topics in "
                            "event-time order")
    replay.add_argument("--sources", default="rees46,online_retail,competitor_prices")
    replay.add_argument("--limit", type=int, default=None, help="events per data set at most")
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, help="events per second (open loop)")
    pace.add_argument("--speedup", type=float, help="event-time speed-up factor")
    replay.add_argument("--no-catalog", action="store_true",
                        help="do not publish the derived catalogue first")
    replay.set_defaults(handler=_replay)

    evaluate = sub.add_parser("evaluate", help="offline evaluations on real data").add_subparsers(
        title="what", required=True, metavar="WHAT")
    reco = evaluate.add_parser("recommendations", help="prequential replay of a clickstream: the "
                               "engine against most-popular and session co-occurrence")
    reco.add_argument("--data", type=Path, default=None,
                      help="REES46-format CSV(.gz) (default: the shared REES46 slice)")
    reco.add_argument("--limit", type=int, default=None, help="first N events only")
    reco.add_argument("--json", action="store_true", help="print one JSON object")
    reco.set_defaults(handler=_evaluate_recommendations)

    pricing = evaluate.add_parser("pricing", help="pricing policies (static, match the lowest "
                                  "competitor, the engine) on a demand simulator fitted to the "
                                  "competitor-price data")
    pricing.add_argument("--days", type=int, default=120, help="simulated days (default 120)")
    pricing.add_argument("--seeds", default="1,2,3", help="comma-separated demand seeds")
    pricing.add_argument("--competitor-rule", default=None,
                         help="the engine's competitor rule: model, match, beat or ignore "
                         "(default: pricing.competitor_rule)")
    pricing.add_argument("--json", action="store_true", help="print one JSON object")
    pricing.set_defaults(handler=_evaluate_pricing)

    forecast = evaluate.add_parser("forecast", help="rolling-origin evaluation of the demand "
                                   "forecasts (item x country, daily) against seasonal-naive "
                                   "and moving-average baselines")
    forecast.add_argument("--data", type=Path, default=None,
                          help="Online Retail-format CSV(.gz) (default: the shared slice)")
    forecast.add_argument("--horizon", type=int, default=7, help="days ahead (default 7)")
    forecast.add_argument("--json", action="store_true", help="print one JSON object")
    forecast.set_defaults(handler=_evaluate_forecast)

    leading = evaluate.add_parser("leading", help="do views and cart adds improve the demand "
                                  "forecasts of the next minutes? rolling origin on the REES46 "
                                  "clickstream (item x region)")
    leading.add_argument("--data", type=Path, default=None,
                         help="REES46-format CSV(.gz) (default: the shared REES46 slice)")
    leading.add_argument("--horizon-minutes", type=int, default=30,
                         help="minutes ahead (default 30)")
    leading.add_argument("--json", action="store_true", help="print one JSON object")
    leading.set_defaults(handler=_evaluate_leading)

    returns = evaluate.add_parser("returns", help="returning customers (BG/NBD) on the CDNOW "
                                  "purchases: 39 weeks to learn, 39 to test, against the naive "
                                  "rate")
    returns.add_argument("--data", type=Path, default=None,
                         help="CDNOW master file (default: the shared copy)")
    returns.add_argument("--json", action="store_true", help="print one JSON object")
    returns.set_defaults(handler=_evaluate_returns)

    prices = sub.add_parser("prices", help="the engine's price changes").add_subparsers(
        title="what", required=True, metavar="WHAT")
    follow = prices.add_parser("follow", help="print price changes from the prices topic as "
                               "they happen, one readable line each")
    follow.add_argument("--item", default=None, help="only this item")
    follow.add_argument("--category", default=None,
                        help="only this category (and its children, e.g. electronics)")
    follow.add_argument("--from-beginning", action="store_true",
                        help="start with the oldest change the topic keeps, not the next one")
    follow.add_argument("--limit", type=int, default=None, help="stop after N changes")
    follow.add_argument("--json", action="store_true", help="print each change as JSON")
    follow.set_defaults(handler=_prices_follow)

    stocking = sub.add_parser("stocking", help="anticipatory stocking: open signals, the "
                              "returning-customer model").add_subparsers(
        title="what", required=True, metavar="WHAT")
    open_signals = stocking.add_parser("signals", help="print the open stocking signals, most "
                                       "confident first")
    open_signals.add_argument("--dc", default=None, help="only this distribution centre")
    open_signals.add_argument("--item", default=None, help="only this item")
    open_signals.add_argument("--limit", type=_positive_int, default=50,
                              help="at most N signals (1 or more)")
    open_signals.add_argument("--json", action="store_true", help="print each signal as JSON")
    open_signals.set_defaults(handler=_stocking_signals)
    refit = stocking.add_parser("fit-returns", help="fit the returning-customer model (BG/NBD) "
                                "on the engine's customers and total their expected purchases "
                                "by region; the API uses it from then on (run it daily)")
    refit.add_argument("--json", action="store_true", help="print one JSON object")
    refit.set_defaults(handler=_stocking_fit_returns)

    topics = sub.add_parser("topics", help="create the catalogue's topics (idempotent)")
    topics.set_defaults(handler=_topics)
    return parser


def _require_urls(settings: Settings) -> None:
    if not settings.kafka.url:
        raise EngineError("kafka.url is not set (ENGINE_KAFKA_URL); use `engine up` for the "
                          "embedded stack")
    if not settings.redis.url:
        raise EngineError("redis.url is not set (ENGINE_REDIS_URL); use `engine up` for the "
                          "embedded stack")


def _create_topics(settings: Settings, catalogue: Catalogue) -> None:
    from engine.embedded.topics import create_topics

    create_topics(settings.kafka.url, catalogue.creation_plan(),
                  settings.kafka.kafka_python_options(),
                  replication_factor=settings.kafka.replication_factor)


def _topics(args: argparse.Namespace, settings: Settings) -> int:
    _require_urls(settings)
    catalogue = load_catalogue()
    _create_topics(settings, catalogue)
    for name, partitions, _ in catalogue.creation_plan():
        print(f"{name}\t{partitions} partitions")
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    import faust
    from prometheus_client import start_http_server

    from engine.embedded.process import start_child
    from engine.worker.app import Worker, item_stages_enabled

    _require_urls(settings)
    catalogue = load_catalogue()
    if settings.kafka.create_topics:
        _create_topics(settings, catalogue)
    metrics_url = None
    if settings.worker.metrics_port >= 0:
        server, _ = start_http_server(settings.worker.metrics_port, addr=settings.api.host)
        metrics_url = f"http://{settings.api.host}:{server.server_port}/metrics"
        log.warning("worker metrics on %s", metrics_url)
    role = args.role
    pricing_child = (role == "all" and item_stages_enabled(settings)
                     and settings.worker.pricing_child)
    worker = Worker(settings, catalogue, metrics_url, "inputs" if pricing_child else role)
    if pricing_child:   # its own process, its own core: the pricing stage is CPU work
        worker.watch("pricing worker", start_child(
            [sys.executable, "-m", "engine", "--log-level", args.log_level, "worker",
             "--role", "pricing", "--loglevel", args.loglevel]))
    if settings.worker.views_child and role != "pricing":
        worker.watch("view projector", start_child(
            [sys.executable, "-m", "engine", "--log-level", args.log_level, "views"]))
    faust.Worker(worker.app, loglevel=args.loglevel, quiet=True,
                 redirect_stdouts=False).execute_from_commandline()
    return 0


def _views(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from engine.recommend.neighbours import NeighbourViews, project
    from engine.store import StateStore

    if not settings.redis.url:
        raise EngineError("redis.url is empty: set ENGINE_REDIS_URL")

    async def run() -> None:
        store = StateStore.open(settings.redis)
        try:
            await project(NeighbourViews(store, load_catalogue(), settings.recommend),
                          settings.recommend)
        finally:
            await store.close()

    asyncio.run(run())
    return 0


def _api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from engine.api.app import create_api

    _require_urls(settings)
    uvicorn.run(create_api(settings, load_catalogue()), host=args.host or settings.api.host,
                port=args.port if args.port is not None else settings.api.port,
                log_level="warning", access_log=False)
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from engine.replay.run import replay_datasets

    _require_urls(settings)
    stats = replay_datasets(settings, _split(args.sources), limit=args.limit, rate=args.rate,
                            speedup=args.speedup, catalog=not args.no_catalog)
    print(f"published {stats.total} events in {stats.elapsed_s:.1f} s "
          f"({stats.events_per_s:,.0f}/s); failed {stats.failed}", file=sys.stderr)
    return 0 if stats.failed == 0 else 1


def _data_file(given: Path | None, settings: Settings, *default: str) -> Path:
    """``--data`` if given, else the shared copy under ``replay.datasets_dir``; it must exist."""
    path = Path(given) if given else settings.replay.datasets_path.joinpath(*default)
    if not path.is_file():
        raise EngineError(f"--data {path}: no such file")
    return path


def _evaluate_forecast(args: argparse.Namespace, settings: Settings) -> int:
    from engine.stocking.evaluate import as_json, evaluate, render

    if not 1 <= args.horizon <= 28:
        raise EngineError(f"--horizon must be 1-28 days, got {args.horizon}")
    path = _data_file(args.data, settings, "online_retail",
                      "online_retail_2010-12_2011-01.csv.gz")
    try:
        result = evaluate(settings, path, horizon_days=args.horizon)
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    print(as_json(result) if args.json else render(result))
    return 0


def _evaluate_leading(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from engine.stocking.leading_eval import as_json, evaluate, render

    if not 1 <= args.horizon_minutes <= 120:
        raise EngineError(f"--horizon-minutes must be 1-120, got {args.horizon_minutes}")
    path = _data_file(args.data, settings, "rees46", "events_2019-10-01_first17k.csv.gz")
    try:
        result = evaluate(settings, path, horizon_minutes=args.horizon_minutes)
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    print(orjson.dumps(as_json(result)).decode() if args.json else render(result))
    return 0


def _evaluate_returns(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from engine.stocking.returns_eval import evaluate, render

    result = evaluate(_data_file(args.data, settings, "cdnow", "CDNOW_master.txt.gz"))
    print(orjson.dumps(result).decode() if args.json else render(result))
    return 0


def _prices_follow(args: argparse.Namespace, settings: Settings) -> int:
    from engine.pricing.follow import follow

    if not settings.kafka.url:
        raise EngineError("kafka.url is not set (ENGINE_KAFKA_URL); `engine up` prints it")
    return follow(settings, item=args.item, category=args.category,
                  from_beginning=args.from_beginning, as_json=args.json, limit=args.limit)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _with_stocking_reader(settings: Settings, read: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run ``read(StockingReader)`` against ``redis.url``, closing the connection after."""
    import asyncio

    from engine.stocking.query import StockingReader
    from engine.store import StateStore

    if not settings.redis.url:
        raise EngineError("redis.url is empty: set ENGINE_REDIS_URL (`engine up` prints it)")

    async def run() -> Any:
        store = StateStore.open(settings.redis)
        try:
            return await read(StockingReader(store, load_catalogue(), settings))
        finally:
            await store.close()

    return asyncio.run(run())


def _stocking_signals(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from engine.stocking.query import describe_signal

    for signal in _with_stocking_reader(settings, lambda reader: reader.open_signals(
            args.dc, args.item, args.limit)):
        print(orjson.dumps(signal).decode() if args.json else describe_signal(signal))
    return 0


def _stocking_fit_returns(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from engine.stocking.query import describe_fit

    result = _with_stocking_reader(settings, lambda reader: reader.fit_returns())
    print(orjson.dumps(result).decode() if args.json else describe_fit(result))
    return 0


def _up(args: argparse.Namespace, settings: Settings) -> int:
    from engine.stack import run_up

    return run_up(settings, os.environ)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """``engine bench``'s options (also those of ``python benchmarks/suite.py``)."""
    def rates(text: str) -> list[float]:
        try:
            values = [float(x) for x in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
        if not all(v > 0 for v in values):
            raise argparse.ArgumentTypeError("rates must be > 0")
        return values

    def positive(text: str) -> float:
        value = float(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parser.add_argument("--quick", action="store_true",
                        help="about a minute and a half: two rates, short steps, no second "
                        "worker")
    parser.add_argument("--json", action="store_true",
                        help="print the headline figures as one JSON object")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default: benchmarks/results/bench)")
    parser.add_argument("--rates", type=rates, default=None,
                        help="events/s of the ladder's steps, comma separated")
    parser.add_argument("--seconds", type=positive, default=None, help="length of each step")
    parser.add_argument("--slo-ms", type=positive, default=100.0,
                        help="p99 that defines the throughput ceiling (default 100 ms)")
    parser.add_argument("--no-scaling", action="store_true", help="skip the second worker")


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    root = Path(__file__).resolve().parents[2] / "benchmarks"
    if not (root / "suite.py").is_file():
        raise EngineError(f"engine bench runs benchmarks/ from a source checkout; no "
                          f"{root / 'suite.py'} here (clone the repository and pip install -e)")
    sys.path.insert(0, str(root))
    import suite

    return int(suite.run(args, settings))


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from engine.demo import run_demo

    return run_demo(settings, _split(args.sources), limit=args.limit, as_json=args.json,
                    with_invalid=not args.no_invalid, base_env=os.environ)


def _evaluate_recommendations(args: argparse.Namespace, settings: Settings) -> int:
    from engine.recommend.evaluate import run_evaluate_recommendations

    return run_evaluate_recommendations(settings, args.data, limit=args.limit, as_json=args.json)


def _evaluate_pricing(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses

    import orjson

    from engine.core.guardrails import COMPETITOR_RULES
    from engine.pricing.evaluate import evaluate, render
    from engine.pricing.stage import pricing_config

    if args.days < 2:
        raise EngineError(f"--days must be at least 2, got {args.days}")
    try:
        seeds = [int(s) for s in _split(args.seeds)]
    except ValueError:
        raise EngineError(f"--seeds must be comma-separated integers: {args.seeds!r}") from None
    rule = args.competitor_rule or settings.pricing.competitor_rule
    if rule not in COMPETITOR_RULES:
        raise EngineError(f"--competitor-rule must be one of {COMPETITOR_RULES}, got {rule!r}")
    config = pricing_config(settings.pricing)
    # the data's "list price" is its mean observed price, not an MSRP: no cap at it (see
    # engine.pricing.evaluate); the other guardrails and the model are the configured ones
    rules = dataclasses.replace(config.rules, cap_at_list_price=False, competitor_rule=rule)
    root = settings.replay.datasets_path / "competitor_prices"
    result = evaluate(root / "retail_price_competitors.csv",
                      root / "project_hammer_grocery_prices.csv.gz", args.days, seeds or [1],
                      rules, config.params)
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        print(render(result))
    return 0


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


if __name__ == "__main__":
    sys.exit(main())
