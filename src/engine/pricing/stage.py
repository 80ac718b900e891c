"""The live pricing stage: price signals -> item state, models and price changes, exactly once.

Two halves, both in the worker:

- ``SignalForwarder`` turns each valid input event into item-keyed price signals
  (``core.repricing.signals_for``) and sends them to the internal topic ``price-signals``,
  stamped with their source (topic, partition, offset). It sends for every record of a batch,
  re-deliveries included, and the batch is acknowledged only once the broker has them all: a
  crash at any point re-sends, never loses.
- ``PricingStage`` is the processor stage of ``price-signals``. An item's signals all land in
  one partition, so its state (``px``), its price history (``pxh:<item>``) and the conversion
  models of the categories seen there (``pxm``) live in that partition's shard and are written
  with its watermark. Re-sent signals are recognised by their source offset (``pxsrc`` keeps the
  highest counted per source partition) and skipped. Decisions are computed in offset order
  from the state read at the start of the batch, so a replay makes the same decisions with the
  same ids; the changes are published to ``prices`` before the batch is applied, so a crash
  cannot lose them, and what a crashed batch published is read back on assignment
  (``engine.published``) so that its run again does not publish it twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any

import orjson

from engine import metrics
from engine.config import PricingSettings
from engine.contracts import Catalogue
from engine.core.activity import Op
from engine.core.compose import PRICE_SIGNALS
from engine.core.pricing import ConversionModel, PricingParams
from engine.core.repricing import MALFORMED, ItemPricing, PricingConfig, Repricer, signals_for
from engine.published import Published, Send, Tail
from engine.store import StateStore

log = logging.getLogger(__name__)

PRICES = "prices"
#: A signal the repricer failed on (an engine bug, logged): skipped and counted.
UNPROCESSABLE = "unprocessable"



#: The shard hash that keeps the stage's marks on ``prices`` (``engine.published``).
PUBLISHED_KEY = "pxpub"


def published_prices(catalogue: Catalogue, tail: Tail | None) -> Published:
    """The stage's publications on ``prices``. Both topics are keyed by item id with the default
    partitioner, so with as many partitions on each, a shard's changes all go to the
    ``prices`` partition of its own number, and only that one is read back."""
    shards, out = (catalogue.topics[t].partitions for t in (PRICE_SIGNALS, PRICES))
    return Published(PRICES, out, PUBLISHED_KEY, "decision_id", tail,
                     routes=(lambda shard: (shard,)) if shards == out else None)


def pricing_config(s: PricingSettings) -> PricingConfig:
    return PricingConfig(
        rules=s.rules(), params=PricingParams(learning_rate=s.learning_rate, l2=s.l2,
                                              prior_strength=s.prior_strength,
                                              objective=s.objective),
        arm_spacing=s.arm_spacing, arm_levels=s.arm_levels,
        reprice_interval_ms=round(s.reprice_interval_minutes * 60_000),
        outlier_confirmations=s.outlier_confirmations, low_cover_days=s.low_cover_days,
        high_cover_days=s.high_cover_days, currency=s.currency, model_version=s.model_version)


#: A ``price-signals`` record is cut at this many bytes (the consumer's limit is
#: ``validation.max_event_bytes``, 64 KiB by default) or ``SIGNALS_PER_RECORD`` signals.
RECORD_BYTES = 48_000
SIGNALS_PER_RECORD = 200
#: The stage lets other agents run after this many signals (it shares the worker's loop).
YIELD_EVERY = 256
#: A signal's position in its source: offset x SOURCE_SLOTS + its index among the event's
#: signals (an order's lines), one number that ``hsetmax`` can keep per source partition.
SOURCE_SLOTS = 1024
#: Changes kept per shard in ``pxrecent`` (newest first) for the status page.
RECENT_CHANGES = 20
_SOURCE_FIELDS = ("source_topic", "source_partition", "source_offset", "source_index")


def forwarded_records(catalogue: Catalogue, topic: str,
                      events: Sequence[tuple[int, int, dict[str, Any]]],
                      max_bytes: int = RECORD_BYTES) -> list[tuple[int, bytes]]:
    """The ``price-signals`` records (partition, value) of a batch's valid input events: per
    destination partition (murmur2 of the item id, as a keyed send would place them), the
    signals in source order, stamped with their source position, in records of at most
    ``max_bytes``. One record per partition instead of one per signal: an order of forty
    lines would otherwise cost forty records, each paying the consumer's overhead."""
    spec = catalogue.topics[PRICE_SIGNALS]
    by_partition: dict[int, list[tuple[int, str, bytes]]] = {}
    for partition, offset, event in events:
        for n, signal in enumerate(signals_for(topic, event)[:SOURCE_SLOTS]):
            signal.update(event_id=f"{topic}:{partition}:{offset}:{n}", source_topic=topic,
                          source_partition=partition, source_offset=offset, source_index=n)
            dest = catalogue.partition_of(spec.name, signal["item_id"])
            by_partition.setdefault(dest, []).append((signal["event_time_ms"],
                                                      signal["event_id"], orjson.dumps(signal)))
    out = []
    for dest, signals in sorted(by_partition.items()):
        chunk: list[tuple[int, str, bytes]] = []
        size = 0
        for t, event_id, body in signals:
            if chunk and (size + len(body) > max_bytes or len(chunk) >= SIGNALS_PER_RECORD):
                out.append((dest, _record(chunk)))
                chunk, size = [], 0
            chunk.append((t, event_id, body))
            size += len(body) + 1
        out.append((dest, _record(chunk)))
    return out


