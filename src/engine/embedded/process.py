"""One child process the engine starts, waits for, and stops: never left running behind us.

Two mechanisms keep children from outliving the engine:

* ``start_new_session=True`` puts each child in its own session and process group, so a
  terminal's Ctrl-C reaches only the supervisor, which then stops the children in order
  (the worker must flush before Redis goes away, Redis before the broker).
* ``PR_SET_PDEATHSIG=SIGTERM`` (Linux) makes the kernel signal the child when the parent dies,
  even by SIGKILL, when no Python cleanup code runs at all.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import EmbeddedError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: Loaded before any fork: dlopen() in a forked child of a threaded parent can deadlock.
_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform == "linux" else None


@dataclass
class ManagedProcess:
    """A named child process whose output goes to ``log_path`` instead of the terminal.

    ``env`` is added to the inherited environment; ``url`` is the address clients use
    (``127.0.0.1:9092``, ``redis://127.0.0.1:6379/0``) and is informational only.
    """

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    url: str = ""
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def start(self) -> None:
        """Spawn the child; its stdout and stderr are appended to ``log_path``."""
        if self.popen is not None:
            raise EmbeddedError(f"{self.name} was already started (pid {self.popen.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        parent_pid = os.getpid()
        try:
            with open(self.log_path, "ab") as log_file:
                self.popen = subprocess.Popen(
                    list(self.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=self.cwd,
                    env={**os.environ, **self.env},
                    start_new_session=True,
                    preexec_fn=lambda: _die_with_parent(parent_pid),
                )
        except OSError as exc:
            raise EmbeddedError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
        log.info("started %s (pid %d), log in %s", self.name, self.popen.pid, self.log_path)

    def wait_ready(self, check: Callable[[], bool], timeout: float) -> float:
        """Poll ``check`` until it is true; return the seconds it took.

        Raises ``EmbeddedError`` with the tail of the child's log if the child exits first
        (a port clash, a bad flag) or if ``timeout`` passes, so the user sees the child's own
        explanation instead of a bare timeout. The child is left running on timeout; the
        caller decides whether to stop it (``Supervisor`` does).
        """
        started = time.monotonic()
        delay = 0.02
        while True:
            self._raise_if_exited("during startup")
            # Re-checked after a success: a server that lost a port race exits while the probe
            # may have reached whoever holds the port.
            if check() and self.alive:
                return time.monotonic() - started
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                raise EmbeddedError(
                    f"{self.name} (pid {self.pid}) not ready after {timeout:.0f} s; "
                    f"last lines of {self.log_path}: {self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process group, wait ``timeout`` s, then SIGKILL; return the exit code.

        The whole group is signalled so helpers the child started go too. Safe to call twice
        and on a child that already exited.
        """
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it",
                            self.name, self.popen.pid, timeout)
                self._signal_group(signal.SIGKILL)
                self.popen.wait()
            log.info("stopped %s (pid %d), exit code %s", self.name, self.popen.pid,
                     self.popen.returncode)
        return self.popen.returncode

    def log_tail(self, lines: int = 5) -> str:
        """The last ``lines`` non-empty log lines as one paragraph, for error messages."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(max(0, os.fstat(handle.fileno()).st_size - 8192))
                text = handle.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        kept = [_ANSI.sub("", line).strip() for line in text.splitlines() if line.strip()]
        return " | ".join(kept[-lines:]) or "(log is empty)"

    def _raise_if_exited(self, when: str) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise EmbeddedError(
                f"{self.name} exited {when} with code {self.popen.returncode}; "
                f"last lines of {self.log_path}: {self.log_tail()}"
            )

    def _signal_group(self, signum: signal.Signals) -> None:
        assert self.popen is not None
        try:
            # The child leads its own session, so its pid is its process group id. It is not
            # reaped yet (poll() saw it running), so the id cannot have been reused.
            os.killpg(self.popen.pid, signum)
        except ProcessLookupError:
            log.debug("%s (pid %d) already gone before %s", self.name, self.popen.pid, signum.name)


def _die_with_parent(parent_pid: int) -> None:
    """Runs in the child between fork and exec: ask the kernel for SIGTERM when the parent dies.

    The death signal is tied to the *thread* that forked, so start children from a thread that
    lives as long as the supervisor (normally the main thread). If the parent already died
    before the call took effect, nobody would send the signal, so the child ends itself.
    """
    if _LIBC is None:
        return
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def start_child(argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """A helper process that shares this one's output and lives exactly as long: the kernel
    signals it when this process dies (however it dies), and a normal exit stops it first."""
    parent_pid = os.getpid()
    child = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL,
                             preexec_fn=lambda: _die_with_parent(parent_pid))
    atexit.register(_stop_child, child)
    return child


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
