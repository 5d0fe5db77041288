"""Paired accuracy comparison of two sides' lm-eval per-sample records: the same documents, the
same token ids scored (a BOS or tokenization mismatch is refused, naming the side), then per
task both accuracies, their difference with a paired bootstrap confidence interval, the samples
whose correctness flips with an exact McNemar test on them, answer agreement and |Δ
log-likelihood| per choice. Pure functions: no model, no lm-eval."""
from __future__ import annotations

import math
import random

from llm_parity.records import IncompatibleRuns

BOOTSTRAP_SEED = 20240229
BOOTSTRAP_ROUNDS = 2000
CONFIDENCE = 0.95
# What both sides must have run alike, as accuracy.json records it.
RUN_SETTINGS = ("model_manifest_sha256", "dtype", "limit", "num_fewshot", "add_bos_token", "max_length", "bos_token_id",
                "lm_eval_version")
TASK_SETTINGS = ("version", "num_fewshot", "config_sha256", "metric", "samples")


def paired_bootstrap_ci(target: list[bool], reference: list[bool], *, rounds: int = BOOTSTRAP_ROUNDS,
                        seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of accuracy(target) - accuracy(reference) over `rounds` resamples of
    the documents (the same documents for both sides: paired), with a fixed seed."""
    n = len(target)
    if n == 0:
        raise ValueError("no samples to resample")
    rng = random.Random(seed)
    diffs = []
    for _ in range(rounds):
        picks = [rng.randrange(n) for _ in range(n)]
        diffs.append(sum(target[i] - reference[i] for i in picks) / n)
    diffs.sort()
    tail = (1 - confidence) / 2
    return diffs[int(math.floor(tail * (rounds - 1)))], diffs[int(math.ceil((1 - tail) * (rounds - 1)))]


def mcnemar_exact(target_only: int, reference_only: int) -> float:
    """Two-sided exact McNemar p-value: under no difference the flips split as Binomial(b + c, 1/2)."""
    flips = target_only + reference_only
    if flips == 0:
        return 1.0
    tail = sum(math.comb(flips, k) for k in range(min(target_only, reference_only) + 1)) / 2 ** flips
    return min(1.0, 2 * tail)


def _same_ids_problem(side_t: list[int], side_r: list[int], bos: int | None) -> str | None:
    """Why two id sequences differ, in the terms that help: BOS on one side only, or where."""
    if side_t == side_r:
        return None
    t_bos, r_bos = bool(side_t) and side_t[0] == bos, bool(side_r) and side_r[0] == bos
    if bos is not None and t_bos != r_bos:
        with_bos = "target" if t_bos else "reference"
        without = "reference" if t_bos else "target"
        return (f"the {with_bos} scored a BOS ({bos}) first and the {without} did not (first id "
                f"{(side_r if t_bos else side_t)[:1] or 'none'}): give both sides the same add_bos_token")
    position = next((i for i, (a, b) in enumerate(zip(side_t, side_r)) if a != b), min(len(side_t), len(side_r)))
    return (f"tokenization differs at position {position}: target {side_t[position:position + 3]} "
            f"({len(side_t)} ids), reference {side_r[position:position + 3]} ({len(side_r)} ids)")


def _check_same_runs(target: dict, reference: dict) -> None:
    for name in RUN_SETTINGS:
        if target[name] != reference[name]:
            raise IncompatibleRuns(f"accuracy: target and reference differ in {name}: {target[name]} vs {reference[name]}")
    for t_task, r_task in zip(target["tasks"], reference["tasks"]):
        for name in TASK_SETTINGS:
            if t_task[name] != r_task[name]:
                raise IncompatibleRuns(f"accuracy: task {t_task['name']}: target and reference differ in {name}: "
                                       f"{t_task[name]} vs {r_task[name]}")


def _check_accuracy_recorded(side: str, task: dict, samples: list[dict]) -> None:
    """lm-eval's own aggregate must be the mean of the per-sample scores it logged."""
    mean = sum(s["score"] for s in samples) / len(samples)
    if len(samples) != task["samples"] or not math.isclose(mean, task["lm_eval_accuracy"], abs_tol=1e-9):
        raise IncompatibleRuns(f"accuracy: {side} task {task['name']}: accuracy.json says {task['lm_eval_accuracy']} over "
                               f"{task['samples']} samples, its per-sample file gives {mean} over {len(samples)}")


def pair_sample(task: str, target: dict, reference: dict, *, bos: int | None, window: int) -> dict:
    """One document on both sides: refused unless both scored the same document, prompt and ids,
    each within `window` tokens (beyond it the two backends truncate differently)."""
    where = f"accuracy: task {task} document {target['doc_id']}"
    for name in ("doc_hash", "prompt_hash", "kind"):
        if target[name] != reference[name]:
            raise IncompatibleRuns(f"{where}: target and reference differ in {name}: {target[name]} vs {reference[name]}")
    if len(target["requests"]) != len(reference["requests"]):
        raise IncompatibleRuns(f"{where}: target made {len(target['requests'])} requests, reference {len(reference['requests'])}")
    for index, (t_req, r_req) in enumerate(zip(target["requests"], reference["requests"])):
        if problem := _same_ids_problem(t_req["ids"], r_req["ids"], bos):
            raise IncompatibleRuns(f"{where} request {index}: {problem}")
        if len(t_req["ids"]) > window:
            raise IncompatibleRuns(f"{where} request {index}: {len(t_req['ids'])} tokens exceed the {window} both sides "
                                   "score without truncating; raise max_length (the served --max-model-len)")
    pair = {"doc_id": target["doc_id"], "target_correct": target["correct"], "reference_correct": reference["correct"],
            "same_answer": target["prediction"] == reference["prediction"],
            "target_prediction": target["prediction"], "reference_prediction": reference["prediction"]}
    if target["kind"] == "loglikelihood":
        pair["abs_loglikelihood_diffs"] = [abs(t["loglikelihood"] - r["loglikelihood"])
                                           for t, r in zip(target["requests"], reference["requests"])]
    return pair


def compare_task(task: str, target_samples: list[dict], reference_samples: list[dict], *, bos: int | None,
                 window: int) -> dict:
    """Every measurement of one task, from the paired per-sample records."""
    reference_by_doc = {s["doc_id"]: s for s in reference_samples}
    if set(reference_by_doc) != {s["doc_id"] for s in target_samples}:
        raise IncompatibleRuns(f"accuracy: task {task}: the sides scored different documents")
    pairs = [pair_sample(task, t, reference_by_doc[t["doc_id"]], bos=bos, window=window) for t in target_samples]
    t_correct, r_correct = [p["target_correct"] for p in pairs], [p["reference_correct"] for p in pairs]
    n = len(pairs)
    target_only = [p["doc_id"] for p in pairs if p["target_correct"] and not p["reference_correct"]]
    reference_only = [p["doc_id"] for p in pairs if p["reference_correct"] and not p["target_correct"]]
    low, high = paired_bootstrap_ci(t_correct, r_correct)
    ll_diffs = [d for p in pairs for d in p.get("abs_loglikelihood_diffs", [])]
    return {
        "task": task, "kind": target_samples[0]["kind"], "samples": n,
        "target_accuracy": sum(t_correct) / n, "reference_accuracy": sum(r_correct) / n,
        "difference": (sum(t_correct) - sum(r_correct)) / n, "ci_low": low, "ci_high": high,
        "flipped_to_correct": target_only, "flipped_to_wrong": reference_only,
        "mcnemar_p": mcnemar_exact(len(target_only), len(reference_only)),
        "agreement": sum(p["same_answer"] for p in pairs) / n,
        "disagreeing": [p["doc_id"] for p in pairs if not p["same_answer"]],
        "max_abs_loglikelihood_diff": max(ll_diffs) if ll_diffs else None,
        "mean_abs_loglikelihood_diff": sum(ll_diffs) / len(ll_diffs) if ll_diffs else None,
    }


def compare_accuracy(target: dict, reference: dict) -> list[dict]:
    """Per task, the paired comparison of two sides (accuracy.read_side's documents); refuses
    sides that did not run or score the same thing, with a message naming what and where."""
    if [t["name"] for t in target["tasks"]] != [t["name"] for t in reference["tasks"]]:
        raise IncompatibleRuns(f"accuracy: target ran tasks {[t['name'] for t in target['tasks']]}, "
                               f"reference {[t['name'] for t in reference['tasks']]}")
    results = []
    for t_task, r_task in zip(target["tasks"], reference["tasks"]):
        name = t_task["name"]
        t_samples, r_samples = target["sample_docs"][name]["samples"], reference["sample_docs"][name]["samples"]
        _check_accuracy_recorded("target", t_task, t_samples)
        _check_accuracy_recorded("reference", r_task, r_samples)
        # What was really scored first (its message names a BOS on one side only), then the settings.
        # lm-eval's completions model keeps one position of max_length for the token it asks for.
        results.append(compare_task(name, t_samples, r_samples, bos=target["bos_token_id"], window=target["max_length"] - 1))
    _check_same_runs(target, reference)
    return results
