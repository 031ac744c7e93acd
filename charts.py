"""litejobs charts: small SVG charts drawn on the server for the dashboard.

Pure functions from numbers to SVG markup; colours come from CSS classes in
static/style.css, so the charts follow the page's look and need no script.
"""

from html import escape


def _number(value):
    """A short label: 3, 2.5, 1.2k, 3.4M."""
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    if value == int(value):
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _nice_max(value):
    """The smallest of 1, 2, 2.5, 5 × 10^n at or above `value`, so the axis reads well."""
    if value <= 0:
        return 1
    scale = 1
    while scale * 10 <= value:
        scale *= 10
    while scale > value:
        scale /= 10
    for step in (1, 2, 2.5, 5, 10):
        if step * scale >= value:
            return step * scale
    return 10 * scale


def bars(series, labels=(), titles=(), width=720, height=180, label="chart"):
    """Stacked vertical bars.

    `series` is a list of (css class, values), drawn bottom up; `labels` a list
    of (index, text) ticks under the x axis; `titles` one hover text per bar.
    """
    count = max((len(values) for _, values in series), default=0)
    totals = [sum(values[i] for _, values in series if i < len(values)) for i in range(count)]
    top = _nice_max(max(totals, default=0))
    left, bottom, right, upper = 44, 22, 8, 8
    plot_w, plot_h = width - left - right, height - bottom - upper
    slot = plot_w / max(count, 1)
    gap = 1 if slot > 3 else 0
    parts = _open(width, height, label)
    parts += _grid(width, left, right, upper, plot_h, top)
    for i in range(count):
        x = left + i * slot
        base = upper + plot_h
        hover = f"<title>{escape(titles[i])}</title>" if i < len(titles) else ""
        for css, values in series:
            value = values[i] if i < len(values) else 0
            if not value:
                continue
            h = plot_h * value / top
            base -= h
            parts.append(
                f'<rect class="{css}" x="{x + gap / 2:.1f}" y="{base:.1f}" width="{max(slot - gap, 0.5):.1f}" '
                f'height="{h:.1f}">{hover}</rect>'
            )
    for index, text in labels:
        x = left + (index + 0.5) * slot
        parts.append(f'<text class="axis" x="{x:.1f}" y="{height - 6}" text-anchor="middle">{escape(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def hbars(items, width=720, row=22, label="chart", css="bar"):
    """Horizontal bars, one per (name, value), largest first as given."""
    left, right = 150, 60
    height = max(row * len(items), row) + 4
    top = max((value for _, value in items), default=0) or 1
    parts = _open(width, height, label)
    for i, (name, value) in enumerate(items):
        y = 2 + i * row
        w = (width - left - right) * value / top
        parts.append(
            f'<text class="axis" x="{left - 8}" y="{y + row * 0.65:.1f}" text-anchor="end">{escape(str(name))}</text>'
        )
        parts.append(f'<rect class="{css}" x="{left}" y="{y + 3}" width="{max(w, 1):.1f}" height="{row - 6}"/>')
        parts.append(f'<text class="value" x="{left + w + 6:.1f}" y="{y + row * 0.65:.1f}">{_number(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def line(values, labels=(), titles=(), width=720, height=140, label="chart", css="line"):
    """One line with its area shaded, for a daily series."""
    left, bottom, right, upper = 44, 22, 8, 8
    plot_w, plot_h = width - left - right, height - bottom - upper
    top = _nice_max(max(values, default=0))
    step = plot_w / max(len(values) - 1, 1)
    points = [(left + i * step, upper + plot_h * (1 - value / top)) for i, value in enumerate(values)]
    parts = _open(width, height, label)
    parts += _grid(width, left, right, upper, plot_h, top)
    if points:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        floor = upper + plot_h
        parts.append(f'<polygon class="{css}-area" points="{points[0][0]:.1f},{floor} {path} {points[-1][0]:.1f},{floor}"/>')
        parts.append(f'<polyline class="{css}" points="{path}"/>')
        for i, (x, y) in enumerate(points):
            hover = f"<title>{escape(titles[i])}</title>" if i < len(titles) else ""
            parts.append(f'<circle class="{css}-dot" cx="{x:.1f}" cy="{y:.1f}" r="2.5">{hover}</circle>')
    for index, text in labels:
        parts.append(
            f'<text class="axis" x="{left + index * step:.1f}" y="{height - 6}" text-anchor="middle">{escape(text)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _open(width, height, label):
    """The <svg> start tag and its title, as a list of parts to append to."""
    return [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="{escape(label)}">',
        f"<title>{escape(label)}</title>",
    ]


def _grid(width, left, right, upper, plot_h, top):
    """Grid lines and their values at 0, half and the top of the scale."""
    parts = []
    for fraction in (0, 0.5, 1):
        y = upper + plot_h * (1 - fraction)
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_number(top * fraction)}</text>')
    return parts
