"""The report, laid out like the seed's: environment, validation items with ✅/❌, a precision table
of expected vs measured with the threshold each number was held to; then what stays the same size
however many prompts a run has (llm_parity.report.overview: summary, every failing prompt,
distributions, the worst prompts by each measure); then the per-prompt and per-passage tables, inline
for a small run and on a page of their own (report/prompts.md, prompts.html) for a large one. Built
once as plain sections, then rendered to Markdown or to self-contained HTML."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llm_parity.compare import FAIL, PASS, unchecked_checks
from llm_parity.report.strings import CHECK_NAMES, STRINGS, detail_text

if TYPE_CHECKING:
    from llm_parity.report.overview import Distribution

PRECISION_CHECKS = ("token_ids", "text", "max_abs_logprob_diff", "perplexity_rel_diff", "kld_mean", "kld_p99", "same_top1",
                    "rms_delta_p", "logits_max_abs_diff")


@dataclass
class Section:
    title: str
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    charts: tuple[str, ...] = ()  # keys of the charts drawn under the section (HTML only)


@dataclass
class Report:
    title: str
    verdict: str
    facts: list[tuple[str, str]]
    sections: list[Section]
    lang: str
    side_titles: dict[str, str] = field(default_factory=dict)  # "target (vLLM (HTTP))", from each side's backend
    details: list[Section] = field(default_factory=list)  # the tables with a row per prompt or per passage
    # None: `details` follow the sections; else they are on the DETAILS_PAGE, and this sentence links it ({link}).
    details_link: str | None = None
    # The measures counted by order of magnitude: a row each in a section, a chart each in report.html.
    distributions: list[Distribution] = field(default_factory=list)


# At most this many prompts and passages: the per-item tables stay inline; more go to a page of their own.
INLINE_ITEMS = 50
DETAILS_PAGE = "prompts"  # report/prompts.md and report/prompts.html
CELL_BREAK = "\x00"


def joined_cells(cells: list, escape: Callable[[str], str], separator: str) -> str:
    """`separator`.join(escape(str(cell)) for cell in cells), with the row escaped as one text: an
    escape replaces characters one by one, so escaping the cells joined by a NUL is escaping each,
    in one call instead of one per cell (30,000 rows of 10 cells at 10,000 prompts). A cell that
    holds a NUL itself is escaped on its own."""
    row = CELL_BREAK.join(map(str, cells))
    if row.count(CELL_BREAK) != len(cells) - 1:
        return separator.join(escape(str(cell)) for cell in cells)
    return escape(row).replace(CELL_BREAK, separator)


def fmt(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}" if value != 0 else "0"
    return "—" if value is None else str(value)


def mark(s: dict, status: str) -> str:
    """A check's status as the report shows it; one that could not run is said to be so, not crossed."""
    return {PASS: "✅", FAIL: "❌"}.get(status) or f"⚪ {s['not_checked']}"


def _image_text(s: dict, image: dict) -> str:
    if not image.get("reference"):
        return "—"
    text = image["reference"] + (f" ({image['digest']})" if image.get("digest") else "")
    return text + ("" if image.get("pinned") else f" ⚠️ {s['unpinned']}")


def _environment(s: dict, provenance: dict) -> Section:
    section = Section(s["env"], [s["side"], s["backend"], s["packages"], s["hardware"], s["mode"], s["image"]])
    for side, doc in provenance.items():
        packages = ", ".join(f"{name} {version}" for name, version in doc["packages"].items() if version)
        hardware = doc["hardware"]["cpu"] + (f"; {doc['hardware']['accelerator']}" if doc["hardware"]["accelerator"] else "")
        mode = (doc.get("server") or {}).get("graph_mode", "—")
        label = doc.get("backend_label", doc["backend"])
        section.rows.append([s[side], f"{label} ({doc['device']})", packages, hardware, mode, _image_text(s, doc["image"])])
    section.notes = [note for doc in provenance.values() for note in doc.get("notes", [])]
    return section


