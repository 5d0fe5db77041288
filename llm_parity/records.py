"""The records both sides produce, whatever the backend: one generation record per suite prompt,
one perplexity record per passage, and one teacher-forced record per answer of the other side
(schemas/generations, schemas/perplexity, schemas/teacher-forced), and the documents that hold
them. compare never needs to know which backend made a record."""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np

from llm_parity.results import schema_tag, sha256_of

SIDES = ("target", "reference")


class IncompatibleRuns(ValueError):
    """Target and reference were not produced from the same suite, model or decoding, or did not
    score the same thing."""


def other_side(side: str) -> str:
    return SIDES[1 - SIDES.index(side)]


def sort_top_k(pairs, k: int) -> list[list]:
    """[[token_id, logprob], ...] best first, ties by token id, at most k."""
    ordered = sorted(((int(token), float(logprob)) for token, logprob in pairs), key=lambda p: (-p[1], p[0]))
    return [[token, logprob] for token, logprob in ordered[:k]]


# Padding of a position with fewer alternatives than the widest one, in TopK.
NO_TOKEN = -1


class TopK(NamedTuple):
    """The top-k of every position as two arrays of shape (positions, width), best first: the
    column form compare computes on. A position with fewer than `width` alternatives is padded with
    token id NO_TOKEN and logprob -inf."""

    ids: np.ndarray  # int32: every vocabulary fits, and comparing half the bytes is faster
    logprobs: np.ndarray  # float64

    @property
    def positions(self) -> int:
        return self.ids.shape[0]

    def rows(self, start: int, stop: int | None = None) -> "TopK":
        return TopK(self.ids[start:stop], self.logprobs[start:stop])


def top_k_arrays(top_k: list[list] | TopK, id_dtype: type = np.int32) -> TopK:
    """The column form of a record's top_logprobs, [[[token_id, logprob], ...] per position]
    (`id_dtype` int64 for a writer that checks the ids' range itself)."""
    if isinstance(top_k, TopK):
        return top_k
    width = max(map(len, top_k), default=0)
    if all(len(pairs) == width for pairs in top_k):  # the usual case: no padding, no loop per alternative
        shape = (len(top_k), width)
        return TopK(np.array([pair[0] for pairs in top_k for pair in pairs], dtype=id_dtype).reshape(shape),
                    np.array([pair[1] for pairs in top_k for pair in pairs], dtype=np.float64).reshape(shape))
    ids = np.full((len(top_k), width), NO_TOKEN, dtype=id_dtype)
    logprobs = np.full((len(top_k), width), -np.inf)
    for position, pairs in enumerate(top_k):
        for rank, (token, logprob) in enumerate(pairs):
            ids[position, rank], logprobs[position, rank] = token, logprob
    return TopK(ids, logprobs)


def stack_top_k(parts: list[TopK]) -> TopK:
    """The positions of `parts` one after another, narrower ones padded to the widest."""
    width = max((part.ids.shape[1] for part in parts), default=0)

    def padded(array: np.ndarray, fill) -> np.ndarray:
        return array if array.shape[1] == width else np.pad(array, ((0, 0), (0, width - array.shape[1])), constant_values=fill)
    if not parts:
        return TopK(np.zeros((0, 0), dtype=np.int32), np.zeros((0, 0)))
    return TopK(np.concatenate([padded(part.ids, NO_TOKEN) for part in parts]),
                np.concatenate([padded(part.logprobs, -np.inf) for part in parts]))


def top_k_pairs(top_k: TopK) -> list[list]:
    """The list form of a TopK: per position [[token_id, logprob], ...], padding left out."""
    return [[[token, logprob] for token, logprob in zip(ids, logprobs) if token != NO_TOKEN]
            for ids, logprobs in zip(top_k.ids.tolist(), top_k.logprobs.tolist())]


def perplexity_of(logprobs: list[float]) -> float | None:
    if not logprobs:
        return None
    return math.exp(-sum(logprobs) / len(logprobs))


def top_margin(top_k: list[list]) -> float | None:
    """Logprob gap between the best and second-best token at one position."""
    if len(top_k) < 2:
        return None
    return top_k[0][1] - top_k[1][1]


def unrunnable_prompt(prompt: dict, max_model_len: int) -> str | None:
    """Why a rendered prompt cannot be run, or None. Both sides apply the same rule, so they
    record the same error instead of one side failing and the other not."""
    if prompt.get("render_error"):
        return f"the suite could not render this prompt: {prompt['render_error']}"
    if not prompt["prompt_ids"]:
        return "the prompt rendered to no tokens"
    if len(prompt["prompt_ids"]) + prompt["max_tokens"] > max_model_len:
        return (f"prompt of {len(prompt['prompt_ids'])} tokens + max_tokens {prompt['max_tokens']} "
                f"exceeds max-model-len {max_model_len}")
    return None


