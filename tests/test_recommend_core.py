"""Recommendation maths as pure functions: weights, decay, cosine, scoring, rules, explanations."""

from __future__ import annotations

import dataclasses
import math

import pytest

from engine.config import load_settings
from engine.core.recommend import (
    BOUGHT_TOGETHER,
    CO_VIEWED,
    Candidate,
    RecommendCore,
    cosine,
    diversify,
    excluded_purchase,
    explain,
    in_category,
    recency_weight,
    score_candidates,
)

S = load_settings().recommend
CORE = RecommendCore(S)
T = 1_569_888_000_000  # 2019-10-01


def _click(kind: str, **extra: object) -> dict:
    return {"event_id": "e", "event_type": kind, "event_time_ms": T, "user_id": "u",
            "item_id": "dvd-1", **extra}


def test_type_weights_are_ordered_view_wishlist_cart_purchase() -> None:
    view = CORE.weight("clicks", _click("view"))
    wish = CORE.weight("clicks", _click("wishlist"))
    liked = CORE.weight("clicks", _click("rating", rating=5))
    disliked = CORE.weight("clicks", _click("rating", rating=1))
    cart = CORE.weight("carts", {"event_type": "add"})
    bought = CORE.weight("orders", {"event_type": "purchase"})
    assert view < wish <= cart < bought and view < liked
    assert disliked < view
    assert CORE.weight("carts", {"event_type": "remove"}) == 0


def test_forward_decay_doubles_per_half_life() -> None:
    later = T + int(S.half_life_days * 86_400_000)
    assert CORE.growth(later) / CORE.growth(T) == pytest.approx(2.0)
    assert CORE.growth(S.decay_epoch_ms) == pytest.approx(1.0)


def test_a_view_becomes_covisit_popularity_and_labels() -> None:
    ops = CORE.ops("clicks", _click("view", category="media.video.dvd", brand="warner",
                                    region="north"))
    codes = [op[0] for op in ops]
    assert codes == ["covisit", "zincrby", "zincrby", "zincrby", "zincrby", "hset", "hset", "hset"]
    assert [op[1] for op in ops[2:5]] == ["cv:popcat:media", "cv:popcat:media.video",
                                          "cv:popcat:media.video.dvd"]
    covisit = ops[0]
    assert covisit[1] == "cv:hist:u" and covisit[2] == "dvd-1"
    t, score, window, history, partners, top_n, prefix = covisit[3].split("|")
    assert int(t) == T and float(score) == pytest.approx(S.weight_view * CORE.growth(T))
    assert int(window) == S.session_window_minutes * 60_000
    assert (int(history), int(partners), int(top_n)) == (
        S.history_size, S.partners_per_event, S.neighbours_per_item)
    assert prefix == "cv:co:"
    assert ("hset", "icat", "dvd-1", "media.video.dvd") in ops


def test_order_lines_are_bought_together_even_for_guests() -> None:
    order = {"event_id": "o", "event_type": "purchase", "event_time_ms": T, "order_id": "536365",
             "region": "united-kingdom", "lines": [
                 {"item_id": "a", "quantity": 1, "unit_price": 1.0},
                 {"item_id": "b", "quantity": 2, "unit_price": 1.0}]}
    ops = CORE.ops("orders", order)
    assert [op[1] for op in ops if op[0] == "covisit"] == ["bt:hist:order:536365"] * 2
    assert CORE.ops("orders", order | {"event_type": "return"}) == []


def test_searches_and_checkouts_add_no_item_links() -> None:
    search = {"event_id": "s", "event_type": "search", "event_time_ms": T, "user_id": "u",
              "query": "dvd"}
    assert CORE.ops("clicks", search) == []
    assert CORE.ops("carts", {"event_type": "checkout", "user_id": "u"}) == []


def test_cosine_keeps_bestsellers_from_dominating() -> None:
    # dvd-1 co-occurs 10 times with a bestseller (popularity 1000) and 5 times with another
    # DVD (popularity 10): raw counts pick the bestseller, cosine the DVD.
    assert cosine(5, 50, 10) > cosine(10, 50, 1000)
    assert cosine(0, 1, 1) == 0 and cosine(1, 0, 1) == 0
    assert cosine(4, 4, 4) == pytest.approx(1.0)


def test_recency_weight_halves_per_half_life() -> None:
    assert recency_weight(0, 10) == 1.0
    assert recency_weight(10, 10) == pytest.approx(0.5)
    assert recency_weight(-5, 10) == 1.0


def test_scores_sum_over_seeds_and_relations_with_explanations() -> None:
    sims = {CO_VIEWED: {"a": {"x": cosine(4, 4, 4), "y": cosine(1, 4, 1)},
                        "b": {"x": cosine(1, 1, 4)}},
            BOUGHT_TOGETHER: {"a": {"y": cosine(2, 2, 2)}}}
    scored = score_candidates({"a": 1.0, "b": 0.5}, sims, bt_boost=2.0)
    assert scored["x"].score == pytest.approx(1.0 * 4 / 4 + 0.5 * 1 / 2)
    assert scored["y"].score == pytest.approx(1 / math.sqrt(4) + 2.0 * 2 / 2)
    assert explain(scored["x"]) == {"type": "co_viewed_with", "items": ["a", "b"]}
    assert explain(scored["y"]) == {"type": "bought_together_with", "items": ["a"]}


def test_candidate_ignores_non_positive_evidence() -> None:
    c = Candidate("x")
    c.add(CO_VIEWED, "a", 0.0)
    assert c.score == 0 and not c.evidence


def test_category_prefixes() -> None:
    assert in_category("electronics.video.dvd", "electronics.video")
    assert in_category("electronics.video", "electronics.video")
    assert not in_category("electronics.videogames", "electronics.video")
    assert not in_category(None, "x")


def test_diversity_caps_brand_and_category() -> None:
    labels = {"a": ("dvd", "warner"), "b": ("dvd", "warner"), "c": ("dvd", "sony"),
              "d": ("books", "penguin")}
    assert diversify("abcd", labels, 4, 1, 0) == ["a", "c", "d"]
    assert diversify("abcd", labels, 4, 0, 2) == ["a", "b", "d"]
    assert diversify("abcd", labels, 2, 0, 0) == ["a", "b"]


def test_purchases_excluded_unless_repurchasable() -> None:
    assert excluded_purchase("media.video.dvd", ())
    assert not excluded_purchase("grocery.milk", ("grocery",))
    assert excluded_purchase(None, ("grocery",))


def test_settings_drive_the_core() -> None:
    heavy = RecommendCore(dataclasses.replace(S, weight_view=7.0))
    assert heavy.weight("clicks", _click("view")) == 7.0


def test_category_levels_are_bounded() -> None:
    from engine.core.recommend import category_levels
    assert category_levels("a.b.c.d.e") == ["a", "a.b", "a.b.c"]
    assert category_levels("giftware") == ["giftware"]
