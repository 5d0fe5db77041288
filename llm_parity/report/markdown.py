"""report.md, and report/prompts.md for a run too large for its per-prompt tables to stay inline:
the sections as Markdown tables. Cells are escaped so that model output can break neither the table
nor, in viewers that render inline HTML, the page."""
from __future__ import annotations

import html

from llm_parity.report import DETAILS_PAGE, Report, Section, joined_cells
from llm_parity.report.strings import STRINGS


def cell(text: str) -> str:
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ↵ ")


def _row(cells: list[str]) -> str:
    return f"| {joined_cells(cells, cell, ' | ')} |"


def _link(name: str) -> str:
    return f"[{name}]({name})"


def _sections(sections: list[Section]) -> list[str]:
    lines = []
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.headers:
            lines.append(_row(section.headers))
            lines.append("|" + "---|" * len(section.headers))
            lines += map(_row, section.rows)
            lines.append("")
        lines += [f"> {cell(note)}\n" for note in section.notes]
    return lines


def _page(title: str, report: Report, body: list[str]) -> str:
    """The lines, without the whitespace that ends them, as one text ending in a newline: the same as
    `"\\n".join(lines).rstrip() + "\\n"`, but trimmed line by line, so that a page of 40 MB is not
    copied twice more."""
    lines = [f"# {cell(title)}", "", f"**{report.verdict}**", "", *body]
    while not lines[-1].strip():  # the title line is never blank
        lines.pop()
    lines[-1] = lines[-1].rstrip()
    return "\n".join([*lines, ""])


def render_markdown(report: Report) -> str:
    """report.md: the sections, then the per-prompt tables or the link to their page."""
    body = [f"- {label}: `{value}`" for label, value in report.facts] + [""] + _sections(report.sections)
    if report.details_link is None:
        body += _sections(report.details)
    else:
        body += [f"## {STRINGS[report.lang]['details']}", "",
                 cell(report.details_link).format(link=_link(f"{DETAILS_PAGE}.md")), ""]
    return _page(report.title, report, body)


def render_details_markdown(report: Report) -> str:
    """prompts.md: the per-prompt and per-passage tables of a large run."""
    s = STRINGS[report.lang]
    back = cell(s["details_back"]).format(link=_link("report.md"))
    return _page(f"{report.title}: {s['details_title']}", report, [back, ""] + _sections(report.details))


def markdown_pages(report: Report) -> dict[str, str]:
    """File name in report/ -> text: report.md, and prompts.md when the tables are not inline."""
    pages = {"report.md": render_markdown(report)}
    if report.details_link is not None:
        pages[f"{DETAILS_PAGE}.md"] = render_details_markdown(report)
    return pages
