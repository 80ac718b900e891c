"""aiokafka connection options from settings (the API's readiness probe and the demo use them)."""

from __future__ import annotations

from typing import Any

from aiokafka.helpers import create_ssl_context

from engine.config import KafkaSettings


def aiokafka_options(k: KafkaSettings) -> dict[str, Any]:
    opts: dict[str, Any] = {"bootstrap_servers": k.url, "security_protocol": k.security_protocol}
    if k.security_protocol.endswith("SSL"):
        opts["ssl_context"] = create_ssl_context(cafile=k.ssl_cafile or None,
                                                 certfile=k.ssl_certfile or None,
                                                 keyfile=k.ssl_keyfile or None)
    if k.security_protocol.startswith("SASL"):
        opts |= {"sasl_mechanism": k.sasl_mechanism, "sasl_plain_username": k.sasl_username,
                 "sasl_plain_password": k.sasl_password}
    return opts
