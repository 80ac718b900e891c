"""``engine evaluate recommendations``: prequential replay of a clickstream, engine vs baselines.

Protocol (the numbers in the README are produced exactly this way):

1. **Events** come from the data file through ``engine.replay.sources.rees46`` (REES46 CSV
   format; by default the shared slice ``rees46/events_2019-10-01_first17k.csv.gz`` under
   ``replay.datasets_dir``), in event-time order (a stable sort: equal times keep file order).
   ``limit`` keeps the first N events of that order.
2. Each event is validated by the contracts' ``Validator``, exactly as the worker does. Events
   the worker would dead-letter (REES46 views at price 0, for example) never reach a model in
   production, so here they are neither predicted nor learnt; they are counted by reason.
3. **Interactions** are clicks with an item, cart adds and purchase order lines
   (``baselines.interactions``). For every event, in order: each model first ranks
   ``LIST_LENGTH`` (20) items for the event's user, knowing nothing of this event or any later
   one; each of the event's interactions is scored against that ranking; *then* every model
   learns the event. This is prequential ("test, then train") evaluation: every prediction is
   out of sample and the models see the stream once, as the live engine does.
4. **Every** interaction is scored, cold users included (they get whatever each model gives a
   user it has never seen). The ``returning`` block repeats the metrics on the interactions of
   users with at least one earlier interaction, where personalisation can show, and the
   ``new_to_user`` block on those of them with an item the user had not interacted with before
   (discovery: re-visits, 41 % of returning interactions on REES46, are excluded there).
5. All models see the same events in the same order within one run; nothing is random, so a
   rerun gives the same numbers. Metrics are defined in ``recommend.metrics``. The engine's
   model is ``recommend.online.OnlineRecommender`` on a private, empty Redis; the baselines are
   ``recommend.baselines.Popular`` and ``SessionCooccurrence``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson
from tqdm import tqdm

from engine.config import Settings
from engine.contracts import Rejection, Validator, load_catalogue
from engine.errors import EngineError
from engine.recommend.baselines import Baseline, Popular, SessionCooccurrence, interactions
from engine.recommend.metrics import LIST_LENGTH, METRIC_KEYS, RankingScores
from engine.replay.reading import Record, require_file
from engine.replay.sources import SOURCES, rees46

ENGINE = "engine"
BASELINES = ("popular", "cooccurrence")
MODELS = (ENGINE, *BASELINES)


class Recommender(Protocol):
    """What the driver needs of a model: the online recommender's shape."""

    async def learn(self, record: Record) -> None: ...

    async def recommend(self, user_id: str, k: int) -> list[str]: ...

    async def close(self) -> None: ...


class _Synchronous:
    """A pure baseline seen through the async ``Recommender`` shape."""

    def __init__(self, model: Baseline) -> None:
        self.model = model

    async def learn(self, record: Record) -> None:
        self.model.learn(record)

    async def recommend(self, user_id: str, k: int) -> list[str]:
        return self.model.recommend(user_id, k)

    async def close(self) -> None:
        return None


def default_data_path(settings: Settings) -> Path:
    """The shared REES46 slice under ``replay.datasets_dir``."""
    return settings.replay.datasets_path / SOURCES["rees46"].path


