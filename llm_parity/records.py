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
