"""Plots written as SVG text directly, without matplotlib: the audit's figures (spectra, ranks,
heatmaps), which an adapter's report draws every time.

Why: importing matplotlib and drawing those three figures with it cost ≈ 2 s of a 224-layer
adapter's report (more than the audit itself); writing the same plots as text costs a few
hundredths of a second.  The SVG keeps what the report's tests and CSS rely on from matplotlib's:
user units are points (viewBox = the figure in points, so plot.min_width holds), every plotting
area is a `<g class="axes">` whose first child is its background, ticks are `<g class="xtick">` /
`<g class="ytick">` inside `<g class="axis">`, legends are `<g class="legend">` above the axes,
text is text in DejaVu Sans (8 pt ticks and legends, 9 pt axis labels).  Label widths are
estimated (CHAR_EM per character) rather than measured, as the heatmap layout already does.

Deliberately left out: anything the audit figures do not draw (bars, images, clipping, mathtext).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .html import esc
from .plot import MIN_FONT, min_width

FONT = "font-family:'DejaVu Sans', Verdana, sans-serif"
LABEL_FONT = 9.0  # axis labels (matplotlib's font.size in plot._RC)
TITLE_FONT = 10.8  # axes titles ("large": 1.2 × font.size)
CHAR_EM = 0.62  # estimated advance of one character, in em (DejaVu Sans digits are 0.636)
TICK = 3.5  # tick length and the gap from a tick to its label, points
GRID = 'stroke="#b0b0b0" stroke-opacity="0.3" stroke-width="0.8"'
TICK_STROKE = 'stroke="#000000" stroke-width="0.8"'
DASHES = {"-": (), "--": (3.7, 1.6), ":": (1.0, 1.65)}  # × line width, as matplotlib scales them

# viridis, every 8th of its 256 colours (linear interpolation between them)
VIRIDIS = (
    "440154 470d60 48186a 482374 472d7b 453781 424086 3e4989 3b528b 375b8d 33638d 2f6b8e 2c728e "
    "297a8e 26828e 23898e 21918c 1f988b 1fa088 22a785 28ae80 32b67a 3fbc73 4ec36b 5ec962 70cf57 "
    "84d44b 98d83e addc30 c2df23 d8e219 ece51b fde725"
).split()


_ZEROS = re.compile(r"\.00(?!\d)|(?<=\.\d)0(?!\d)")  # "12.00" → "12", "12.50" → "12.5"


def pt(v: float) -> str:
    """A coordinate: two decimals at most (a hundredth of a point), no trailing zeros."""
    text = f"{v:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def text_width(text: str, size: float = MIN_FONT) -> float:
    return len(text) * CHAR_EM * size


def text(x: float, y: float, s: str, size: float = MIN_FONT, anchor: str = "middle", extra: str = "") -> str:
    """One line of text whose baseline starts at (x, y); `s` is escaped here."""
    return (
        f'<text x="{pt(x)}" y="{pt(y)}" style="font-size:{size:g}px;{FONT};text-anchor:{anchor}"{extra}>'
        f"{esc(s)}</text>"
    )


def viridis(t: float) -> str:
    """The colour of t in [0, 1] on the viridis map."""
    pos = min(max(t, 0.0), 1.0) * (len(VIRIDIS) - 1)
    i = min(int(pos), len(VIRIDIS) - 2)
    a, b, f = VIRIDIS[i], VIRIDIS[i + 1], pos - i
    rgb = (round(int(a[k : k + 2], 16) * (1 - f) + int(b[k : k + 2], 16) * f) for k in (0, 2, 4))
    return "#" + "".join(f"{c:02x}" for c in rgb)


@dataclass(frozen=True)
class Scale:
    """An axis' view limits; `log`: base-10 positions."""

    lo: float
    hi: float
    log: bool = False

    def frac(self, v: float) -> float:
        if self.log:
            lo, hi, v = math.log10(self.lo), math.log10(self.hi), math.log10(v)
        else:
            lo, hi = self.lo, self.hi
        return (v - lo) / (hi - lo) if hi != lo else 0.5


def padded(lo: float, hi: float, margin: float = 0.05) -> Scale:
    """Linear limits around the data with matplotlib's default 5 % margins."""
    pad = (hi - lo) * margin if hi > lo else max(abs(lo), 1.0) * margin
    return Scale(lo - pad, hi + pad)


