"""Baselines the online recommender is measured against, and what counts as an interaction.

Both are deliberately plain, pure Python and deterministic, so a gain of the engine over them is
the engine's own and two runs give the same numbers:

* ``Popular`` ranks items by how many interactions they have had so far (every type counts
  one), for every user alike. It excludes nothing, not even what the user just looked at.
* ``SessionCooccurrence`` counts, for every pair of items, the sessions in which both were
  interacted with, and recommends the neighbours of the user's most recent item by that raw
  count: no time decay, no normalisation by popularity, no weights per interaction type.

They take the same replay ``Record``s as the live engine (``learn``), so the evaluator feeds all
models the same stream; ``interactions`` is the one definition of which records are interactions.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from engine.replay.reading import Record

#: How many items ``Popular`` keeps ranked; ``recommend`` serves at most this many.
POPULAR_CAPACITY = 64


@dataclass(frozen=True, slots=True)
class Interaction:
    """One user-item interaction: a click on an item, a cart add, or one line of a purchase."""

    user_id: str
    item_id: str
    #: The event's ``session_id``, or the user id when the event has none (orders carry none).
    session: str
    event_time_ms: int


def interactions(record: Record) -> list[Interaction]:
    """The interactions in ``record``: clicks with an item, cart adds, purchase order lines.

    Cart removals and checkouts, returns, and events without a user are not interactions (a
    guest's order cannot be predicted for anyone). An order gives one interaction per line.
    """
    event = record.event
    user = event.get("user_id")
    if not user:
        return []
    kind = event.get("event_type")
    items: list[str]
    if record.topic == "clicks":
        items = [event["item_id"]] if event.get("item_id") else []
    elif record.topic == "carts" and kind == "add":
        items = [event["item_id"]]
    elif record.topic == "orders" and kind == "purchase":
        items = [line["item_id"] for line in event["lines"]]
    else:
        items = []
    session = event.get("session_id") or user
    return [Interaction(user, item, session, record.event_time_ms) for item in items]


class Baseline(Protocol):
    """The synchronous shape of a baseline (the evaluator adapts it to the async engine's)."""

    def learn(self, record: Record) -> None: ...

    def recommend(self, user_id: str, k: int) -> list[str]: ...


class Popular:
    """Most-interacted items so far, the same list for every user.

    Ties (equal counts) go to the item that reached that count first, which keeps the order
    deterministic and favours items that became popular earlier. Only the top
    ``capacity`` items are kept sorted: a count only ever grows, and only the item just
    learnt changes its key, so an item outside the top can enter it only when it is learnt;
    one update costs a sort of ``capacity`` items, not of the catalogue.
    """

    def __init__(self, capacity: int = POPULAR_CAPACITY) -> None:
        self.capacity = capacity
        self._counts: dict[str, int] = {}
        self._reached: dict[str, int] = {}   # item -> sequence number when it reached its count
        self._seq = 0
        self._top: list[str] = []

    def learn(self, record: Record) -> None:
        for interaction in interactions(record):
            self.learn_one(interaction.item_id)

    def learn_one(self, item: str) -> None:
        self._seq += 1
        self._counts[item] = self._counts.get(item, 0) + 1
        self._reached[item] = self._seq
        if item not in self._top:
            if len(self._top) >= self.capacity and self._key(self._top[-1]) <= self._key(item):
                return
            self._top.append(item)
        self._top.sort(key=self._key)
        del self._top[self.capacity:]

    def recommend(self, user_id: str, k: int) -> list[str]:
        """The ``k`` most popular items (``user_id`` is ignored: everyone gets the same)."""
        if k > self.capacity:
            raise ValueError(f"Popular keeps {self.capacity} items ranked; asked for k={k}")
        return self._top[:k]

    def count(self, item: str) -> int:
        return self._counts.get(item, 0)

    def _key(self, item: str) -> tuple[int, int]:
        return -self._counts[item], self._reached[item]


class SessionCooccurrence:
    """Neighbours of the user's most recent item by raw session co-occurrence count.

    The count of a pair is the number of sessions (``Interaction.session``) in which both items
    were interacted with: an item is paired with the session's earlier items the first time it
    appears in that session, so re-viewing does not inflate counts and an item is never its own
    neighbour. Ties go to the neighbour that first co-occurred earlier. Users with no history
    get ``Popular``'s list; a list with fewer than ``k`` neighbours is filled up with popular
    items not already in it, so every model is judged on a list of the same length.
    """

    def __init__(self) -> None:
        self.popular = Popular()
        self._sessions: dict[str, dict[str, None]] = {}   # session -> its items, in order
        self._neighbours: dict[str, dict[str, int]] = {}
        self._last_item: dict[str, str] = {}

    def learn(self, record: Record) -> None:
        for interaction in interactions(record):
            self.learn_one(interaction)

    def learn_one(self, interaction: Interaction) -> None:
        item = interaction.item_id
        self.popular.learn_one(item)
        seen = self._sessions.setdefault(interaction.session, {})
        if item not in seen:
            mine = self._neighbours.setdefault(item, {})
            for other in seen:
                mine[other] = mine.get(other, 0) + 1
                theirs = self._neighbours[other]
                theirs[item] = theirs.get(item, 0) + 1
            seen[item] = None
        self._last_item[interaction.user_id] = item

    def recommend(self, user_id: str, k: int) -> list[str]:
        last = self._last_item.get(user_id)
        ranked: list[str] = []
        if last is not None:
            # nsmallest is stable, so equal counts keep first-co-occurred-first order
            best = heapq.nsmallest(k, self._neighbours[last].items(), key=lambda kv: -kv[1])
            ranked = [item for item, _ in best]
        if len(ranked) < k:
            ranked += _fill(ranked, self.popular.recommend("", min(2 * k,
                                                                   self.popular.capacity)), k)
        return ranked

    def neighbours(self, item: str) -> dict[str, int]:
        """Raw co-occurrence counts of ``item``'s neighbours (a copy)."""
        return dict(self._neighbours.get(item, {}))


def _fill(ranked: list[str], candidates: Iterable[str], k: int) -> list[str]:
    """Candidates not already in ``ranked``, as many as bring it up to ``k`` items."""
    present = set(ranked)
    extra = [item for item in candidates if item not in present]
    return extra[: k - len(ranked)]
