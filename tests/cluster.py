"""A real Redis Cluster for the state layer's contract tests: three primaries from the same
server binary as the embedded stack, slots split evenly, joined with CLUSTER MEET."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from engine.embedded import ManagedProcess, find_redis_binary, free_port

SLOTS = 16384


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@contextmanager
def redis_cluster(run_dir: Path, primaries: int = 3) -> Iterator[str]:
    """Start the cluster; yield a seed URL; stop every node on exit."""
    ports = [free_port() for _ in range(primaries)]
    # The bus port defaults to port + 10000, impossible above 55535: choose it explicitly.
    buses = [free_port() for _ in range(primaries)]
    nodes = [ManagedProcess(f"cluster-{port}", [
        str(find_redis_binary()), "--port", str(port), "--bind", "127.0.0.1",
        "--cluster-enabled", "yes", "--cluster-port", str(bus),
        "--cluster-config-file", f"nodes-{port}.conf",
        "--dir", str(run_dir), "--save", "", "--appendonly", "no"],
        run_dir / f"cluster-{port}.log") for port, bus in zip(ports, buses, strict=True)]
    try:
        for node in nodes:
            node.start()
        clients = [redis.Redis(port=port) for port in ports]
        for node, client in zip(nodes, clients, strict=True):
            node.wait_ready(lambda c=client: _answers(c), timeout=10)
        step = SLOTS // primaries
        for i, client in enumerate(clients):
            last = SLOTS - 1 if i == primaries - 1 else (i + 1) * step - 1
            client.execute_command("CLUSTER ADDSLOTSRANGE", i * step, last)
        for port, bus in zip(ports[1:], buses[1:], strict=True):
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", port, bus)
        deadline = time.monotonic() + 20
        while not all(c.cluster("info")["cluster_state"] == "ok" for c in clients):
            if time.monotonic() > deadline:
                raise RuntimeError("the test cluster did not reach cluster_state:ok in 20 s")
            time.sleep(0.1)
        for client in clients:
            client.close()
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for node in nodes:
            node.stop()