def _precision(s: dict, compare: dict, lang: str) -> Section:
    section = Section(s["precision"], [s["metric"], s["expected"], s["measured"], s["status"]])
    for check in compare["checks"]:
        if check["name"] in PRECISION_CHECKS:
            section.rows.append([CHECK_NAMES[check["name"]][lang], detail_text(fmt(check["threshold"]), lang),
                                 detail_text(fmt(check["measured"]), lang), mark(s, check["status"])])
    summary = compare["summary"]
    section.rows += [[s["mean_delta"], "—", fmt(summary["mean_abs_logprob_diff"]), ""],
                     [s["topk_delta"], "—", fmt(summary["top_k_max_abs_logprob_diff"]), ""],
                     [s["min_margin"], "—", fmt(summary["min_reference_margin"]), ""]]
    section.notes = [f"{s['why']}: {compare['thresholds']['why']}", s["hidden"]]
    section.charts = ("delta",)
    return section


def _pct(value: float) -> str:
    return f"{value * 100:.4g} %"


def _teacher_forced(s: dict, compare: dict, titles: dict[str, str]) -> Section:
    """Past the first split: the distance between both sides' distributions at every position of
    both answers, summed up over the run the way llama.cpp's --kl-divergence run does."""
    section = Section(s["tf"])
    summary = compare["summary"].get("teacher_forced")
    if summary is None:
        section.notes = [s["tf_missing"].format(why=compare["summary"].get("teacher_forced_missing") or "—")]
        return section
    percentiles = ", ".join(f"{q} %: {fmt(v)}" for q, v in summary["kld_percentiles"].items())
    section.notes = [
        s["tf_run"].format(n=summary["positions"], mean=fmt(summary["mean_kld"]), err=fmt(summary["kld_stderr"]),
                           max=fmt(summary["max_kld"]), percentiles=percentiles, same=_pct(summary["same_top1_rate"]),
                           rms=fmt(summary["rms_delta_p"]), ratio=f"{summary['perplexity_ratio']:.6g}",
                           target=titles["target"], reference=titles["reference"]),
        s["tf_bound"],
    ]
    if why := (compare["thresholds"].get("teacher_forced") or {}).get("why"):
        section.notes.append(f"{s['why']}: {why}")
    return section


def _teacher_forced_prompts(s: dict, compare: dict) -> list[Section]:
    """The teacher-forced measures of each prompt; no table when no prompt has any."""
    section = Section(s["tf_prompts"], [s["prompt"], s["tf_positions"], s["tf_mean_kld"], s["tf_max_kld"],
                                        s["same_top1"], s["rms_delta_p"], s["ppl_ratio"]])
    for prompt in compare["prompts"]:
        forced = prompt.get("teacher_forced")
        if not forced:
            continue
        if forced["error"]:
            section.rows.append([prompt["id"], "—", "—", "—", "—", "—", forced["error"]])
            continue
        row = forced["summary"]
        section.rows.append([prompt["id"], str(row["positions"]), fmt(row["mean_kld"]), fmt(row["max_kld"]),
                             _pct(row["same_top1_rate"]), fmt(row["rms_delta_p"]), f"{row['perplexity_ratio']:.6g}"])
    return [section] if section.rows else []


def _divergence_text(s: dict, divergence: dict | None, lang: str, *, why: bool) -> str:
    if divergence is None:
        return "—"
    tie = f" ({s['near_tie']})" if divergence["near_tie"] else ""
    text = (f"{s['at']} {divergence['position']}: {divergence['target_token']} vs {divergence['reference_token']}, "
            f"{s['margin']} {fmt(divergence['target_margin'])}/{fmt(divergence['reference_margin'])}{tie}")
    return f"{text}; {detail_text(divergence['why'], lang)}" if why else text


def prompt_headers(s: dict) -> list[str]:
    return [s["prompt"], s["result"], s["tokens"], "max |Δ|", s["divergence"]]