@dataclass
class Generation:
    """One suite prompt decoded greedily by one backend (schemas/generations, one item of records).

    `logprobs[i]` is the chosen token's logprob at output position i and `top_logprobs[i]` the
    top-k there as [[token_id, logprob], ...] best first. `chat_prompt_ids` is what a server's own
    chat template gave for the same messages: None where the backend has no chat endpoint or the
    server could not render (the chat-template check then says "not checked")."""

    id: str
    prompt_ids: list[int]
    output_ids: list[int]
    text: str
    logprobs: list[float]
    top_logprobs: list[list]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
    chat_prompt_ids: list[int] | None = None

    @classmethod
    def failed(cls, prompt: dict, error: str) -> "Generation":
        """The record of a prompt that produced nothing: kept in place so every prompt is accounted for."""
        return cls(id=prompt["id"], prompt_ids=list(prompt["prompt_ids"]), output_ids=[], text="", logprobs=[],
                   top_logprobs=[], finish_reason=None, prompt_tokens=len(prompt["prompt_ids"]), completion_tokens=0,
                   error=error)

    def to_json(self) -> dict:
        doc = {"id": self.id, "prompt_ids": list(self.prompt_ids), "output_ids": list(self.output_ids), "text": self.text,
               "logprobs": list(self.logprobs), "top_logprobs": self.top_logprobs, "finish_reason": self.finish_reason,
               "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens},
               "error": self.error}
        if self.chat_prompt_ids is not None:
            doc["chat_prompt_ids"] = list(self.chat_prompt_ids)
        return doc

    @classmethod
    def from_json(cls, doc: dict) -> "Generation":
        return cls(id=doc["id"], prompt_ids=doc["prompt_ids"], output_ids=doc["output_ids"], text=doc["text"],
                   logprobs=doc["logprobs"], top_logprobs=doc["top_logprobs"], finish_reason=doc["finish_reason"],
                   prompt_tokens=doc["usage"]["prompt_tokens"], completion_tokens=doc["usage"]["completion_tokens"],
                   error=doc["error"], chat_prompt_ids=doc.get("chat_prompt_ids"))


@dataclass
class PassageScore:
    """Prompt logprobs of one suite passage (schemas/perplexity, one item of records): the logprob
    of token i+1 given tokens 0..i, and the perplexity they give."""

    id: str
    logprobs: list[float]
    error: str | None = None

    @property
    def perplexity(self) -> float | None:
        return perplexity_of(self.logprobs)

    @classmethod
    def failed(cls, passage: dict, error: str) -> "PassageScore":
        return cls(id=passage["id"], logprobs=[], error=error)

    def to_json(self) -> dict:
        return {"id": self.id, "logprobs": list(self.logprobs), "perplexity": self.perplexity, "error": self.error}

    @classmethod
    def from_json(cls, doc: dict) -> "PassageScore":
        return cls(id=doc["id"], logprobs=doc["logprobs"], error=doc["error"])


@dataclass
class ForcedScore:
    """One side's distribution at every position of the other side's answer to one prompt
    (teacher forcing: prompt + answer in one pass; schemas/teacher-forced, one item of records).

    `logprobs[i]` is this side's logprob of `answer_ids[i]` given the prompt and `answer_ids[:i]`,
    `top_logprobs[i]` its own top-k there."""

    id: str
    answer_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list]
    error: str | None = None

    @classmethod
    def failed(cls, answer: dict, error: str) -> "ForcedScore":
        return cls(id=answer["id"], answer_ids=list(answer["answer_ids"]), logprobs=[], top_logprobs=[], error=error)

    def to_json(self) -> dict:
        return {"id": self.id, "answer_ids": list(self.answer_ids), "logprobs": list(self.logprobs),
                "top_logprobs": self.top_logprobs, "error": self.error}

    @classmethod
    def from_json(cls, doc: dict) -> "ForcedScore":
        return cls(id=doc["id"], answer_ids=doc["answer_ids"], logprobs=doc["logprobs"],
                   top_logprobs=doc["top_logprobs"], error=doc["error"])


def answers_of(generations: dict) -> list[dict]:
    """The answers of a generations document that can be scored by the other side: each prompt's
    id, prompt ids and output ids, for prompts that were answered."""
    return [{"id": r["id"], "prompt_ids": r["prompt_ids"], "answer_ids": r["output_ids"]}
            for r in generations["records"] if not r["error"] and r["output_ids"]]


# sha256_of's JSON, by one encoder made once (json.dumps makes one per call when given options).
_compact_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
COMMA, ZERO = ord(","), ord("0")


