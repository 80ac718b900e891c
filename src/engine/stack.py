"""The embedded stack: broker, Redis, worker and API on one machine, stopped in reverse order.

Used by ``engine up`` (until Ctrl-C or SIGTERM) and ``engine demo`` (until the replay is done).
The worker and the API run as child processes of their own, exactly as in production, pointed at
the embedded servers through ``ENGINE_KAFKA_URL`` / ``ENGINE_REDIS_URL``.
"""

from __future__ import annotations

import secrets
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis

from engine.config import Settings
from engine.contracts import Catalogue, load_catalogue
from engine.embedded import (
    ManagedProcess,
    Supervisor,
    broker_process,
    create_topics,
    free_port,
    redis_process,
)
from engine.views import expected_partitions

#: A Faust worker joins its consumer group in 5-30 s on the embedded broker.
WORKER_READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Stack:
    supervisor: Supervisor
    settings: Settings
    api_url: str
    run_dir: Path


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def embedded_stack(settings: Settings, base_env: Mapping[str, str],
                   on_servers: Callable[[Settings], None] | None = None
                   ) -> Iterator[Stack]:
    """Start everything; leaving the block (normally, by error or by signal) stops everything.

    ``on_servers`` is called once broker, Redis and topics are up, before the worker joins
    (the benchmark starts its own Faust worker there, so that the two joins overlap)."""
    emb = settings.embedded
    run_dir = Path(emb.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    catalogue = load_catalogue()
    with Supervisor() as sup:
        started = time.monotonic()
        broker = sup.add_and_start(*broker_process(run_dir, emb.host, emb.kafka_port))
        say(f"  broker   {broker.url:<28} (Tansu, memory storage)")
        # The broker forgets everything at a restart, so Redis must start empty too: watermarks
        # of a previous run would point past the new, empty partitions.
        store = sup.add_and_start(*redis_process(run_dir, emb.host, emb.redis_port, fresh=True))
        say(f"  redis    {store.url:<28} (append-only file in {run_dir})")
        live = settings.with_urls(broker.url, store.url)
        create_topics(live.kafka.url, catalogue.creation_plan(),
                      live.kafka.kafka_python_options(),
                      replication_factor=live.kafka.replication_factor)
        if on_servers is not None:
            on_servers(live)
        env = {**base_env, "ENGINE_KAFKA_URL": live.kafka.url, "ENGINE_REDIS_URL": live.redis.url,
               "ENGINE_KAFKA_CREATE_TOPICS": "false"}
        worker = ManagedProcess("worker", [sys.executable, "-m", "engine", "--log-level", "info",
                                           "worker", "--loglevel", "info"],
                                run_dir / "worker.log", env=env)
        say("  worker   joining the consumer group ...")
        sup.add_and_start(worker, _worker_ready(live, catalogue), timeout=WORKER_READY_TIMEOUT_S)
        say(f"  worker   ready (pid {worker.pid}, log {worker.log_path})")
        port = emb.api_port or free_port(emb.host)
        api_url = f"http://{emb.host}:{port}"
        api_env = {**env}
        key_file = run_dir / "admin.key"
        if not settings.api.keys:
            # No keys configured: an admin key for this run only, in a file only this user can
            # read (printing it would leave it in terminal logs).
            token = secrets.token_urlsafe(24)
            key_file.touch(mode=0o600)
            key_file.chmod(0o600)
            key_file.write_text(token + "\n")
            api_env["ENGINE_API_KEYS"] = orjson.dumps([f"operator:admin:{token}"]).decode()
        api = ManagedProcess("api", [sys.executable, "-m", "engine", "api", "--host", emb.host,
                                     "--port", str(port)], run_dir / "api.log",
                             env=api_env, url=api_url)
        sup.add_and_start(api, lambda: _http_ok(api_url + "/healthz"), timeout=30)
        say(f"  api      {api_url}  (docs {api_url}/docs, metrics {api_url}/metrics)")
        if not settings.api.keys:
            say(f"  admin    API key for price overrides (this run): in {key_file}")
        say(f"  others   ENGINE_KAFKA_URL={live.kafka.url} ENGINE_REDIS_URL={live.redis.url} "
            "engine prices follow")
        say(f"  ready in {time.monotonic() - started:.1f} s")
        yield Stack(sup, live, api_url, run_dir)


def run_up(settings: Settings, base_env: Mapping[str, str]) -> int:
    say("engine up: starting the embedded stack")
    with embedded_stack(settings, base_env) as stack:
        say("Press Ctrl-C to stop.")
        reason = stack.supervisor.wait()
        say(f"stopping: {reason.message if reason else 'done'}")
    say("stopped: API, worker, Redis and broker")
    return 0 if reason is None or reason.signal is not None else 1


def _worker_ready(settings: Settings, catalogue: Catalogue) -> Callable[[], bool]:
    """Ready when live workers' heartbeats cover every input partition."""
    expected = expected_partitions(settings, catalogue)
    key = f"{settings.redis.namespace}:workers"

    def check() -> bool:
        client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
        try:
            beats = client.hgetall(key)
        except redis.RedisError:
            return False
        finally:
            client.close()
        covered = {tp for raw in beats.values() for tp in orjson.loads(raw)["assigned"]}
        return expected <= covered

    return check


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 - loopback URL
            return bool(response.status == 200)
    except OSError:
        return False

