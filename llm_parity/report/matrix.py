"""The report's matrix section: one row per serving variant, its verdict against the reference and
against the base variant, and the settings that differ from the base's (report/matrix.json)."""
from __future__ import annotations

from llm_parity.matrix import NOT_COMPARABLE, RAN
from llm_parity.report import Section, fmt, mark


def _against(s: dict, comparison: dict | None) -> str:
    if comparison is None:
        return "—"
    if comparison["verdict"] == NOT_COMPARABLE:
        return f"❌ {s['not_comparable']}: {comparison['reason']}"
    text = (f"{mark(s, comparison['verdict'])} {comparison['identical']}/{comparison['prompts']} {s['identical']}, "
            f"max |Δ| {fmt(comparison['max_abs_logprob_diff'])}, ppl {fmt(comparison['max_perplexity_rel_diff'])}")
    if comparison["records_identical"] is not None:
        text += f"; {s['records_identical'] if comparison['records_identical'] else s['records_differ']}"
    if comparison["first_split"]:
        text += f"; {s['first_split']}: {comparison['first_split']}"
    return text + "".join(f"; ❌ {failing}" for failing in comparison["failing"])


def _verdict(s: dict, entry: dict) -> str:
    if entry["status"] != RAN:
        return f"⚪ {s['matrix_' + entry['status']]}"
    return mark(s, entry["verdict"])


def matrix_section(s: dict, matrix: dict) -> Section:
    """Variants as rows, measures as columns; the variants that could not run say why."""
    section = Section(s["matrix"], [s["variant"], s["verdict"], s["vs_reference"], s["vs_base"], s["mode"], "TP",
                                    s["concurrency"], s["differs_from_base"]])
    for entry in matrix["variants"]:
        ran = entry["settings"] or {}
        section.rows.append([entry["name"], _verdict(s, entry), _against(s, entry["vs_reference"]),
                             _against(s, entry["vs_base"]), fmt(ran.get("graph_mode")),
                             fmt(ran.get("tensor_parallel_size")), fmt(ran.get("concurrency")),
                             "; ".join(entry["differs_from_base"]) or "—"])
    section.notes = [s["matrix_note"].format(verdict=s[matrix["verdict"]])]
    section.notes += [f"{entry['name']}: {s['matrix_' + entry['status']]}: {entry['reason']}"
                      for entry in matrix["variants"] if entry["status"] != RAN]
    return section
