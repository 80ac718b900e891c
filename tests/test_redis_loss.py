"""Redis behind Kafka: when Redis lost writes whose offsets Kafka already committed, a worker
resumes from the Redis watermark, not from the committed offset, so nothing is lost. (Live:
tests/faults/test_redis_crashes.py, with Redis killed and its AOF cut back.)"""

from __future__ import annotations

from faust.types import TP

from engine.worker.app import behind_kafka, resume_offsets


def test_every_partition_resumes_at_the_commit_but_never_past_the_redis_watermark() -> None:
    a, b, c, d = TP("clicks", 0), TP("clicks", 1), TP("orders", 0), TP("orders", 1)
    marks = {a: 99, b: 150, c: -1, d: -1}
    committed = {a: 151, b: 140, c: 40, d: None}
    # a: Redis lost 100..150; b: Kafka's commit lags Redis; c: Redis empty, Kafka committed;
    # d: a fresh partition
    assert resume_offsets(marks, committed) == {a: 100, b: 140, c: 0, d: 0}
    assert behind_kafka(marks, committed) == [a, c]