def nice_ticks(scale: Scale, nbins: int = 9, integer: bool = False) -> list[float]:
    """At most nbins + 1 round ticks inside the limits (steps 1, 2, 2.5, 5 × 10ᵏ; whole numbers
    only when `integer`), as matplotlib's MaxNLocator picks them."""
    lo, hi = scale.lo, scale.hi
    raw = max((hi - lo) / nbins, 1e-300)
    mag = 10 ** math.floor(math.log10(raw))
    steps = [s * mag for s in (1, 2, 2.5, 5, 10)]
    if integer:
        steps = [s for s in steps if s >= 1 and float(s).is_integer()] or [1.0]
    step = next((s for s in steps if s >= raw * (1 - 1e-9)), steps[-1])
    first = math.ceil(lo / step - 1e-9)
    ticks = [k * step for k in range(first, math.floor(hi / step + 1e-9) + 1)]
    return [0.0 if abs(t) < step * 1e-9 else t for t in ticks]


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """Linear tick labels with the decimals their step needs ('0.25', '0.50'), '−' for minus."""
    step = min((b - a for a, b in zip(ticks, ticks[1:], strict=False)), default=1.0)
    decimals = 0
    while decimals < 6 and abs(round(step, decimals) - step) > step * 1e-6:
        decimals += 1
    return [f"{t:.{decimals}f}".replace("-", "−") for t in ticks]


@dataclass
class Axes:
    """One plotting area: its box in points (y down) and its scales; parts collect its SVG."""

    left: float
    top: float
    right: float
    bottom: float
    x: Scale
    y: Scale
    parts: list[str] = field(default_factory=list)

    def px(self, v: float) -> float:
        return self.left + self.x.frac(v) * (self.right - self.left)

    def py(self, v: float) -> float:
        return self.bottom - self.y.frac(v) * (self.bottom - self.top)

    def background(self) -> None:
        w, h = self.right - self.left, self.bottom - self.top
        self.parts.append(
            f'<g class="axes"><g><rect x="{pt(self.left)}" y="{pt(self.top)}" width="{pt(w)}" '
            f'height="{pt(h)}" fill="#ffffff"/></g>'
        )

    def xaxis(
        self, ticks: Sequence[tuple[float, str]], label: str = "", grid: bool = True, rotate: bool = False
    ) -> None:
        """The x axis: tick marks under the axes, their labels (upright ones read bottom to top,
        ending at the tick), grid lines, the axis title centred under the labels."""
        out = ['<g class="axis">']
        for v, words in ticks:
            x, y = self.px(v), self.bottom
            line = f'<path d="M{pt(x)} {pt(self.top)}V{pt(y)}" {GRID}/>' if grid else ""
            mark = f'<path d="M{pt(x)} {pt(y)}v{TICK}" {TICK_STROKE}/>'
            if rotate:
                at = f' transform="translate({pt(x)} {pt(y + 2 * TICK)}) rotate(-90)"'
                shown = text(0, 0.35 * MIN_FONT, words, anchor="end", extra=at)
            else:
                shown = text(x, y + 2 * TICK + 0.76 * MIN_FONT, words)
            out.append(f'<g class="xtick">{line}{mark}{shown}</g>')
        if label:
            mid = (self.left + self.right) / 2
            out.append(
                text(mid, self.bottom + 2 * TICK + MIN_FONT + 4 + 0.76 * LABEL_FONT, label, LABEL_FONT)
            )
        self.parts.append("".join(out) + "</g>")

    def yaxis(
        self, ticks: Sequence[tuple[float, str]], label: str = "", grid: bool = True, right: bool = False
    ) -> None:
        """The y axis: tick marks left of the axes (right of a colorbar), their labels, grid
        lines, the axis title read bottom to top beside the labels."""
        out = ['<g class="axis">']
        x, sign = (self.right, 1) if right else (self.left, -1)
        for v, words in ticks:
            y = self.py(v)
            line = f'<path d="M{pt(self.left)} {pt(y)}H{pt(self.right)}" {GRID}/>' if grid else ""
            mark = f'<path d="M{pt(x)} {pt(y)}h{pt(sign * TICK)}" {TICK_STROKE}/>'
            shown = text(x + sign * 2 * TICK, y + 0.35 * MIN_FONT, words, anchor="start" if right else "end")
            out.append(f'<g class="ytick">{line}{mark}{shown if words else ""}</g>')
        if label:
            widest = max((text_width(w) for _, w in ticks), default=0.0)
            lx = x + sign * (2 * TICK + widest + 4 + 0.24 * LABEL_FONT)
            mid = (self.top + self.bottom) / 2
            at = f' transform="rotate({90 if right else -90} {pt(lx)} {pt(mid)})"'
            out.append(text(lx, mid, label, LABEL_FONT, extra=at))
        self.parts.append("".join(out) + "</g>")

    def spines(self, sides: str = "lb") -> None:
        edges = {
            "l": f"M{pt(self.left)} {pt(self.top)}V{pt(self.bottom)}",
            "b": f"M{pt(self.left)} {pt(self.bottom)}H{pt(self.right)}",
            "r": f"M{pt(self.right)} {pt(self.top)}V{pt(self.bottom)}",
            "t": f"M{pt(self.left)} {pt(self.top)}H{pt(self.right)}",
        }
        d = "".join(edges[s] for s in sides)
        self.parts.append(
            f'<path d="{d}" fill="none" stroke="#000000" stroke-width="0.8" stroke-linecap="square"/>'
        )

    def path_data(self, xs: Sequence[float], ys: Sequence[float]) -> str:
        """A polyline's `d`: M then the points as x y pairs (the later ones implicit L).  The bulk
        of a 224-layer page's plots (14,000 points): the scales are inlined and the trailing zeros
        dropped in one pass over the text."""
        ax, bx = self._affine(self.x, self.left, self.right)
        ay, by = self._affine(self.y, self.bottom, self.top)
        fx = math.log10 if self.x.log else float
        fy = math.log10 if self.y.log else float
        d = " ".join(f"{ax + bx * fx(x):.2f} {ay + by * fy(y):.2f}" for x, y in zip(xs, ys, strict=True))
        return "M" + _ZEROS.sub("", d)

    @staticmethod
    def _affine(scale: Scale, start: float, end: float) -> tuple[float, float]:
        """(a, b) with position = a + b·v (v: log10 of the value on a log scale)."""
        lo, hi = (math.log10(scale.lo), math.log10(scale.hi)) if scale.log else (scale.lo, scale.hi)
        b = (end - start) / (hi - lo) if hi != lo else 0.0
        return (start - b * lo, b) if hi != lo else ((start + end) / 2, 0.0)

    def close(self) -> str:
        """The axes' SVG (its group closed)."""
        return "".join(self.parts) + "</g>"


