"""Start a stack of child processes in order and stop them in reverse order, whatever happens.

Order matters on the way down: the API and the worker must stop (and flush their last offsets
and state) while Redis and the broker are still there, so children are stopped last-started
first. Typical use in the CLI::

    with Supervisor() as sup:
        broker = sup.add_and_start(*broker_process(run_dir))
        redis = sup.add_and_start(*redis_process(run_dir))
        ...                         # long loops poll sup.stop_requested.is_set()
        reason = sup.wait()         # Ctrl-C, SIGTERM, or a child died
    # leaving the block (normally or by an exception) stops everything, in reverse order

Safety nets beyond the ``with`` block: an ``atexit`` hook, and the children's parent-death
signal (``process.py``) for when this process is SIGKILLed.
"""

from __future__ import annotations

import atexit
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType, TracebackType

from engine.embedded.process import ManagedProcess
from engine.errors import EmbeddedError

log = logging.getLogger(__name__)

_HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_SignalHandler = Callable[[int, FrameType | None], object] | int | None


@dataclass(frozen=True)
class StopReason:
    """Why ``Supervisor.wait`` returned: a signal, a child that died, or a stop request."""

    message: str
    signal: int | None = None
    process: str | None = None
    exit_code: int | None = None


class Supervisor:
    """An ordered set of ``ManagedProcess`` with an orderly, signal-driven shutdown.

    As a context manager it installs SIGINT/SIGTERM handlers (main thread only) that record the
    signal and set ``stop_requested`` instead of raising wherever the main thread happens to be;
    a second signal raises ``KeyboardInterrupt`` so an impatient user can still force the exit.
    """

    def __init__(self, *, stop_timeout: float = 10.0, poll_interval: float = 0.2) -> None:
        self.stop_timeout = stop_timeout
        self.poll_interval = poll_interval
        self._processes: list[ManagedProcess] = []
        self._stop_requested = threading.Event()
        self._reason: StopReason | None = None
        self._previous_handlers: dict[int, _SignalHandler] = {}
        self._atexit_registered = False

    @property
    def processes(self) -> tuple[ManagedProcess, ...]:
        return tuple(self._processes)

    @property
    def stop_requested(self) -> threading.Event:
        """Set once a signal arrived or ``request_stop`` was called; long loops poll it."""
        return self._stop_requested

    def add_and_start(
        self, proc: ManagedProcess, ready_check: Callable[[], bool], timeout: float = 20.0
    ) -> ManagedProcess:
        """Start ``proc``, wait until ``ready_check`` passes, and keep it for ``stop_all``.

        A stop request during the wait aborts the start-up with ``EmbeddedError``; the process
        is already registered then, so leaving the ``with`` block stops it with the others.
        """
        self._raise_if_stopping(proc.name)
        if not self._atexit_registered:
            atexit.register(self._stop_at_exit)
            self._atexit_registered = True
        proc.start()
        self._processes.append(proc)

        def ready_unless_stopping() -> bool:
            self._raise_if_stopping(proc.name)
            return ready_check()

        proc.wait_ready(ready_unless_stopping, timeout)
        return proc

    def request_stop(self, message: str = "stop requested") -> None:
        """Ask ``wait`` to return (from any thread); the first reason given is kept."""
        self._record(StopReason(message))

    def wait(self, timeout: float | None = None) -> StopReason | None:
        """Block until a stop is requested or a child exits; ``None`` if ``timeout`` passed."""
        remaining = timeout
        while remaining is None or remaining > 0:
            if self._stop_requested.wait(self._interval(remaining)):
                return self._reason
            died = self._first_dead()
            if died is not None:
                return self._record(died)
            if remaining is not None:
                remaining -= self.poll_interval
        return None

    def stop_all(self) -> None:
        """Stop every child, last started first; raise after trying all if any stop failed."""
        failures: list[str] = []
        while self._processes:
            proc = self._processes.pop()
            try:
                proc.stop(self.stop_timeout)
            except OSError as exc:
                failures.append(f"{proc.name} (pid {proc.pid}): {exc}")
        if self._atexit_registered:
            atexit.unregister(self._stop_at_exit)
            self._atexit_registered = False
        if failures:
            raise EmbeddedError(f"could not stop {'; '.join(failures)}")

    def __enter__(self) -> Supervisor:
        if threading.current_thread() is threading.main_thread():
            for signum in _HANDLED_SIGNALS:
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.stop_all()
        finally:
            for signum, handler in self._previous_handlers.items():
                signal.signal(signum, handler)
            self._previous_handlers.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._stop_requested.is_set():
            raise KeyboardInterrupt(f"{name} received again while stopping")
        log.info("%s received; stopping %d processes", name, len(self._processes))
        self._record(StopReason(f"{name} received", signal=signum))

    def _record(self, reason: StopReason) -> StopReason:
        # No lock: this also runs in a signal handler, which must not wait on a lock that the
        # interrupted main thread may hold. Keeping the first reason is all that is needed.
        if self._reason is None:
            self._reason = reason
        self._stop_requested.set()
        return self._reason

    def _first_dead(self) -> StopReason | None:
        for proc in self._processes:
            code = proc.returncode
            if code is not None:
                return StopReason(
                    f"{proc.name} (pid {proc.pid}) exited unexpectedly with code {code}; "
                    f"last lines of {proc.log_path}: {proc.log_tail()}",
                    process=proc.name,
                    exit_code=code,
                )
        return None

    def _raise_if_stopping(self, name: str) -> None:
        if self._stop_requested.is_set():
            message = self._reason.message if self._reason else "stop requested"
            raise EmbeddedError(f"start-up of {name} interrupted: {message}")

    def _interval(self, remaining: float | None) -> float:
        return self.poll_interval if remaining is None else min(self.poll_interval, remaining)

    def _stop_at_exit(self) -> None:
        if self._processes:
            log.warning("interpreter exiting with %d child processes; stopping them",
                        len(self._processes))
            self.stop_all()