async def evaluate(settings: Settings, data_path: Path | None, *, limit: int | None = None,
                   progress: bool = True, models: Sequence[str] = MODELS) -> dict[str, Any]:
    """Run the protocol above over ``data_path`` and return the result as a JSON-ready dict.

    ``settings.redis.url`` must point at an empty Redis when ``models`` includes the engine
    (``run_evaluate_recommendations`` starts one); ``models`` picks a subset of ``MODELS``.
    """
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise EngineError(f"unknown model(s) {unknown or '(none)'}; choose from {MODELS}")
    path = require_file(data_path or default_data_path(settings))
    records = list(rees46(path, settings.replay.rees46_regions, limit))
    validator = Validator(load_catalogue(), settings.validation)
    opened = await _open_models(settings, models)
    scores = {name: RankingScores() for name in opened}
    returning = {name: RankingScores() for name in opened}
    discovery = {name: RankingScores() for name in opened}
    seen: dict[str, set[str]] = {}
    seconds = dict.fromkeys(opened, 0.0)
    rejected: Counter[str] = Counter()
    users: set[str] = set()
    catalogue: set[str] = set()
    events = returning_events = discovery_events = 0
    started = time.perf_counter()
    bar = tqdm(total=len(records), unit="ev", file=sys.stderr, desc="evaluate",
               disable=not (progress and sys.stderr.isatty()), mininterval=0.5)
    try:
        for record in records:
            bar.update()
            checked = validator.check(record.topic, orjson.dumps(record.event),
                                      record.event_time_ms)
            if isinstance(checked, Rejection):
                rejected[checked.reason] += 1
                continue
            todo = interactions(record)
            if todo:
                user = todo[0].user_id
                is_returning = user in users
                for name, model in opened.items():
                    tick = time.perf_counter()
                    ranked = await model.recommend(user, LIST_LENGTH)
                    seconds[name] += time.perf_counter() - tick
                    for interaction in todo:
                        scores[name].add(ranked, interaction.item_id)
                        if is_returning:
                            returning[name].add(ranked, interaction.item_id)
                            if interaction.item_id not in seen[user]:
                                discovery[name].add(ranked, interaction.item_id)
                new = [i for i in todo if is_returning and i.item_id not in seen[user]]
                discovery_events += len(new)
                seen.setdefault(user, set()).update(i.item_id for i in todo)
                users.add(user)
                catalogue.update(i.item_id for i in todo)
                events += len(todo)
                returning_events += len(todo) if is_returning else 0
            for name, model in opened.items():
                tick = time.perf_counter()
                await model.learn(record)
                seconds[name] += time.perf_counter() - tick
    finally:
        bar.close()
        for model in opened.values():
            await model.close()
    elapsed = time.perf_counter() - started

    def block(n: int, table: dict[str, RankingScores]) -> dict[str, Any]:
        summary = {name: _rounded(s.summary(catalogue)) for name, s in table.items()}
        return {"events": n, "engine": summary.get(ENGINE),
                "baselines": {name: summary[name] for name in BASELINES if name in summary}}

    return {
        **block(events, scores),
        "returning": block(returning_events, returning),
        "new_to_user": block(discovery_events, discovery),
        "records": len(records),
        "dead_lettered": dict(sorted(rejected.items())),
        "users": len(users),
        "items": len(catalogue),
        "data": str(path),
        "elapsed_s": round(elapsed, 2),
        "model_seconds": {name: round(s, 2) for name, s in seconds.items()},
    }


async def _open_models(settings: Settings, models: Sequence[str]) -> dict[str, Recommender]:
    opened: dict[str, Recommender] = {}
    if ENGINE in models:
        # imported here: the evaluator's baselines work without the engine's model
        from engine.recommend.online import OnlineRecommender

        opened[ENGINE] = await OnlineRecommender.open(settings)
    if "popular" in models:
        opened["popular"] = _Synchronous(Popular())
    if "cooccurrence" in models:
        opened["cooccurrence"] = _Synchronous(SessionCooccurrence())
    return opened


def _rounded(summary: dict[str, float]) -> dict[str, float]:
    return {key: round(summary[key], 6) for key in METRIC_KEYS}


def run_evaluate_recommendations(settings: Settings, data_path: Path | None, *,
                                 limit: int | None, as_json: bool,
                                 models: Sequence[str] = MODELS) -> int:
    """The CLI command: a private empty Valkey, the evaluation, a table or one JSON object.

    The JSON object goes to stdout alone; progress (a tqdm bar when stderr is a terminal) and
    notes go to stderr. Returns the exit code (0).
    """
    path = require_file(data_path or default_data_path(settings))
    with tempfile.TemporaryDirectory(prefix="engine-evaluate-") as run_dir:
        server = None
        if ENGINE in models:
            from engine.embedded import start_redis

            server = start_redis(Path(run_dir), fresh=True)
        try:
            live = settings.with_urls(settings.kafka.url, server.url) if server else settings
            result = asyncio.run(evaluate(live, path, limit=limit, models=models))
        finally:
            if server is not None:
                server.stop()
    if as_json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        print(render(result))
    return 0


def render(result: dict[str, Any]) -> str:
    """The result as a readable table: models as rows, metrics as columns, then ``returning``."""
    dead = sum(result["dead_lettered"].values())
    lines = [
        "",
        "Recommendation evaluation (prequential: rank 20 for the user, then learn the event)",
        f"data: {result['data']}",
        f"{result['records']:,} events read, {dead:,} dead-lettered (skipped), "
        f"{result['events']:,} interactions scored, {result['users']:,} users, "
        f"{result['items']:,} items; {result['elapsed_s']:.1f} s",
    ]
    lines += _table("all interactions", result)
    lines += _table("returning users' interactions (>= 1 earlier interaction)",
                    result["returning"])
    lines += _table("returning users' interactions with an item new to them (discovery)",
                    result["new_to_user"])
    lines += ["", "model time (rank + learn): " + ", ".join(
        f"{name} {s:.1f} s" for name, s in result["model_seconds"].items())]
    return "\n".join(lines)


def _table(title: str, block: dict[str, Any]) -> list[str]:
    rows = {ENGINE: block["engine"], **block["baselines"]}
    lines = ["", f"{title}: {block['events']:,}",
             f"  {'model':<14}" + "".join(f"{key:>10}" for key in METRIC_KEYS)]
    for name, summary in rows.items():
        if summary is not None:
            lines.append(f"  {name:<14}" + "".join(f"{summary[key]:>10.4f}"
                                                    for key in METRIC_KEYS))
    return lines
