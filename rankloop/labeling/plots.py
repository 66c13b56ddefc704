"""Small charts for the lead's dashboard: inline SVG made on the server (no script, no charting
library; the page's CSP allows no inline script anyway). Every label goes through ``escape``:
usernames are user input. Colours are presentation attributes, not ``style`` (CSP)."""

from __future__ import annotations

from datetime import date, timedelta

from markupsafe import Markup, escape

BAR = "#4a7bd0"
LOW = "#c0392b"
GRID = "#ccc"


def _svg(width: int, height: int, body: str, label: str) -> Markup:
    return Markup(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                  f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">'
                  f"<title>{escape(label)}</title>{body}</svg>")


def day_bars(per_day: dict[str, int], days: int = 14, today: date | None = None, width: int = 168, height: int = 36) -> Markup:
    """Rankings per day over the last ``days`` UTC days (oldest left), one bar a day."""
    end = today or (max(date.fromisoformat(d) for d in per_day) if per_day else date.today())
    span = [(end - timedelta(days=days - 1 - i)).isoformat() for i in range(days)]
    top = max([per_day.get(d, 0) for d in span] + [1])
    w = width / days
    bars = []
    for i, d in enumerate(span):
        n = per_day.get(d, 0)
        h = (height - 2) * n / top
        bars.append(f'<rect x="{i * w + 1:.1f}" y="{height - h:.1f}" width="{w - 2:.1f}" height="{h:.1f}" fill="{BAR}">'
                    f"<title>{d}: {n}</title></rect>")
    base = f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" stroke="{GRID}"/>'
    total = sum(per_day.get(d, 0) for d in span)
    return _svg(width, height, base + "".join(bars), f"rankings per day, last {days} days: {total}")


def share_bar(value: float | None, floor: float | None = None, width: int = 120, height: int = 14) -> Markup:
    """A 0–1 figure as a filled bar, red when below ``floor``; a dash-like empty bar when None."""
    frame = f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="none" stroke="{GRID}"/>'
    if value is None:
        return _svg(width, height, frame, "no figure yet")
    colour = LOW if floor is not None and value < floor else BAR
    fill = f'<rect x="1" y="1" width="{max(0.0, (width - 2) * min(1.0, value)):.1f}" height="{height - 2}" fill="{colour}"/>'
    mark = ""
    if floor is not None:
        x = 1 + (width - 2) * floor
        mark = f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height}" stroke="#222" stroke-dasharray="2,1"/>'
    return _svg(width, height, frame + fill + mark, f"{value:.3f}" + (f" (threshold {floor:.2f})" if floor is not None else ""))