def _record(chunk: list[tuple[int, str, bytes]]) -> bytes:
    head = orjson.dumps({"event_id": f"{chunk[0][1]}+{len(chunk)}",
                         "event_time_ms": max(t for t, _, _ in chunk)})
    return head[:-1] + b',"signals":[' + b",".join(body for _, _, body in chunk) + b"]}"


class SignalForwarder:
    """The processor's ``forward`` hook: enqueue a batch's signals, return their acks."""

    def __init__(self, catalogue: Catalogue, send: Send) -> None:
        self.catalogue = catalogue
        self.send = send

    async def __call__(self, topic: str, events: Sequence[tuple[int, int, dict[str, Any]]]
                       ) -> Awaitable[object] | None:
        if topic == PRICE_SIGNALS:
            return None
        records = forwarded_records(self.catalogue, topic, events)
        if not records:
            return None
        metrics.PRICE_SIGNALS.labels(topic).inc(len(records))
        return await self.send(PRICE_SIGNALS, [(None, value, dest) for dest, value in records])


def _stamped(body: bytes) -> str:
    """The change with the wall-clock time it was decided (``published_ms``): the status page
    orders the shards' recent changes by it (event times come from each source's own clock)."""
    return (body[:-1] + b',"published_ms":' + str(int(time.time() * 1000)).encode()
            + b"}").decode()


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class PricingStage:
    """The processor stage of ``price-signals`` (see the module docstring)."""

    def __init__(self, settings: PricingSettings, send: Send,
                 published: Published | None = None) -> None:
        self.s = settings
        self.send = send
        #: without a tail reader, a batch that runs again publishes its changes again
        self.published = published or Published(PRICES, 0, PUBLISHED_KEY, "decision_id", None)
        self.config = pricing_config(settings)
        self.repricer = Repricer(self.config)

    async def ops(self, store: StateStore, topic: str, partition: int,
                  events: Sequence[tuple[int, dict[str, Any]]]) -> dict[int, list[Op]]:
        if topic != PRICE_SIGNALS or not events:
            return {}
        shard = store.shard(topic, partition)
        signals = [(offset, sig) for offset, record in events for sig in record["signals"]]
        items = sorted({sig["item_id"] for _, sig in signals})
        pipe = store.client.pipeline(transaction=False)
        pipe.hmget(shard + "px", items)
        marks = SourceMarks.read(pipe, shard + "pxsrc", signals)
        replies = await pipe.execute()
        states = {item: ItemPricing.from_dict(orjson.loads(row)) if row else ItemPricing()
                  for item, row in zip(items, replies[0], strict=True)}
        marks.load(replies[1:])
        categories = sorted(({st.category for st in states.values()}
                             | {sig.get("category", "") for _, sig in signals}) - {""})
        rows = await store.client.hmget(shard + "pxm", categories) if categories else []
        models = {c: self._model(row) for c, row in zip(categories, rows, strict=True)}

        out: dict[int, list[Op]] = {}
        last_item: dict[str, int] = {}
        last_model: dict[str, int] = {}
        stepped: dict[str, int] = {}   # signals the model stepped on, by kind
        last_offset = -1
        changes: list[tuple[bytes | None, bytes, int | None]] = []
        ids: list[str] = []
        for n, (offset, signal) in enumerate(signals):
            if n % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)   # nothing else writes this shard meanwhile
            ops = out.setdefault(offset, [])
            seen = marks.count(signal, offset)
            if seen == MALFORMED:
                self._reject(ops, MALFORMED)
                continue
            if seen == DUPLICATE:
                metrics.PRICE_SIGNAL_DUPLICATES.inc()
                continue
            item = signal["item_id"]
            st = states[item]
            category = signal.get("category") if signal["kind"] == "catalog" else None
            category = category or st.category
            model = models.get(category) or models.setdefault(category, self._model(None))
            try:
                outcome = self.repricer.step(item, st, model, signal, self.s.rules(category))
            except Exception:   # an engine bug must cost one signal, not the partition
                log.exception("pricing: signal %s of item %s skipped", signal.get("event_id"),
                              item)
                self._reject(ops, UNPROCESSABLE)
                continue
            last_item[item] = offset
            stepped[signal["kind"]] = stepped.get(signal["kind"], 0) + 1
            last_offset = offset
            if category:
                last_model[category] = offset
            if outcome.rejected:
                self._reject(ops, outcome.rejected)
            if outcome.change is not None:
                if "event_id" in signal:   # traceable: which input event moved the price
                    outcome.change["reason"]["signal"] = signal["event_id"]
                body = orjson.dumps(outcome.change)
                changes.append((item.encode(), body, None))
                ids.append(outcome.change["decision_id"])
                ops += [("lpushcap", f"pxh:{item}", body.decode(), str(self.s.history_size)),
                        ("lpushcap", "pxrecent", _stamped(body), str(RECENT_CHANGES)),
                        ("hincrby", "pxstats", "changes", "1")]
        # state and models are written once per batch, with the last event that touched them
        # (the batch is applied atomically, so this is the same as writing after every event)
        for item, offset in last_item.items():
            out[offset].append(("hset", "px", item, _dumps(states[item].as_dict())))
        for category, offset in last_model.items():
            model = models[category]
            out[offset].append(("hset", "pxm", category, _dumps(
                {"weights": model.weights, "intercept": model.intercept})))
        for kind, n in sorted(stepped.items()):   # exactly once per signal (fault tests)
            out[last_offset].append(("hincrby", "pxstats", f"steps:{kind}", str(n)))
        marks.write(out, "pxsrc")
        # on the broker before the state moves on: a crash cannot lose them
        sent = await self.published.publish(self.send, changes, ids)
        metrics.PRICE_CHANGES.inc(sent)
        if last_offset >= 0:
            out[last_offset] += self.published.marks(sent > 0)
        return out

    @staticmethod
    def _reject(ops: list[Op], reason: str) -> None:
        ops.append(("hincrby", "pxrej", reason, "1"))
        metrics.SIGNALS_REJECTED.labels(reason).inc()

    def _model(self, row: str | None) -> ConversionModel:
        if not row:
            return ConversionModel(self.config.params)
        data = orjson.loads(row)
        return ConversionModel(self.config.params, data["weights"], data["intercept"])


