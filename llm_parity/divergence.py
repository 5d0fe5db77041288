"""How far two next-token distributions are apart at each position, and the run summary of many
positions, the way llama.cpp's `llama-perplexity --kl-divergence` reports a quantized model
against its base. Functions of arrays, every position of a record at once (a run holds millions).

A distribution is what a side recorded at a position: its top-k (records.TopK, a row per position)
and the logprob of the token actually taken there. P is the reference (the base), Q the target."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from llm_parity.records import NO_TOKEN, TopK

# A tail bucket below this is rounding (top-k masses that sum to 1 within float error).
TAIL_FLOOR = 1e-12
# The percentiles of the run summary, as llama.cpp prints them from the top.
KLD_PERCENTILES = (99.9, 99.0, 95.0, 90.0, 50.0)


def known_probabilities(top_k: TopK, taken: np.ndarray, taken_logprob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, probabilities) of every token a side reported at each position, shape
    (positions, width + 1): its top-k and the token taken there, whose own logprob stands for it
    where the top-k holds it too (that entry becomes padding: id NO_TOKEN, probability 0)."""
    ids = np.where(top_k.ids == taken[:, None], NO_TOKEN, top_k.ids)
    probabilities = np.where(ids == NO_TOKEN, 0.0, np.exp(top_k.logprobs))
    return (np.concatenate([ids, taken[:, None]], axis=1),
            np.concatenate([probabilities, np.exp(taken_logprob)[:, None]], axis=1))