def prompt_error(s: dict, prompt: dict) -> str:
    """What went wrong on each side of a prompt that has no comparison."""
    return "; ".join(f"{s[side]}: {prompt[f'{side}_error']}" for side in ("target", "reference") if prompt[f"{side}_error"])


def _status_text(s: dict, prompt: dict, *, exact: bool) -> str:
    status = s[prompt["status"]]
    if prompt["status"] == "split_outside_top_k" or (prompt["status"] == "split_within_top_k" and exact):
        return f"❌ {status}"
    if prompt["status"] == "split_within_top_k" and prompt["first_divergence"]["near_tie"]:
        return f"⚠️ {status}"
    return status


def prompt_row(s: dict, prompt: dict, lang: str, *, exact: bool, why: bool = True) -> list[str]:
    """One prompt as every per-prompt table shows it (prompt_headers); `exact`: the profile requires
    identical ids, so a split within top-k fails too; `why`: say why a split is or is not a tie."""
    if prompt["status"] == "error":
        return [prompt["id"], f"❌ {s['error']}", "—", "—", prompt_error(s, prompt)]
    return [prompt["id"], _status_text(s, prompt, exact=exact), f"{prompt['target_tokens']}/{prompt['reference_tokens']}",
            fmt(prompt["max_abs_logprob_diff"]), _divergence_text(s, prompt["first_divergence"], lang, why=why)]


def exact_ids(compare: dict) -> bool:
    return compare["thresholds"]["token_match"] == "exact"


def _prompts(s: dict, compare: dict, lang: str) -> Section:
    exact = exact_ids(compare)
    return Section(s["prompts"], prompt_headers(s), [prompt_row(s, p, lang, exact=exact) for p in compare["prompts"]])


def _outputs(s: dict, compare: dict, titles: dict[str, str]) -> Section:
    section = Section(s["outputs"], [s["prompt"], titles["target"], titles["reference"]])
    for prompt in compare["prompts"]:
        if prompt["status"] != "error":
            section.rows.append([prompt["id"], prompt["target_text"], prompt["reference_text"]])
    return section


def passage_headers(s: dict, titles: dict[str, str]) -> list[str]:
    return [s["passage"], titles["target"], titles["reference"], s["rel"]]


def passage_row(passage: dict) -> list[str]:
    if passage.get("error"):
        return [passage["id"], "—", "—", passage["error"]]
    return [passage["id"], f"{passage['target_perplexity']:.6g}", f"{passage['reference_perplexity']:.6g}",
            f"{passage['rel_diff']:.3g}"]


def _passages(s: dict, compare: dict, titles: dict[str, str]) -> Section:
    return Section(s["passages"], passage_headers(s, titles), [passage_row(p) for p in compare["passages"]])


def _accuracy(s: dict, compare: dict, titles: dict[str, str]) -> list[Section]:
    """A table per lm-eval task: both accuracies, the paired difference and its interval, the flips
    and their McNemar p, agreement and |Δ loglikelihood|; the chart under the last."""
    accuracy = compare.get("accuracy") or {"tasks": []}
    sections = []
    for task in accuracy["tasks"]:
        section = Section(f"{s['accuracy']}: {task['task']}", [s["metric"], s["measured"]])
        section.rows = [
            [f"{s['acc']} ({titles['target']})", fmt(task["target_accuracy"])],
            [f"{s['acc']} ({titles['reference']})", fmt(task["reference_accuracy"])],
            [s["acc_diff"], f"{task['difference']:+.4g} [{task['ci_low']:+.4g}, {task['ci_high']:+.4g}]"],
            [s["flips"], f"{len(task['flipped_to_wrong'])} / {len(task['flipped_to_correct'])}"
                         f" ({', '.join(map(str, task['flipped_to_wrong'] + task['flipped_to_correct'])) or '—'})"],
            [s["mcnemar"], fmt(task["mcnemar_p"])],
            [s["agreement"], f"{fmt(task['agreement'])} ({task['samples']} {s['samples']})"],
            [s["ll_delta"], fmt(task["max_abs_loglikelihood_diff"])],
        ]
        sections.append(section)
    if sections:
        settings = accuracy["settings"]
        sections[-1].notes = [s["accuracy_note"].format(version=accuracy["lm_eval_version"], **settings)]
        sections[-1].charts = ("accuracy",)
    return sections


