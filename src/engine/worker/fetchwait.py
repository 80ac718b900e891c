"""How long a fetch may wait at the broker: short while the worker keeps up, longer while it
cannot move.

The worker fetches with a short ``fetch_max_wait_ms`` (10 ms by default) so that an event
waits little at the head of the log. A broker may need longer than that to serve a fetch from
deep in a log: the embedded broker (Tansu 0.6, memory storage) takes longer the larger the
log, and returns nothing when the wait runs out. A worker that fell behind there fetched empty
answers forever while its partitions held records (seen in the soak: every `clicks` partition
stopped for good after a few minutes of lag). So once a second the worker looks at its
partitions: where a partition holds records past the consumer's position and the position has
not moved since the last look, the wait doubles (up to ``ceiling_ms``); after ``calm_ticks``
looks without such a partition it halves back towards the configured wait.

A longer wait costs nothing while records are there to return (a broker answers as soon as it
has them); it only delays an answer that would have been empty.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping
from typing import Any

#: The longest wait the governor sets (aiokafka's default is 500 ms; Faust's 1,500 ms).
CEILING_MS = 1000
#: Looks (seconds) without a stuck partition before the wait halves.
CALM_TICKS = 5


class FetchWait:
    """The fetch wait to use, from the partitions' positions and ends seen once a tick."""

    def __init__(self, floor_ms: int, ceiling_ms: int = CEILING_MS,
                 calm_ticks: int = CALM_TICKS) -> None:
        self.floor_ms = floor_ms
        self.ceiling_ms = max(ceiling_ms, floor_ms)
        self.calm_ticks = calm_ticks
        self.wait_ms = floor_ms
        self.calm = 0
        self._positions: dict[Hashable, int] = {}

    def update(self, partitions: Mapping[Hashable, tuple[int | None, int | None]]) -> int:
        """``partitions``: partition -> (consumer position, log end), None where unknown.
        Returns the wait to use from now on."""
        stuck = [tp for tp, (position, end) in partitions.items()
                 if position is not None and end is not None and end > position
                 and self._positions.get(tp) == position]
        self._positions = {tp: position for tp, (position, _) in partitions.items()
                           if position is not None}
        if stuck:
            self.wait_ms = min(max(self.wait_ms * 2, 1), self.ceiling_ms)
            self.calm = 0
        else:
            self.calm += 1
            if self.calm >= self.calm_ticks:
                self.wait_ms = max(self.wait_ms // 2, self.floor_ms)
                self.calm = 0
        return self.wait_ms


def fetch_positions(fetcher: Any, held: Collection[Any]
                    ) -> dict[Hashable, tuple[int | None, int | None]] | None:
    """Position and log end of each partition aiokafka's fetcher is fetching (None between
    assignments). Left out: partitions paused, held back by Faust because their stream's buffer
    is full (``held``), or with fetched records not yet taken: there the worker, not the broker,
    is what does not move. aiokafka's thread updates these as they are read: each is read once.
    """
    subscription = getattr(getattr(fetcher, "_subscriptions", None), "subscription", None)
    assignment = getattr(subscription, "assignment", None)
    if assignment is None:
        return None
    buffered = set(getattr(fetcher, "_records", {}))
    out: dict[Hashable, tuple[int | None, int | None]] = {}
    for tp in list(assignment.tps):
        state = assignment.state_value(tp)
        if state is None or state.paused or tp in buffered or tp in held:
            continue
        out[tp] = (state._position, state.highwater)
    return out
