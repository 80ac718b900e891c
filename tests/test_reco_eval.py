"""The recommendation evaluator: metric maths, the two baselines, and the prequential driver.

Pure and fast: hand-made rankings and event sequences, a hand-written REES46-format file, and
the baselines over the first 2,000 real REES46 events. No broker, no Redis (the engine's model is
left out with ``models=BASELINES``; it is exercised against a real Redis by its own tests).
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest

from engine.config import Settings
from engine.recommend.baselines import (
    Interaction,
    Popular,
    SessionCooccurrence,
    interactions,
)
from engine.recommend.evaluate import BASELINES, evaluate, run_evaluate_recommendations
from engine.recommend.metrics import (
    LIST_LENGTH,
    METRIC_KEYS,
    RankingScores,
    hit,
    ndcg,
    rank_of,
    reciprocal_rank,
)
from engine.replay.reading import Record

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
REES46 = DATASETS / "rees46" / "events_2019-10-01_first17k.csv.gz"
RANKED = [f"i{n}" for n in range(1, 21)]   # i1 .. i20, best first


# --- metrics ---------------------------------------------------------------------------------


def test_rank_is_first_occurrence_one_based() -> None:
    assert rank_of(RANKED, "i1") == 1
    assert rank_of(RANKED, "i20") == 20
    assert rank_of(RANKED, "nope") is None
    assert rank_of(["a", "b", "a"], "a") == 1


@pytest.mark.parametrize(("truth", "hr", "rr", "gain"), [
    ("i1", 1.0, 1.0, 1.0),
    ("i3", 1.0, 1 / 3, 1 / math.log2(4)),
    ("i10", 1.0, 1 / 10, 1 / math.log2(11)),
    ("i11", 0.0, 1 / 11, 0.0),        # outside the top 10, inside the top 20
    ("i20", 0.0, 1 / 20, 0.0),
    ("absent", 0.0, 0.0, 0.0),
])
def test_per_interaction_metrics(truth: str, hr: float, rr: float, gain: float) -> None:
    assert hit(RANKED, truth) == hr
    assert reciprocal_rank(RANKED, truth) == pytest.approx(rr)
    assert ndcg(RANKED, truth) == pytest.approx(gain)


def test_past_the_cut_off_and_short_lists_are_misses() -> None:
    longer = [*RANKED, "i21"]
    assert reciprocal_rank(longer, "i21") == 0.0
    assert hit(["a", "b"], "c") == 0.0 and ndcg([], "c") == 0.0


def test_scores_average_over_interactions_and_cover_the_seen_catalogue() -> None:
    scores = RankingScores()
    scores.add(["a", "b", "c"], "a")        # rank 1
    scores.add(["b", "d", "a"], "a")        # rank 3
    scores.add(["x", "b"], "z")             # miss; "x" is not in the catalogue below
    summary = scores.summary({"a", "b", "c", "d", "z", "q", "r", "s"})
    assert set(summary) == set(METRIC_KEYS)
    assert summary["hr@10"] == pytest.approx(2 / 3)
    assert summary["mrr@20"] == pytest.approx((1 + 1 / 3) / 3)
    assert summary["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert summary["coverage"] == pytest.approx(4 / 8)     # a b c d; x is not counted


def test_coverage_counts_only_the_top_ten() -> None:
    scores = RankingScores()
    scores.add(RANKED, "i1")
    assert scores.summary(set(RANKED))["coverage"] == pytest.approx(10 / 20)


def test_empty_scores_are_zero_not_nan() -> None:
    assert RankingScores().summary(set()) == dict.fromkeys(METRIC_KEYS, 0.0)


# --- interactions and baselines --------------------------------------------------------------


def click(user: str, item: str, session: str | None = None, t: int = 0) -> Record:
    event: dict[str, Any] = {"event_type": "view", "user_id": user, "item_id": item}
    if session is not None:
        event["session_id"] = session
    return Record("clicks", user, event, t)


def order(user: str, *items: str, kind: str = "purchase", t: int = 0) -> Record:
    event = {"event_type": kind, "user_id": user,
             "lines": [{"item_id": i, "quantity": 1} for i in items]}
    return Record("orders", user, event, t)


def test_interactions_are_item_clicks_cart_adds_and_purchase_lines() -> None:
    assert interactions(click("u", "a", "s", 5)) == [Interaction("u", "a", "s", 5)]
    assert [i.item_id for i in interactions(order("u", "a", "b"))] == ["a", "b"]
    assert interactions(order("u", "a"))[0].session == "u"       # no session id: the user
    add = Record("carts", "u", {"event_type": "add", "user_id": "u", "item_id": "a"}, 0)
    remove = Record("carts", "u", {"event_type": "remove", "user_id": "u", "item_id": "a"}, 0)
    search = Record("clicks", "u", {"event_type": "search", "user_id": "u", "query": "x"}, 0)
    guest = Record("orders", "o1", {"event_type": "purchase", "lines": [{"item_id": "a"}]}, 0)
    assert len(interactions(add)) == 1
    assert interactions(remove) == interactions(search) == interactions(guest) == []
    assert interactions(order("u", "a", kind="return")) == []


def test_popular_counts_every_interaction_and_breaks_ties_by_who_got_there_first() -> None:
    model = Popular()
    assert model.recommend("anyone", 5) == []
    for record in [click("u1", "a"), click("u2", "b"), order("u3", "b", "c"), click("u1", "c")]:
        model.learn(record)
    # b and c both have 2; b reached 2 first. a has 1. Everyone gets the same list.
    assert model.recommend("u1", 3) == ["b", "c", "a"]
    assert model.recommend("stranger", 2) == ["b", "c"]
    with pytest.raises(ValueError, match="k=65"):
        model.recommend("u1", 65)


def test_popular_top_list_matches_a_full_sort() -> None:
    model = Popular(capacity=5)
    counts: dict[str, int] = {}
    reached: dict[str, int] = {}
    for step in range(1, 400):
        item = f"i{(step * step * 7 + step) % 23}"   # a fixed, uneven sequence of 23 items
        model.learn_one(item)
        counts[item] = counts.get(item, 0) + 1
        reached[item] = step
        expected = sorted(counts, key=lambda i: (-counts[i], reached[i]))[:5]
        assert model.recommend("", 5) == expected, step


def test_cooccurrence_counts_sessions_not_repeats_and_ranks_by_raw_count() -> None:
    model = SessionCooccurrence()
    for record in [click("u1", "a", "s1"), click("u1", "b", "s1"), click("u1", "a", "s1"),
                   click("u1", "b", "s1"), click("u1", "c", "s1"),
                   click("u2", "a", "s2"), click("u2", "c", "s2"),
                   click("u3", "a", "s3"), click("u3", "c", "s3"), click("u3", "d", "s3")]:
        model.learn(record)
    assert model.neighbours("a") == {"b": 1, "c": 3, "d": 1}   # re-views of a/b add nothing
    assert "a" not in model.neighbours("a")
    # u3's most recent item is d: its neighbours by count (a, c tie at 1: a co-occurred first),
    # then popular items not already listed.
    assert model.recommend("u3", 2) == ["a", "c"]
    assert model.recommend("u3", 4) == ["a", "c", "b", "d"]


def test_cooccurrence_falls_back_to_popular_and_fills_short_lists() -> None:
    model = SessionCooccurrence()
    for record in [click("u1", "a", "s1"), click("u1", "b", "s1"), click("u2", "a", "s2"),
                   click("u2", "c", "s2"), click("u3", "a", "s3")]:
        model.learn(record)
    assert model.recommend("new-user", 3) == model.popular.recommend("", 3) == ["a", "b", "c"]
    # u1's last item b has one neighbour (a); the list is filled with popular items, no repeats
    assert model.recommend("u1", 3) == ["a", "b", "c"]
    assert model.recommend("u3", LIST_LENGTH) == ["b", "c", "a"]


def test_orders_without_a_session_co_occur_within_the_user() -> None:
    model = SessionCooccurrence()
    model.learn(order("u1", "x", "y"))
    model.learn(order("u1", "z"))
    assert model.neighbours("z") == {"x": 1, "y": 1}


# --- the driver ------------------------------------------------------------------------------

HEADER = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id," \
         "user_session\n"


def _rees46_file(tmp_path: Path, rows: list[tuple[str, str, str, str, str]]) -> Path:
    path = tmp_path / "events.csv"
    lines = [f"2019-10-01 00:00:{sec} UTC,{kind},{item},1,cat,brand,{price},{user},s-{user}\n"
             for sec, kind, item, user, price in rows]
    path.write_text(HEADER + "".join(lines))
    return path


def test_models_rank_before_they_learn_the_event(base_settings: Settings,
                                                 tmp_path: Path) -> None:
    path = _rees46_file(tmp_path, [
        ("01", "view", "a", "u1", "5.0"),   # nothing learnt yet: a miss for every model
        ("02", "view", "a", "u2", "5.0"),   # popular: a at rank 1; u2 is cold
        ("03", "view", "b", "u2", "0"),     # price 0: dead-lettered, neither scored nor learnt
        ("04", "cart", "a", "u2", "5.0"),   # returning: a still at rank 1 for popular
    ])
    result = asyncio.run(evaluate(base_settings, path, models=BASELINES, progress=False))
    assert result["events"] == 3 and result["records"] == 4
    assert result["dead_lettered"] == {"out_of_range": 1}
    assert result["engine"] is None
    popular = result["baselines"]["popular"]
    assert popular["hr@10"] == pytest.approx(2 / 3) and popular["coverage"] == 1.0
    assert result["returning"]["events"] == 1
    assert result["returning"]["baselines"]["popular"]["mrr@20"] == 1.0


@pytest.mark.skipif(not REES46.is_file(), reason=f"{REES46} not present")
def test_baselines_on_the_first_2000_rees46_events(base_settings: Settings) -> None:
    first = asyncio.run(evaluate(base_settings, REES46, limit=2000, models=BASELINES,
                                 progress=False))
    again = asyncio.run(evaluate(base_settings, REES46, limit=2000, models=BASELINES,
                                 progress=False))
    assert first["records"] == 2000 and 1900 < first["events"] <= 2000
    assert 0 < first["returning"]["events"] < first["events"]
    for block in (first, first["returning"]):
        for name in BASELINES:
            summary = block["baselines"][name]
            assert set(summary) == set(METRIC_KEYS)
            assert all(0.0 <= value <= 1.0 for value in summary.values()), (name, summary)
            assert summary["hr@10"] > 0.0
    for timing in ("elapsed_s", "model_seconds"):
        del first[timing], again[timing]
    assert first == again


def test_cli_entry_prints_one_json_object(base_settings: Settings, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = _rees46_file(tmp_path, [("01", "view", "a", "u1", "5.0"),
                                   ("02", "view", "b", "u1", "5.0")])
    code = run_evaluate_recommendations(base_settings, path, limit=None, as_json=True,
                                        models=BASELINES)
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"events", "engine", "baselines", "returning"}
    assert set(result["baselines"]) == {"popular", "cooccurrence"}
    assert set(result["returning"]["baselines"]["cooccurrence"]) == set(METRIC_KEYS)
