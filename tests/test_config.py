"""Configuration is validated at load time and errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import load_settings
from engine.errors import ConfigError


def test_defaults_load() -> None:
    s = load_settings()
    assert s.validation.max_event_bytes == 65536
    assert s.worker.fetch_max_wait_ms == 10
    assert s.region("united-kingdom").dc == "dc-uk"
    assert s.region("atlantis").dc == s.regions["default"].dc


def test_environment_overrides_with_types() -> None:
    s = load_settings(environ={"ENGINE_KAFKA_URL": "b1:9092,b2:9092",
                               "ENGINE_WORKER_BATCH_MAX": "100",
                               "ENGINE_REDIS_CLUSTER": "true",
                               "ENGINE_KAFKA_SASL_USERNAME": "svc-engine",
                               "PATH": "/usr/bin"})
    assert s.kafka.url == "b1:9092,b2:9092"
    assert s.worker.batch_max == 100 and s.redis.cluster is True
    assert s.kafka.sasl_username == "svc-engine"


def test_secrets_not_in_repr() -> None:
    s = load_settings(environ={"ENGINE_KAFKA_SASL_PASSWORD": "hunter2",
                               "ENGINE_REDIS_PASSWORD": "s3cret",
                               "ENGINE_API_KEYS": '["ops:admin:t0ken-t0ken-t0ken-t0ken"]'})
    assert "hunter2" not in repr(s) and "s3cret" not in repr(s) and "t0ken" not in repr(s)
    assert s.api.keys == ("ops:admin:t0ken-t0ken-t0ken-t0ken",)


def test_competitor_rules_per_category_take_the_longest_prefix() -> None:
    s = load_settings(environ={"ENGINE_PRICING_CATEGORY_RULES":
                               '["electronics=match", "electronics.video=beat"]'})
    assert s.pricing.rules("electronics.audio").competitor_rule == "match"
    assert s.pricing.rules("electronics.video.dvd").competitor_rule == "beat"
    assert s.pricing.rules("electronicsx").competitor_rule == "model"
    assert s.pricing.rules().min_interval_ms == 600_000


def test_kafka_python_security_options() -> None:
    s = load_settings(environ={"ENGINE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                               "ENGINE_KAFKA_SASL_USERNAME": "u",
                               "ENGINE_KAFKA_SASL_PASSWORD": "p",
                               "ENGINE_KAFKA_SSL_CAFILE": "/etc/ca.pem"})
    opts = s.kafka.kafka_python_options()
    assert opts == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                    "sasl_plain_username": "u", "sasl_plain_password": "p",
                    "ssl_cafile": "/etc/ca.pem"}


@pytest.mark.parametrize(("environ", "message"), [
    ({"ENGINE_WORKER_BATCHMAX": "1"}, "worker.batchmax"),
    ({"ENGINE_NOPE_X": "1"}, "ENGINE_NOPE_X"),
    ({"ENGINE_WORKER_BATCH_MAX": "lots"}, "worker.batch_max"),
    ({"ENGINE_WORKER_BATCH_MAX": "0"}, "worker.batch_max"),
    ({"ENGINE_KAFKA_SECURITY_PROTOCOL": "TLS"}, "kafka.security_protocol"),
    ({"ENGINE_REDIS_URL": "http://x"}, "redis.url"),
    ({"ENGINE_VALIDATION_MIN_EVENT_TIME": "yesterday"}, "validation.min_event_time"),
    ({"ENGINE_PRICING_MAX_STEP": "1.5"}, "pricing.max_step"),
    ({"ENGINE_PRICING_COMPETITOR_RULE": "undercut"}, "'undercut'"),
    ({"ENGINE_PRICING_CATEGORY_RULES": '["toys"]'}, "pricing.category_rules"),
    ({"ENGINE_PRICING_OBJECTIVE": "units"}, "pricing.objective"),
    ({"ENGINE_PRICING_CURRENCY": "usd"}, "pricing.currency"),
])
def test_bad_values_name_the_key(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_settings(environ=environ)


def test_overlay_file(tmp_path: Path) -> None:
    overlay = tmp_path / "prod.toml"
    overlay.write_text('[redis]\nnamespace = "shop1"\n[regions]\nfrance = { dc = "dc-eu", '
                       'lead_time_days = 3 }\n')
    s = load_settings(overlay)
    assert s.redis.namespace == "shop1" and s.region("france").dc == "dc-eu"
    overlay.write_text("[redis]\nnamespcae = 'x'\n")
    with pytest.raises(ConfigError, match="redis.namespcae"):
        load_settings(overlay)


def test_production_example_is_valid() -> None:
    example = Path(__file__).resolve().parents[1] / "config" / "production.example.toml"
    s = load_settings(example)
    assert s.kafka.security_protocol == "SASL_SSL" and s.redis.url.startswith("rediss://")