def kl_with_tail(p_ids: np.ndarray, p: np.ndarray, q_ids: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(P || Q) at each position (a row of ids and probabilities per side, NO_TOKEN for padding)
    over the union of the tokens both sides reported, with the remaining mass as one tail bucket.

    A token only one side reported has no probability on the other side, so it joins the tail
    with everything else; both distributions are then split into the same buckets. Merging
    tokens into buckets never increases KL (the data-processing inequality), so this is a lower
    bound on the full-vocabulary KL, and exact when both sides report the whole vocabulary."""
    # Matched a row per rank, then back a row per position: the sums below add along rows in numpy's order for a
    # row (pairwise from 8 values on), the order of every compare.json, which the audit recomputes to the last bit.
    shared, q_of_p = map(transposed, matched(transposed(p_ids), transposed(q_ids), transposed(q)))
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(shared & (p > 0), p * np.log(p / q_of_p), 0.0)
    # A token matches at most one on the other side, so the shared mass of Q is q_of_p's.
    tail_p = np.maximum(1.0 - np.where(shared, p, 0.0).sum(axis=1), 0.0)
    tail_q = np.maximum(1.0 - q_of_p.sum(axis=1), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = np.where(tail_p > TAIL_FLOOR, tail_p * np.log(tail_p / np.maximum(tail_q, TAIL_FLOOR)), 0.0)
    return terms.sum(axis=1) + tail


def matched(ids: np.ndarray, other_ids: np.ndarray, other_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each entry of `ids` (a row per rank, a column per position: a TopK's arrays transposed;
    NO_TOKEN pads): whether the same position of `other_ids` holds the same token, and that token's
    value in `other_values` (0 where not). Token ids are unique at a position, so an entry matches
    at most one other. A rank at a time, every position at once: numpy's loops run along the positions."""
    found, values = np.zeros(ids.shape, dtype=bool), np.zeros(ids.shape)
    for rank in range(len(other_ids)):
        same = ids == other_ids[rank]
        found |= same
        np.copyto(values, other_values[rank], where=same)
    found &= ids != NO_TOKEN
    return found, np.where(found, values, 0.0)


def transposed(array: np.ndarray) -> np.ndarray:
    """A 2-D array transposed, as a contiguous copy: a TopK's arrays a row per rank, as matched takes
    them, or those back a row per position."""
    return np.ascontiguousarray(array.T)


@dataclass(frozen=True)
class Positions:
    """The measures at many positions, one array each, in position order."""

    kld: np.ndarray  # KL(reference || target) with the tail bucket
    delta_p: np.ndarray  # the taken token's probability, target minus reference
    same_top1: np.ndarray  # whether both sides' top-1 agree
    reference_logprobs: np.ndarray  # of the taken token
    target_logprobs: np.ndarray

    @classmethod
    def joined(cls, parts: list["Positions"]) -> "Positions":
        return cls(*(np.concatenate([getattr(part, name) for part in parts]) if parts else np.zeros(0)
                     for name in cls.__dataclass_fields__))

    def __len__(self) -> int:
        return len(self.kld)

    def take(self, order: np.ndarray) -> "Positions":
        """The measures at the positions `order` gives, in that order."""
        return Positions(*(getattr(self, name)[order] for name in self.__dataclass_fields__))


def position_measures(reference_top: TopK, reference_logprob: np.ndarray, target_top: TopK,
                      target_logprob: np.ndarray, taken: np.ndarray) -> Positions:
    """The measures at each position where `taken` is the answer's token: KL(reference || target)
    with the tail bucket, Δp of the taken token (target minus reference), whether both sides'
    top-1 agree, and both logprobs of the taken token."""
    reference_logprob, target_logprob = np.asarray(reference_logprob, float), np.asarray(target_logprob, float)
    taken = np.asarray(taken, dtype=np.int32)
    kld = kl_with_tail(*known_probabilities(reference_top, taken, reference_logprob),
                       *known_probabilities(target_top, taken, target_logprob))
    same_top1 = np.zeros(len(taken), dtype=bool)
    if reference_top.ids.shape[1] and target_top.ids.shape[1]:
        same_top1 = (reference_top.ids[:, 0] == target_top.ids[:, 0]) & (reference_top.ids[:, 0] != NO_TOKEN)
    return Positions(kld, np.exp(target_logprob) - np.exp(reference_logprob), same_top1, reference_logprob,
                     target_logprob)


def segment_summaries(positions: Positions, lengths: list[int]) -> list[dict | None]:
    """For each consecutive segment of `positions` of the given lengths (a prompt's positions):
    mean KLD and its standard error, minimum and maximum, same-top-1 share, mean and RMS Δp, max
    |Δ logprob| of the taken token, and the perplexity ratio target / reference of the taken
    tokens; None for a segment of no positions. Every segment at once: a run has thousands."""
    lengths = np.asarray(lengths, dtype=np.int64)
    present = lengths > 0
    if not present.any():
        return [None] * len(lengths)
    counts = lengths[present]
    starts = np.cumsum(counts) - counts
    n = counts.astype(float)

    def total(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values.astype(float, copy=False), starts)

    kld, delta = positions.kld, positions.delta_p
    mean = total(kld) / n
    variance = np.where(n > 1, total((kld - np.repeat(mean, counts)) ** 2) / np.maximum(n - 1, 1), 0.0)
    columns = {
        "positions": counts,
        "mean_kld": mean,
        "kld_stderr": np.sqrt(variance / n),
        "min_kld": np.minimum.reduceat(kld, starts),
        "max_kld": np.maximum.reduceat(kld, starts),
        "same_top1_rate": total(positions.same_top1) / n,
        "mean_delta_p": total(delta) / n,
        "rms_delta_p": np.sqrt(total(delta * delta) / n),
        "max_abs_logprob_diff": np.maximum.reduceat(np.abs(positions.target_logprobs - positions.reference_logprobs), starts),
        "perplexity_ratio": np.exp((total(positions.reference_logprobs) - total(positions.target_logprobs)) / n),
    }
    rows = zip(*(column.tolist() for column in columns.values()))
    return [dict(zip(columns, next(rows))) if here else None for here in present.tolist()]


def percentiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """stats.percentile of each q (linear between closest ranks), one sort for all."""
    ordered = np.sort(values)
    ranks = (len(ordered) - 1) * np.asarray(qs) / 100
    low = np.floor(ranks).astype(np.int64)
    high = np.minimum(low + 1, len(ordered) - 1)
    return (ordered[low] + (ordered[high] - ordered[low]) * (ranks - low)).tolist()


def kld_summary(positions: Positions) -> dict | None:
    """The run summary over `positions`: segment_summaries' measures of them all, and the KLD
    percentiles KLD_PERCENTILES. None without positions."""
    summary = segment_summaries(positions, [len(positions)])[0]
    if summary is None:
        return None
    found = percentiles(positions.kld, KLD_PERCENTILES)
    return {**summary, "kld_percentiles": {f"{q:g}": value for q, value in zip(KLD_PERCENTILES, found)}}


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
