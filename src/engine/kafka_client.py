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


#: ``read_tail`` gives up (and says so) after this long.
TAIL_DEADLINE_S = 30.0
#: ``read_tail`` has reached the end when a poll this long brings nothing.
TAIL_QUIET_MS = 300

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


def read_tail(k: KafkaSettings, topic: str, starts: dict[int, int | None], recent: int
              ) -> list[bytes]:
    """The values of ``topic``'s records from each partition's start offset to its end, in
    offset order per partition (a start of None, or one past the log's end, which happens when
    the broker lost the topic, reads the partition's last ``recent`` records). Blocking: run it
    in a thread.

    Some brokers list a log's end short of its last batch (Tansu 0.6 lists that batch's base
    offset + 1), so the end is not trusted: a partition is read until a poll brings nothing,
    and a start past the listed end is first checked against the real one, found by reading
    the last batch."""
    from kafka import KafkaConsumer, TopicPartition

    if not starts:
        return []
    consumer = KafkaConsumer(bootstrap_servers=k.url, client_id="engine-read-tail",
                             group_id=None, enable_auto_commit=False, fetch_max_wait_ms=50,
                             request_timeout_ms=15_000, **k.kafka_python_options())
    try:
        exists = consumer.partitions_for_topic(topic) or set()   # none: a broker lost it
        tps = {TopicPartition(topic, p): starts[p] for p in sorted(starts) if p in exists}
        if not tps:
            return []
        consumer.assign(list(tps))
        begins = consumer.beginning_offsets(list(tps))
        ends = consumer.end_offsets(list(tps))
        seeks: dict[Any, int] = {}
        for tp, start in tps.items():
            if start is not None and begins[tp] <= start <= ends[tp]:
                seeks[tp] = start
            elif start is not None and start > ends[tp] > begins[tp]:
                seeks[tp] = ends[tp] - 1    # the last listed record: its batch shows the end
            else:
                seeks[tp] = max(begins[tp], ends[tp] - recent)
        records = _read_on(consumer, topic, seeks)
        again: dict[Any, int] = {}
        for tp, start in tps.items():
            if start is None or seeks[tp] >= start:
                continue
            end = max([ends[tp], *(r.offset + 1 for r in records[tp])])
            if start <= end:
                records[tp] = [r for r in records[tp] if r.offset >= start]
            else:   # past the real end too: the log is not the one the start was taken on
                again[tp] = max(begins[tp], end - recent)
        if again:
            records |= _read_on(consumer, topic, again)
        return [r.value for tp in tps for r in records[tp] if r.value is not None]
    finally:
        consumer.close()


def _read_on(consumer: Any, topic: str, seeks: dict[Any, int]) -> dict[Any, list[Any]]:
    """Read each partition from its offset until a poll brings nothing for any of them."""
    consumer.assign(list(seeks))
    for tp, offset in seeks.items():
        consumer.seek(tp, offset)
    out: dict[Any, list[Any]] = {tp: [] for tp in seeks}
    deadline = time.monotonic() + TAIL_DEADLINE_S
    while True:
        batches = consumer.poll(timeout_ms=TAIL_QUIET_MS)
        if not batches:
            return out
        for tp, records in batches.items():
            out[tp] += records
        if time.monotonic() > deadline:
            log.warning("%s: stopped reading back after %.0f s; decisions past offsets %s "
                        "may be published twice", topic, TAIL_DEADLINE_S,
                        {tp.partition: out[tp][-1].offset for tp in out if out[tp]})
            return out
