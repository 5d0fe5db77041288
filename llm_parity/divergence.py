"""How far two next-token distributions are apart at one position, and the run summary of many
positions, the way llama.cpp's `llama-perplexity --kl-divergence` reports a quantized model
against its base. Pure functions of numbers: no model, no numpy (compare and audit run without it).

A distribution is what a side recorded at a position: its top-k as [[token_id, logprob], ...] and
the logprob of the token actually taken there. P is the reference (the base), Q the target."""
from __future__ import annotations

import math

from llm_parity.stats import percentile

# A tail bucket below this is rounding (top-k masses that sum to 1 within float error).
TAIL_FLOOR = 1e-12
# The percentiles of the run summary, as llama.cpp prints them from the top.
KLD_PERCENTILES = (99.9, 99.0, 95.0, 90.0, 50.0)


def known_probabilities(top_k: list[list], taken: int, taken_logprob: float) -> dict[int, float]:
    """token id -> probability of every token a side reported at one position: its top-k and the
    token taken there."""
    known = {int(token): math.exp(logprob) for token, logprob in top_k}
    known[int(taken)] = math.exp(taken_logprob)
    return known


def kl_with_tail(p: dict[int, float], q: dict[int, float]) -> float:
    """KL(P || Q) over the union of the tokens both sides reported, with the remaining mass as one
    tail bucket.

    A token only one side reported has no probability on the other side, so it joins the tail
    with everything else; both distributions are then split into the same buckets. Merging
    tokens into buckets never increases KL (the data-processing inequality), so this is a lower
    bound on the full-vocabulary KL, and exact when both sides report the whole vocabulary."""
    shared = p.keys() & q.keys()
    divergence = sum(p[t] * math.log(p[t] / q[t]) for t in shared if p[t] > 0)
    tail_p = max(1.0 - sum(p[t] for t in shared), 0.0)
    tail_q = max(1.0 - sum(q[t] for t in shared), 0.0)
    if tail_p > TAIL_FLOOR:
        divergence += tail_p * math.log(tail_p / max(tail_q, TAIL_FLOOR))
    return divergence


def position_measures(reference_top: list[list], reference_logprob: float, target_top: list[list],
                      target_logprob: float, taken: int) -> dict:
    """The measures at one position where `taken` is the answer's token: KL(reference || target)
    with the tail bucket, Δp of the taken token (target minus reference), whether both sides'
    top-1 agree, and |Δ logprob| of the taken token."""
    p = known_probabilities(reference_top, taken, reference_logprob)
    q = known_probabilities(target_top, taken, target_logprob)
    return {"kld": kl_with_tail(p, q),
            "delta_p": math.exp(target_logprob) - math.exp(reference_logprob),
            "same_top1": bool(reference_top and target_top and reference_top[0][0] == target_top[0][0]),
            "abs_logprob_diff": abs(target_logprob - reference_logprob)}


def kld_summary(positions: list[dict], reference_logprobs: list[float], target_logprobs: list[float]) -> dict | None:
    """The run summary over `positions` (position_measures of each): mean KLD and its standard
    error, maximum and percentiles, same-top-1 share, mean and RMS Δp, and the perplexity ratio
    target / reference of the taken tokens (their logprobs on each side). None without positions."""
    if not positions:
        return None
    klds = [p["kld"] for p in positions]
    n = len(klds)
    mean = sum(klds) / n
    variance = sum((k - mean) ** 2 for k in klds) / (n - 1) if n > 1 else 0.0
    deltas = [p["delta_p"] for p in positions]
    return {
        "positions": n,
        "mean_kld": mean,
        "kld_stderr": math.sqrt(variance / n),
        "max_kld": max(klds),
        "kld_percentiles": {f"{q:g}": percentile(klds, q) for q in KLD_PERCENTILES},
        "same_top1_rate": sum(p["same_top1"] for p in positions) / n,
        "mean_delta_p": sum(deltas) / n,
        "rms_delta_p": math.sqrt(sum(d * d for d in deltas) / n),
        "max_abs_logprob_diff": max(p["abs_logprob_diff"] for p in positions),
        "perplexity_ratio": math.exp((sum(reference_logprobs) - sum(target_logprobs)) / n),
    }


def log_softmax(logits: list[float]) -> list[float]:
    """Log-probabilities of a full-vocabulary logit vector (log-sum-exp from its maximum)."""
    top = max(logits)
    log_total = top + math.log(sum(math.exp(x - top) for x in logits))
    return [x - log_total for x in logits]


def logit_measures(reference: list[float], target: list[float]) -> dict:
    """Both sides' full-vocabulary logits at one position: max and mean |Δ logit|, cosine
    similarity of the two vectors (msprobe's measure), and the exact KL(reference || target) of
    their softmaxes, no tail bucket."""
    if len(reference) != len(target):
        raise ValueError(f"logit vectors of different lengths: {len(reference)} and {len(target)}")
    diffs = [abs(t - r) for r, t in zip(reference, target)]
    norms = math.sqrt(sum(r * r for r in reference)) * math.sqrt(sum(t * t for t in target))
    p, q = log_softmax(reference), log_softmax(target)
    return {"max_abs_logit_diff": max(diffs),
            "mean_abs_logit_diff": sum(diffs) / len(diffs),
            "cosine": sum(r * t for r, t in zip(reference, target)) / norms if norms else 1.0,
            "kld": sum(math.exp(lp) * (lp - lq) for lp, lq in zip(p, q))}


def logits_summary(positions: list[dict]) -> dict | None:
    """The run's worst and mean over `positions` (logit_measures of each); None without any."""
    if not positions:
        return None
    n = len(positions)
    return {"positions": n,
            "max_abs_logit_diff": max(p["max_abs_logit_diff"] for p in positions),
            "mean_abs_logit_diff": sum(p["mean_abs_logit_diff"] for p in positions) / n,
            "min_cosine": min(p["cosine"] for p in positions),
            "mean_kld": sum(p["kld"] for p in positions) / n,
            "max_kld": max(p["kld"] for p in positions)}