def _decimal_ids(ids: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Token ids (0 and up) as JSON writes each, each followed by a comma, one after another, and
    where each id's text ends. Made as arrays: writing ids as text is most of hashing answers."""
    width = len(str(int(ids.max()))) if ids.size else 1
    text = np.empty((ids.size, width + 1), dtype=np.uint8)  # each id right-aligned, then its comma
    text[:, width] = COMMA
    rest = ids.astype(np.uint32)  # token ids are below 2**31: 32-bit division, twice as fast as 64-bit divmod
    for place in range(width - 1, -1, -1):
        quotient = rest // 10
        text[:, place] = (rest - quotient * 10).astype(np.uint8) + ZERO
        rest = quotient
    figures = np.ones(ids.size, dtype=np.int64)
    for power in range(1, width):
        figures += ids >= 10 ** power
    kept = np.arange(width + 1) >= (width - figures)[:, None]
    return text[kept].tobytes(), np.cumsum(figures + 1)


class AnswersHash:
    """What a teacher-forced file scored: the hash of every answer's id and output ids, so a side
    rerun since then is noticed; fed one generation record at a time, in the document's order, and
    hashed a batch of answers at a time. With `keep`, the batches are kept as hashed, so that the
    answers of a document read in parts can be hashed in order, part after part (add_parts)."""

    BATCH = 256

    def __init__(self, keep: bool = False):
        self._hash, self._items, self._waiting = hashlib.sha256(b"["), 0, []
        self._kept: list[tuple[bytes, int]] | None = [] if keep else None

    def add(self, record: dict) -> None:
        if not record["error"] and len(record["output_ids"]):
            self._waiting.append((record["id"], record["output_ids"]))
            if len(self._waiting) == self.BATCH:
                self._hash_waiting()

    def _hash_waiting(self) -> None:
        if not self._waiting:
            return
        counts = np.array([len(ids) for _, ids in self._waiting])
        text, ends = _decimal_ids(np.fromiter(itertools.chain.from_iterable(ids for _, ids in self._waiting),
                                              dtype=np.int64, count=int(counts.sum())))
        answer_ends = ends[np.cumsum(counts) - 1]
        items = [f"[{_compact_json(item)},[".encode("utf-8", "surrogatepass") + text[start:end - 1] + b"]]"
                 for (item, _), start, end in zip(self._waiting, [0, *answer_ends[:-1].tolist()], answer_ends.tolist())]
        self._hash_items(b",".join(items), len(items))
        self._waiting.clear()

    def _hash_items(self, items: bytes, count: int) -> None:
        """Hash `count` answers written as text, separated by commas."""
        self._hash.update((b"," if self._items else b"") + items)
        self._items += count
        if self._kept is not None:
            self._kept.append((items, count))

    def parts(self) -> list[tuple[bytes, int]]:
        """The batches hashed so far, as text: what add_parts takes (with `keep` only)."""
        self._hash_waiting()
        return list(self._kept)

    def add_parts(self, parts: list[tuple[bytes, int]]) -> None:
        """Hash the answers of another AnswersHash's `parts`, after those added so far."""
        self._hash_waiting()
        for items, count in parts:
            self._hash_items(items, count)

    def hexdigest(self) -> str:
        self._hash_waiting()
        whole = self._hash.copy()
        whole.update(b"]")
        return whole.hexdigest()


def answers_hash(generations: dict) -> str:
    """AnswersHash of a whole generations document: sha256_of the [id, output ids] of every answer."""
    hashed = AnswersHash()
    for record in generations["records"]:
        hashed.add(record)
    return hashed.hexdigest()


def decoding_of(profile_decoding: dict, dtype: str) -> dict:
    return {"temperature": 0, "top_logprobs": profile_decoding["top_logprobs"], "dtype": dtype}


# Either record type, for code that handles both the same way.
Record = TypeVar("Record", Generation, PassageScore, ForcedScore)


def generations_doc(side: str, suite: dict, manifest_sha256: str, decoding: dict, records: list[Generation]) -> dict:
    return {"schema": schema_tag("generations"), "side": side, "suite_sha256": suite["sha256"],
            "model_manifest_sha256": manifest_sha256, "decoding": decoding,
            "records": [record.to_json() for record in records]}


def perplexity_doc(side: str, suite: dict, manifest_sha256: str, records: list[PassageScore]) -> dict:
    return {"schema": schema_tag("perplexity"), "side": side, "suite_sha256": suite["sha256"],
            "model_manifest_sha256": manifest_sha256, "records": [record.to_json() for record in records]}


def teacher_forced_doc(side: str, suite: dict, manifest_sha256: str, other_generations: dict, top_logprobs: int,
                       records: list[ForcedScore]) -> dict:
    """`side`'s scores of the answers in `other_generations` (the other side's generations document)."""
    return {"schema": schema_tag("teacher-forced"), "side": side, "answers_of": other_generations["side"],
            "suite_sha256": suite["sha256"], "model_manifest_sha256": manifest_sha256,
            "answers_sha256": answers_hash(other_generations), "top_logprobs": top_logprobs,
            "records": [record.to_json() for record in records]}
