"""The topic catalogue and the validation of input events against their contracts.

``streams/topics.toml`` and ``streams/schemas/*.json`` are the source of truth, shared with
storefronts and the pricing team. Schemas are compiled once (fastjsonschema generates Python
code: a few microseconds per event, against tens for an interpreting validator). Checks that a
JSON Schema cannot express relative to the record (size, event time against the record's own
timestamp) are done here too. An invalid event is not an exception but a ``Rejection``: data
that goes to the dead-letter topic with its reason.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
from kafka.partitioner.default import murmur2

from engine.config import ValidationSettings
from engine.errors import ContractError
from engine.resources import data_dir

#: Every reason a record can be dead-lettered for (documented in streams/topics.toml).
REASONS = (
    "too_large", "malformed_json", "not_an_object", "missing_field", "wrong_type",
    "out_of_range", "invalid_value", "unknown_field", "unknown_event_type",
    "future_timestamp", "stale_timestamp", "unprocessable",
)

_RULE_REASONS = {
    "required": "missing_field",
    "type": "wrong_type",
    "minimum": "out_of_range",
    "maximum": "out_of_range",
    "exclusiveMinimum": "out_of_range",
    "exclusiveMaximum": "out_of_range",
    "additionalProperties": "unknown_field",
}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    role: str
    schema: str
    key: str
    partitions: int
    cleanup_policy: str
    retention_ms: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    description: str

    def kafka_config(self) -> dict[str, str]:
        return {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}


@dataclass(frozen=True)
class Catalogue:
    topics: Mapping[str, TopicSpec]
    dlq_suffix: str
    dlq_partitions: int
    dlq_retention_ms: int
    root: Path

    @property
    def inputs(self) -> list[TopicSpec]:
        return [t for t in self.topics.values() if t.role == "input"]

    @property
    def outputs(self) -> list[TopicSpec]:
        return [t for t in self.topics.values() if t.role == "output"]

    @property
    def consumed(self) -> list[TopicSpec]:
        """What the worker reads: the input topics and the engine's internal ones."""
        return [t for t in self.topics.values() if t.role in ("input", "internal")]

    def input_partitions(self) -> set[str]:
        """Every partition the worker consumes, as "topic:partition" (what live workers must
        cover)."""
        return {f"{t.name}:{p}" for t in self.consumed for p in range(t.partitions)}

    def partition_of(self, topic: str, key: str) -> int:
        """The partition Kafka's default partitioner gives ``key`` (murmur2, as the Java client,
        kafka-python and aiokafka compute it)."""
        return (murmur2(key.encode()) & 0x7FFFFFFF) % self.topics[topic].partitions

    def dlq(self, topic: str) -> str:
        return topic + self.dlq_suffix

    def schema(self, topic: str) -> dict[str, Any]:
        path = self.root / self.topics[topic].schema
        try:
            return dict(orjson.loads(path.read_bytes()))
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ContractError(f"schema {path} for topic {topic!r} unreadable: {exc}") from None

    def creation_plan(self) -> list[tuple[str, int, dict[str, str]]]:
        """(name, partitions, config) for every topic including the dead-letter topics."""
        plan = [(t.name, t.partitions, t.kafka_config()) for t in self.topics.values()]
        dlq_config = {"cleanup.policy": "delete", "retention.ms": str(self.dlq_retention_ms)}
        plan += [(self.dlq(t.name), self.dlq_partitions, dlq_config) for t in self.consumed]
        return plan


def load_catalogue(root: Path | None = None) -> Catalogue:
    """Parse ``streams/topics.toml``; fail with the file and entry named on any inconsistency."""
    root = root or data_dir("streams")
    path = root / "topics.toml"
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ContractError(f"topic catalogue {path} unreadable: {exc}") from None
    topics: dict[str, TopicSpec] = {}
    for entry in raw.get("topic", []):
        try:
            spec = TopicSpec(
                name=entry["name"], role=entry["role"], schema=entry["schema"], key=entry["key"],
                partitions=int(entry["partitions"]), cleanup_policy=entry["cleanup_policy"],
                retention_ms=int(entry["retention_ms"]), producers=tuple(entry["producers"]),
                consumers=tuple(entry["consumers"]), description=entry["description"],
            )
        except KeyError as exc:
            raise ContractError(f"{path}: topic {entry.get('name', '?')!r} lacks {exc}") from None
        if spec.role not in ("input", "internal", "output") or spec.partitions < 1:
            raise ContractError(f"{path}: topic {spec.name!r} has an invalid role or partitions")
        if not (root / spec.schema).is_file():
            raise ContractError(f"{path}: schema {spec.schema} of topic {spec.name!r} is missing")
        topics[spec.name] = spec
    dlq = raw.get("dlq", {})
    return Catalogue(topics=topics, dlq_suffix=dlq.get("suffix", ".dlq"),
                     dlq_partitions=int(dlq.get("partitions", 1)),
                     dlq_retention_ms=int(dlq.get("retention_ms", 2_592_000_000)), root=root)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an input record was refused; becomes a dead-letter record and a counter."""

    reason: str
    detail: str


class Validator:
    """Decode and validate raw input records: ``check`` returns the event dict or a Rejection."""

    def __init__(self, catalogue: Catalogue, settings: ValidationSettings) -> None:
        self._max_bytes = settings.max_event_bytes
        self._max_skew_ms = int(settings.max_future_skew_s * 1000)
        self._min_ms = settings.min_event_time_ms
        self._compiled: dict[str, Callable[[Any], Any]] = {
            t.name: fastjsonschema.compile(catalogue.schema(t.name))
            for t in catalogue.topics.values()
        }

    def check(self, topic: str, raw: bytes | None, record_ts_ms: int | None = None
              ) -> dict[str, Any] | Rejection:
        if raw is None:
            return Rejection("malformed_json", "empty record value (tombstone)")
        if len(raw) > self._max_bytes:
            return Rejection("too_large", f"{len(raw)} bytes > limit {self._max_bytes}")
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return Rejection("malformed_json", str(exc)[:200])
        if not isinstance(event, dict):
            return Rejection("not_an_object", f"top level is a JSON {type(event).__name__}")
        rejection = self.check_event(topic, event)
        if rejection is not None:
            return rejection
        ts = event["event_time_ms"]
        if record_ts_ms is not None and ts > record_ts_ms + self._max_skew_ms:
            return Rejection("future_timestamp", f"event_time_ms {ts} is more than "
                             f"{self._max_skew_ms} ms after the record timestamp {record_ts_ms}")
        if ts < self._min_ms:
            return Rejection("stale_timestamp", f"event_time_ms {ts} is before {self._min_ms}")
        return event

    def check_event(self, topic: str, event: dict[str, Any]) -> Rejection | None:
        """Schema check of an already decoded event (the HTTP ingestion path uses this too)."""
        try:
            self._compiled[topic](event)
        except fastjsonschema.JsonSchemaValueException as exc:
            return _rejection_from(exc)
        except KeyError:
            return Rejection("invalid_value", f"unknown topic {topic!r}")
        return None


def _rejection_from(exc: fastjsonschema.JsonSchemaValueException) -> Rejection:
    field = (exc.name or "data").removeprefix("data").lstrip(".") or "(event)"
    rule = exc.rule or ""
    if rule in ("enum", "const") and field == "event_type":
        reason = "unknown_event_type"
    else:
        reason = _RULE_REASONS.get(rule, "invalid_value")
    return Rejection(reason, f"{field}: {exc.message.removeprefix('data.')}"[:300])
