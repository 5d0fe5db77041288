"""Compare target and reference records: exact ids and text, the first divergence with the
top-1/top-2 margin there and top-k containment (the rule of vLLM's check_logprobs_close),
|Δ logprob| on the common prefix, perplexity, token accounting, and past the split, from each
side's teacher-forced scores of the other's answer, the distance between the two distributions at
every position (llm_parity.divergence); every number against the profile's thresholds. A pure
function of records: no model, no server, no network. The record files are read once, side by side,
and the numbers measured as arrays a chunk of prompts at a time, so 10,000 answers of 256 tokens
take seconds and a bounded amount of memory."""
from __future__ import annotations

import functools
import gc
import itertools
import math
from dataclasses import dataclass, replace
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Callable

import numpy as np

from llm_parity.accuracy_stats import compare_accuracy
from llm_parity.divergence import Positions, kld_summary, matched, position_measures, segment_summaries, transposed
from llm_parity.forked import ChildFailed, Forked, usable_cpus
from llm_parity.record_files import FORM, RecordStream, iter_records, split_at
from llm_parity.records import NO_TOKEN, SIDES, AnswersHash, IncompatibleRuns, TopK, stack_top_k, top_k_arrays
from llm_parity.results import schema_tag
from llm_parity.stats import FLOOR_DECADE


def check_same_inputs(*, suite: dict, target: dict, reference: dict) -> None:
    """Refuse to compare sides made from different suites, models or decoding parameters."""
    for field in ("suite_sha256", "model_manifest_sha256"):
        if target[field] != reference[field]:
            raise IncompatibleRuns(f"target and reference differ in {field}: {target[field]} vs {reference[field]}")
    if target["suite_sha256"] != suite["sha256"]:
        raise IncompatibleRuns(f"generations were made from suite {target['suite_sha256']}, not this run's suite {suite['sha256']}")
    if "decoding" in target and target["decoding"] != reference["decoding"]:
        raise IncompatibleRuns(f"target and reference differ in decoding: {target['decoding']} vs {reference['decoding']}")


