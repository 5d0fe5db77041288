"""The part of the report that stays the same size however many prompts pass: the summary counts,
every failing prompt and passage in full (however many fail), the distributions of the measures
counted by order of magnitude, and the worst prompts by each measure (WORST_N of them)."""
from __future__ import annotations

import heapq
import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from llm_parity.report import (Section, detail_text, exact_ids, fmt, passage_headers, passage_row, prompt_error,
                               prompt_headers, prompt_row)
from llm_parity.stats import FLOOR_DECADE, percentile

WORST_N = 10


def _answered(compare: dict) -> list[dict]:
    return [p for p in compare["prompts"] if p["status"] != "error"]


def _scored(compare: dict) -> list[dict]:
    return [p for p in compare["passages"] if not p.get("error")]


def _missing(compare: dict, suite: dict | None) -> list[str]:
    """The suite's prompts that have no comparison (a side has no record of them)."""
    compared = {p["id"] for p in compare["prompts"]}
    return [p["id"] for p in (suite or {}).get("prompts", []) if p["id"] not in compared]


def _summary(s: dict, compare: dict, missing: list[str]) -> Section:
    summary = compare["summary"]
    return Section(s["summary"], [s["n_prompts"], s["identical"], s["split_within_top_k"], s["split_outside_top_k"],
                                  s["errors"], s["missing"], s["compared_tokens"], s["n_passages"]],
                   [[str(summary["prompts"]), str(summary["identical"]), str(summary["split_within_top_k"]),
                     str(summary["split_outside_top_k"]), str(summary["errors"]), str(len(missing)),
                     str(summary["compared_tokens"]), f"{len(_scored(compare))}/{len(compare['passages'])}"]])


def failing_reasons(s: dict, prompt: dict, thresholds: dict, lang: str) -> list[str]:
    """Why one prompt fails a compare check, each reason in the report's language; [] if it fails none."""
    if prompt["status"] == "error":
        return [f"{s['error']}: {prompt_error(s, prompt)}"]
    reasons = []
    if prompt["status"] == "split_outside_top_k":
        reasons.append(s["split_outside_top_k"])
    elif prompt["status"] == "split_within_top_k" and thresholds["token_match"] == "exact":
        reasons.append(s["reason_exact"])
    if prompt["max_abs_logprob_diff"] > thresholds["max_abs_logprob_diff"]:
        reasons.append(s["reason_delta"].format(value=fmt(prompt["max_abs_logprob_diff"]),
                                                threshold=fmt(thresholds["max_abs_logprob_diff"])))
    if not prompt["prompt_ids_equal"]:
        reasons.append(s["reason_prompt_ids"])
    if prompt["chat_template_ids_equal"] is False:
        reasons.append(s["reason_chat"])
    if prompt["ids_equal"] and not prompt["text_equal"]:
        reasons.append(s["reason_text"])
    if prompt["accounting_problems"]:
        reasons.append(s["reason_accounting"].format(problems="; ".join(prompt["accounting_problems"])))
    if (forced := prompt.get("teacher_forced")) and forced["error"]:
        reasons.append(s["reason_not_scored"].format(why=detail_text(forced["error"], lang)))
    return reasons


def _failing_prompts(s: dict, compare: dict, lang: str, titles: dict[str, str], missing: list[str]) -> Section:
    """Every failing prompt with its reasons and both outputs, and every prompt no side compared (`missing`)."""
    exact = exact_ids(compare)
    rows = []
    for prompt in compare["prompts"]:
        if reasons := failing_reasons(s, prompt, compare["thresholds"], lang):
            _, _, tokens, delta, divergence = prompt_row(s, prompt, lang, exact=exact)
            if prompt["status"] == "error":
                divergence = "—"  # prompt_row gives the error there; the reasons already do
            rows.append([prompt["id"], "; ".join(reasons), tokens, delta, divergence,
                         prompt.get("target_text", "—"), prompt.get("reference_text", "—")])
    rows += [[prompt_id, s["reason_missing"], "—", "—", "—", "—", "—"] for prompt_id in missing]
    section = Section(s["failing"].format(n=len(rows)))
    if rows:
        section.headers = [s["prompt"], s["why_failing"], s["tokens"], "max |Δ|", s["divergence"], titles["target"],
                           titles["reference"]]
        section.rows = rows
    else:
        section.notes = [s["no_failing"]]
    return section


