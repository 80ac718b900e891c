"""Create the engine's topics idempotently and wait until the cluster really lists them.

Used against the embedded broker at every start (Tansu's memory storage forgets topics) and
against a production cluster, hence the plain ``kafka_options`` passthrough for TLS/SASL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from engine.errors import EmbeddedError

log = logging.getLogger(__name__)

#: (name, partitions, topic configs such as {"cleanup.policy": "compact"})
TopicTuple = tuple[str, int, Mapping[str, str]]


def create_topics(
    bootstrap: str,
    topics: Sequence[TopicTuple],
    kafka_options: Mapping[str, Any] | None = None,
    *,
    replication_factor: int = 1,
    timeout: float = 20.0,
) -> None:
    """Create the missing ``topics`` and return once metadata shows all of them with leaders.

    Existing topics are left as they are (a different partition count is logged, not changed:
    repartitioning a live topic is an operator's decision). ``kafka_options`` are extra
    ``KafkaAdminClient`` arguments (security_protocol, sasl_*, ssl_*).
    """
    if not topics:
        return
    admin = _admin(bootstrap, kafka_options or {})
    try:
        existing = set(admin.list_topics())
        missing = [spec for spec in topics if spec[0] not in existing]
        _create(admin, missing, replication_factor)
        partitions = _wait_listed(admin, [spec[0] for spec in topics], timeout, bootstrap)
    except KafkaError as exc:
        raise EmbeddedError(f"cannot create topics on {bootstrap}: {exc}") from exc
    finally:
        admin.close()
    for name, wanted, _ in topics:
        if partitions[name] != wanted:
            log.warning("topic %s has %d partitions, the catalogue asks for %d; left unchanged",
                        name, partitions[name], wanted)


def _admin(bootstrap: str, kafka_options: Mapping[str, Any]) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(
            **{"client_id": "engine-admin", **kafka_options, "bootstrap_servers": bootstrap}
        )
    except KafkaError as exc:
        raise EmbeddedError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc


def _create(admin: KafkaAdminClient, specs: Sequence[TopicTuple], replication: int) -> None:
    """Create ``specs`` in one request; one by one if another client raced us to some of them."""
    new = [_new_topic(spec, replication) for spec in specs]
    if not new:
        return
    try:
        admin.create_topics(new)
        return
    except TopicAlreadyExistsError:
        log.info("some topics appeared concurrently; creating the rest one by one")
    for topic in new:
        try:
            admin.create_topics([topic])
        except TopicAlreadyExistsError:
            log.debug("topic %s already exists", topic.name)


def _new_topic(spec: TopicTuple, replication: int) -> NewTopic:
    name, partitions, configs = spec
    return NewTopic(name, num_partitions=partitions, replication_factor=replication,
                    topic_configs={key: str(value) for key, value in configs.items()})


def _wait_listed(
    admin: KafkaAdminClient, names: list[str], timeout: float, bootstrap: str
) -> dict[str, int]:
    """Poll metadata until every topic has a leader for every partition; return partition counts.

    Creation is acknowledged before metadata catches up on real clusters, and a producer that
    starts in that gap sees UnknownTopicOrPartition.
    """
    deadline = time.monotonic() + timeout
    while True:
        ready = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names)
                 if _has_leaders(t)}
        if len(ready) == len(set(names)):
            return ready
        if time.monotonic() > deadline:
            pending = sorted(set(names) - set(ready))
            raise EmbeddedError(
                f"topics {', '.join(pending)} not listed by {bootstrap} after {timeout:.0f} s"
            )
        time.sleep(0.1)


def _has_leaders(topic: Mapping[str, Any]) -> bool:
    partitions = topic.get("partitions") or []
    return topic.get("error_code") == 0 and bool(partitions) and all(
        p.get("error_code") == 0 and p.get("leader_id", p.get("leader", -1)) >= 0
        for p in partitions
    )
