"""The pass-through Faust agent: the floor for what Faust itself costs per event.

Built by the engine's own ``build_app`` (same broker tuning: fetch wait, linger, acks) and
consuming like the engine's agents (``take_events`` with the worker's ``batch_max`` and
``batch_within_ms``, concurrency 1), it does nothing with the events. Per batch it sends one
small record to ``bench-pass-done`` with the batch's record timestamps, so the benchmark can tell
when each event got through without reading Faust's internals.

Run by ``engine bench`` as a child process::

    ENGINE_KAFKA_URL=127.0.0.1:9092 python benchmarks/passthrough.py
"""

from __future__ import annotations

import os
import sys
from typing import Any

import faust
import orjson

from engine.config import load_settings
from engine.contracts import load_catalogue
from engine.worker.app import build_app

IN_TOPIC, DONE_TOPIC, PARTITIONS = "bench-pass", "bench-pass-done", 4
GROUP_ID = "bench-passthrough"


def main() -> int:
    settings = load_settings(None, os.environ)
    app = build_app(settings, load_catalogue(), group_id=GROUP_ID)
    topic = app.topic(IN_TOPIC, partitions=PARTITIONS)
    w = settings.worker

    async def passthrough(stream: Any) -> None:
        async for events in stream.take_events(w.batch_max, within=w.batch_within_ms / 1000):
            stamps = [int(e.message.timestamp * 1000) for e in events]
            await app.producer.send(DONE_TOPIC, None, orjson.dumps(stamps), 0, None, None)

    app.agent(topic, name="bench.passthrough", concurrency=1)(passthrough)
    faust.Worker(app, loglevel="warning", quiet=True,
                 redirect_stdouts=False).execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
