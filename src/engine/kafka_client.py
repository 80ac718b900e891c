"""Kafka security options from settings, in aiokafka's and Faust's spelling (kafka-python's is
``KafkaSettings.kafka_python_options``)."""

from __future__ import annotations

import ssl
from typing import Any

import faust
from aiokafka.helpers import create_ssl_context

from engine.config import KafkaSettings


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