#: What ``SourceMarks.count`` says of a signal counted before.
DUPLICATE = "duplicate"


class SourceMarks:
    """Which forwarded signals a stage has counted: per source partition, the highest source
    position (offset x SOURCE_SLOTS + index), kept in a hash of the stage's shard with
    ``hsetmax``. A signal at or below its source's mark is a re-send (the forwarder re-sends a
    batch after a crash) and is skipped; a signal without a source (an API override) always
    counts. Each stage keeps its own marks, so stages can be switched on and off apart."""

    def __init__(self, sources: list[str]) -> None:
        self.sources = sources
        self.marks: dict[str, int] = {}
        self.last: dict[str, int] = {}

    @classmethod
    def read(cls, pipe: Any, key: str, signals: Sequence[tuple[int, dict[str, Any]]]
             ) -> SourceMarks:
        """Queue the read of the marks the batch needs on ``pipe``; ``load`` its replies."""
        sources = sorted({_source(sig) for _, sig in signals
                          if all(f in sig for f in _SOURCE_FIELDS)})
        if sources:
            pipe.hmget(key, sources)
        return cls(sources)

    def load(self, replies: Sequence[Any]) -> None:
        values = replies[0] if self.sources else []
        self.marks = {src: int(float(v)) if v is not None else -1
                      for src, v in zip(self.sources, values, strict=True)}

    def count(self, signal: dict[str, Any], offset: int) -> str | None:
        """None when the signal is new (and now counted), else DUPLICATE or MALFORMED."""
        sourced = sum(f in signal for f in _SOURCE_FIELDS)
        if sourced == 0:
            return None
        if sourced != len(_SOURCE_FIELDS):
            return MALFORMED
        src, position = _source(signal), _position(signal)
        if position <= self.marks[src]:
            return DUPLICATE
        self.marks[src] = position
        self.last[src] = offset
        return None

    def write(self, out: dict[int, list[Op]], key: str) -> None:
        """The ops that keep the new marks, each with the last record that moved it."""
        for src, offset in self.last.items():
            out[offset].append(("hsetmax", key, src, str(self.marks[src])))


def _source(signal: dict[str, Any]) -> str:
    return f"{signal['source_topic']}:{signal['source_partition']}"


def _position(signal: dict[str, Any]) -> int:
    return int(signal["source_offset"]) * SOURCE_SLOTS + int(signal["source_index"])
