"""A worker whose item-stage child dies exits instead of running half. (Crashes of the whole
worker, and the state they leave, are the fault suite's: tests/faults/test_worker_crashes.py.)
"""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest

from engine.config import Settings
from engine.contracts import Catalogue

from .conftest import start_worker
from .helpers import open_store

pytestmark = pytest.mark.integration


async def test_a_worker_whose_pricing_child_dies_exits_instead_of_running_half(
        isolated: Settings, catalogue: Catalogue, tmp_path: Path) -> None:
    import os
    import time

    worker = start_worker(isolated, catalogue, tmp_path / "worker.log")
    store = open_store(isolated)
    try:
        beats = [orjson.loads(v) for v in
                 (await store.client.hgetall(store.key("workers"))).values()]
        (child,) = [b for b in beats if b["role"] == "pricing"]
        assert any(tp.startswith("price-signals:") for tp in child["assigned"])
        os.kill(child["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while worker.alive and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not worker.alive
        assert worker.returncode == 70
    finally:
        worker.stop()
        await store.close()
