"""A function run in a forked child process while this one goes on, its result sent back through a
pipe: for work that parts cleanly in two (compare's pass over 10,000 records), two cores at once.
Forked, not spawned: the child has this process's modules and data as they are, with nothing to
import or send but the result."""
from __future__ import annotations

import multiprocessing
import os
import signal
from multiprocessing.connection import Connection
from typing import Any, Callable


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0))


def _send_result(function: Callable[[], Any], send: Connection) -> None:
    # The parent answers Ctrl-C and stops the child; stopped, the child ends at once, without a word.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        result = (True, function())
    except BaseException:  # noqa: BLE001 - the caller does the work itself instead, which says what went wrong
        result = (False, None)
    try:
        send.send(result)
    except OSError:  # the parent no longer waits for it
        pass
    send.close()


class ChildFailed(Exception):
    """The forked child raised, or died, before it sent its result."""


class Forked:
    """`function()` run in a forked child from now on; `result()` waits for what it returned, or
    raises ChildFailed. Use it as a context: leaving stops the child if it still runs."""

    def __init__(self, function: Callable[[], Any]):
        context = multiprocessing.get_context("fork")
        self._receive, send = context.Pipe(duplex=False)
        self._child = context.Process(target=_send_result, args=(function, send), daemon=True)
        self._child.start()
        send.close()

    def result(self) -> Any:
        try:
            succeeded, value = self._receive.recv()
        except EOFError:  # the child died before it could send
            raise ChildFailed("the child process ended without a result") from None
        if not succeeded:
            raise ChildFailed("the child process raised")
        return value

    def __enter__(self) -> "Forked":
        return self

    def __exit__(self, *exc) -> None:
        self._receive.close()
        if self._child.is_alive():
            self._child.terminate()
        self._child.join()
