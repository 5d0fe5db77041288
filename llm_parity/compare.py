"""Compare target and reference records: exact ids and text, the first divergence with the
top-1/top-2 margin there and top-k containment (the rule of vLLM's check_logprobs_close),
|Δ logprob| on the common prefix, perplexity, token accounting; every number against the
profile's thresholds. A pure function of records: no model, no server, no network."""
from __future__ import annotations

from llm_parity.records import top_margin
from llm_parity.results import schema_tag


class IncompatibleRuns(ValueError):
    """Target and reference were not produced from the same suite, model or decoding."""


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


def _top_ids(top_k: list[list], position: int) -> list[int]:
    return [token for token, _ in top_k[position]] if position < len(top_k) else []


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
    eos_positions = [i for i, token in enumerate(record["output_ids"]) if token in eos_ids]
    if len(eos_positions) > 1 or (eos_positions and eos_positions[0] != len(record["output_ids"]) - 1):
        problems.append(f"end-of-sequence ids at positions {eos_positions} of {len(record['output_ids'])}")
    return problems


def first_divergence(target: dict, reference: dict, *, noise: float) -> dict | None:
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
    t_margin = top_margin(target["top_logprobs"][position]) if position < len(target["top_logprobs"]) else None
    r_margin = top_margin(reference["top_logprobs"][position]) if position < len(reference["top_logprobs"]) else None
    margins = [m for m in (t_margin, r_margin) if m is not None]
    near_tie = bool(margins) and min(margins) <= noise
    t_in_r = t_tok in _top_ids(reference["top_logprobs"], position)
    r_in_t = r_tok in _top_ids(target["top_logprobs"], position)
    if near_tie:
        why = (f"top-1/top-2 margin {min(margins):.4g} is within the logprob noise this dtype allows "
               f"({noise:g}), so the two backends may rank the pair differently")
    else:
        why = f"margin {min(margins) if margins else float('nan'):.4g} exceeds the allowed noise {noise:g}: not a rounding tie"
    return {"position": position, "target_token": t_tok, "reference_token": r_tok,
            "target_margin": t_margin, "reference_margin": r_margin,
            "target_in_reference_top_k": t_in_r, "reference_in_target_top_k": r_in_t,
            "near_tie": near_tie, "why": why}


def compare_generation(target: dict, reference: dict, *, suite_prompt_ids: list[int] | None, eos_ids: set[int],
                       noise: float) -> dict:
    """All per-prompt measurements for one suite prompt."""
    if target["error"] or reference["error"]:
        return {"id": target["id"], "status": "error", "target_error": target["error"], "reference_error": reference["error"]}
    prefix = _common_prefix(target["output_ids"], reference["output_ids"])
    deltas = [abs(t - r) for t, r in zip(target["logprobs"][:prefix], reference["logprobs"][:prefix])]
    top_k_deltas = []
    for t_top, r_top in zip(target["top_logprobs"][:prefix], reference["top_logprobs"][:prefix]):
        r_map = dict((token, value) for token, value in r_top)
        top_k_deltas += [abs(value - r_map[token]) for token, value in t_top if token in r_map]
    divergence = first_divergence(target, reference, noise=noise)
    if divergence is None:
        status = "identical"
    elif divergence["target_in_reference_top_k"] and divergence["reference_in_target_top_k"]:
        status = "split_within_top_k"
    else:
        status = "split_outside_top_k"
    accounting = [f"target: {p}" for p in token_accounting(target, eos_ids)]
    accounting += [f"reference: {p}" for p in token_accounting(reference, eos_ids)]
    margins = [m for m in (top_margin(top) for top in reference["top_logprobs"][:prefix]) if m is not None]
    return {
        "id": target["id"],
        "status": status,
        "ids_equal": divergence is None,
        "text_equal": _texts_equal(target["text"], reference["text"]),
        "target_tokens": len(target["output_ids"]),
        "reference_tokens": len(reference["output_ids"]),
        "common_prefix": prefix,
        "max_abs_logprob_diff": max(deltas, default=0.0),
        "mean_abs_logprob_diff": sum(deltas) / len(deltas) if deltas else 0.0,
        "abs_logprob_diffs": deltas,
        "top_k_max_abs_logprob_diff": max(top_k_deltas, default=0.0),
        "min_reference_margin": min(margins, default=None),
        "first_divergence": divergence,
        "prompt_ids_equal": target["prompt_ids"] == reference["prompt_ids"] == suite_prompt_ids,
        "chat_template_ids_equal": target.get("chat_prompt_ids") in (None, target["prompt_ids"]),
        "accounting_problems": accounting,
        "target_text": target["text"],
        "reference_text": reference["text"],
    }


def compare_passage(target: dict, reference: dict) -> dict:
    if target["error"] or reference["error"] or not target["perplexity"] or not reference["perplexity"]:
        return {"id": target["id"], "error": target["error"] or reference["error"] or "no tokens to score"}
    deltas = [abs(t - r) for t, r in zip(target["logprobs"], reference["logprobs"])]
    return {
        "id": target["id"],
        "error": None,
        "target_perplexity": target["perplexity"],
        "reference_perplexity": reference["perplexity"],
        "rel_diff": abs(target["perplexity"] - reference["perplexity"]) / reference["perplexity"],
        "max_abs_prompt_logprob_diff": max(deltas, default=0.0),
        "tokens": len(target["logprobs"]),
    }


def _check(name: str, passed: bool, measured, threshold, detail: str) -> dict:
    return {"name": name, "passed": bool(passed), "measured": measured, "threshold": threshold, "detail": detail}