def _failing_passages(s: dict, compare: dict, titles: dict[str, str]) -> list[Section]:
    """The passages that could not be scored or whose perplexities differ too much; none: no section."""
    threshold = compare["thresholds"]["perplexity_rel_diff"]
    failing = [p for p in compare["passages"] if p.get("error") or p["rel_diff"] >= threshold]
    if not failing:
        return []
    return [Section(s["failing_passages"].format(n=len(failing)), passage_headers(s, titles),
                    [passage_row(p) for p in failing],
                    [s["reason_ppl"].format(threshold=fmt(threshold))])]


@dataclass(frozen=True)
class Distribution:
    """One measure counted by order of magnitude, in groups drawn side by side, with its count, extremes,
    median and 99th percentile; `key` names it in STRINGS and as a chart."""

    key: str
    groups: dict[str, Counter]  # STRINGS key of each group (what it counts) -> its count per decade
    count: int
    low: float
    median: float
    p99: float
    high: float

    @classmethod
    def of_values(cls, key: str, groups: dict[str, list[float]]) -> "Distribution | None":
        """The distribution of values at hand; None without any."""
        ordered = sorted(value for values in groups.values() for value in values)
        if not ordered:
            return None
        return cls(key, {group: Counter(map(_decade, values)) for group, values in groups.items()}, len(ordered),
                   ordered[0], percentile(ordered, 50), percentile(ordered, 99), ordered[-1])


def _kld_distribution(compare: dict) -> Distribution | None:
    """The teacher-forced KLD per position, which compare counts by decade (a run has millions)."""
    summary = compare["summary"].get("teacher_forced")
    if not summary:
        return None
    decades = Counter({int(decade): count for decade, count in summary["kld_decades"].items()})
    return Distribution("dist_kld", {"unit_positions": decades}, summary["positions"], summary["min_kld"],
                        summary["kld_percentiles"]["50"], summary["kld_percentiles"]["99"], summary["max_kld"])


def distributions(compare: dict) -> list[Distribution]:
    """The per-prompt measures, the teacher-forced KLD per position and the passages' perplexity
    differences; a measure without values is left out."""
    ok = _answered(compare)

    def margins(split: bool) -> list[float]:
        return [p["min_reference_margin"] for p in ok
                if (p["status"] != "identical") == split and p["min_reference_margin"] is not None]

    found = [Distribution.of_values("dist_delta", {"unit_prompts": [p["max_abs_logprob_diff"] for p in ok]}),
             Distribution.of_values("dist_margin", {"identical": margins(False), "split": margins(True)}),
             _kld_distribution(compare),
             Distribution.of_values("dist_ppl", {"unit_passages": [p["rel_diff"] for p in _scored(compare)]})]
    return [d for d in found if d]


def _decade(value: float) -> int:
    return max(FLOOR_DECADE, math.floor(math.log10(value))) if value > 0 else FLOOR_DECADE


def decade_histogram(groups: list[Counter]) -> tuple[list[str], list[list[int]]]:
    """Each group's count in each decade [1eN, 1eN+1), from the floor decade (which also counts
    everything below it, 0 included) to the largest value's, the same decades for all."""
    present = [d for group in groups for d, count in group.items() if count]
    if not present:
        return [], [[] for _ in groups]
    span = range(min(present), max(present) + 1)
    labels = [f"≤1e{d}" if d == FLOOR_DECADE else f"1e{d}" for d in span]
    return labels, [[group[d] for d in span] for group in groups]


