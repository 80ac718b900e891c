"""The latency suite's own arithmetic (``benchmarks/``): the parts a wrong figure would come
from, tested without the stack (``engine bench --quick`` runs it all end to end)."""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import pytest

from engine.config import Settings
from engine.replay.sources import Record

from .conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import openloop  # noqa: E402
import suite  # noqa: E402


def test_first_reaching_is_the_first_poll_that_covers_the_offset() -> None:
    times = np.array([1.0, 2.0, 3.0, 4.0])
    marks = np.array([-1, 5, 5, 9])          # the watermark: highest offset applied
    at = openloop.first_reaching(times, marks, np.array([0, 5, 6, 9, 10]))
    assert at[:4].tolist() == [2.0, 2.0, 4.0, 4.0] and np.isnan(at[4])
    # a watermark read out of order never makes an offset look applied earlier
    at = openloop.first_reaching(times, np.array([3, 1, 4, 4]), np.array([2, 4]))
    assert at.tolist() == [1.0, 3.0]


def test_percentiles_are_nearest_rank_and_empty_is_none() -> None:
    p = suite.percentiles(np.arange(1, 101, dtype=float))
    assert (p["p50"], p["p99"], p["max"], p["count"]) == (50.0, 99.0, 100.0, 100)
    assert suite.percentiles(np.empty(0))["p99"] is None


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    buckets = [(0.01, 50.0), (0.02, 100.0), (float("inf"), 100.0)]
    assert suite.histogram_quantile(buckets, 0.5) == pytest.approx(0.01)
    assert suite.histogram_quantile(buckets, 0.75) == pytest.approx(0.015)
    assert suite.histogram_quantile([(0.01, 0.0)], 0.5) is None
    before = {("engine_stage_seconds", "redis_apply", "0.01"): 10.0,
              ("engine_stage_seconds", "redis_apply", "count"): 10.0}
    after = {("engine_stage_seconds", "redis_apply", "0.01"): 10.0,
             ("engine_stage_seconds", "redis_apply", "0.02"): 30.0,
             ("engine_stage_seconds", "redis_apply", "count"): 30.0}
    fig = suite.stage_figures(before, after)["redis_apply"]
    assert fig["count"] == 20 and 10.0 < fig["p50_ms"] <= 20.0


def test_interleaving_keeps_the_shares_and_suffixes_repeats() -> None:
    records = [Record(t, f"k{i}", {"event_id": f"{t}-{i}", "event_time_ms": i}, i)
               for t, n in (("clicks", 30), ("orders", 5), ("competitor-prices", 40),
                            ("carts", 2), ("catalog", 9)) for i in range(n)]
    out = openloop.interleaved(records, 2_000)
    counts = Counter(t for t, _, _ in out)
    total = sum(w for _, w in openloop.SHARES)
    for topic, weight in openloop.SHARES:
        assert abs(counts[topic] - 2_000 * weight / total) <= 1
    ids = [e["event_id"] for _, _, e in out]
    assert len(ids) == len(set(ids)), "repeated events get suffixed ids"
    assert "catalog" not in counts
    # a data set left out of the run: its share goes to the others, nothing divides by zero
    no_carts = [r for r in records if r.topic != "carts"]
    assert "carts" not in Counter(t for t, _, _ in openloop.interleaved(no_carts, 100))


def test_stocking_targets_skip_returns(base_settings: Settings, catalogue) -> None:
    mix = openloop.Mix()
    line = {"item_id": "85123A", "quantity": 6, "unit_price": 2.55}
    order = {"event_id": "o1", "event_type": "purchase", "event_time_ms": 1291191960000,
             "order_id": "536365", "user_id": "17850", "region": "united-kingdom",
             "currency": "GBP", "lines": [line]}
    mix.add("orders", "17850", order, True, catalogue)
    mix.add("orders", "17850", dict(order, event_type="return", order_id="C1"), True,
            catalogue)
    assert 0 in mix.stock_dests and 1 not in mix.stock_dests


def test_headline_has_the_issue_keys() -> None:
    result = {"steps": [], "floors": {}, "throughput": {}}
    head = suite.headline(result)
    assert set(head) == {"rate_eps", "e2e_p99_ms", "broker_floor_p99_ms", "throughput_eps",
                         "passthrough_eps", "query_p99_ms"}
    assert set(head["e2e_p99_ms"]) == {"price", "recommendations", "stocking"}
