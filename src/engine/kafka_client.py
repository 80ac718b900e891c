"""Kafka security options from settings, in aiokafka's and Faust's spelling (kafka-python's is
``KafkaSettings.kafka_python_options``)."""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any

import faust
from aiokafka.helpers import create_ssl_context

from engine.config import KafkaSettings
from engine.errors import TailUnavailable

log = logging.getLogger(__name__)


def ssl_context(k: KafkaSettings) -> ssl.SSLContext | None:
    if not k.security_protocol.endswith("SSL"):
        return None
    return create_ssl_context(cafile=k.ssl_cafile or None, certfile=k.ssl_certfile or None,
                              keyfile=k.ssl_keyfile or None)


def aiokafka_options(k: KafkaSettings) -> dict[str, Any]:
    opts: dict[str, Any] = {"bootstrap_servers": k.url, "security_protocol": k.security_protocol}
    context = ssl_context(k)
    if context is not None:
        opts["ssl_context"] = context
    if k.security_protocol.startswith("SASL"):
        opts |= {"sasl_mechanism": k.sasl_mechanism, "sasl_plain_username": k.sasl_username,
                 "sasl_plain_password": k.sasl_password}
    return opts


def faust_credentials(k: KafkaSettings) -> Any:
    context = ssl_context(k)
    if k.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=k.sasl_username, password=k.sasl_password,
                                     mechanism=k.sasl_mechanism, ssl_context=context)
    return faust.SSLCredentials(context) if context is not None else None


#: ``read_tail`` stops (and says so) after this long: assignment waits for it.
TAIL_DEADLINE_S = 20.0
#: ``read_tail`` polls this long; past the listed ends an empty poll means the end.
TAIL_POLL_MS = 1000
#: ``read_tail`` reads at most this long past the listed ends (while others keep writing).
SETTLE_S = 2.0

NO_TOPIC_ID = "00000000-0000-0000-0000-000000000000"


def topic_ids(k: KafkaSettings, topics: list[str]) -> dict[str, str | None]:
    """Each topic's id (Kafka 2.8+, Redpanda, Tansu; None where the broker has none). Blocking:
    run it in a thread. A topic that is deleted and created again gets a new id, which is how
    a worker tells a new log from the one its watermarks describe."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=k.url, client_id="engine-topic-ids",
                             **k.kafka_python_options())
    try:
        out: dict[str, str | None] = {}
        for topic in admin.describe_topics(topics):
            value = topic.get("topic_id")
            text = str(value) if value else ""
            out[topic["name"]] = text if text and text != NO_TOPIC_ID else None
        return out
    finally:
        admin.close()


def read_tail(k: KafkaSettings, topic: str, starts: dict[int, int | None], recent: int,
              deadline_s: float = TAIL_DEADLINE_S) -> tuple[list[bytes], dict[int, int]]:
    """The values of ``topic``'s records from each partition's start offset to its end, in
    offset order per partition (a start of None, or one past the log's end, which happens when
    the broker lost the topic, reads the partition's last ``recent`` records), and each
    partition's end (the offset after the last record read or listed). Blocking: run it in a
    thread. Raises TailUnavailable when the broker cannot be asked.

    Some brokers list a log's end short of its last batch (Tansu 0.6 lists that batch's base
    offset + 1), so the listed end is a floor: a partition is read past it until a poll brings
    nothing (or for ``SETTLE_S`` more), and a start past the listed end is checked against the
    real one, found by reading the last batch. The fetch wait is long: that broker answers a
    fetch deep in a large log with nothing when the wait is short."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    if not starts:
        return [], {}
    try:
        consumer = KafkaConsumer(bootstrap_servers=k.url, client_id="engine-read-tail",
                                 group_id=None, enable_auto_commit=False, fetch_max_wait_ms=500,
                                 request_timeout_ms=15_000, **k.kafka_python_options())
    except (KafkaError, OSError) as exc:
        raise TailUnavailable(f"{topic}: {exc!r}") from exc
    try:
        return _tail(consumer, topic, starts, recent, time.monotonic() + deadline_s)
    except (KafkaError, OSError) as exc:
        raise TailUnavailable(f"{topic}: {exc!r}") from exc
    finally:
        consumer.close()


def _tail(consumer: Any, topic: str, starts: dict[int, int | None], recent: int,
          deadline: float) -> tuple[list[bytes], dict[int, int]]:
    from kafka import TopicPartition

    exists = consumer.partitions_for_topic(topic) or set()   # none: a broker lost it
    tps = {TopicPartition(topic, p): starts[p] for p in sorted(starts) if p in exists}
    if not tps:
        return [], {}
    consumer.assign(list(tps))
    begins = consumer.beginning_offsets(list(tps))
    listed = consumer.end_offsets(list(tps))
    seeks: dict[Any, int] = {}
    for tp, start in tps.items():
        if start is not None and begins[tp] <= start <= listed[tp]:
            seeks[tp] = start
        elif start is not None and start > listed[tp] > begins[tp]:
            seeks[tp] = listed[tp] - 1    # the last listed record: its batch shows the end
        else:
            seeks[tp] = max(begins[tp], listed[tp] - recent)
    records = _read_on(consumer, topic, seeks, listed, deadline)
    ends = {tp: max([listed[tp], *(r.offset + 1 for r in records[tp])]) for tp in tps}
    again: dict[Any, int] = {}
    for tp, start in tps.items():
        if start is None or seeks[tp] >= start:
            continue
        if start <= ends[tp]:
            records[tp] = [r for r in records[tp] if r.offset >= start]
        else:   # past the real end too: the log is not the one the start was taken on
            again[tp] = max(begins[tp], ends[tp] - recent)
    if again:
        records |= _read_on(consumer, topic, again, listed, deadline)
    values = [r.value for tp in tps for r in records[tp] if r.value is not None]
    return values, {tp.partition: end for tp, end in ends.items()}


def _read_on(consumer: Any, topic: str, seeks: dict[Any, int], listed: dict[Any, int],
             deadline: float) -> dict[Any, list[Any]]:
    """Read each partition from its offset past its listed end, until a poll brings nothing or
    ``SETTLE_S`` have passed since all reached it (others may be writing the topic)."""
    consumer.assign(list(seeks))
    for tp, offset in seeks.items():
        consumer.seek(tp, offset)
    out: dict[Any, list[Any]] = {tp: [] for tp in seeks}
    reached: float | None = None
    while True:
        batches = consumer.poll(timeout_ms=TAIL_POLL_MS)
        for tp, records in batches.items():
            out[tp] += records
        now = time.monotonic()
        if reached is None and all(consumer.position(tp) >= listed[tp] for tp in seeks):
            reached = now
        if reached is not None and (not batches or now - reached >= SETTLE_S):
            return out
        if now > deadline:
            log.warning("%s: reading back stopped at the deadline, short of offsets %s; "
                        "decisions past them may be published twice", topic,
                        {tp.partition: listed[tp] for tp in seeks})
            return out