@dataclass(frozen=True)
class Style:
    """How one series is drawn (and keyed in a legend): a line, markers, or both."""

    colour: str
    line: str = ""  # "-", "--", ":" or "" (no line)
    width: float = 1.5
    marker: str = ""  # "o", "x" or ""
    size: float = 3.0  # marker size, points
    alpha: float = 1.0

    def stroke(self, width: float | None = None) -> str:
        w = self.width if width is None else width
        dash = ",".join(pt(d * w) for d in DASHES[self.line or "-"])
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        faded = f' stroke-opacity="{self.alpha:g}"' if self.alpha < 1 else ""
        return f'fill="none" stroke="{self.colour}" stroke-width="{w:g}"{faded}{dashed}'


def marker_path(points: Sequence[tuple[float, float]], style: Style) -> str:
    """One <path> holding a marker at each point (x, y in points): a single element per series,
    however many points (matplotlib writes one <use> per point)."""
    size, r = style.size, style.size / 2
    if style.marker == "o":
        d = "".join(
            f"M{pt(x - r)} {pt(y)}a{pt(r)} {pt(r)} 0 1 0 {pt(size)} 0a{pt(r)} {pt(r)} 0 1 0 {pt(-size)} 0"
            for x, y in points
        )
    else:  # "x"
        d = "".join(
            f"M{pt(x - r)} {pt(y - r)}l{pt(size)} {pt(size)}M{pt(x - r)} {pt(y + r)}l{pt(size)} {pt(-size)}"
            for x, y in points
        )
    fill = style.colour if style.marker == "o" else "none"
    return f'<path d="{d}" fill="{fill}" stroke="{style.colour}" stroke-width="1"/>'


def markers(ax: Axes, xs: Sequence[float], ys: Sequence[float], style: Style) -> str:
    return marker_path([(ax.px(x), ax.py(y)) for x, y in zip(xs, ys, strict=True)], style)


