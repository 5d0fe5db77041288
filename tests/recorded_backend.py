"""A test backend that answers with the records of a results folder instead of running a model: it
shows that a new backend is one class plus its line in llm_parity.backend.BACKENDS. (Not the replay
of `inv replay`, which runs a side's own backend again.)"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llm_parity.backend import Backend, SideSetup
from llm_parity.records import ForcedScore, Generation, PassageScore
from llm_parity.results import RunDir
from llm_parity.record_files import read_records, record_file_exists


class RecordedBackend(Backend):
    """Answers with the records of `setup.options["records_from"]` (a results folder), side `setup.options["side"]`."""

    name = "recorded"
    label = "records of a results folder"

    def __init__(self, generations: dict[str, dict], scores: dict[str, dict], forced: dict[str, dict], source: Path):
        self.generations, self.scores, self.forced, self.source = generations, scores, forced, source

    @classmethod
    def open(cls, setup: SideSetup) -> "RecordedBackend":
        recorded = RunDir(Path(setup.options["records_from"]))
        side = setup.options.get("side", "reference")
        generations = read_records(recorded.generations(side), "generations")["records"]
        scores = read_records(recorded.perplexity(side), "perplexity")["records"]
        path = recorded.teacher_forced(side)
        forced = read_records(path, "teacher-forced")["records"] if record_file_exists(path) else []
        return cls({r["id"]: r for r in generations}, {r["id"]: r for r in scores}, {r["id"]: r for r in forced},
                   recorded.root)

    @property
    def max_model_len(self) -> int:
        return 1 << 30  # what was recorded already passed the original side's limit

    def generate(self, prompts: list[dict], *, top_logprobs: int, on_record: Callable[[Generation], None]) -> None:
        for prompt in prompts:
            on_record(Generation.from_json(self.generations[prompt["id"]]))

    def score(self, passages: list[dict], *, on_record: Callable[[PassageScore], None]) -> None:
        for passage in passages:
            on_record(PassageScore.from_json(self.scores[passage["id"]]))

    def score_answers(self, answers: list[dict], *, top_logprobs: int,
                      on_record: Callable[[ForcedScore], None]) -> None:
        for answer in answers:
            on_record(ForcedScore.from_json(self.forced[answer["id"]]))

    def describe(self) -> dict:
        return {"device": "recorded", "server": None, "notes": [f"records taken from {self.source}"]}