def _distribution_row(s: dict, distribution: Distribution) -> list[str]:
    labels, counts = decade_histogram([sum(distribution.groups.values(), Counter())])
    by_decade = ", ".join(f"{label}: {count}" for label, count in zip(labels, counts[0]) if count)
    return [s[distribution.key], str(distribution.count), fmt(distribution.low), fmt(distribution.median),
            fmt(distribution.p99), fmt(distribution.high), by_decade]


def _distributions(s: dict, found: list[Distribution]) -> Section:
    return Section(s["distributions"], [s["metric"], s["count"], s["min"], s["median"], "p99", s["max"], s["by_decade"]],
                   [_distribution_row(s, d) for d in found], [s["distributions_note"]], tuple(d.key for d in found))


@dataclass(frozen=True)
class Ranking:
    """A per-prompt measure the worst prompts are picked by; `measure` and `order` are STRINGS keys."""

    measure: str
    value: Callable[[dict], float | None]  # None: the prompt does not have this measure
    largest: bool  # the largest values are the worst (else the smallest)
    order: str


def _forced(field: str) -> Callable[[dict], float | None]:
    def value(prompt: dict) -> float | None:
        summary = (prompt.get("teacher_forced") or {}).get("summary")
        return summary[field] if summary else None
    return value


RANKINGS = (
    Ranking("max_delta", lambda p: p["max_abs_logprob_diff"], True, "largest_first"),
    Ranking("min_margin", lambda p: p["min_reference_margin"], False, "smallest_first"),
    Ranking("split_position", lambda p: (p["first_divergence"] or {}).get("position"), False, "earliest_first"),
    Ranking("tf_max_kld", _forced("max_kld"), True, "largest_first"),
    Ranking("tf_mean_kld", _forced("mean_kld"), True, "largest_first"),
)


def worst(items: list[dict], value: Callable[[dict], float | None], *, largest: bool,
          n: int = WORST_N) -> tuple[list[tuple[float, dict]], int]:
    """The `n` worst items with their values, worst first (ties in the items' order), and how many
    items have the measure at all."""
    measured = [(v, item) for item in items if (v := value(item)) is not None]
    pick = heapq.nlargest if largest else heapq.nsmallest
    return pick(n, measured, key=lambda pair: pair[0]), len(measured)


def _worst_prompts(s: dict, compare: dict, lang: str) -> list[Section]:
    """A table per ranking the run has values for; a split's explanation is left to the per-prompt table."""
    exact, answered = exact_ids(compare), _answered(compare)
    sections = []
    for ranking in RANKINGS:
        chosen, total = worst(answered, ranking.value, largest=ranking.largest)
        if chosen:
            title = s["worst"].format(measure=s[ranking.measure], order=s[ranking.order], n=len(chosen), total=total)
            sections.append(Section(title, ["#", s[ranking.measure], *prompt_headers(s)],
                                    [[str(rank), fmt(value), *prompt_row(s, prompt, lang, exact=exact, why=False)]
                                     for rank, (value, prompt) in enumerate(chosen, 1)]))
    return sections


def _worst_passages(s: dict, compare: dict, titles: dict[str, str]) -> list[Section]:
    chosen, total = worst(_scored(compare), lambda p: p["rel_diff"], largest=True)
    if not chosen:
        return []
    title = s["worst_passages"].format(order=s["largest_first"], n=len(chosen), total=total)
    return [Section(title, ["#", *passage_headers(s, titles)],
                    [[str(rank), *passage_row(passage)] for rank, (_, passage) in enumerate(chosen, 1)])]


def overview_sections(s: dict, compare: dict, lang: str, titles: dict[str, str], suite: dict | None,
                      found: list[Distribution]) -> list[Section]:
    """Summary, failing prompts and passages, the distributions `found` (by distributions), worst prompts and passages."""
    missing = _missing(compare, suite)
    return [_summary(s, compare, missing), _failing_prompts(s, compare, lang, titles, missing),
            *_failing_passages(s, compare, titles), _distributions(s, found), *_worst_prompts(s, compare, lang),
            *_worst_passages(s, compare, titles)]