def legend_above(ax: Axes, entries: Sequence[tuple[str, Style]]) -> None:
    """A frameless legend in one row just above the axes (as plot.legend_above places
    matplotlib's): a 16-point key, then its label."""
    y = ax.top - 0.01 * (ax.bottom - ax.top) - 1.6 - 3.2 - 0.55 * MIN_FONT
    x = ax.left + 1.6 + 3.2
    out = ['<g class="legend">']
    for label, style in entries:
        if style.line:
            out.append(f'<path d="M{pt(x)} {pt(y)}h16" {style.stroke(1.5 if style.width < 1.5 else None)}/>')
        if style.marker:
            out.append(marker_path([(x + 8, y)], style))
        out.append(text(x + 16 + 3.2, y + 0.35 * MIN_FONT, label, anchor="start"))
        x += 16 + 3.2 + text_width(label) + 16
    out.append("</g>")
    ax.parts.append("".join(out))


def colour_range(mat: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(lowest, highest) finite value of a heatmap: the ends of its colour scale."""
    values = [v for row in mat for v in row if not math.isnan(v)]
    return (min(values), max(values)) if values else (0.0, 1.0)


def shade(v: float, lo: float, hi: float) -> float:
    """Where v falls on the colour scale, 0 to 1 (the middle when all values are equal)."""
    return (v - lo) / (hi - lo) if hi > lo else 0.5


def cells(ax: Axes, mat: Sequence[Sequence[float]], form: str = "") -> str:
    """A heatmap's cells: row i, column j centred at (j, i) on axes whose limits are ±0.5 around
    the cells; no cell where the value is NaN.  `form`: also write each number on its cell, black
    on the light upper part of the map, white below."""
    lo, hi = colour_range(mat)
    w = abs(ax.px(1) - ax.px(0))
    h = abs(ax.py(1) - ax.py(0))
    rects, words = [], []
    for i, row in enumerate(mat):
        for j, v in enumerate(row):
            if math.isnan(v):
                continue
            x, y = ax.px(j) - w / 2, min(ax.py(i - 0.5), ax.py(i + 0.5))
            t = shade(v, lo, hi)
            rects.append(
                f'<rect x="{pt(x)}" y="{pt(y)}" width="{pt(w)}" height="{pt(h)}" fill="{viridis(t)}"/>'
            )
            if form:
                colour = "#000000" if t > 0.6 else "#ffffff"  # viridis is light at the top
                words.append(
                    text(ax.px(j), ax.py(i) + 0.35 * MIN_FONT, form.format(v), extra=f' fill="{colour}"')
                )
    return f'<g shape-rendering="crispEdges">{"".join(rects)}</g>{"".join(words)}'


def colorbar(left: float, top: float, width: float, height: float, lo: float, hi: float) -> str:
    """A vertical colour scale from lo (bottom) to hi, ticked on its right."""
    pad = 0.0 if hi > lo else (abs(lo) * 0.1 or 0.5)
    ax = Axes(left, top, left + width, top + height, Scale(0, 1), Scale(lo - pad, hi + pad))
    ax.background()
    steps = 64
    band = height / steps
    ax.parts.append(
        '<g shape-rendering="crispEdges">'
        + "".join(
            f'<rect x="{pt(left)}" y="{pt(top + height - (k + 1) * band)}" width="{pt(width)}" '
            f'height="{pt(band + 0.05)}" fill="{viridis((k + 0.5) / steps)}"/>'
            for k in range(steps)
        )
        + "</g>"
    )
    ticks = nice_ticks(ax.y, nbins=max(2, min(9, int(height / (2 * MIN_FONT)))))
    ax.yaxis(list(zip(ticks, tick_labels(ticks), strict=True)), grid=False, right=True)
    ax.spines("lbrt")
    return ax.close()


def document(width_in: float, height_in: float, label: str, css_class: str, body: Sequence[str]) -> str:
    """The figure as an inline <svg>: viewBox in points, no fixed size (CSS scales it), a <title>
    for screen readers, role=img, the same min-width as matplotlib's figures get."""
    w, h = width_in * 72, height_in * 72
    head = (
        f'<svg role="img" aria-label="{esc(label)}" class="{css_class}" '
        f'style="min-width:{min_width(width_in)}px" '
        f'viewBox="0 0 {pt(w)} {pt(h)}" xmlns="http://www.w3.org/2000/svg" version="1.1">'
        f'<title>{esc(label)}</title><rect width="{pt(w)}" height="{pt(h)}" fill="#ffffff"/>'
    )
    return head + "".join(body) + "</svg>"
