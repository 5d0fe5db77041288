"""The records both sides produce, whatever the backend: one generation record per suite prompt
and one perplexity record per passage (schemas/generations and schemas/perplexity), and the
documents that hold them. compare never needs to know which backend made a record."""
from __future__ import annotations

import math

from llm_parity.results import schema_tag

SIDES = ("target", "reference")


def sort_top_k(pairs, k: int) -> list[list]:
    """[[token_id, logprob], ...] best first, ties by token id, at most k."""
    ordered = sorted(((int(token), float(logprob)) for token, logprob in pairs), key=lambda p: (-p[1], p[0]))
    return [[token, logprob] for token, logprob in ordered[:k]]


def perplexity_of(logprobs: list[float]) -> float | None:
    if not logprobs:
        return None
    return math.exp(-sum(logprobs) / len(logprobs))


def top_margin(top_k: list[list]) -> float | None:
    """Logprob gap between the best and second-best token at one position."""
    if len(top_k) < 2:
        return None
    return top_k[0][1] - top_k[1][1]


def failed_generation(prompt: dict, error: str) -> dict:
    """The record of a prompt that produced nothing: kept in place so every prompt is accounted for."""
    return {
        "id": prompt["id"], "prompt_ids": list(prompt["prompt_ids"]), "output_ids": [], "text": "",
        "logprobs": [], "top_logprobs": [], "finish_reason": None,
        "usage": {"prompt_tokens": len(prompt["prompt_ids"]), "completion_tokens": 0}, "error": error,
    }


def failed_perplexity(passage: dict, error: str) -> dict:
    return {"id": passage["id"], "logprobs": [], "perplexity": None, "error": error}


def decoding_of(profile_decoding: dict, dtype: str) -> dict:
    return {"temperature": 0, "top_logprobs": profile_decoding["top_logprobs"], "dtype": dtype}


def generations_doc(side: str, suite: dict, manifest_sha256: str, decoding: dict, records: list[dict]) -> dict:
    return {"schema": schema_tag("generations"), "side": side, "suite_sha256": suite["sha256"],
            "model_manifest_sha256": manifest_sha256, "decoding": decoding, "records": records}


def perplexity_doc(side: str, suite: dict, manifest_sha256: str, records: list[dict]) -> dict:
    return {"schema": schema_tag("perplexity"), "side": side, "suite_sha256": suite["sha256"],
            "model_manifest_sha256": manifest_sha256, "records": records}
