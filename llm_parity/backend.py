"""The seam every side runs through: a backend turns a rendered suite into records.

A backend is what lm-evaluation-harness calls an `LM`: one class per way of running a model,
with a small set of requests it must answer. Ours are

- `generate(prompts, top_logprobs=k, on_record=...)`: greedy decoding from each prompt's rendered
  `prompt_ids` (never from text), up to its `max_tokens`, stopping on the suite's `stop_ids`,
  with the chosen token's logprob and the top-k at every position: one `Generation` per prompt;
- `score(passages, on_record=...)`: the logprob of every passage token given the ones before it
  (prompt logprobs), one `PassageScore` per passage;
- `score_answers(answers, top_logprobs=k, on_record=...)`: teacher forcing of the other side's
  answers: for each {"id", "prompt_ids", "answer_ids"}, this backend's logprob of every answer
  token and its own top-k at that position, given the prompt and the answer tokens before it,
  from one pass over prompt + answer: one `ForcedScore` per answer;
- `describe()`: what provenance records about where it ran (device, and for a server how it was
  started);
- `close()`, also through `with`: free the model or stop the server.

Records are handed to `on_record` as each finishes, in any order, so a run that is interrupted
keeps what finished; a request that fails becomes that item's error record (`Generation.failed`),
never an exception that loses the others. `llm_parity.pipeline.run_side` does the rest for any
backend: resume, items that cannot run, writing records and provenance.

To add a backend: write a subclass (its own module) and add its name to `BACKENDS` below.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from llm_parity.progress import note
from llm_parity.records import ForcedScore, Generation, PassageScore

if TYPE_CHECKING:
    from llm_parity.profiles import Profile
    from llm_parity.results import RunDir

# name -> "module:class", imported only when used (the reference needs torch, the target does not).
BACKENDS = {
    "vllm-http": "llm_parity.target:VllmHttpBackend",
    "transformers": "llm_parity.reference:TransformersBackend",
}
# The backend each side runs unless told otherwise.
DEFAULT_BACKEND = {"target": "vllm-http", "reference": "transformers"}


@dataclass(frozen=True)
class SideSetup:
    """What any backend may need to start: the profile (with command-line overrides applied), the
    model folder, the rendered suite, the results folder, and the options of the side's task."""

    profile: Profile
    model_dir: Path
    suite: dict
    run: RunDir
    cache_dir: Path = Path(".cache")
    device: str = "cpu"
    server_url: str | None = None
    running: object | None = None  # a VllmServer already started (tests, benchmarks)
    api_key: str | None = None
    log: Callable[[str], None] = note
    options: dict = field(default_factory=dict)


class Backend(ABC):
    """One way of running the model; see the module docstring for the contract."""

    name: ClassVar[str]  # recorded in provenance.json as "backend"
    label: ClassVar[str]  # how the report names it

    @classmethod
    @abstractmethod
    def open(cls, setup: SideSetup) -> "Backend":
        """Load the model or start (or reach) the server; the caller closes it."""

    @property
    @abstractmethod
    def max_model_len(self) -> int:
        """Longest prompt + output this backend serves; longer items are recorded as errors."""

    @abstractmethod
    def generate(self, prompts: list[dict], *, top_logprobs: int, on_record: Callable[[Generation], None]) -> None:
        """Greedy decoding of every prompt; each record to `on_record` as it finishes."""

    @abstractmethod
    def score(self, passages: list[dict], *, on_record: Callable[[PassageScore], None]) -> None:
        """Prompt logprobs of every passage; each record to `on_record` as it finishes."""

    @abstractmethod
    def score_answers(self, answers: list[dict], *, top_logprobs: int,
                      on_record: Callable[[ForcedScore], None]) -> None:
        """Teacher-forced scores of the other side's answers; each record to `on_record` as it finishes."""

    @abstractmethod
    def describe(self) -> dict:
        """{"device": ..., "server": {...} or None, "notes": [...] (optional)} for provenance.json."""

    def close(self) -> None:
        """Free what `open` took."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def backend_class(name: str) -> type[Backend]:
    """The backend registered as `name`; a ValueError naming the known ones otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: known backends are {', '.join(sorted(BACKENDS))}")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