def _revision_text(s: dict, manifest: dict | None) -> str:
    if manifest is None:
        return "—"
    asked, resolved = manifest["revision"], manifest["resolved_revision"]
    if resolved is None and manifest["source"] == "local":
        return f"{manifest['repo_id']} ({manifest['source']})"
    if resolved is None:
        asked = asked or s["default_branch"]
        return f"{manifest['repo_id']}@{asked} ({manifest['source']}) ⚠️ {s['unresolved'].format(asked=asked)}"
    text = f"{manifest['repo_id']}@{resolved}"
    if asked and asked != resolved:
        text += f" ⚠️ {s['moving'].format(asked=asked)}"
    return text


def _bench(s: dict, bench: dict) -> Section:
    section = Section(s["bench"], [s["concurrency"], "req/s", s["out_tps"], "TTFT p50/p99 ms", "TPOT p50/p99 ms",
                                   "ITL p50/p99 ms", "E2E p50/p99 ms", s["failed"]], charts=("bench",))
    for level in bench["levels"]:
        summary = level["summary"]
        pair = lambda name: f"{fmt(summary[name]['median'])} / {fmt(summary[name]['p99'])}"  # noqa: E731
        section.rows.append([str(level["concurrency"]), f"{summary['request_throughput']:.2f}",
                             f"{summary['output_throughput']:.1f}", pair("ttft_ms"), pair("tpot_ms"), pair("itl_ms"),
                             pair("e2el_ms"), str(summary["failed"])])
    settings = bench["settings"]
    section.notes = [s["bench_note"].format(output=settings["output_len"], low=settings["input_len_min"],
                                            high=settings["input_len_max"])]
    return section


def _change_text(change: dict, new_key: str) -> str:
    return f"{change['setting' if 'setting' in change else 'field']}: {fmt(change['recorded'])} → {fmt(change[new_key])}"


def _replay(s: dict, replay: dict, lang: str) -> Section:
    """Each replayed side: its outcome, the first difference, the overrides it was told, and every
    difference in versions or hardware beside it, so the reader can judge the outcome."""
    section = Section(s["replay"], [s["side"], s["result"], s["detail"], s["overrides"], s["env_differences"]])
    for side, entry in replay["sides"].items():
        marker = "❌" if entry["outcome"] == "not_reproducible" else "✅"
        section.rows.append([s[side], f"{marker} {s[entry['outcome']]} ({entry['dtype']})", detail_text(entry["statement"], lang),
                             "; ".join(_change_text(o, "replayed") for o in entry["overrides"]) or "—",
                             "; ".join(_change_text(d, "here") for d in entry["environment"]) or "—"])
        section.notes += entry["notes"]
    section.notes.append(s["replay_note"])
    return section


def side_titles(s: dict, provenance: dict) -> dict[str, str]:
    """Each side named with the backend that made it, as its provenance records it."""
    return {side: f"{s[side]} ({doc.get('backend_label', doc['backend'])})" for side, doc in provenance.items()}


def _suite_text(s: dict, compare: dict, suite: dict | None) -> str:
    if not suite:
        return compare["suite_sha256"]
    limit = f", {s['limit'].format(limit=suite['limit'])}" if suite.get("limit") else ""
    return f"{suite['name']} ({len(suite['prompts'])} prompts{limit}) {compare['suite_sha256']}"


# A list of quoted ids as a check's detail gives it: "split within top-k: ['p1', 'p2']".
QUOTED_LIST = re.compile(r"\[('[^'\[\]]*'(?:, '[^'\[\]]*')*)\]")
LISTED_IDS = 10  # a longer list in a check's detail is cut to its first ones (compare.json has them all)


