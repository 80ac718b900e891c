"""The two embedded servers: a Tansu Kafka broker and a Valkey (or Redis) server.

Each server comes as a pair (``ManagedProcess``, readiness check) so a ``Supervisor`` can start
it, and as a ``start_*`` shortcut that starts it and waits. Readiness means a real protocol
round trip (a Kafka metadata request, a Redis PING), not just an open port: Tansu accepts
connections a moment before it answers, and Valkey answers LOADING while it replays its AOF.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import redis
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from engine.embedded.discovery import (
    check_port_free,
    find_broker_binary,
    find_redis_binary,
    free_port,
)
from engine.embedded.process import ManagedProcess
from engine.resources import data_dir

ReadyCheck = Callable[[], bool]

BROKER_READY_TIMEOUT_S = 20.0
REDIS_READY_TIMEOUT_S = 20.0
_PROBE_TIMEOUT_S = 1.0


def broker_process(
    run_dir: Path, host: str = "127.0.0.1", port: int = 0, *,
    port_key: str = "embedded.kafka_port",
) -> tuple[ManagedProcess, ReadyCheck]:
    """A not-yet-started Tansu broker on ``host:port`` (0 = a free port) with memory storage.

    Memory storage means every start is an empty cluster: topics must be created again and
    offsets start at 0. ``port_key`` is the configuration key named in a port-clash error.
    """
    port = _choose_port(host, port, port_key)
    address = f"{host}:{port}"
    listener = f"tcp://{address}"
    proc = ManagedProcess(
        name="broker",
        argv=[
            str(find_broker_binary()), "broker",
            "--listener-url", listener,
            "--advertised-listener-url", listener,
            "--storage-engine", "memory://tansu/",
        ],
        log_path=Path(run_dir) / "broker.log",
        # Tansu colours its log lines even into a file; plain text keeps error messages legible.
        env={"NO_COLOR": "1"},
        cwd=Path(run_dir),
        url=address,
    )
    return proc, lambda: kafka_answers(address)


def redis_process(
    run_dir: Path, host: str = "127.0.0.1", port: int = 0, *,
    port_key: str = "embedded.redis_port", fresh: bool = False,
) -> tuple[ManagedProcess, ReadyCheck]:
    """A not-yet-started Redis-protocol server configured by ``state/valkey.conf``.

    Its append-only file lives in ``run_dir``, so state survives a restart. ``fresh=True``
    deletes it first: use that when the broker restarts empty (Tansu's memory storage), since
    the offset watermarks kept in Redis would otherwise point past the new, empty topics.
    """
    run_dir = Path(run_dir)
    port = _choose_port(host, port, port_key)
    if fresh:
        _remove_append_only_files(run_dir)
    proc = ManagedProcess(
        name="redis",
        argv=[
            str(find_redis_binary()), str(data_dir("state") / "valkey.conf"),
            "--port", str(port), "--bind", host, "--dir", str(run_dir.resolve()),
        ],
        log_path=run_dir / "redis.log",
        cwd=run_dir,
        url=f"redis://{host}:{port}/0",
    )
    return proc, lambda: redis_answers(host, port)


def start_broker(run_dir: Path, host: str = "127.0.0.1", port: int = 0) -> ManagedProcess:
    """Start the broker and return it once it answers metadata requests (``proc.url``)."""
    return _start_and_wait(*broker_process(run_dir, host, port), BROKER_READY_TIMEOUT_S)


def start_redis(
    run_dir: Path, host: str = "127.0.0.1", port: int = 0, *, fresh: bool = False,
) -> ManagedProcess:
    """Start Redis and return it once it answers PING (``proc.url`` is its ``redis://`` URL)."""
    return _start_and_wait(*redis_process(run_dir, host, port, fresh=fresh), REDIS_READY_TIMEOUT_S)


def kafka_answers(bootstrap: str) -> bool:
    """True if a Kafka metadata request to ``bootstrap`` succeeds.

    Connection errors mean "not ready yet" here, which is why they are answered with False
    rather than raised; the caller's timeout turns a permanent failure into an error.
    """
    host, _, port = bootstrap.rpartition(":")
    if not _port_open(host, int(port)):
        return False
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="engine-embedded-probe",
            request_timeout_ms=int(_PROBE_TIMEOUT_S * 2000),
        )
    except KafkaError:
        return False
    try:
        admin.list_topics()
    except KafkaError:
        return False
    finally:
        admin.close()
    return True


def redis_answers(host: str, port: int) -> bool:
    """True if Redis at ``host:port`` answers PING (False while refusing or LOADING)."""
    client = redis.Redis(host=host, port=port, socket_timeout=_PROBE_TIMEOUT_S,
                         socket_connect_timeout=_PROBE_TIMEOUT_S)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _start_and_wait(proc: ManagedProcess, check: ReadyCheck, timeout: float) -> ManagedProcess:
    proc.start()
    try:
        proc.wait_ready(check, timeout)
    except BaseException:
        proc.stop()
        raise
    return proc


def _choose_port(host: str, port: int, port_key: str) -> int:
    if port == 0:
        return free_port(host)
    check_port_free(host, port, port_key)
    return port


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _remove_append_only_files(run_dir: Path) -> None:
    """Delete the AOF: ``appendonlydir/`` (Redis 7+, Valkey) or ``appendonly.aof`` (older)."""
    aof_dir = run_dir / "appendonlydir"
    if aof_dir.is_dir():
        shutil.rmtree(aof_dir)
    (run_dir / "appendonly.aof").unlink(missing_ok=True)
