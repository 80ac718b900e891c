"""``read_tail`` on the real broker: what the item stages read back on assignment (the decisions
a crashed batch published) must reach the log's real end, also where the broker lists it short
(Tansu 0.6 lists the last batch's base offset + 1)."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from kafka import KafkaProducer

from engine.config import Settings
from engine.embedded import create_topics, free_port
from engine.errors import TailUnavailable
from engine.kafka_client import read_tail

pytestmark = pytest.mark.integration


def is_suffix(got: list[bytes], log: list[bytes], at_least: int) -> bool:
    return len(got) >= at_least and got == log[len(log) - len(got):]


def test_reads_from_each_start_to_the_real_end_and_falls_back_to_recent_records(
        settings: Settings) -> None:
    topic = f"tail-{uuid.uuid4().hex[:8]}"
    create_topics(settings.kafka.url, [(topic, 2, {})], {})
    producer = KafkaProducer(bootstrap_servers=settings.kafka.url, linger_ms=5)
    try:
        for batch in range(3):   # three batches on partition 0: its last one is not one record
            for n in range(10):
                producer.send(topic, f"a{batch * 10 + n}".encode(), partition=0)
            producer.flush()
        for n in range(5):
            producer.send(topic, f"b{n}".encode(), partition=1)
        producer.flush()
    finally:
        producer.close()
    a = [f"a{n}".encode() for n in range(30)]
    b = [f"b{n}".encode() for n in range(5)]

    assert read_tail(settings.kafka, topic, {0: 10}, 3) == (a[10:], {0: 30})
    # a start past the end Tansu lists (21 here), inside the real log
    got, ends = read_tail(settings.kafka, topic, {0: 25, 1: None}, 3)
    assert got[:5] == a[25:] and ends == {0: 30, 1: 5}
    # no start: at least the last records (counted back from the listed end), in order
    assert is_suffix(got[5:], b, at_least=3)
    # a start past the real end (the broker lost the topic): at least the last records
    got, ends = read_tail(settings.kafka, topic, {0: 10_000}, 4)
    assert is_suffix(got, a, at_least=4) and ends == {0: 30}
    assert read_tail(settings.kafka, topic, {}, 3) == ([], {})
    assert read_tail(settings.kafka, f"{topic}-absent", {0: 0}, 3) == ([], {})


def test_an_unreachable_broker_is_reported_as_tail_unavailable(settings: Settings) -> None:
    dead = dataclasses.replace(settings.kafka, url=f"127.0.0.1:{free_port()}")
    with pytest.raises(TailUnavailable, match="tail-x"):
        read_tail(dead, "tail-x", {0: 0}, 3)
