"""CPU time of processes from /proc (Linux): where a shared machine's cores went in a step."""

from __future__ import annotations

import os
from collections.abc import Mapping

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far (None once it has gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # fields after the command name, which may itself hold spaces and parentheses
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (empty if it has gone)."""
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def snapshot(pids: Mapping[str, int]) -> dict[str, float | None]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def cores_used(before: Mapping[str, float | None], after: Mapping[str, float | None],
               wall_s: float) -> dict[str, float]:
    """Per process, the cores it kept busy on average between the snapshots."""
    out: dict[str, float] = {}
    for name, b in before.items():
        a = after.get(name)
        if a is not None and b is not None and wall_s > 0:
            out[name] = round((a - b) / wall_s, 2)
    return out
