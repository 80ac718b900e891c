"""Ranking metrics for next-interaction prediction, one relevant item per interaction.

Pure functions of a ranked list of item ids (best first) and the one item the user actually
interacted with next. Choices, stated once:

* **Rank** is the 1-based position of the *first* occurrence of the true item; a list that does
  not contain it (or contains it only past the cut-off) scores 0 on every metric. Lists may be
  shorter than the cut-off (a cold model may have nothing to say): missing places are misses,
  never an error, so a model is not rewarded for returning less.
* **HR@10** (hit rate): 1 if rank <= 10. With a single relevant item it equals recall@10.
* **MRR@20**: 1/rank if rank <= 20, else 0 (the truncated reciprocal rank).
* **NDCG@10**: with one relevant item the ideal DCG is 1, so NDCG = 1/log2(rank + 1) if
  rank <= 10, else 0.
* **Aggregates** are plain means over interactions (micro-averaged: a user with many
  interactions weighs more, as in a live storefront where every page view is a request).
* **Catalogue coverage**: distinct items that appeared in any top-10 list, divided by the
  distinct items in the catalogue seen in the data (every item of any evaluated interaction,
  including items first seen after the list was made). It measures how much of the catalogue a
  model ever exposes, which accuracy alone hides (most-popular scores well and covers ~nothing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

HIT_K = 10
MRR_K = 20
NDCG_K = 10
COVERAGE_K = 10
#: Length of the list every model is asked for (the largest cut-off of any metric).
LIST_LENGTH = max(HIT_K, MRR_K, NDCG_K, COVERAGE_K)

METRIC_KEYS = ("hr@10", "mrr@20", "ndcg@10", "coverage")


def rank_of(ranked: Sequence[str], truth: str) -> int | None:
    """1-based position of the first occurrence of ``truth`` in ``ranked``, or None."""
    for position, item in enumerate(ranked, start=1):
        if item == truth:
            return position
    return None


def hit(ranked: Sequence[str], truth: str, k: int = HIT_K) -> float:
    """1.0 if ``truth`` is among the first ``k`` items, else 0.0."""
    rank = rank_of(ranked[:k], truth)
    return 0.0 if rank is None else 1.0


def reciprocal_rank(ranked: Sequence[str], truth: str, k: int = MRR_K) -> float:
    """1/rank of ``truth`` within the first ``k`` items, 0.0 if it is not there."""
    rank = rank_of(ranked[:k], truth)
    return 0.0 if rank is None else 1.0 / rank


def ndcg(ranked: Sequence[str], truth: str, k: int = NDCG_K) -> float:
    """NDCG@k with one relevant item: 1/log2(rank + 1) within the first ``k``, else 0.0."""
    rank = rank_of(ranked[:k], truth)
    return 0.0 if rank is None else 1.0 / math.log2(rank + 1)


@dataclass
class RankingScores:
    """Running sums of the per-interaction metrics and the items exposed in any top-10."""

    n: int = 0
    hits: float = 0.0
    reciprocal_ranks: float = 0.0
    ndcgs: float = 0.0
    exposed: set[str] = field(default_factory=set)

    def add(self, ranked: Sequence[str], truth: str) -> None:
        """Score one interaction: ``ranked`` was produced before ``truth`` was learnt."""
        self.n += 1
        self.hits += hit(ranked, truth)
        self.reciprocal_ranks += reciprocal_rank(ranked, truth)
        self.ndcgs += ndcg(ranked, truth)
        self.exposed.update(ranked[:COVERAGE_K])

    def summary(self, catalogue: AbstractSet[str]) -> dict[str, float]:
        """Means over the interactions added, and the share of ``catalogue`` exposed.

        Only exposed items that are in ``catalogue`` count, so coverage stays within [0, 1]
        even if a model recommends something the data never mentions. An empty accumulator
        gives zeros rather than NaN, so the JSON stays valid.
        """
        n = self.n or 1
        covered = len(self.exposed.intersection(catalogue))
        return {
            "hr@10": self.hits / n,
            "mrr@20": self.reciprocal_ranks / n,
            "ndcg@10": self.ndcgs / n,
            "coverage": covered / len(catalogue) if catalogue else 0.0,
        }