def _common_prefix(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def _texts_equal(a: str, b: str) -> bool:
    # vLLM drops a trailing incomplete UTF-8 sequence where transformers decodes it as U+FFFD.
    return a == b or a.rstrip("\ufffd") == b.rstrip("\ufffd")


def token_accounting(record: dict, eos_ids: set[int]) -> list[str]:
    """Problems with one record's counts: usage must equal the id counts, and an EOS may only
    come once, as the last token."""
    problems = []
    if record["usage"]["completion_tokens"] != len(record["output_ids"]):
        problems.append(f"usage.completion_tokens {record['usage']['completion_tokens']} != {len(record['output_ids'])} output ids")
    if record["usage"]["prompt_tokens"] != len(record["prompt_ids"]):
        problems.append(f"usage.prompt_tokens {record['usage']['prompt_tokens']} != {len(record['prompt_ids'])} prompt ids")
    if eos := _eos_problem(record["output_ids"], eos_ids):
        problems.append(eos)
    return problems


@dataclass(frozen=True)
class Scores:
    """A record's scores in column form: the taken tokens' logprobs and the top-k at each position."""

    logprobs: np.ndarray
    top_k: TopK

    def margin_at(self, position: int) -> float | None:
        ids = self.top_k.ids
        if position >= self.top_k.positions or ids.shape[1] < 2 or ids[position, 1] == NO_TOKEN:
            return None
        return float(self.top_k.logprobs[position, 0] - self.top_k.logprobs[position, 1])

    def in_top_k(self, token: int, position: int) -> bool:
        return position < self.top_k.positions and bool((self.top_k.ids[position] == token).any())


def first_divergence(target: dict, reference: dict, t_scores: Scores, r_scores: Scores, *, noise: float) -> dict | None:
    """Where the greedy sequences split, what each side chose, the margins and top-k containment."""
    t_ids, r_ids = target["output_ids"], reference["output_ids"]
    if t_ids == r_ids:
        return None
    position = _common_prefix(t_ids, r_ids)
    if position >= len(t_ids) or position >= len(r_ids):
        return {"position": position, "target_token": t_ids[position] if position < len(t_ids) else None,
                "reference_token": r_ids[position] if position < len(r_ids) else None,
                "target_margin": None, "reference_margin": None, "target_in_reference_top_k": False,
                "reference_in_target_top_k": False, "near_tie": False,
                "why": f"one side ended after {position} tokens while the other went on"}
    t_tok, r_tok = t_ids[position], r_ids[position]
    t_margin, r_margin = t_scores.margin_at(position), r_scores.margin_at(position)
    margins = [m for m in (t_margin, r_margin) if m is not None]
    near_tie = bool(margins) and min(margins) <= noise
    if near_tie:
        why = (f"top-1/top-2 margin {min(margins):.4g} is within the logprob noise this dtype allows "
               f"({noise:g}), so the two backends may rank the pair differently")
    else:
        why = f"margin {min(margins) if margins else float('nan'):.4g} exceeds the allowed noise {noise:g}: not a rounding tie"
    return {"position": position, "target_token": t_tok, "reference_token": r_tok,
            "target_margin": t_margin, "reference_margin": r_margin,
            "target_in_reference_top_k": r_scores.in_top_k(t_tok, position),
            "reference_in_target_top_k": t_scores.in_top_k(r_tok, position),
            "near_tie": near_tie, "why": why}


def _chat_template_ids_equal(target: dict) -> bool | None:
    """None when the server rendered no ids for the prompt: not checked, not equal."""
    chat_prompt_ids = target.get("chat_prompt_ids")
    return None if chat_prompt_ids is None else chat_prompt_ids == target["prompt_ids"]


# Prompts measured together: numpy's cost per call is paid per chunk of prompts, not per prompt.
CHUNK = 256


@dataclass(frozen=True)
class PromptPair:
    """Both sides' records of one prompt, and where each side scored the other's answer, its teacher-forced record."""

    target: dict
    reference: dict
    target_forced: dict | None = None  # the target's scores of the reference's answer
    reference_forced: dict | None = None  # the reference's scores of the target's answer


@dataclass(frozen=True)
class Columns:
    """The scores of many records, one record after another: the taken tokens' logprobs and the
    top-k at each position, in float64 however the files store them, and where each record starts."""

    logprobs: np.ndarray
    top_k: TopK
    starts: np.ndarray  # each record's first position, then the end of the last

    @classmethod
    def of(cls, records: list[dict]) -> "Columns":
        """The scores of `records` (at least one), in column or list form."""
        top_k = stack_top_k([top_k_arrays(record["top_logprobs"]) for record in records])
        logprobs = np.concatenate([np.asarray(record["logprobs"]) for record in records])
        return cls(logprobs.astype(float, copy=False), TopK(top_k.ids, top_k.logprobs.astype(float, copy=False)),
                   np.cumsum([0, *(len(record["logprobs"]) for record in records)]))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    def scores(self, record: int) -> Scores:
        """One record's scores."""
        start, stop = self.starts[record], self.starts[record + 1]
        return Scores(self.logprobs[start:stop], self.top_k.rows(start, stop))

    def at(self, positions: np.ndarray) -> Scores:
        """The scores at `positions`, increasing indices of all records' positions."""
        if len(positions) == len(self.logprobs):  # every position: as they are, no copy
            return Scores(self.logprobs, self.top_k)
        # take: several times faster than indexing with an array, for rows of a handful of values.
        return Scores(self.logprobs.take(positions), TopK(*(array.take(positions, axis=0) for array in self.top_k)))


def _token_ids(answers: Iterable[list[int]]) -> np.ndarray:
    """The token ids of `answers`, one answer after another."""
    return np.fromiter(itertools.chain.from_iterable(answers), dtype=np.int32)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices start, start + 1, ... of each (start, length), one range after another."""
    ends = np.cumsum(lengths)
    return np.arange(ends[-1] if len(ends) else 0) + np.repeat(starts - ends + lengths, lengths)


@dataclass(frozen=True)
class _Answered:
    """The prompts of a chunk that both sides answered."""

    indices: list[int]  # in the chunk
    pairs: list[PromptPair]
    target: Columns
    reference: Columns
    prefixes: list[int]  # length of the common prefix of both answers

    @classmethod
    def of(cls, pairs: list[PromptPair]) -> "_Answered | None":
        """The answered prompts of `pairs`; None where there are none."""
        indices = [index for index, pair in enumerate(pairs) if not (pair.target["error"] or pair.reference["error"])]
        if not indices:
            return None
        answered = [pairs[index] for index in indices]
        prefixes = [len(pair.target["output_ids"]) if pair.target["output_ids"] == pair.reference["output_ids"]
                    else _common_prefix(pair.target["output_ids"], pair.reference["output_ids"]) for pair in answered]
        return cls(indices, answered, Columns.of([pair.target for pair in answered]),
                   Columns.of([pair.reference for pair in answered]), prefixes)


def _segment_reduce(ufunc: np.ufunc, values: np.ndarray, lengths: np.ndarray, empty: float) -> np.ndarray:
    """ufunc.reduce over each consecutive segment of `values` of the given lengths, `empty` for one of none."""
    out = np.full(len(lengths), empty)
    present = lengths > 0
    if present.any():
        counts = lengths[present]
        out[present] = ufunc.reduceat(values, np.cumsum(counts) - counts)
    return out


def _top_k_deltas(target: TopK, reference: TopK) -> np.ndarray:
    """At each position, the largest |Δ logprob| of a token in both sides' top-k; -inf where none is."""
    target_ids, target_logprobs, reference_ids, reference_logprobs = map(transposed, (*target, *reference))
    found, reference_logprobs = matched(target_ids, reference_ids, reference_logprobs)
    if not found.size:
        return np.full(target.positions, -np.inf)
    return np.where(found, np.abs(target_logprobs - reference_logprobs), -np.inf).max(axis=0)


def _margins(top_k: TopK) -> np.ndarray:
    """The top-1/top-2 gap at each position; +inf where a position has fewer than two alternatives."""
    if top_k.ids.shape[1] < 2:
        return np.full(top_k.positions, np.inf)
    return np.where(top_k.ids[:, 1] != NO_TOKEN, top_k.logprobs[:, 0] - top_k.logprobs[:, 1], np.inf)


def _eos_problem(output_ids: list[int], eos_ids: set[int]) -> str | None:
    """An EOS may only come once, as the last token."""
    if eos_ids.isdisjoint(output_ids[:-1]):
        return None
    positions = [i for i, token in enumerate(output_ids) if token in eos_ids]
    return f"end-of-sequence ids at positions {positions} of {len(output_ids)}"


def _answered_entry(answered: _Answered, answer: int, *, suite_prompt_ids: list[int] | None, eos_ids: set[int],
                    noise: float, measured: dict) -> dict:
    """compare.json's entry of the `answer`th answered prompt of a chunk, with its `measured` prefix measures."""
    pair = answered.pairs[answer]
    target, reference = pair.target, pair.reference
    divergence = None if target["output_ids"] == reference["output_ids"] else first_divergence(
        target, reference, answered.target.scores(answer), answered.reference.scores(answer), noise=noise)
    if divergence is None:
        status = "identical"
    elif divergence["target_in_reference_top_k"] and divergence["reference_in_target_top_k"]:
        status = "split_within_top_k"
    else:
        status = "split_outside_top_k"
    accounting = [f"target: {p}" for p in token_accounting(target, eos_ids)]
    accounting += [f"reference: {p}" for p in token_accounting(reference, eos_ids)]
    return {
        "id": target["id"],
        "status": status,
        "ids_equal": divergence is None,
        "text_equal": _texts_equal(target["text"], reference["text"]),
        "target_tokens": len(target["output_ids"]),
        "reference_tokens": len(reference["output_ids"]),
        "common_prefix": answered.prefixes[answer],
        **measured,
        "first_divergence": divergence,
        "prompt_ids_equal": target["prompt_ids"] == reference["prompt_ids"] == suite_prompt_ids,
        "chat_template_ids_equal": _chat_template_ids_equal(target),
        "accounting_problems": accounting,
        "target_text": target["text"],
        "reference_text": reference["text"],
    }


def _prefix_measures(answered: _Answered) -> tuple[list[dict], list[np.ndarray]]:
    """Per answered prompt, the measures on the common prefix (|Δ logprob| of the chosen tokens,
    of the tokens in both top-k, the reference's smallest margin), and its |Δ logprob| per position."""
    prefixes = np.array(answered.prefixes, dtype=np.int64)
    target = answered.target.at(_ranges(answered.target.starts[:-1], prefixes))
    reference = answered.reference.at(_ranges(answered.reference.starts[:-1], prefixes))
    deltas = np.abs(target.logprobs - reference.logprobs)
    top_k_worst = _segment_reduce(np.maximum, _top_k_deltas(target.top_k, reference.top_k), prefixes, -np.inf)
    margins = _segment_reduce(np.minimum, _margins(reference.top_k), prefixes, np.inf)
    columns = zip(_segment_reduce(np.maximum, deltas, prefixes, 0.0).tolist(),
                  (_segment_reduce(np.add, deltas, prefixes, 0.0) / np.maximum(prefixes, 1)).tolist(),
                  np.where(np.isfinite(top_k_worst), top_k_worst, 0.0).tolist(), margins.tolist())
    measured = [{"max_abs_logprob_diff": worst, "mean_abs_logprob_diff": mean, "top_k_max_abs_logprob_diff": top_k,
                 "min_reference_margin": None if margin == math.inf else margin}
                for worst, mean, top_k, margin in columns]
    return measured, np.split(deltas, np.cumsum(prefixes)[:-1])


def _forced_positions(answered: _Answered, scored: list[int]) -> tuple[Positions, np.ndarray]:
    """The teacher-forced measures at every distinct prefix of both answers of each `scored`
    answered prompt, one prompt after the other, and how many positions each prompt has: each
    position of the target's answer (the reference's distribution from its teacher-forced scores),
    then each position of the reference's answer whose prefix the target's answer does not share
    (the target's from its teacher-forced scores)."""
    if not scored:
        return Positions.joined([]), np.zeros(0, dtype=np.int64)
    pairs = [answered.pairs[answer] for answer in scored]
    reference_forced = Columns.of([pair.reference_forced for pair in pairs])  # of the target's answers
    target_forced = Columns.of([pair.target_forced for pair in pairs])  # of the reference's answers
    lengths = answered.target.lengths[scored]
    target = answered.target.at(_ranges(answered.target.starts[scored], lengths))
    on_target = position_measures(reference_forced.top_k, reference_forced.logprobs, target.top_k, target.logprobs,
                                  _token_ids(pair.target["output_ids"] for pair in pairs))
    # Prefixes up to the split are the target answer's too; the split position's only where the target went on.
    starts = np.minimum(np.array(answered.prefixes)[scored] + 1, lengths)
    rest = np.maximum(answered.reference.lengths[scored] - starts, 0)
    reference = answered.reference.at(_ranges(answered.reference.starts[scored] + starts, rest))
    target_of_rest = target_forced.at(_ranges(target_forced.starts[:-1] + starts, rest))
    rest_ids = _token_ids(pair.reference["output_ids"][start:] for pair, start in zip(pairs, starts.tolist()))
    on_reference = position_measures(reference.top_k, reference.logprobs, target_of_rest.top_k, target_of_rest.logprobs,
                                     rest_ids)
    # One prompt after the other: its positions on the target's answer, then those on the reference's.
    firsts = np.column_stack([np.cumsum(lengths) - lengths, len(on_target) + np.cumsum(rest) - rest]).ravel()
    order = _ranges(firsts, np.column_stack([lengths, rest]).ravel())
    return Positions.joined([on_target, on_reference]).take(order), lengths + rest


def compare_generations(pairs: list[PromptPair], *, suite_prompt_ids: dict[str, list[int]], eos_ids: set[int], noise: float,
                        teacher_forced: bool) -> tuple[list[dict], list[np.ndarray], Positions]:
    """compare.json's entry of each prompt, with its teacher-forced measures where `teacher_forced`
    (both sides scored the other's answers); the |Δ logprob| along each answered prompt's common
    prefix; the teacher-forced measures at every position scored."""
    entries = [{"id": pair.target["id"], "status": "error", "target_error": pair.target["error"],
                "reference_error": pair.reference["error"]} for pair in pairs]
    answered = _Answered.of(pairs)
    if answered is None:
        return entries, [], Positions.joined([])
    measured, diffs = _prefix_measures(answered)
    for answer, (index, pair) in enumerate(zip(answered.indices, answered.pairs)):
        entries[index] = _answered_entry(answered, answer, suite_prompt_ids=suite_prompt_ids.get(pair.target["id"]),
                                         eos_ids=eos_ids, noise=noise, measured=measured[answer])
    problems = [_forced_problem(pair) for pair in answered.pairs] if teacher_forced else []
    for index, problem in zip(answered.indices, problems):
        entries[index]["teacher_forced"] = {"error": problem}
    scored = [answer for answer, problem in enumerate(problems) if not problem]
    positions, lengths = _forced_positions(answered, scored)
    for answer, summary in zip(scored, segment_summaries(positions, lengths)):
        entries[answered.indices[answer]]["teacher_forced"] = {"error": None, "summary": summary}
    return entries, diffs, positions


def compare_passage(target: dict, reference: dict) -> dict:
    if target["error"] or reference["error"] or not target["perplexity"] or not reference["perplexity"]:
        return {"id": target["id"], "error": target["error"] or reference["error"] or "no tokens to score"}
    t_logprobs, r_logprobs = np.asarray(target["logprobs"], dtype=float), np.asarray(reference["logprobs"], dtype=float)
    common = min(len(t_logprobs), len(r_logprobs))
    deltas = np.abs(t_logprobs[:common] - r_logprobs[:common])
    return {
        "id": target["id"],
        "error": None,
        "target_perplexity": target["perplexity"],
        "reference_perplexity": reference["perplexity"],
        "rel_diff": abs(target["perplexity"] - reference["perplexity"]) / reference["perplexity"],
        "max_abs_prompt_logprob_diff": float(deltas.max()) if common else 0.0,
        "tokens": len(t_logprobs),
    }


def _forced_problem(pair: PromptPair) -> str | None:
    """Why one prompt has no teacher-forced measures, or None."""
    for scorer, forced, answer in (("reference", pair.reference_forced, pair.target),
                                   ("target", pair.target_forced, pair.reference)):
        if forced is None:
            return f"the {scorer} did not score this answer"
        if forced["error"]:
            return f"the {scorer} could not score this answer: {forced['error']}"
        if forced["answer_ids"] != answer["output_ids"]:
            return f"the {scorer} scored another answer than the one recorded now"
    return None


def teacher_forced_unavailable(answers_sha256: dict[str, str], target_forced: dict | None,
                               reference_forced: dict | None) -> str | None:
    """Why the run has no teacher-forced measures at all (a side has not scored the other's
    answers, or scored answers that have changed since), or None; `answers_sha256` maps each side
    to the AnswersHash of its generations as compared now."""
    for scorer, forced, answers in (("reference", reference_forced, "target"), ("target", target_forced, "reference")):
        if forced is None:
            return f"the {scorer} has not scored the {answers}'s answers: run cross-score --scorer {scorer}"
        if forced["answers_sha256"] != answers_sha256[answers]:
            return (f"the {scorer} scored other answers than the {answers}'s generations.records holds now: "
                    f"run cross-score --scorer {scorer} again")
    return None


def decade_counts(values: np.ndarray) -> dict[str, int]:
    """How many values fall in each decade [1eN, 1eN+1), keyed by N, from FLOOR_DECADE (which also
    counts everything below it, 0 included)."""
    with np.errstate(divide="ignore"):
        decades = np.maximum(FLOOR_DECADE, np.floor(np.log10(np.where(values > 0, values, 0.0))))
    found, counts = np.unique(decades.astype(np.int64), return_counts=True)
    return {str(decade): int(count) for decade, count in zip(found.tolist(), counts.tolist())}


def along_positions(rows: list[np.ndarray]) -> dict[str, list[float]]:
    """The largest and the median value at each position over the rows that reach it: the run's
    |Δ logprob| along the answers, two lines however many prompts there are."""
    longest = max(map(len, rows), default=0)
    table = np.full((len(rows), longest), np.nan)
    for index, row in enumerate(rows):
        table[index, :len(row)] = row
    if not longest:
        return {"max": [], "median": []}
    return {"max": np.nanmax(table, axis=0).tolist(), "median": np.nanmedian(table, axis=0).tolist()}


PASS, FAIL, NOT_CHECKED = "pass", "fail", "not_checked"
# compare.json keeps the boolean "passed" of its first readers; a check that could not run is null there.
PASSED_FIELD = {PASS: True, FAIL: False, NOT_CHECKED: None}


class Registry(list):
    """(name, function) pairs in the order the functions are defined: adding a check means writing
    one decorated function, `@registry.add("name")`."""

    def add(self, name: str) -> Callable[[Callable], Callable]:
        def register(function: Callable) -> Callable:
            self.append((name, function))
            return function
        return register


@dataclass(frozen=True)
class Evidence:
    """What every compare check reads."""

    suite: dict
    prompts: list[dict]  # compare_generations of each prompt both sides have
    passages: list[dict]  # compare_passage of each passage both sides have
    thresholds: dict
    accuracy: dict  # compare.json's "accuracy": per-task results, or why there are none
    teacher_forced: dict | None = None  # teacher_forced_run_summary; None when unavailable
    teacher_forced_missing: str | None = None  # why the run has no teacher-forced measures
    logits: dict | None = None  # logits.measure_run: full-vocabulary logits, both sides
    logits_missing: str | None = None  # why the run has no logits measures
    logprob_diffs: dict | None = None  # along_positions of the prompts' |Δ logprob|

    @property
    def answered(self) -> list[dict]:
        return [p for p in self.prompts if p["status"] != "error"]


@dataclass(frozen=True)
class Outcome:
    status: str  # PASS, FAIL or NOT_CHECKED
    measured: Any
    threshold: Any
    detail: str


COMPARE_CHECKS = Registry()
check = COMPARE_CHECKS.add


def _held(condition: bool) -> str:
    return PASS if condition else FAIL


def _none_of(bad: list[str], *, fine: str, wrong: str) -> Outcome:
    """A check that holds when no prompt is in `bad`; it measures how many are."""
    return Outcome(_held(not bad), len(bad), 0, fine if not bad else f"{wrong}: {bad}")


def needs_answered_prompts(measure: Callable[[Evidence], Outcome]) -> Callable[[Evidence], Outcome]:
    """A check over answered prompts is not checked when there are none, rather than passing on nothing."""
    @functools.wraps(measure)
    def measure_if_answered(evidence: Evidence) -> Outcome:
        if not evidence.answered:
            return Outcome(NOT_CHECKED, None, None, "no prompt was answered by both sides")
        return measure(evidence)
    return measure_if_answered


@check("all_prompts_answered")
def every_prompt_answered(evidence: Evidence) -> Outcome:
    errors = [p["id"] for p in evidence.prompts if p["status"] == "error"]
    errors += [p["id"] for p in evidence.passages if p.get("error")]
    missing = sorted({p["id"] for p in evidence.suite["prompts"]} - {p["id"] for p in evidence.prompts})
    return Outcome(_held(not errors and not missing), len(errors) + len(missing), 0,
                   f"errors: {errors or 'none'}; missing: {missing or 'none'}")


@check("prompt_ids_from_suite")
@needs_answered_prompts
def prompt_ids_match_suite(evidence: Evidence) -> Outcome:
    return _none_of([p["id"] for p in evidence.answered if not p["prompt_ids_equal"]],
                    fine="both sides decoded from the suite's rendered prompt ids", wrong="prompt ids differ")


@check("chat_template")
@needs_answered_prompts
def server_chat_template_renders_same_ids(evidence: Evidence) -> Outcome:
    rendered = [p for p in evidence.answered if p["chat_template_ids_equal"] is not None]
    unrendered = [p["id"] for p in evidence.answered if p["chat_template_ids_equal"] is None]
    if not rendered:
        return Outcome(NOT_CHECKED, None, 0, "the server's chat endpoint returned no prompt ids to compare")
    outcome = _none_of([p["id"] for p in rendered if not p["chat_template_ids_equal"]],
                       fine="the server's chat endpoint rendered the same prompt ids",
                       wrong="server rendered other ids for")
    if not unrendered:
        return outcome
    return replace(outcome, detail=f"{outcome.detail}; not checked, the server returned no prompt ids: {unrendered}")


@check("token_ids")
@needs_answered_prompts
def token_ids_match(evidence: Evidence) -> Outcome:
    identical = sum(p["status"] == "identical" for p in evidence.answered)
    within = [p["id"] for p in evidence.answered if p["status"] == "split_within_top_k"]
    outside = [p["id"] for p in evidence.answered if p["status"] == "split_outside_top_k"]
    exact = evidence.thresholds["token_match"] == "exact"
    return Outcome(_held(not outside and (not exact or not within)), f"{identical}/{len(evidence.prompts)} identical",
                   "identical" if exact else "identical, or split within each other's top-k",
                   f"split within top-k: {within or 'none'}; split outside top-k: {outside or 'none'}")


@check("text")
@needs_answered_prompts
def text_matches_where_ids_do(evidence: Evidence) -> Outcome:
    differing = [p["id"] for p in evidence.answered if p["ids_equal"] and not p["text_equal"]]
    return Outcome(_held(not differing), f"{len(evidence.answered) - len(differing)}/{len(evidence.answered)}",
                   "equal where ids are equal", f"text differs despite equal ids: {differing or 'none'}")


@check("max_abs_logprob_diff")
@needs_answered_prompts
def logprobs_close(evidence: Evidence) -> Outcome:
    worst = max(p["max_abs_logprob_diff"] for p in evidence.answered)
    threshold = evidence.thresholds["max_abs_logprob_diff"]
    return Outcome(_held(worst <= threshold), worst, threshold, "chosen-token logprobs on the common prefix of each prompt")


@check("perplexity_rel_diff")
def perplexities_close(evidence: Evidence) -> Outcome:
    scored = [p["rel_diff"] for p in evidence.passages if not p.get("error")]
    threshold = evidence.thresholds["perplexity_rel_diff"]
    if not scored:
        why = (f"none of the {len(evidence.passages)} passages could be scored" if evidence.passages
               else "no passages to compare")
        return Outcome(NOT_CHECKED, None, threshold, why)
    return Outcome(_held(max(scored) < threshold), max(scored), threshold, f"worst of {len(scored)} passages")


@check("token_accounting")
@needs_answered_prompts
def tokens_accounted_for(evidence: Evidence) -> Outcome:
    return _none_of([p["id"] for p in evidence.answered if p["accounting_problems"]],
                    fine="usage equals id counts; at most one end-of-sequence id, last", wrong="problems in")


def needs_accuracy(measure: Callable[[Evidence, dict], Outcome]) -> Callable[[Evidence], Outcome]:
    """An accuracy check runs on the paired lm-eval results with the profile's accuracy
    thresholds; without either it is not checked, and in a run where neither side ran lm-eval
    it does not apply (None: left out of compare.json)."""
    @functools.wraps(measure)
    def measure_if_compared(evidence: Evidence) -> Outcome | None:
        limits = evidence.thresholds.get("accuracy")
        if not evidence.accuracy["tasks"]:
            return Outcome(NOT_CHECKED, None, None, evidence.accuracy["note"]) if evidence.accuracy["note"] else None
        if limits is None:
            return Outcome(NOT_CHECKED, None, None, "the profile sets no accuracy thresholds for this dtype")
        return measure(evidence, limits)
    return measure_if_compared


def _per_task(tasks: list[dict], failing: list[str], shown: Callable[[dict], str]) -> str:
    return "; ".join(f"{t['task']}: {shown(t)}" for t in tasks) + (f"; failing: {failing}" if failing else "")


@check("accuracy_difference")
@needs_accuracy
def accuracies_within_tolerance(evidence: Evidence, limits: dict) -> Outcome:
    tolerance = limits["max_rel_diff"]
    tasks = evidence.accuracy["tasks"]
    worst = max(relative_difference(t) for t in tasks)
    failing = [t["task"] for t in tasks if relative_difference(t) > tolerance]
    return Outcome(_held(not failing), worst, tolerance, _per_task(tasks, failing, lambda t: (
        f"{t['target_accuracy']:.4g} vs {t['reference_accuracy']:.4g}, Δ {t['difference']:+.4g} "
        f"[{t['ci_low']:+.4g}, {t['ci_high']:+.4g}] over {t['samples']} samples")))


@check("accuracy_significant_drop")
@needs_accuracy
def no_significant_drop(evidence: Evidence, limits: dict) -> Outcome:
    tasks = evidence.accuracy["tasks"]
    failing = [t["task"] for t in tasks if t["difference"] < 0 and t["mcnemar_p"] < limits["alpha"]]
    return Outcome(_held(not failing), min(t["mcnemar_p"] for t in tasks), limits["alpha"], _per_task(
        tasks, failing, lambda t: (f"{len(t['flipped_to_wrong'])} flipped to wrong, {len(t['flipped_to_correct'])} "
                                   f"to correct, exact McNemar p {t['mcnemar_p']:.3g}")))


@check("answer_agreement")
@needs_accuracy
def answers_agree(evidence: Evidence, limits: dict) -> Outcome:
    tasks = evidence.accuracy["tasks"]
    failing = [t["task"] for t in tasks if t["agreement"] < limits["min_agreement"]]
    return Outcome(_held(not failing), min(t["agreement"] for t in tasks), limits["min_agreement"], _per_task(
        tasks, failing, lambda t: f"{t['agreement']:.4g} same answer, differing documents {t['disagreeing'] or 'none'}"))


@check("loglikelihood_diff")
@needs_accuracy
def loglikelihoods_close(evidence: Evidence, limits: dict) -> Outcome:
    scored = [t for t in evidence.accuracy["tasks"] if t["max_abs_loglikelihood_diff"] is not None]
    threshold = limits["max_abs_loglikelihood_diff"]
    if not scored:
        return Outcome(NOT_CHECKED, None, threshold, "no log-likelihood task was run")
    worst = max(t["max_abs_loglikelihood_diff"] for t in scored)
    failing = [t["task"] for t in scored if t["max_abs_loglikelihood_diff"] > threshold]
    return Outcome(_held(not failing), worst, threshold,
                   _per_task(scored, failing, lambda t: f"max |Δ loglikelihood| per choice {t['max_abs_loglikelihood_diff']:.3g}"))


def relative_difference(task: dict) -> float:
    """|target - reference| accuracy relative to the reference's (absolute when the reference is 0)."""
    difference = abs(task["target_accuracy"] - task["reference_accuracy"])
    return difference / task["reference_accuracy"] if task["reference_accuracy"] else difference


def accuracy_section(accuracy: dict[str, dict | None] | None) -> dict:
    """compare.json's "accuracy": the paired comparison when both sides ran lm-eval, else why not
    ("" when neither did)."""
    present = [side for side, doc in (accuracy or {}).items() if doc]
    if len(present) < 2:
        note = f"only the {present[0]} side has accuracy.json; run inv accuracy on the other" if present else ""
        return {"tasks": [], "note": note}
    return {"tasks": compare_accuracy(accuracy["target"], accuracy["reference"]), "note": "",
            "lm_eval_version": accuracy["target"]["lm_eval_version"],
            "settings": {name: accuracy["target"][name] for name in ("limit", "num_fewshot", "add_bos_token", "max_length")}}


def _teacher_forced_evidence(evidence: Evidence) -> Outcome | None:
    """The outcome of a teacher-forced check that cannot run, or None when it can."""
    if evidence.teacher_forced_missing:
        return Outcome(NOT_CHECKED, None, None, evidence.teacher_forced_missing)
    if evidence.teacher_forced is None:
        return Outcome(NOT_CHECKED, None, None, "no answer was scored by both sides")
    return None


@check("teacher_forced_scored")
@needs_answered_prompts
def every_answer_teacher_forced(evidence: Evidence) -> Outcome:
    if evidence.teacher_forced_missing:
        return Outcome(NOT_CHECKED, None, 0, evidence.teacher_forced_missing)
    unscored = [f"{p['id']} ({p['teacher_forced']['error']})" for p in evidence.answered if p["teacher_forced"]["error"]]
    return _none_of(unscored, fine="each side scored every answer of the other side", wrong="not scored")


def _teacher_forced_limit(field: str, *, at_least: bool, what: str) -> Callable[[Evidence], Outcome]:
    """A check of one number of the teacher-forced run summary against the profile's
    thresholds.teacher_forced[field]: at most it, or with `at_least`, at least it."""
    def measure(evidence: Evidence) -> Outcome:
        unavailable = _teacher_forced_evidence(evidence)
        if unavailable:
            return unavailable
        summary = evidence.teacher_forced
        measured = summary["kld_percentiles"]["99"] if field == "kld_p99" else summary[field]
        limits = evidence.thresholds.get("teacher_forced")
        if limits is None:
            return Outcome(NOT_CHECKED, measured, None, f"{what}; the profile sets no teacher-forced thresholds")
        threshold = limits[field]
        held = measured >= threshold if at_least else measured <= threshold
        return Outcome(_held(held), measured, threshold, f"{what}; {summary['positions']} positions scored")
    return measure


# (check name, field of the run summary and of thresholds.teacher_forced, at least?, what it is)
TEACHER_FORCED_LIMITS = (
    ("kld_mean", "mean_kld", False, "mean KL(reference || target), top-k with a tail bucket (a lower bound)"),
    ("kld_p99", "kld_p99", False, "99th percentile of the KL divergence per position"),
    ("same_top1", "same_top1_rate", True, "share of positions whose top-1 tokens agree"),
    ("rms_delta_p", "rms_delta_p", False, "RMS of Δp, the taken token's probability target minus reference"),
)
for _name, _field, _at_least, _what in TEACHER_FORCED_LIMITS:
    check(_name)(_teacher_forced_limit(_field, at_least=_at_least, what=_what))


LOGITS_OFF = "no full-vocabulary logits were measured (opt-in: inv logits --side SIDE)"


@check("logits_max_abs_diff")
def logits_close(evidence: Evidence) -> Outcome:
    """The seed's "Logits 差异": max |Δ logit| over every stored position and token (opt-in mode)."""
    summary = evidence.logits
    if summary is None:
        return Outcome(NOT_CHECKED, None, None, evidence.logits_missing or LOGITS_OFF)
    detail = (f"full-vocabulary logits, {summary['positions']} positions: mean |Δ logit| "
              f"{_shown(summary['mean_abs_logit_diff'])}, 1 - min cosine {_shown(1 - summary['min_cosine'])}, "
              f"exact KL: mean {_shown(summary['mean_kld'])}, max {_shown(summary['max_kld'])}")
    limits = evidence.thresholds.get("logits")
    if limits is None:
        return Outcome(NOT_CHECKED, summary["max_abs_logit_diff"], None, f"{detail}; the profile sets no logits threshold")
    threshold = limits["max_abs_logit_diff"]
    return Outcome(_held(summary["max_abs_logit_diff"] <= threshold), summary["max_abs_logit_diff"], threshold, detail)


def _check_record(name: str, outcome: Outcome) -> dict:
    return {"name": name, "status": outcome.status, "passed": PASSED_FIELD[outcome.status],
            "measured": outcome.measured, "threshold": outcome.threshold, "detail": outcome.detail}


def run_checks(evidence: Evidence) -> list[dict]:
    """Every registered check that applies to this run, in order, as compare.json records it."""
    outcomes = [(name, measure(evidence)) for name, measure in COMPARE_CHECKS]
    return [_check_record(name, outcome) for name, outcome in outcomes if outcome is not None]


def verdict_of(checks: list[dict]) -> str:
    """A check that could not run does not fail the verdict; it is reported as not checked."""
    return FAIL if any(c["status"] == FAIL for c in checks) else PASS


def _shown(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def failing_checks(result: dict) -> list[str]:
    """Each failing check of a compare document with what it measured, e.g. "chat_template: 3 (threshold 0)"."""
    return [f"{c['name']}: {_shown(c['measured'])} (threshold {_shown(c['threshold'])})"
            for c in result["checks"] if c["status"] == FAIL]


def unchecked_checks(result: dict) -> list[str]:
    """The names of the checks of a compare document that could not run."""
    return [c["name"] for c in result["checks"] if c["status"] == NOT_CHECKED]


def verdict_reasons(result: dict) -> str:
    """The tail of the verdict line: what failed, with its numbers, and what was not checked; "" if neither."""
    parts = []
    if failing := failing_checks(result):
        parts.append("failing: " + "; ".join(failing))
    if unchecked := unchecked_checks(result):
        parts.append("not checked: " + ", ".join(unchecked))
    return " | ".join(parts)


class Aligned:
    """The records of one file looked up by the ids of another's, each file read once, in order:
    memory holds only records read ahead of their partner, none when both files are in the same
    order (as every finished side writes them). `on_read` sees every record, in the file's order."""

    def __init__(self, records: Iterable[dict], on_read: Callable[[dict], None] | None = None):
        self._records, self._waiting, self._on_read = iter(records), {}, on_read

    def get(self, item_id: str) -> dict | None:
        if item_id in self._waiting:
            return self._waiting.pop(item_id)
        for record in self._records:
            if self._on_read:
                self._on_read(record)
            if record["id"] == item_id:
                return record
            self._waiting[record["id"]] = record
        return None

    def drain(self) -> None:
        """Read the rest of the file, for `on_read`."""
        for record in self._records:
            if self._on_read:
                self._on_read(record)


@dataclass
class _Pass:
    """What a pass over prompts measured, in the target's order: compare.json's entry of each, the
    |Δ logprob| along each answered prompt's common prefix, the teacher-forced measures per chunk."""

    prompts: list[dict]
    diffs: list[np.ndarray]
    forced: list[Positions]

    def __add__(self, later: "_Pass") -> "_Pass":
        return _Pass(self.prompts + later.prompts, self.diffs + later.diffs, self.forced + later.forced)


def _measure_pass(records: list[Iterable[dict]], measure: Callable[[list[PromptPair]], tuple],
                  answers: dict[str, AnswersHash]) -> _Pass:
    """`measure` (compare_generations) a chunk of prompts at a time over `records`: the target's
    generations, the reference's, and where both sides scored the other's answers, the target's
    teacher-forced scores and the reference's; each read once, the teacher-forced ones to their end.
    `answers` is fed each side's generations in their file's order."""
    target, reference, *scored = records
    reference_of = Aligned(reference, answers["reference"].add)
    forced_of = [Aligned(side) for side in scored]
    measured, chunk = _Pass([], [], []), []

    def measure_chunk() -> None:
        entries, diffs, positions = measure(chunk)
        measured.prompts.extend(entries)
        measured.diffs.extend(diffs)
        measured.forced.append(positions)
        chunk.clear()

    for t in target:
        answers["target"].add(t)
        if (r := reference_of.get(t["id"])) is None:
            continue
        chunk.append(PromptPair(t, r, *(side.get(t["id"]) for side in forced_of)))
        if len(chunk) == CHUNK:
            measure_chunk()
    measure_chunk()
    for side in (reference_of, *forced_of):
        side.drain()
    return measured


def _measured_part(records: list[Iterator[dict]], measure: Callable) -> tuple[_Pass, dict[str, list]]:
    """_measure_pass over one part of each file, and each side's answers as AnswersHash parts."""
    answers = {side: AnswersHash(keep=True) for side in SIDES}
    return _measure_pass(records, measure, answers), {side: hashed.parts() for side, hashed in answers.items()}


def _first_half(streams: list[RecordStream], middle: str, measure: Callable) -> tuple[_Pass, dict[str, list]]:
    """_measured_part over each file's records before the record of the prompt `middle` (a child's share)."""
    return _measured_part([itertools.takewhile(lambda record: record["id"] != middle,
                                               iter_records(stream.path, stream.kind, columns=True)[1])
                           for stream in streams], measure)


def _same_prompts(ids_before: list[list[str]]) -> bool:
    """Whether each file holds the same prompts, once each, before the split: then each half pairs alike."""
    target = set(ids_before[0])
    return all(len(ids) == len(target) and set(ids) == target for ids in ids_before)


# Below this many prompts, one process: a second would cost more than it saves.
SPLIT_FROM = 2 * CHUNK


def _measured_in_two_processes(suite: dict, streams: list, measure: Callable) -> tuple[_Pass, dict] | None:
    """_measure_pass over `streams` on two cores: a forked child measures the prompts before the
    suite's middle one while this process finds where that one starts in each file and measures the
    rest; the same pass, in the same order, as one process makes. None where it cannot be split so
    (files written before v4, files in different orders, fewer than SPLIT_FROM prompts, one core)
    or where anything goes wrong: one process then reads them, and says what is wrong."""
    prompts = suite["prompts"]
    if (len(prompts) < SPLIT_FROM or usable_cpus() < 2
            or not all(isinstance(stream, RecordStream) and stream.form == FORM for stream in streams)):
        return None
    middle = prompts[len(prompts) // 2]["id"]
    with Forked(functools.partial(_first_half, streams, middle, measure)) as child:
        splits = [split_at(stream.path, middle) for stream in streams]
        if None in splits or not _same_prompts([ids for ids, _ in splits]):
            return None
        try:
            second, second_answers = _measured_part([iter_records(stream.path, stream.kind, columns=True, start=start)[1]
                                                     for stream, (_, start) in zip(streams, splits)], measure)
        except Exception:  # noqa: BLE001 - any fault at all: one process reads them again, and says what it is
            return None
        try:
            first_pass, first_answers = child.result()
        except ChildFailed:
            return None
    whole = {side: AnswersHash() for side in SIDES}
    for side, hashed in whole.items():
        hashed.add_parts(first_answers[side])
        hashed.add_parts(second_answers[side])
    for stream in streams:
        stream.read_elsewhere()
    return first_pass + second, whole


def gather_evidence(*, suite: dict, target: dict, reference: dict, target_ppl: dict, reference_ppl: dict,
                    thresholds: dict, accuracy: dict[str, dict | None] | None = None,
                    target_forced: dict | None = None, reference_forced: dict | None = None,
                    logits: dict | None = None, logits_missing: str | None = None) -> Evidence:
    """The measurements of two sets of records, in the target's order: per prompt, per passage,
    teacher-forced where each side scored the other's answers (`target_forced`, `reference_forced`),
    and `accuracy`, which maps each side to its lm-eval results (accuracy.read_side), None where it has none.
    Each document's "records" may be any iterable: it is read once, in one pass over all of them; record
    files (record_files.RecordStream) of thousands of prompts are read in two processes at once."""
    both_scored = target_forced is not None and reference_forced is not None
    measure = functools.partial(compare_generations, suite_prompt_ids={p["id"]: p["prompt_ids"] for p in suite["prompts"]},
                                eos_ids=set(suite["stop_ids"]), noise=thresholds["max_abs_logprob_diff"],
                                teacher_forced=both_scored)
    records = [target["records"], reference["records"],
               *((target_forced["records"], reference_forced["records"]) if both_scored else ())]
    split = _measured_in_two_processes(suite, records, measure)
    if split is None:
        answers = {side: AnswersHash() for side in SIDES}
        measured = _measure_pass(records, measure, answers)
    else:
        measured, answers = split
    reference_ppl_of = Aligned(reference_ppl["records"])
    passages = [compare_passage(t, r) for t in target_ppl["records"] if (r := reference_ppl_of.get(t["id"])) is not None]
    missing = teacher_forced_unavailable({side: hashed.hexdigest() for side, hashed in answers.items()},
                                         target_forced, reference_forced)
    for prompt in measured.prompts if missing else []:
        prompt.pop("teacher_forced", None)
    return Evidence(suite, measured.prompts, passages, thresholds, accuracy_section(accuracy),
                    None if missing else teacher_forced_run_summary(Positions.joined(measured.forced)), missing,
                    logits, logits_missing, along_positions(measured.diffs))


def teacher_forced_run_summary(positions: Positions) -> dict | None:
    """kld_summary over every position of every prompt with teacher-forced measures, and how many
    of them fall in each decade of KLD (the report's distribution)."""
    summary = kld_summary(positions)
    return summary and {**summary, "kld_decades": decade_counts(positions.kld)}


@contextmanager
def without_cycle_collection() -> Iterator[None]:
    """Python's cycle collector paused: a pass over thousands of records makes objects by the million and
    no cycles (reference counting frees each record when its chunk is measured), yet the collector would
    walk the young ones every few hundred objects: 0.4 s of a 5.5 s pass over 10,000 prompts, and 0.1 to
    0.2 s more of compare's and the audit's reading and writing of documents of 10,000 rows."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def compare_runs(*, suite: dict, target: dict, reference: dict, target_ppl: dict, reference_ppl: dict,
                 thresholds: dict, profile: str, accuracy: dict[str, dict | None] | None = None,
                 target_forced: dict | None = None, reference_forced: dict | None = None,
                 logits: dict | None = None, logits_missing: str | None = None) -> dict:
    """The compare document (schemas/compare.schema.json) for one run; the optional documents as in
    gather_evidence, and the full-vocabulary logits measures (logits.measure_run) or why there are none."""
    check_same_inputs(suite=suite, target=target, reference=reference)
    check_same_inputs(suite=suite, target=target_ppl, reference=reference_ppl)
    for forced in (target_forced, reference_forced):
        if forced is not None:
            check_same_inputs(suite=suite, target=target_ppl, reference=forced)
    with without_cycle_collection():
        evidence = gather_evidence(suite=suite, target=target, reference=reference, target_ppl=target_ppl,
                                   reference_ppl=reference_ppl, thresholds=thresholds, accuracy=accuracy,
                                   target_forced=target_forced, reference_forced=reference_forced,
                                   logits=logits, logits_missing=logits_missing)
    prompts, passages = evidence.prompts, evidence.passages
    checks = run_checks(evidence)
    ok = evidence.answered
    deltas = [p["mean_abs_logprob_diff"] for p in ok]
    margins = [p["min_reference_margin"] for p in ok if p["min_reference_margin"] is not None]
    statuses = Counter(p["status"] for p in prompts)
    return {
        "schema": schema_tag("compare"),
        "verdict": verdict_of(checks),
        "profile": profile,
        "dtype": target["decoding"]["dtype"],
        "suite_sha256": suite["sha256"],
        "model_manifest_sha256": target["model_manifest_sha256"],
        "thresholds": thresholds,
        "checks": checks,
        "prompts": prompts,
        "passages": passages,
        # Only where some side ran lm-eval: the folders of runs without it stay as they were.
        **({"accuracy": evidence.accuracy} if evidence.accuracy["tasks"] or evidence.accuracy["note"] else {}),
        "summary": {
            "prompts": len(prompts),
            "identical": statuses["identical"],
            "split_within_top_k": statuses["split_within_top_k"],
            "split_outside_top_k": statuses["split_outside_top_k"],
            "errors": statuses["error"],
            "compared_tokens": sum(p["common_prefix"] for p in ok),
            "max_abs_logprob_diff": max((p["max_abs_logprob_diff"] for p in ok), default=0.0),
            "mean_abs_logprob_diff": sum(deltas) / len(deltas) if deltas else 0.0,
            "top_k_max_abs_logprob_diff": max((p["top_k_max_abs_logprob_diff"] for p in ok), default=0.0),
            "min_reference_margin": min(margins, default=None),
            "max_perplexity_rel_diff": max((p["rel_diff"] for p in passages if not p.get("error")), default=None),
            "teacher_forced": evidence.teacher_forced,
            "teacher_forced_missing": evidence.teacher_forced_missing,
            "logits": evidence.logits,
            "logits_missing": evidence.logits_missing,
            "logprob_diff_along_positions": evidence.logprob_diffs,
        },
    }