def shorten_lists(s: dict, text: str) -> str:
    """`text` with each quoted list of more than LISTED_IDS items cut to its first ones and a count
    of the rest, so that a check's detail stays one line however many prompts it names."""
    def shorten(match: re.Match) -> str:
        items = re.findall(r"'[^']*'", match.group(0))
        if len(items) <= LISTED_IDS:
            return match.group(0)
        return f"[{', '.join(items[:LISTED_IDS])}, {s['more'].format(n=len(items) - LISTED_IDS)}]"
    return QUOTED_LIST.sub(shorten, text) if isinstance(text, str) else text


def _items(s: dict, compare: dict, lang: str) -> Section:
    items = Section(s["items"], [s["item"], s["status"], s["detail"]],
                    [[CHECK_NAMES[c["name"]][lang], mark(s, c["status"]), detail_text(shorten_lists(s, c["detail"]), lang)]
                     for c in compare["checks"]])
    if unchecked := unchecked_checks(compare):
        items.notes = [s["unchecked_note"].format(names=", ".join(CHECK_NAMES[name][lang] for name in unchecked))]
    if compare.get("profile_override"):
        items.notes.append(s["profile_override"].format(profile=compare["profile"], differences=compare["profile_override"]))
    return items


def _details(s: dict, compare: dict, lang: str, titles: dict[str, str]) -> tuple[list[Section], str | None]:
    """The tables with a row per prompt or passage, and None when they stay inline (at most
    INLINE_ITEMS of each), else the sentence that links the page of their own."""
    details = [_prompts(s, compare, lang), *_teacher_forced_prompts(s, compare), _passages(s, compare, titles),
               _outputs(s, compare, titles)]
    prompts, passages = len(compare["prompts"]), len(compare["passages"])
    if max(prompts, passages) <= INLINE_ITEMS:
        return details, None
    # Each format puts its own link in.
    return details, s["details_link"].format(prompts=prompts, passages=passages, link="{link}")


def build_report(compare: dict, provenance: dict, *, manifest: dict | None = None, bench: dict | None = None,
                 suite: dict | None = None, replay: dict | None = None, lang: str = "zh", matrix: dict | None = None) -> Report:
    """`provenance` maps side name ("target", "reference") to its provenance document; `manifest`
    (the run's model manifest) adds where the weights came from; `bench` (target/bench.json) adds
    the serving benchmark; `suite` (the rendered suite) names it and finds the prompts no side
    answered; `replay` (report/replay.json) adds the replays of the sides; `matrix`
    (report/matrix.json) adds the configuration matrix."""
    # Both build on this module's Section.
    from llm_parity.report.matrix import matrix_section
    from llm_parity.report.overview import distributions, overview_sections

    if lang not in STRINGS:
        raise ValueError(f"report language {lang!r}: choose one of {sorted(STRINGS)}")
    s = STRINGS[lang]
    facts = [(s["dtype"], compare["dtype"]), (s["revision"], _revision_text(s, manifest)),
             (s["model"], compare["model_manifest_sha256"]), (s["suite"], _suite_text(s, compare, suite))]
    titles = side_titles(s, provenance)
    found = distributions(compare)  # sorted and counted once, for their section and their charts
    sections = [_environment(s, provenance), _items(s, compare, lang), _precision(s, compare, lang),
                _teacher_forced(s, compare, titles), *overview_sections(s, compare, lang, titles, suite, found),
                *_accuracy(s, compare, titles)] \
        + ([_bench(s, bench)] if bench else []) + ([matrix_section(s, matrix)] if matrix else []) \
        + ([_replay(s, replay, lang)] if replay else [])
    details, details_link = _details(s, compare, lang, titles)
    return Report(f"{s['title']}: {compare['profile']}", f"{s['verdict']}: {s[compare['verdict']]}", facts, sections, lang,
                  titles, details, details_link, found)
