"""A corpus of hostile input records, built from real events (each one a real event damaged one
way, so it looks like what a broken or malicious producer would send), with the reason the
engine must dead-letter it for."""

from __future__ import annotations

import functools
import pickle
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from engine.replay.sources import Record

MB = 1024 * 1024
JAN_1970_MS = 0
JAN_2100_MS = 4_102_444_800_000


@dataclass(frozen=True)
class Hostile:
    kind: str
    topic: str
    key: bytes | None
    value: bytes | None
    #: acceptable dead-letter reasons (some damage can be described two ways)
    reasons: frozenset[str]


def _numeric_fields(event: dict) -> list[str]:
    return [k for k, v in event.items() if isinstance(v, int | float) and not isinstance(v, bool)]


def _truncated(rng: random.Random, r: Record) -> Hostile:
    raw = orjson.dumps(r.event)
    return Hostile("truncated_json", r.topic, r.key.encode(), raw[:rng.randrange(1, len(raw))],
                   frozenset({"malformed_json"}))


WRONG = ["12", 12, 1.5, True, None, [], {}, ["x"], {"a": 1}, "", "x" * 300, -1, 2**64 - 1]


def _wrong_type(rng: random.Random, r: Record,
                schema_valid: Callable[[str, dict], bool] = lambda t, e: False) -> Hostile:
    while True:   # until the contract (checked by schema_valid) refuses it
        event = dict(r.event)
        field = rng.choice(sorted(event))
        original = event[field]
        event[field] = rng.choice([w for w in WRONG if type(w) is not type(original)])
        if not schema_valid(r.topic, event):
            break
    return Hostile("wrong_type", r.topic, r.key.encode(), orjson.dumps(event), frozenset({
        "wrong_type", "out_of_range", "invalid_value", "missing_field", "unknown_event_type",
        "stale_timestamp", "future_timestamp"}))


def _nan_inf(rng: random.Random, r: Record) -> Hostile:
    fields = _numeric_fields(r.event) or ["event_time_ms"]
    field = rng.choice(fields)
    token = rng.choice(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "nan", "inf"])
    text = orjson.dumps({k: v for k, v in r.event.items() if k != field}).decode()
    raw = text[:-1] + f', "{field}": {token}}}'
    return Hostile("nan_inf", r.topic, r.key.encode(), raw.encode(),
                   frozenset({"malformed_json"}))


def _blob(size: int) -> Callable[[random.Random, Record], Hostile]:
    def make(rng: random.Random, r: Record) -> Hostile:
        event = dict(r.event, note="x" * size)
        return Hostile(f"blob_{size // 1024}k", r.topic, r.key.encode(), orjson.dumps(event),
                       frozenset({"too_large"}))
    return make


def _deep(rng: random.Random, r: Record) -> Hostile:
    depth = rng.choice([200, 5_000, 100_000])
    nested = "[" * depth + "]" * depth
    text = orjson.dumps(r.event).decode()[:-1] + f', "nested": {nested}}}'
    return Hostile("deep_nesting", r.topic, r.key.encode(), text.encode(),
                   frozenset({"malformed_json", "unknown_field", "too_large"}))


def _invalid_utf8(rng: random.Random, r: Record) -> Hostile:
    raw = orjson.dumps(r.event)
    at = raw.index(b'"', raw.index(b":") + 1) + 1          # inside the first string value
    junk = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"])
    return Hostile("invalid_utf8", r.topic, r.key.encode(), raw[:at] + junk + raw[at:],
                   frozenset({"malformed_json"}))


class _Exploit:
    """Unpickling this would run a shell command: the engine must never unpickle."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os
        return (os.system, ("touch /tmp/engine-was-unpickled",))


def _pickle(rng: random.Random, r: Record) -> Hostile:
    payload = rng.choice([r.event, _Exploit()])
    raw = pickle.dumps(payload, protocol=rng.choice([2, 4, 5]))
    return Hostile("pickle", r.topic, r.key.encode(), raw, frozenset({"malformed_json"}))


def _timestamp(rng: random.Random, r: Record) -> Hostile:
    when = rng.choice([JAN_1970_MS, 1, 86_400_000, JAN_2100_MS, JAN_2100_MS + 12345])
    return Hostile("timestamp_1970_2100", r.topic, r.key.encode(),
                   orjson.dumps(dict(r.event, event_time_ms=when)),
                   frozenset({"stale_timestamp", "future_timestamp"}))


def _not_an_event(rng: random.Random, r: Record) -> Hostile:
    raw = rng.choice([b"", b"null", b"[]", b"42", b'"text"', b"true", b"{}", b"\x00" * 64,
                      b'{"event_id": "x"}', orjson.dumps([r.event])])
    reasons = {"malformed_json", "not_an_object", "missing_field"}
    return Hostile("not_an_event", r.topic, r.key.encode(), raw, frozenset(reasons))


def _duplicate(rng: random.Random, r: Record) -> Hostile:
    """A real event sent again (same id, same partition): a producer's retry."""
    return Hostile("duplicate_id", r.topic, r.key.encode(), orjson.dumps(r.event),
                   frozenset({"duplicate_event_id"}))


KINDS: dict[str, Callable[[random.Random, Record], Hostile]] = {
    "truncated_json": _truncated, "wrong_type": _wrong_type, "nan_inf": _nan_inf,
    "deep_nesting": _deep, "invalid_utf8": _invalid_utf8, "pickle": _pickle,
    "timestamp_1970_2100": _timestamp, "not_an_event": _not_an_event,
    "duplicate_id": _duplicate, "blob_100k": _blob(100 * 1024),
}


def corpus(records: Sequence[Record], n: int, schema_valid: Callable[[str, dict], bool],
           accepted: Callable[[Record], bool], seed: int = 3, blobs_10mb: int = 1
           ) -> list[tuple[int, Hostile]]:
    """``n`` hostile records (about equally many of each kind, plus ``blobs_10mb`` blobs of
    10 MB), each with the index in ``records`` after which it is sent. Each damages an event
    the engine accepts (``accepted``); a duplicate follows the original it repeats; a wrong
    type is kept only if the topic's contract refuses it (``schema_valid``, an oracle apart
    from the engine's validator: an int where a float goes is no error)."""
    makers = dict(KINDS, wrong_type=functools.partial(_wrong_type, schema_valid=schema_valid))
    rng = random.Random(seed)
    inputs = [i for i, r in enumerate(records) if r.topic in ("clicks", "carts", "orders")
              and accepted(r)]
    out: list[tuple[int, Hostile]] = []
    kinds = list(makers)
    for j in range(n):
        kind = kinds[j % len(kinds)]
        i = rng.choice(inputs)
        after = rng.randrange(i, len(records)) if kind == "duplicate_id" else \
            rng.randrange(len(records))
        out.append((after, makers[kind](rng, records[i])))
    for _ in range(blobs_10mb):
        i = rng.choice(inputs)
        out.append((rng.randrange(len(records)), _blob(10 * MB)(rng, records[i])))
    return sorted(out, key=lambda pair: pair[0])
