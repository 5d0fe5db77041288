"""report.md: the sections as Markdown tables. Cells are escaped so that model output can break
neither the table nor, in viewers that render inline HTML, the page."""
from __future__ import annotations

import html

from llm_parity.report import Report


def cell(text: str) -> str:
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ↵ ")


def render_markdown(report: Report) -> str:
    lines = [f"# {cell(report.title)}", "", f"**{report.verdict}**", ""]
    lines += [f"- {label}: `{value}`" for label, value in report.facts] + [""]
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        if section.headers:
            lines.append("| " + " | ".join(cell(h) for h in section.headers) + " |")
            lines.append("|" + "---|" * len(section.headers))
            lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in section.rows]
            lines.append("")
        lines += [f"> {cell(note)}\n" for note in section.notes]
    return "\n".join(lines).rstrip() + "\n"
