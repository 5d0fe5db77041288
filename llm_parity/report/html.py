"""report.html (and prompts.html): the same sections as report.md (and prompts.md), self-contained
(inline CSS and SVG, no scripts, no network), with charts where a reader would rather look. Every
piece of text, model output above all, is HTML-escaped."""
from __future__ import annotations

from html import escape

from llm_parity.report import DETAILS_PAGE, Report, Section, joined_cells
from llm_parity.report.charts import bars, log_lines
from llm_parity.report.overview import decade_histogram
from llm_parity.report.strings import STRINGS

STYLE = """
body{font-family:system-ui,-apple-system,"Noto Sans CJK SC","Noto Sans KR",sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1em;width:100%;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 6px;text-align:left;vertical-align:top;word-break:break-word}
th{background:#f3f3f3} .verdict{font-size:1.3em;font-weight:bold} blockquote{color:#555;border-left:3px solid #ccc;margin:.5em 0;padding-left:.8em}
code{background:#f6f6f6;padding:0 3px} svg{max-width:100%;height:auto;margin:.5em 0}
"""


def charts(report: Report, compare: dict, bench: dict | None = None) -> dict[str, str]:
    """Every chart the sections name, each of a size bounded whatever the number of prompts: values
    counted by order of magnitude, or one point per position."""
    s, titles = STRINGS[report.lang], report.side_titles
    along = compare["summary"]["logprob_diff_along_positions"]
    drawn = {"delta": log_lines({s["max"]: along["max"], s["median"]: along["median"]}, title=s["chart_delta"],
                                x_label=s["position"])}
    for distribution in report.distributions:
        labels, counts = decade_histogram(list(distribution.groups.values()))
        drawn[distribution.key] = bars(labels, [(s[group], c) for group, c in zip(distribution.groups, counts)],
                                       title=s[f"chart_{distribution.key}"], x_label=s["decade"])
    if tasks := (compare.get("accuracy") or {}).get("tasks"):
        drawn["accuracy"] = bars([t["task"] for t in tasks],
                                 [(titles["target"], [t["target_accuracy"] for t in tasks]),
                                  (titles["reference"], [t["reference_accuracy"] for t in tasks])],
                                 title=s["chart_accuracy"], x_label=s["task"],
                                 highlight={t["task"] for t in tasks if t["flipped_to_wrong"] or t["flipped_to_correct"]})
    if bench:
        levels = bench["levels"]
        drawn["bench"] = bars([str(level["concurrency"]) for level in levels],
                              [(s["out_tps"], [level["summary"]["output_throughput"] for level in levels])],
                              title=s["chart_bench"], x_label=s["concurrency"])
    return drawn


def _head(report: Report, title: str) -> list[str]:
    return [f'<!DOCTYPE html><html lang="{report.lang}"><head><meta charset="utf-8">',
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'; img-src data:">',
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
            f"<h1>{escape(title)}</h1>", f'<p class="verdict">{escape(report.verdict)}</p>']


def _row(cells: list[str]) -> str:
    return f"<tr><td>{joined_cells(cells, escape, '</td><td>')}</td></tr>"


def _sections(sections: list[Section], drawn: dict[str, str]) -> list[str]:
    out = []
    for section in sections:
        out.append(f"<h2>{escape(section.title)}</h2>")
        if section.headers:
            out.append("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in section.headers) + "</tr>")
            out += map(_row, section.rows)
            out.append("</table>")
        out += [f"<blockquote>{escape(note)}</blockquote>" for note in section.notes]
        out += [drawn[key] for key in section.charts]
    return out


def _page(lines: list[str]) -> str:
    """The lines and the end of the page, each ending in a newline (joined once: prompts.html is 40 MB)."""
    return "\n".join([*lines, "</body></html>", ""])


def _link(name: str) -> str:
    return f'<a href="{name}">{name}</a>'


def render_html(report: Report, compare: dict, bench: dict | None = None) -> str:
    """report.html: the sections with their charts, then the per-prompt tables or the link to their page."""
    drawn = charts(report, compare, bench)
    out = _head(report, report.title) + ["<ul>"]
    out += [f"<li>{escape(label)}: <code>{escape(str(value))}</code></li>" for label, value in report.facts]
    out += ["</ul>"] + _sections(report.sections, drawn)
    if report.details_link is None:
        out += _sections(report.details, drawn)
    else:
        out += [f"<h2>{escape(STRINGS[report.lang]['details'])}</h2>",
                f"<p>{escape(report.details_link).format(link=_link(f'{DETAILS_PAGE}.html'))}</p>"]
    return _page(out)


def render_details_html(report: Report) -> str:
    """prompts.html: the per-prompt and per-passage tables of a large run."""
    s = STRINGS[report.lang]
    out = _head(report, f"{report.title}: {s['details_title']}")
    out += [f"<p>{escape(s['details_back']).format(link=_link('report.html'))}</p>"] + _sections(report.details, {})
    return _page(out)


def html_pages(report: Report, compare: dict, bench: dict | None = None) -> dict[str, str]:
    """File name in report/ -> text: report.html, and prompts.html when the tables are not inline."""
    pages = {"report.html": render_html(report, compare, bench)}
    if report.details_link is not None:
        pages[f"{DETAILS_PAGE}.html"] = render_details_html(report)
    return pages
