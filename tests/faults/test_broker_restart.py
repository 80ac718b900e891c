"""Fault 4: the broker restarts without its data (the embedded broker keeps none), under a
running worker and API. They must notice (the API's /readyz says the broker is down), survive
(no process exits), reconnect when it is back, and keep counting: the new, empty log starts at
offset 0 again, below the Redis watermarks, so a worker that trusted its watermarks would skip
every new record as a re-delivery. The state after the restart must count both sides once."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
import requests

from engine.contracts import Catalogue
from engine.embedded import create_topics, start_broker

from ..conftest import start_api
from ..helpers import expected_item_counts, item_counts, tagged_rees46
from .harness import FULL, Stack, crash, save_figures, wait_caught_up

pytestmark = [pytest.mark.integration, pytest.mark.faults]

RESTARTS = 3 if FULL else 1
EVENTS = 3000 if FULL else 1000


def ready(url: str) -> tuple[int, dict]:
    try:
        answer = requests.get(url + "/readyz", timeout=5)
        return answer.status_code, answer.json()
    except requests.RequestException as exc:
        return 0, {"error": str(exc)}


async def test_broker_restart(stack: Stack, catalogue: Catalogue) -> None:
    worker = stack.start_worker()
    api, api_url = start_api(stack.settings, stack.run_dir / "api.log")
    api.wait_ready(lambda: ready(api_url)[0] == 200, timeout=60)
    store = stack.store()
    broker_port = int(stack.broker.url.rsplit(":", 1)[1])
    pids = {worker.pid, api.pid}
    sent = []
    seen_unready: Counter[str] = Counter()
    outage = []
    try:
        records = tagged_rees46(uuid.uuid4().hex[:8], limit=EVENTS)
        for n in range(RESTARTS + 1):
            stack.publish(records).join()
            sent += records
            await wait_caught_up(stack.settings, catalogue, store, 180,
                                 f"the worker after restart {n}")
            if n == RESTARTS:
                break
            crash(stack.broker)
            down = time.monotonic()
            deadline = down + 8
            while time.monotonic() < deadline:
                status, body = ready(api_url)
                if status == 503 and not body["checks"]["broker"]["ok"]:
                    seen_unready["broker_down"] += 1
                assert worker.alive and api.alive, "a process exited while the broker was down"
                time.sleep(0.5)
            stack.broker = start_broker(stack.run_dir / f"broker-{n + 2}", port=broker_port)
            create_topics(stack.broker.url, catalogue.creation_plan(), replication_factor=1)
            # Producers come back before the worker has rejoined, and send more than the old
            # log held: the new log's end passes the old watermarks, so only the topic id
            # tells the worker that this is a new log.
            records = tagged_rees46(uuid.uuid4().hex[:8], limit=3 * EVENTS)
            deadline = time.monotonic() + 120
            while ready(api_url)[0] != 200:
                assert time.monotonic() < deadline, f"not ready again: {ready(api_url)}"
                assert worker.alive and api.alive
                time.sleep(0.5)
            outage.append(round(time.monotonic() - down, 1))
        expected = expected_item_counts(sent, catalogue)
        got = await item_counts(store, list(expected))
        counted = {i: {k: v for k, v in c.items() if k != "revenue"} for i, c in got.items()}
        want = {i: {k: float(v) for k, v in c.items()} for i, c in expected.items()}
    finally:
        await store.close()
        api.stop()
    logs = "".join(p.read_text(errors="replace") for p in stack.run_dir.glob("worker-*.log"))
    save_figures("broker_restart", {
        "restarts": RESTARTS, "events": len(sent), "outage_to_ready_s": outage,
        "unready_answers_while_down": seen_unready["broker_down"],
        "log_resets_logged": logs.count("The log was lost"),
        "process_restarts": len(pids ^ {worker.pid, api.pid}),
        "differences": sum(1 for i in want if counted.get(i) != want[i])})
    assert seen_unready["broker_down"] > 0
    assert "The log was lost" in logs
    assert counted == want
