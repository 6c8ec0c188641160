"""A small, dependency-free SVG line chart: panels side by side, one line per series, a shared legend.

Enough for benchmark plots (tokens/s and peak memory against sequence length) without matplotlib.
The x axis is logarithmic (base 2) when the values span a factor of 4 or more, as sequence
lengths usually do; the y axis starts at zero so ratios between lines read honestly.

Run as:  python -m bench.svg_chart OUT.svg      # writes a demonstration chart
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f")


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]  # (x, y); y None is skipped (a failed run)
    color: str | None = None
    dash: str = ""


@dataclass
class Panel:
    title: str
    x_label: str
    y_label: str
    series: list[Series] = field(default_factory=list)


def nice_ticks(hi: float, count: int = 5) -> list[float]:
    """0 and round steps (1, 2, 2.5, 5 x 10^k) up to at least hi."""
    if hi <= 0:
        return [0.0, 1.0]
    raw = hi / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = math.ceil(hi / step - 1e-9)
    return [i * step for i in range(n + 1)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def _panel_svg(panel: Panel, x0: float, y0: float, w: float, h: float) -> list[str]:
    pts = [(x, y) for s in panel.series for x, y in s.points if y is not None]
    out = [
        f'<text x="{x0 + w / 2:.1f}" y="{y0 - 12:.1f}" text-anchor="middle" font-weight="bold">'
        f"{escape(panel.title)}</text>"
    ]
    if not pts:
        return out + [f'<text x="{x0 + w / 2:.1f}" y="{y0 + h / 2:.1f}" text-anchor="middle">no data</text>']
    xs = sorted({x for x, _ in pts})
    log_x = xs[0] > 0 and xs[-1] / xs[0] >= 4
    fx = (lambda v: math.log2(v)) if log_x else (lambda v: v)
    lo, hi = fx(xs[0]), fx(xs[-1])
    span = hi - lo or 1.0
    y_ticks = nice_ticks(max(y for _, y in pts))
    y_hi = y_ticks[-1] or 1.0

    def px(x: float) -> float:  # 5% inside the frame, so end points do not sit on it
        return x0 + (0.5 * w if len(xs) == 1 else (0.05 + 0.9 * (fx(x) - lo) / span) * w)

    def py(y: float) -> float:
        return y0 + h - y / y_hi * h

    out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>')
    for t in y_ticks:
        out.append(f'<line x1="{x0}" y1="{py(t):.1f}" x2="{x0 + w}" y2="{py(t):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{x0 - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for x in xs:
        out.append(f'<line x1="{px(x):.1f}" y1="{y0 + h}" x2="{px(x):.1f}" y2="{y0 + h + 4}" stroke="#999"/>')
        out.append(f'<text x="{px(x):.1f}" y="{y0 + h + 17}" text-anchor="middle">{_fmt(x)}</text>')
    out.append(
        f'<text x="{x0 + w / 2:.1f}" y="{y0 + h + 36}" text-anchor="middle">{escape(panel.x_label)}'
        + (" (log scale)" if log_x else "")
        + "</text>"
    )
    out.append(
        f'<text transform="translate({x0 - 46},{y0 + h / 2:.1f}) rotate(-90)" text-anchor="middle">'
        f"{escape(panel.y_label)}</text>"
    )
    for s in panel.series:
        line = [(px(x), py(y)) for x, y in sorted(s.points) if y is not None]
        if not line:
            continue
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        path = " ".join(f"{a:.1f},{b:.1f}" for a, b in line)
        out.append(f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="2"{dash}/>')
        out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{s.color}"/>' for a, b in line]
    return out


def line_chart(panels: list[Panel], title: str = "", *, panel_w: int = 360, panel_h: int = 240) -> str:
    """The SVG text of panels side by side; series with the same name share a colour and a legend entry."""
    names: list[str] = []
    for p in panels:
        for s in p.series:
            if s.name not in names:
                names.append(s.name)
    style = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}
    for p in panels:
        for s in p.series:
            s.color = s.color or style[s.name]
    left, gap, top = 70, 90, 50 + (20 if title else 0)
    legend_h = 20 * len(names) + 10
    width = left + len(panels) * panel_w + (len(panels) - 1) * gap + 30
    height = top + panel_h + 50 + legend_h
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    if title:
        out.append(
            f'<text x="{width / 2:.1f}" y="22" text-anchor="middle" font-size="15" font-weight="bold">'
            f"{escape(title)}</text>"
        )
    for i, p in enumerate(panels):
        out += _panel_svg(p, left + i * (panel_w + gap), top, panel_w, panel_h)
    ly = top + panel_h + 55
    for i, n in enumerate(names):
        s = next(s for p in panels for s in p.series if s.name == n)
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        y = ly + 20 * i
        out.append(f'<line x1="{left}" y1="{y}" x2="{left + 30}" y2="{y}" stroke="{s.color}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{left + 38}" y="{y + 4}">{escape(n)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import sys

    demo = [
        Panel(
            "tokens/s",
            "sequence length",
            "tokens/s",
            [
                Series("a", [(128, 900), (256, 1500), (512, 2100)]),
                Series("b", [(128, 700), (256, 1100), (512, 1400)], dash="6,4"),
            ],
        ),
        Panel(
            "peak memory",
            "sequence length",
            "GiB",
            [
                Series("a", [(128, 1.1), (256, 1.3), (512, 1.9)]),
                Series("b", [(128, 1.4), (256, 1.9), (512, 3.0)], dash="6,4"),
            ],
        ),
    ]
    out = sys.argv[1] if len(sys.argv) > 1 else "chart-demo.svg"
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(line_chart(demo, "demonstration"))
    print(f"written: {out}")
