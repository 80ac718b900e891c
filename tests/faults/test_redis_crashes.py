"""Fault 2: Redis SIGKILLed under load and started again from its append-only file (fsync once a
second). Every other crash is a simulated power loss: the AOF is cut back to its length a second
before the kill, so Redis comes back without writes it had acknowledged and its watermarks fall
behind Kafka's committed offsets. Workers that find Redis behind the watermark they last saw
exit (as designed); a supervisor (here the test) starts new ones, which resume from the Redis
watermark, not the committed offset. The state must equal a clean single pass."""

from __future__ import annotations

import functools
import random
import time
from pathlib import Path

import pytest

from engine.contracts import Catalogue

from .conftest import Reference
from .harness import (
    FULL,
    Stack,
    count_differences,
    differences,
    save_figures,
    snapshot,
    wait_caught_up,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

CRASHES = 5 if FULL else 2


def latest_aof(run_dir: Path) -> Path:
    """The append-only file being written: the newest incremental part (Redis 7+ / Valkey)."""
    parts = sorted((run_dir / "appendonlydir").glob("*.incr.aof"),
                   key=lambda p: int(p.name.split(".")[-3]))
    assert parts, "no incremental AOF: is appendonly on?"
    return parts[-1]


def restart_exited(stack: Stack, restarts: list[int]) -> None:
    """The supervisor's job: a worker that exited is replaced."""
    for proc in list(stack.workers):
        if not proc.alive:
            restarts.append(proc.returncode or 0)
            stack.workers.remove(proc)
            stack.start_worker(wait=False)


async def test_redis_crashes(stack: Stack, clean: Reference, catalogue: Catalogue) -> None:
    rng = random.Random(11)
    records = clean.records
    stack.start_worker()
    publisher = stack.publish(records, rate=len(records) / (CRASHES * 8.0))
    restarts: list[int] = []
    lost_bytes = []
    started = time.monotonic()
    for n in range(CRASHES):
        deadline = time.monotonic() + rng.uniform(3.0, 6.0)
        while time.monotonic() < deadline:
            restart_exited(stack, restarts)
            time.sleep(0.1)
        power_loss = n % 2 == 0
        aof = latest_aof(stack.run_dir / "redis")
        size_before = aof.stat().st_size
        time.sleep(1.0)                       # the fsync window that a power loss takes away
        stack.crash_redis(before_restart=functools.partial(
            _lose_the_tail, aof, size_before, lost_bytes) if power_loss else None)
    while publisher.is_alive() or any(not p.alive for p in stack.workers):
        restart_exited(stack, restarts)
        time.sleep(0.2)
    store = stack.store()
    try:
        deadline = time.monotonic() + 600
        while True:
            restart_exited(stack, restarts)
            try:
                await wait_caught_up(stack.settings, catalogue, store, 20, "the workers")
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
        elapsed = time.monotonic() - started
        state = await snapshot(store, catalogue)
    finally:
        await store.close()
    logs = "".join(p.read_text(errors="replace") for p in stack.run_dir.glob("worker-*.log"))
    save_figures("redis_crashes", {
        "events_replayed": len(records), "redis_kills": CRASHES,
        "power_losses": len(lost_bytes), "aof_bytes_lost": lost_bytes,
        "worker_exits": len(restarts), "rewinds_to_redis_watermark":
        logs.count("Redis is behind Kafka"), "seconds": round(elapsed, 1),
        "keys_compared": len(clean.state), "differences": count_differences(state, clean.state)})
    assert differences(state, clean.state) == []
    assert sum(lost_bytes) > 0, "a power loss must have taken acknowledged writes away"
    assert "Redis is behind Kafka" in logs, "no worker resumed from the Redis watermark"


def _lose_the_tail(path: Path, size: int, lost: list[int]) -> None:
    """What a power loss does to a file fsynced once a second: the last second is gone."""
    lost.append(path.stat().st_size - size)
    with open(path, "r+b") as handle:
        handle.truncate(size)
