"""Real infrastructure, started once per test session: a Tansu broker, a Valkey server, and one
engine worker process in its consumer group (joining takes seconds, so tests share it).

Tests that need their own worker lifecycle (crash and restart) start their own broker and Redis,
which cost a fraction of a second each.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
import redis

from engine.config import Settings, load_settings
from engine.contracts import Catalogue, load_catalogue
from engine.embedded import ManagedProcess, create_topics, free_port, start_broker, start_redis
from engine.store import StateStore

from .cluster import redis_cluster

WORKER_JOIN_TIMEOUT_S = 120.0
#: The shared worker matches the lowest competitor for categories under "e2e" (the pricing
#: end-to-end test's items), and keeps the default rule for everything else.
SHARED_WORKER_ENV = {"ENGINE_PRICING_CATEGORY_RULES": '["e2e=match"]'}


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    return load_catalogue()


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(kafka bootstrap, redis url) of a broker and a Redis shared by the session."""
    run_dir = tmp_path_factory.mktemp("servers")
    broker = start_broker(run_dir)
    store = start_redis(run_dir, fresh=True)
    try:
        yield broker.url, store.url
    finally:
        store.stop()
        broker.stop()


@pytest.fixture(scope="session")
def settings(base_settings: Settings, servers: tuple[str, str], catalogue: Catalogue
             ) -> Settings:
    kafka_url, redis_url = servers
    live = base_settings.with_urls(kafka_url, redis_url)
    create_topics(kafka_url, catalogue.creation_plan(), replication_factor=1)
    return live


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {"ENGINE_KAFKA_URL": settings.kafka.url, "ENGINE_REDIS_URL": settings.redis.url,
            "ENGINE_REDIS_NAMESPACE": settings.redis.namespace,
            "ENGINE_WORKER_GROUP_ID": settings.worker.group_id, **extra}


def worker_process(settings: Settings, log_path: Path, name: str = "worker",
                   **env: str) -> ManagedProcess:
    """`engine worker` for ``settings`` (not started)."""
    return ManagedProcess(name, [sys.executable, "-m", "engine", "--log-level", "info",
                                 "worker", "--loglevel", "info"], log_path,
                          env=worker_env(settings, **env))


def start_worker(settings: Settings, catalogue: Catalogue, log_path: Path) -> ManagedProcess:
    """Start `engine worker` and wait until its heartbeat covers every input partition."""
    proc = worker_process(settings, log_path, **SHARED_WORKER_ENV)
    proc.start()
    proc.wait_ready(lambda: assigned_partitions(settings) >= expected_partitions(catalogue),
                    timeout=WORKER_JOIN_TIMEOUT_S)
    return proc


def start_api(settings: Settings, log_path: Path, **env: str) -> tuple[ManagedProcess, str]:
    """Start `engine api` on a free port and wait until /healthz answers; (process, URL)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = ManagedProcess("api", [sys.executable, "-m", "engine", "api", "--host", "127.0.0.1",
                                  "--port", str(port)], log_path,
                          env=worker_env(settings, **env))
    proc.start()

    def answers() -> bool:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    proc.wait_ready(answers, timeout=30)
    return proc, url


def expected_partitions(catalogue: Catalogue) -> set[str]:
    return catalogue.input_partitions()


def heartbeats(settings: Settings) -> list[dict]:
    """The workers' heartbeats (`<ns>:workers`), on a plain Redis or a cluster."""
    client = (redis.RedisCluster if settings.redis.cluster else redis.Redis).from_url(
        settings.redis.url, decode_responses=True)
    try:
        return [orjson.loads(raw) for raw in
                client.hgetall(f"{settings.redis.namespace}:workers").values()]
    finally:
        client.close()


def assigned_partitions(settings: Settings) -> set[str]:
    now_ms = time.time() * 1000
    return {tp for beat in heartbeats(settings)
            if now_ms - beat["heartbeat_ms"] < 10_000 for tp in beat["assigned"]}


@pytest.fixture(scope="session")
def worker(settings: Settings, catalogue: Catalogue, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ManagedProcess]:
    """The shared engine worker (its own process, as in production)."""
    proc = start_worker(settings, catalogue, tmp_path_factory.mktemp("worker") / "worker.log")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def isolated(base_settings: Settings, catalogue: Catalogue, tmp_path: Path
             ) -> Iterator[Settings]:
    """A private broker and Redis for one test (cheap: well under a second to start)."""
    broker = start_broker(tmp_path)
    store = start_redis(tmp_path, fresh=True)
    try:
        live = base_settings.with_urls(broker.url, store.url)
        live = dataclasses.replace(live, worker=dataclasses.replace(
            live.worker, group_id=f"isolated-{os.getpid()}"))
        create_topics(broker.url, catalogue.creation_plan(), replication_factor=1)
        yield live
    finally:
        store.stop()
        broker.stop()


REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 3-primary Redis Cluster from the same server binary, shared by the session."""
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url


async def drop_namespace(store: StateStore) -> None:
    """Delete every key of a test's namespace."""
    async for key in store.client.scan_iter(match=f"{store.namespace}:*"):
        await store.client.delete(key)


@pytest.fixture
async def store(settings: Settings, request: pytest.FixtureRequest
                ) -> AsyncIterator[StateStore]:
    """The session's Redis under a namespace of this test's own, emptied afterwards."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    s = StateStore.open(dataclasses.replace(settings.redis,
                                            namespace=f"{module}-{request.node.name}"))
    yield s
    await drop_namespace(s)
    await s.close()
