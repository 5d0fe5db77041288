"""Small inline SVG charts for report.html: no plotting library, no network, every label escaped."""
from __future__ import annotations

import math
from html import escape

WIDTH, HEIGHT = 760, 280
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 30, 60
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _frame(title: str, body: list[str], y_ticks: list[tuple[float, str]], x_label: str) -> str:
    plot_bottom = HEIGHT - BOTTOM
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
             f'<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{escape(title)}</text>',
             f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{plot_bottom}" stroke="#333"/>',
             f'<line x1="{LEFT}" y1="{plot_bottom}" x2="{WIDTH - RIGHT}" y2="{plot_bottom}" stroke="#333"/>',
             f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 8}" font-size="11" text-anchor="middle">{escape(x_label)}</text>']
    for y, label in y_ticks:
        parts.append(f'<line x1="{LEFT - 4}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{escape(label)}</text>')
    return "\n".join(parts + body + ["</svg>"])


def _y_scale(low: float, high: float):
    span = (high - low) or 1.0
    return lambda value: HEIGHT - BOTTOM - (value - low) / span * (HEIGHT - BOTTOM - TOP)


def _legend(names: list[str]) -> list[str]:
    """A coloured name per series, top right; none for a single series."""
    return [f'<text x="{WIDTH - RIGHT - 200}" y="{18 + 12 * i}" font-size="10" fill="{COLOURS[i % len(COLOURS)]}">■ {escape(name)}</text>'
            for i, name in enumerate(names) if len(names) > 1]


def log_lines(series: dict[str, list[float]], *, title: str, x_label: str, floor: float = 1e-9) -> str:
    """One line per series of non-negative values on a log10 y axis (values below `floor` drawn at it),
    with a legend."""
    logs = {name: [math.log10(max(v, floor)) for v in values] for name, values in series.items() if values}
    if not logs:
        return _frame(title, [], [], x_label)
    low = math.floor(min(min(v) for v in logs.values()))
    high = math.ceil(max(max(v) for v in logs.values())) or 0
    high = max(high, low + 1)
    y = _y_scale(low, high)
    longest = max(len(v) for v in logs.values())
    x = lambda i: LEFT + (i / max(longest - 1, 1)) * (WIDTH - LEFT - RIGHT)  # noqa: E731
    body = []
    for index, (name, values) in enumerate(logs.items()):
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        colour = COLOURS[index % len(COLOURS)]
        body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.2" points="{points}"><title>{escape(name)}</title></polyline>')
    ticks = [(y(p), f"1e{p}") for p in range(low, high + 1)]
    return _frame(title, body + _legend(list(logs)), ticks, x_label)


def bars(labels: list[str], groups: list[tuple[str, list[float | None]]], *, title: str, x_label: str,
         highlight: set[str] = frozenset()) -> str:
    """Grouped bars from zero; a label in `highlight` is drawn in red."""
    values = [v for _, vals in groups for v in vals if v is not None]
    high = max(values, default=1.0) * 1.1 or 1.0
    y = _y_scale(0.0, high)
    slot = (WIDTH - LEFT - RIGHT) / max(len(labels), 1)
    width = slot * 0.8 / max(len(groups), 1)
    body = []
    for i, label in enumerate(labels):
        for g, (name, vals) in enumerate(groups):
            value = vals[i]
            if value is None:
                continue
            colour = "#d62728" if label in highlight else COLOURS[g % len(COLOURS)]
            left = LEFT + i * slot + slot * 0.1 + g * width
            body.append(f'<rect x="{left:.1f}" y="{y(value):.1f}" width="{width:.1f}" height="{y(0) - y(value):.1f}" '
                        f'fill="{colour}"><title>{escape(label)} {escape(name)}: {value:.6g}</title></rect>')
        body.append(f'<text x="{LEFT + (i + 0.5) * slot:.1f}" y="{HEIGHT - BOTTOM + 14}" font-size="9" text-anchor="middle" '
                    f'transform="rotate(20 {LEFT + (i + 0.5) * slot:.1f} {HEIGHT - BOTTOM + 14})">{escape(label[:18])}</text>')
    ticks = [(y(high * k / 4), f"{high * k / 4:.3g}") for k in range(5)]
    return _frame(title, body + _legend([name for name, _ in groups]), ticks, x_label)
