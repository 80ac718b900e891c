"""Redis floors measured beside the engine: raw-socket PING and pipelined HINCRBY, and the
same through redis.asyncio."""

from __future__ import annotations

import gc
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from workload import PING_CALLS, Figures

# --- c: floors --------------------------------------------------------------------------


def resp(*parts: str) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        b = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _read_lines(sock: socket.socket, lines: int) -> None:
    """Read until ``lines`` one-line replies (+PONG, :42, -ERR) have arrived."""
    seen, last = 0, b""
    while seen < lines:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("Redis closed the connection mid-benchmark")
        seen += (last + chunk).count(b"\r\n")  # ``last`` catches a \r|\n split across reads
        last = chunk[-1:]


def raw_floor_round(url: str, payloads: list[tuple[bytes, int]]) -> Figures:
    """PING and pipelined HINCRBY over a bare socket with the commands encoded before the
    clock starts: the kernel and the server alone, what no client library can go below."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ping = resp("PING")
        started = time.perf_counter()
        for _ in range(PING_CALLS):
            sock.sendall(ping)
            _read_lines(sock, 1)
        ping_us = (time.perf_counter() - started) / PING_CALLS * 1e6
        sock.sendall(resp("FLUSHDB"))
        _read_lines(sock, 1)
        started = time.perf_counter()
        for payload, commands in payloads:
            sock.sendall(payload)
            _read_lines(sock, commands)
        ops_s = sum(n for _, n in payloads) / (time.perf_counter() - started)
    return {"ping_raw_us": ping_us, "hincrby_raw_ops_s": ops_s}


async def client_floor_round(client: Any, chunks: list[list[tuple[str, str]]]) -> Figures:
    """The same floors through redis.asyncio. In practice no floor for apply: redis-py packs
    and parses each pipelined command in Python, where apply is one script call."""
    gc.collect()
    started = time.perf_counter()
    for _ in range(PING_CALLS):
        await client.ping()
    ping_us = (time.perf_counter() - started) / PING_CALLS * 1e6
    await client.flushdb()
    gc.collect()
    started = time.perf_counter()
    for chunk in chunks:
        pipe = client.pipeline(transaction=False)
        for key, field in chunk:
            pipe.hincrby(key, field, 1)
        await pipe.execute()
    ops_s = sum(len(c) for c in chunks) / (time.perf_counter() - started)
    return {"ping_asyncio_us": ping_us, "hincrby_asyncio_ops_s": ops_s}


