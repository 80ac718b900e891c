"""Publish replay records to Kafka (kafka-python), paced by rate, by event time, or flat out.

The record timestamp is left to the producer (create time): downstream measures end-to-end
latency from it and judges "event time far in the future" against it, so stamping historical
event times on records would break both.

Pacing is a fixed schedule computed from the start (``_Pacer``): the i-th event is due at a
known offset and we sleep until then, so slow sends do not accumulate drift.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kafka.errors
import orjson
from kafka import KafkaProducer
from kafka.errors import KafkaError
from tqdm import tqdm

from engine.errors import ReplayError
from engine.replay.sources import Record

#: Producer defaults: small batches (5 ms linger) and leader acks keep replay fast but honest.
PRODUCER_DEFAULTS: dict[str, Any] = {"linger_ms": 5, "acks": 1}

#: How "no broker answers" surfaces: kafka-python 2.x raises NoBrokersAvailable, 3.x removed it
#: and times out bootstrapping (KafkaTimeoutError) instead.
_UNREACHABLE: tuple[type[Exception], ...] = tuple(
    getattr(kafka.errors, name)
    for name in ("NoBrokersAvailable", "KafkaTimeoutError", "KafkaConnectionError")
    if hasattr(kafka.errors, name)
)


@dataclass
class ReplayStats:
    """What a replay published; ``failed`` counts sends the broker did not acknowledge."""

    by_topic: dict[str, int] = field(default_factory=dict)
    total: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    events_per_s: float = 0.0
    first_error: str | None = None


class _Pacer:
    """When each event is due, in seconds after the start.

    ``rate``: event i at i / rate (open loop). ``speedup``: the event-time gap to the previous
    event divided by ``speedup``, capped at ``max_gap_s`` (the data sets span years; a replay
    should not sit idle), never negative (a later source may start earlier in event time).
    Neither: always 0, as fast as possible.
    """

    def __init__(self, rate: float | None, speedup: float | None, max_gap_s: float) -> None:
        if rate is not None and speedup is not None:
            raise ReplayError("give either rate or speedup, not both")
        for name, value in (("rate", rate), ("speedup", speedup)):
            if value is not None and not value > 0:
                raise ReplayError(f"{name} must be > 0, got {value}")
        if not max_gap_s >= 0:
            raise ReplayError(f"max_gap_s must be >= 0, got {max_gap_s}")
        self._rate, self._speedup, self._max_gap_s = rate, speedup, max_gap_s
        self._index = 0
        self._due = 0.0
        self._last_ms: int | None = None

    def due_s(self, event_time_ms: int) -> float:
        """Offset from the start at which the next event (with this event time) is due."""
        index, self._index = self._index, self._index + 1
        if self._rate is not None:
            return index / self._rate
        if self._speedup is not None:
            if self._last_ms is not None:
                gap_s = max(0, event_time_ms - self._last_ms) / 1000 / self._speedup
                self._due += min(gap_s, self._max_gap_s)
            self._last_ms = event_time_ms
        return self._due


def _producer(bootstrap: str, kafka_options: Mapping[str, Any]) -> KafkaProducer:
    options = {**PRODUCER_DEFAULTS, **kafka_options}
    try:
        return KafkaProducer(bootstrap_servers=bootstrap, **options)
    except _UNREACHABLE as exc:
        raise ReplayError(f"Kafka broker unreachable at {bootstrap}: {exc}") from None


class _Failures:
    """Counts failed deliveries; called from the producer's I/O thread, read after flush()."""

    def __init__(self) -> None:
        self.count = 0
        self.first: str | None = None

    def __call__(self, exc: BaseException) -> None:
        self.count += 1
        if self.first is None:
            self.first = f"{type(exc).__name__}: {exc}"


def _send(producer: KafkaProducer, record: Record, failures: _Failures) -> None:
    try:
        future = producer.send(record.topic, key=record.key.encode(),
                               value=orjson.dumps(record.event))
    except KafkaError as exc:
        raise ReplayError(f"cannot publish to topic {record.topic!r} "
                          f"(event {record.event.get('event_id')}): {exc}") from None
    future.add_errback(failures)


def publish(records: Iterable[Record], *, bootstrap: str, kafka_options: dict[str, Any],
            rate: float | None = None, speedup: float | None = None, max_gap_s: float = 2.0,
            progress: bool = True, total: int | None = None,
            should_stop: Callable[[], bool] | None = None) -> ReplayStats:
    """Send ``records`` in order, paced as asked, flush, and report what happened.

    ``kafka_options`` carries security settings (and may override ``PRODUCER_DEFAULTS``).
    ``should_stop`` is polled before each send (Ctrl-C under a Supervisor sets a flag only).
    Raises ReplayError when the broker is unreachable, a topic cannot be written or a data
    file is missing; a delivery the broker refuses is counted in ``failed`` instead.
    """
    pacer = _Pacer(rate, speedup, max_gap_s)
    producer = _producer(bootstrap, kafka_options)
    failures, by_topic = _Failures(), Counter[str]()
    bar = tqdm(total=total, unit="ev", file=sys.stderr, desc="replay",
               disable=not progress or not sys.stderr.isatty())
    start = time.monotonic()
    try:
        for record in records:
            if should_stop is not None and should_stop():
                break
            delay = start + pacer.due_s(record.event_time_ms) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            _send(producer, record, failures)
            by_topic[record.topic] += 1
            bar.update()
        producer.flush()
    except FileNotFoundError as exc:
        raise ReplayError(f"data file not found: {exc.filename}") from None
    finally:
        bar.close()
        producer.close(timeout=10)
    elapsed = time.monotonic() - start
    sent = sum(by_topic.values())
    return ReplayStats(by_topic=dict(by_topic), total=sent, failed=failures.count,
                       elapsed_s=elapsed, events_per_s=sent / elapsed if elapsed > 0 else 0.0,
                       first_error=failures.first)