def _checks(suite: dict, prompts: list[dict], passages: list[dict], thresholds: dict) -> list[dict]:
    suite_ids = {p["id"] for p in suite["prompts"]}
    ok = [p for p in prompts if p["status"] != "error"]
    errors = [p["id"] for p in prompts if p["status"] == "error"] + [p["id"] for p in passages if p.get("error")]
    identical = sum(p["status"] == "identical" for p in ok)
    within = [p["id"] for p in ok if p["status"] == "split_within_top_k"]
    outside = [p["id"] for p in ok if p["status"] == "split_outside_top_k"]
    exact = thresholds["token_match"] == "exact"
    tokens_ok = not outside and (not exact or not within)
    max_delta = max((p["max_abs_logprob_diff"] for p in ok), default=0.0)
    ppl = [p["rel_diff"] for p in passages if not p.get("error")]
    text_bad = [p["id"] for p in ok if p["ids_equal"] and not p["text_equal"]]
    accounting_bad = [p["id"] for p in ok if p["accounting_problems"]]
    suite_bad = [p["id"] for p in ok if not p["prompt_ids_equal"]]
    template_bad = [p["id"] for p in ok if not p["chat_template_ids_equal"]]
    missing = sorted(set(suite_ids) - {p["id"] for p in prompts})
    return [
        _check("all_prompts_answered", not errors and not missing, len(errors) + len(missing), 0,
               f"errors: {errors or 'none'}; missing: {missing or 'none'}"),
        _check("prompt_ids_from_suite", not suite_bad, len(suite_bad), 0,
               "both sides decoded from the suite's rendered prompt ids" if not suite_bad else f"prompt ids differ: {suite_bad}"),
        _check("chat_template", not template_bad, len(template_bad), 0,
               "the server's chat endpoint rendered the same prompt ids" if not template_bad else f"server rendered other ids for: {template_bad}"),
        _check("token_ids", tokens_ok, f"{identical}/{len(prompts)} identical",
               "identical" if exact else "identical, or split within each other's top-k",
               f"split within top-k: {within or 'none'}; split outside top-k: {outside or 'none'}"),
        _check("text", not text_bad, f"{len(ok) - len(text_bad)}/{len(ok)}", "equal where ids are equal",
               f"text differs despite equal ids: {text_bad or 'none'}"),
        _check("max_abs_logprob_diff", max_delta <= thresholds["max_abs_logprob_diff"], max_delta,
               thresholds["max_abs_logprob_diff"], "chosen-token logprobs on the common prefix of each prompt"),
        _check("perplexity_rel_diff", bool(ppl) and max(ppl) < thresholds["perplexity_rel_diff"], max(ppl, default=None),
               thresholds["perplexity_rel_diff"], f"worst of {len(ppl)} passages"),
        _check("token_accounting", not accounting_bad, len(accounting_bad), 0,
               "usage equals id counts; at most one end-of-sequence id, last" if not accounting_bad else f"problems in: {accounting_bad}"),
    ]


def compare_runs(*, suite: dict, target: dict, reference: dict, target_ppl: dict, reference_ppl: dict,
                 thresholds: dict, profile: str) -> dict:
    """The compare document (schemas/compare.schema.json) for one run."""
    check_same_inputs(suite=suite, target=target, reference=reference)
    check_same_inputs(suite=suite, target=target_ppl, reference=reference_ppl)
    noise = thresholds["max_abs_logprob_diff"]
    eos_ids = set(suite["stop_ids"])
    reference_by_id = {r["id"]: r for r in reference["records"]}
    suite_prompt_ids = {p["id"]: p["prompt_ids"] for p in suite["prompts"]}
    prompts = [compare_generation(t, reference_by_id[t["id"]], suite_prompt_ids=suite_prompt_ids.get(t["id"]),
                                  eos_ids=eos_ids, noise=noise)
               for t in target["records"] if t["id"] in reference_by_id]
    reference_ppl_by_id = {r["id"]: r for r in reference_ppl["records"]}
    passages = [compare_passage(t, reference_ppl_by_id[t["id"]]) for t in target_ppl["records"] if t["id"] in reference_ppl_by_id]
    checks = _checks(suite, prompts, passages, thresholds)
    ok = [p for p in prompts if p["status"] != "error"]
    deltas = [p["mean_abs_logprob_diff"] for p in ok]
    margins = [p["min_reference_margin"] for p in ok if p["min_reference_margin"] is not None]
    return {
        "schema": schema_tag("compare"),
        "verdict": "pass" if all(c["passed"] for c in checks) else "fail",
        "profile": profile,
        "dtype": target["decoding"]["dtype"],
        "suite_sha256": suite["sha256"],
        "model_manifest_sha256": target["model_manifest_sha256"],
        "thresholds": thresholds,
        "checks": checks,
        "prompts": prompts,
        "passages": passages,
        "summary": {
            "prompts": len(prompts),
            "identical": sum(p["status"] == "identical" for p in prompts),
            "split_within_top_k": sum(p["status"] == "split_within_top_k" for p in prompts),
            "split_outside_top_k": sum(p["status"] == "split_outside_top_k" for p in prompts),
            "errors": sum(p["status"] == "error" for p in prompts),
            "compared_tokens": sum(p["common_prefix"] for p in ok),
            "max_abs_logprob_diff": max((p["max_abs_logprob_diff"] for p in ok), default=0.0),
            "mean_abs_logprob_diff": sum(deltas) / len(deltas) if deltas else 0.0,
            "top_k_max_abs_logprob_diff": max((p["top_k_max_abs_logprob_diff"] for p in ok), default=0.0),
            "min_reference_margin": min(margins, default=None),
            "max_perplexity_rel_diff": max((p["rel_diff"] for p in passages if not p.get("error")), default=None),
        },
    }
