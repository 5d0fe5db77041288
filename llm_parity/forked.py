"""A function run in a forked child process while this one goes on, its result sent back through a
pipe: for work that parts cleanly in two (compare's pass over 10,000 records), two cores at once.
Forked, not spawned: the child has this process's modules and data as they are, with nothing to
import or send but the result. The child does only that work: it touches no stream it shares with
this process and ends with os._exit, so nothing of this process's (buffered output, exit handlers)
runs twice, and a child that is no longer wanted is killed outright."""
from __future__ import annotations

import os
import pickle
import signal
from typing import Any, Callable


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0))


class ChildFailed(Exception):
    """The forked child raised, or died, before it sent its result."""


# Held back while forking, so that neither process can be interrupted before it knows which it is.
INTERRUPTS = {signal.SIGINT, signal.SIGTERM}


def _run_child(function: Callable[[], Any], write_fd: int) -> None:
    """In the child: send (succeeded, result) and end, whatever happens."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to answer; it kills the child
        signal.pthread_sigmask(signal.SIG_UNBLOCK, INTERRUPTS)
        try:
            payload = pickle.dumps((True, function()), protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException:  # noqa: BLE001 - the caller does the work itself instead, which says what went wrong
            payload = pickle.dumps((False, None))
        with os.fdopen(write_fd, "wb") as out:
            out.write(payload)
        code = 0
    finally:
        os._exit(code)


class Forked:
    """`function()` run in a forked child from now on; `result()` waits for what it returned, or
    raises ChildFailed. Use it as a context: leaving kills the child if it still runs."""

    def __init__(self, function: Callable[[], Any]):
        read_fd, write_fd = os.pipe()
        held = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTS)
        try:
            self._pid: int | None = os.fork()
            if self._pid == 0:
                os.close(read_fd)  # else a write the parent no longer reads would wait on this end for ever
                _run_child(function, write_fd)
        except OSError:  # no process to be had: result() says so, and the caller does the work itself
            self._pid = None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        os.close(write_fd)
        self._receive = os.fdopen(read_fd, "rb")

    def result(self) -> Any:
        if self._pid is None:
            raise ChildFailed("no child process could be started")
        data = self._receive.read()  # to the end: the child's end closes when it exits
        try:
            succeeded, value = pickle.loads(data)
        except Exception:  # noqa: BLE001 - nothing, or part of a result: the child died while sending
            raise ChildFailed("the child process ended without a result") from None
        if not succeeded:
            raise ChildFailed("the child process raised")
        return value

    def __enter__(self) -> "Forked":
        return self

    def __exit__(self, *exc) -> None:
        self._receive.close()
        if self._pid is None:
            return
        try:
            os.kill(self._pid, signal.SIGKILL)  # done or not, it is no longer wanted
        except ProcessLookupError:
            pass
        os.waitpid(self._pid, 0)
