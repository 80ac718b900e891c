"""Every schema accepts its valid examples and rejects each invalid one for the stated reason."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import orjson
import pytest

from engine.config import load_settings
from engine.contracts import REASONS, Rejection, Validator, load_catalogue

CATALOGUE = load_catalogue()
VALIDATOR = Validator(CATALOGUE, load_settings().validation)
EXAMPLES = CATALOGUE.root / "examples"
RECORD_TS = 1_700_000_000_000  # the record timestamp a broker would have stamped


def _lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _cases(kind: str) -> list[tuple[str, dict]]:
    return [(t, case) for t in CATALOGUE.topics for case in _lines(EXAMPLES / f"{t}.{kind}.jsonl")]


def test_catalogue_lists_every_topic_the_issue_names() -> None:
    assert {t.name for t in CATALOGUE.inputs} == {
        "clicks", "carts", "orders", "competitor-prices", "inventory", "catalog"}
    assert {t.name for t in CATALOGUE.outputs} == {"prices", "stocking-signals"}
    assert {t.name for t in CATALOGUE.consumed} == {t.name for t in CATALOGUE.inputs} | {
        "price-signals"}
    names = [name for name, _, _ in CATALOGUE.creation_plan()]
    assert "clicks.dlq" in names and "price-signals.dlq" in names
    assert "prices.dlq" not in names
    assert CATALOGUE.topics["catalog"].cleanup_policy == "compact"


@pytest.mark.parametrize("topic", sorted(CATALOGUE.topics))
def test_schemas_are_valid_draft7_and_have_examples(topic: str) -> None:
    jsonschema.Draft7Validator.check_schema(CATALOGUE.schema(topic))
    assert _lines(EXAMPLES / f"{topic}.valid.jsonl")
    assert _lines(EXAMPLES / f"{topic}.invalid.jsonl")


@pytest.mark.parametrize(("topic", "event"), _cases("valid"))
def test_valid_examples_pass(topic: str, event: dict) -> None:
    result = VALIDATOR.check(topic, orjson.dumps(event), RECORD_TS)
    assert result == event
    jsonschema.Draft7Validator(CATALOGUE.schema(topic)).validate(event)  # same verdict


@pytest.mark.parametrize(("topic", "case"), _cases("invalid"))
def test_invalid_examples_rejected_with_reason(topic: str, case: dict) -> None:
    raw = case["raw"].encode() if "raw" in case else orjson.dumps(case["event"])
    result = VALIDATOR.check(topic, raw, RECORD_TS)
    assert isinstance(result, Rejection), result
    assert result.reason == case["expect"], result
    assert result.reason in REASONS and result.detail


@pytest.mark.parametrize(("raw", "reason"), [
    (b"\xff\xfe{}", "malformed_json"),
    (b'{"event_id": "\xed\xa0\x80"}', "malformed_json"),
    (b"", "malformed_json"),
    (b"\x80\x04\x95pickle", "malformed_json"),
    (b"null", "not_an_object"),
    (b'"just a string"', "not_an_object"),
    (b"[" * 5000 + b"]" * 5000, "malformed_json"),  # orjson's depth limit
    (b'{"a":' * 3000 + b"1" + b"}" * 3000, "malformed_json"),
    (b'{"event_id":"e","event_type":"view","event_time_ms":1,"user_id":"u","item_id":"i","a":'
     + b'{"a":' * 100 + b"1" + b"}" * 101, "unknown_field"),
])
def test_hostile_bytes_rejected(raw: bytes, reason: str) -> None:
    result = VALIDATOR.check("clicks", raw, RECORD_TS)
    assert isinstance(result, Rejection) and result.reason == reason, result


def test_size_limit_checked_before_decoding() -> None:
    big = b'{"event_id": "' + b"x" * 70_000 + b'"}'
    result = VALIDATOR.check("clicks", big, RECORD_TS)
    assert result == Rejection("too_large", f"{len(big)} bytes > limit 65536")


def test_tombstone_is_rejected_not_crashing() -> None:
    assert isinstance(VALIDATOR.check("catalog", None, RECORD_TS), Rejection)


def test_future_check_uses_record_time_not_wall_clock() -> None:
    event = _lines(EXAMPLES / "clicks.valid.jsonl")[0] | {"event_time_ms": 4_102_444_800_000}
    # Far ahead of a 2023 record timestamp, but fine for a record stamped in 2100.
    assert isinstance(VALIDATOR.check("clicks", orjson.dumps(event), RECORD_TS), Rejection)
    assert VALIDATOR.check("clicks", orjson.dumps(event), 4_102_444_800_000) == event
