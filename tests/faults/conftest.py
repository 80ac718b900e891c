"""Fixtures of the fault suite: the real events every test replays, and the clean single-pass
run they are compared with (one stack, one worker, no fault; computed once per session)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from engine.config import Settings
from engine.contracts import Catalogue
from engine.replay.sources import Record

from .harness import Stack, decision_ids, fault_records, snapshot, wait_caught_up


@dataclass(frozen=True)
class Reference:
    records: list[Record]
    state: dict[str, Any]
    decisions: int


@pytest.fixture(scope="session")
def records(base_settings: Settings) -> list[Record]:
    return fault_records(base_settings)


@pytest.fixture(scope="session")
async def clean(base_settings: Settings, catalogue: Catalogue, records: list[Record],
                tmp_path_factory: pytest.TempPathFactory) -> Reference:
    stack = Stack(base_settings, catalogue, tmp_path_factory.mktemp("clean"))
    store = stack.store()
    try:
        stack.start_worker()
        stack.publish(records).join()
        await wait_caught_up(stack.settings, catalogue, store, 600, "the clean run")
        state = await snapshot(store, catalogue)
        ids = decision_ids(stack.settings)
        assert ids and max(ids.values()) == 1, "the clean run published a decision twice"
        return Reference(records, state, len(ids))
    finally:
        await store.close()
        stack.close()


@pytest.fixture
def stack(base_settings: Settings, catalogue: Catalogue, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    s = Stack(base_settings, catalogue, tmp_path_factory.mktemp("faults"))
    try:
        yield s
    finally:
        s.close()
