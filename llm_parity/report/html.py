"""report.html: the same sections as report.md, self-contained (inline CSS and SVG, no scripts,
no network), with charts where a reader would rather look. Every piece of text, model output
above all, is HTML-escaped."""
from __future__ import annotations

import math
from html import escape

from llm_parity.report import Report
from llm_parity.report.charts import bars, log_lines
from llm_parity.report.strings import STRINGS

STYLE = """
body{font-family:system-ui,-apple-system,"Noto Sans CJK SC","Noto Sans KR",sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1em;width:100%;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 6px;text-align:left;vertical-align:top;word-break:break-word}
th{background:#f3f3f3} .verdict{font-size:1.3em;font-weight:bold} blockquote{color:#555;border-left:3px solid #ccc;margin:.5em 0;padding-left:.8em}
code{background:#f6f6f6;padding:0 3px} svg{max-width:100%;height:auto;margin:.5em 0}
"""


# KLD below this is rounding (exactly equal distributions give 0, or a hair below it).
KLD_FLOOR_DECADE = -12


def decade_counts(values: list[float]) -> tuple[list[str], list[int]]:
    """How many values fall in each decade [1eN, 1eN+1), from the floor decade (which also counts
    everything below it) to the largest value's."""
    decades = [max(KLD_FLOOR_DECADE, math.floor(math.log10(v))) if v > 0 else KLD_FLOOR_DECADE for v in values]
    if not decades:
        return [], []
    span = range(min(decades), max(decades) + 1)
    labels = [f"≤1e{d}" if d == KLD_FLOOR_DECADE else f"1e{d}" for d in span]
    return labels, [decades.count(d) for d in span]


def charts(compare: dict, lang: str, bench: dict | None = None, titles: dict[str, str] | None = None) -> dict[str, str]:
    s = STRINGS[lang]
    titles = titles or {side: s[side] for side in ("target", "reference")}
    ok = [p for p in compare["prompts"] if p["status"] != "error"]
    split = {p["id"] for p in ok if p["status"] != "identical"}
    passages = [p for p in compare["passages"] if not p.get("error")]
    drawn = {}
    if tasks := (compare.get("accuracy") or {}).get("tasks"):
        drawn["accuracy"] = bars([t["task"] for t in tasks],
                                 [(titles["target"], [t["target_accuracy"] for t in tasks]),
                                  (titles["reference"], [t["reference_accuracy"] for t in tasks])],
                                 title=s["chart_accuracy"], x_label=s["task"],
                                 highlight={t["task"] for t in tasks if t["flipped_to_wrong"] or t["flipped_to_correct"]})
    klds = [k for p in ok if (p.get("teacher_forced") or {}).get("klds") for k in p["teacher_forced"]["klds"]]
    if klds:
        labels, counts = decade_counts(klds)
        drawn["kld"] = bars(labels, [(s["tf_positions"], counts)], title=s["chart_kld"], x_label=s["kld_bin"])
    if bench:
        levels = bench["levels"]
        drawn["bench"] = bars([str(level["concurrency"]) for level in levels],
                              [(s["out_tps"], [level["summary"]["output_throughput"] for level in levels])],
                              title=s["chart_bench"], x_label=s["concurrency"])
    return drawn | {
        "delta": log_lines({p["id"]: p["abs_logprob_diffs"] for p in ok}, title=s["chart_delta"], x_label=s["position"]),
        "margin": bars([p["id"] for p in ok], [(s["min_margin"], [p["min_reference_margin"] for p in ok])],
                       title=s["chart_margin"], x_label=s["prompt"], highlight=split),
        "perplexity": bars([p["id"] for p in passages],
                           [(titles["target"], [p["target_perplexity"] for p in passages]),
                            (titles["reference"], [p["reference_perplexity"] for p in passages])],
                           title=s["chart_ppl"], x_label=s["passage"]),
    }


def render_html(report: Report, compare: dict, bench: dict | None = None) -> str:
    drawn = charts(compare, report.lang, bench, report.side_titles)
    out = [f'<!DOCTYPE html><html lang="{report.lang}"><head><meta charset="utf-8">',
           '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'; img-src data:">',
           f"<title>{escape(report.title)}</title><style>{STYLE}</style></head><body>",
           f"<h1>{escape(report.title)}</h1>", f'<p class="verdict">{escape(report.verdict)}</p><ul>']
    out += [f"<li>{escape(label)}: <code>{escape(str(value))}</code></li>" for label, value in report.facts]
    out.append("</ul>")
    for section in report.sections:
        out.append(f"<h2>{escape(section.title)}</h2>")
        if section.headers:
            out.append("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in section.headers) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>" for row in section.rows]
            out.append("</table>")
        out += [f"<blockquote>{escape(note)}</blockquote>" for note in section.notes]
        if section.chart:
            out.append(drawn[section.chart])
    out.append("</body></html>")
    return "\n".join(out) + "\n"
