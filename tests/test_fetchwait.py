"""The fetch-wait governor: the wait rises only while a partition with records does not move,
and falls back to the configured wait once partitions move again."""

from __future__ import annotations

from engine.worker.fetchwait import FetchWait


def test_a_partition_stuck_behind_records_doubles_the_wait_up_to_the_ceiling() -> None:
    fw = FetchWait(10, ceiling_ms=100, calm_ticks=3)
    assert fw.update({"clicks:0": (500, 9000)}) == 10      # first look: nothing to compare
    assert [fw.update({"clicks:0": (500, 9000 + n)}) for n in range(5)] == [20, 40, 80, 100, 100]


def test_moving_or_caught_up_partitions_bring_it_back_down_after_calm_looks() -> None:
    fw = FetchWait(10, ceiling_ms=1000, calm_ticks=2)
    fw.update({"a": (5, 50)})
    for _ in range(4):
        fw.update({"a": (5, 50)})
    assert fw.wait_ms == 160
    seen = [fw.update({"a": (5 + n, 50 + n)}) for n in range(1, 9)]   # moving, still behind
    assert seen == [160, 80, 80, 40, 40, 20, 20, 10]
    assert fw.update({"a": (100, 100)}) == 10               # caught up: never below the floor
    assert fw.update({"a": (100, 100)}) == 10


def test_unknown_positions_and_ends_never_count_as_stuck() -> None:
    fw = FetchWait(10, calm_ticks=100)
    for _ in range(3):
        assert fw.update({"a": (None, 50), "b": (7, None), "c": (7, 7)}) == 10
