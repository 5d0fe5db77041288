"""Progress for long work, on stderr so stdout stays for results.

`note(message)` prints one line. `progress(total, what, unit=...)` counts finished work toward a
total known up front; call `advance(n)` once per finished piece (a record, a batch, a chunk of bytes):

    with progress(len(prompts), f"{side}: generate", unit="prompts", log=setup.log) as bar:
        backend.generate(prompts, top_logprobs=k, on_record=lambda record: (store(record), bar.advance()))

In a terminal it draws a tqdm bar with rate and ETA. Anywhere else (CI logs, pipes, files) it prints
plain lines, with no carriage return or escape code:

    reference: generate 120/2000 prompts (6.0%), 3.1 prompts/s, ETA 10m05s

one at the start, then at most one every LINE_EVERY_S seconds, and one at the end, so thousands of
records make a few dozen lines. The environment variable LLM_PARITY_PROGRESS=bar or =lines forces
either. A total of 0 shows nothing. A `log` other than `note` (a test's list, a quiet lambda) gets
the plain lines, never a bar."""
from __future__ import annotations

import os
import sys
import time
from abc import ABC, abstractmethod
from typing import Callable

from tqdm import tqdm

MODE_VARIABLE = "LLM_PARITY_PROGRESS"
LINE_EVERY_S = 30.0
BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def note(message: str) -> None:
    """One line on stderr; an open bar is cleared first and drawn again below it."""
    tqdm.write(message, file=sys.stderr)
    sys.stderr.flush()


def draws_bars() -> bool:
    """Whether progress is drawn as bars (stderr is a terminal) or printed as plain lines;
    LLM_PARITY_PROGRESS=bar|lines decides instead when set."""
    forced = {"bar": True, "lines": False}.get(os.environ.get(MODE_VARIABLE, "").strip().lower())
    return forced if forced is not None else sys.stderr.isatty()


class Progress(ABC):
    """Finished work counted toward a total; a context manager (see the module docstring)."""

    @abstractmethod
    def __enter__(self) -> Progress: ...

    @abstractmethod
    def __exit__(self, *exc) -> None: ...

    @abstractmethod
    def advance(self, n: int = 1) -> None:
        """`n` more pieces of the work are finished."""


class _Bar(Progress):
    def __init__(self, total: int, what: str, unit: str):
        self._settings = {"total": total, "desc": what, "unit": unit, "unit_scale": unit == "B", "unit_divisor": 1024}
        self._bar: tqdm | None = None

    def __enter__(self) -> Progress:
        self._bar = tqdm(file=sys.stderr, dynamic_ncols=True, **self._settings)
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()

    def advance(self, n: int = 1) -> None:
        self._bar.update(n)


class _Lines(Progress):
    def __init__(self, total: int, what: str, unit: str, log: Callable[[str], None]):
        self.total, self.what, self.unit, self.log = total, what, unit, log
        self.done = self.shown = 0
        self.started = self.last_line = time.monotonic()

    def __enter__(self) -> Progress:
        self._line(self.started)
        return self

    def __exit__(self, *exc) -> None:
        if self.done != self.shown:  # stopped between lines: say where
            self._line(time.monotonic())

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.shown < self.total <= self.done or now - self.last_line >= LINE_EVERY_S:
            self._line(now)

    def _line(self, now: float) -> None:
        if self.total <= 0:
            return
        self.log(f"{self.what} {_describe(self.done, self.total, now - self.started, self.unit)}")
        self.shown, self.last_line = self.done, now


def progress(total: int, what: str, *, unit: str = "items", log: Callable[[str], None] = note) -> Progress:
    """A context manager counting `total` pieces of work named `what` ("reference: generate"), in
    `unit` (plural: "prompts"; "B" for bytes, scaled): a bar in a terminal, else plain lines to `log`."""
    if total > 0 and log is note and draws_bars():
        return _Bar(total, what, unit)
    return _Lines(total, what, unit, log)


def _describe(done: int, total: int, elapsed_s: float, unit: str) -> str:
    """`120/2000 prompts (6.0%), 3.1 prompts/s, ETA 10m05s`: what a plain progress line says after its name."""
    counts = f"{byte_size(done)}/{byte_size(total)}" if unit == "B" else f"{done}/{total} {unit}"
    parts = [f"{counts} ({100 * done / total:.1f}%)"]
    if done > 0 and elapsed_s > 0:
        rate = done / elapsed_s
        parts.append(f"{byte_size(rate)}/s" if unit == "B" else f"{_rate(rate)} {unit}/s")
        parts.append(f"in {_duration(elapsed_s)}" if done >= total else f"ETA {_duration((total - done) / rate)}")
    return ", ".join(parts)


def byte_size(amount: float) -> str:
    """An amount of bytes, scaled: `512 B`, `3.1 GiB`."""
    index = 0
    while amount >= 1024 and index < len(BYTE_UNITS) - 1:
        amount /= 1024
        index += 1
    return f"{amount:.1f} {BYTE_UNITS[index]}" if index else f"{amount:.0f} B"


def _rate(rate: float) -> str:
    return f"{rate:.1f}" if rate >= 1 else f"{rate:.2g}"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
