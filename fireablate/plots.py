"""The study's figures from a ledger: accuracy against swept parameters (its Fig. 4), a grid as a
heatmap, the size/accuracy trade-off, and training curves.

Each function returns a ``Drawn``: the matplotlib Figure and the table of exactly what it draws,
one row per point (group columns, values, accuracy mean, sd and n, size, run ids); ``write`` puts
that table beside the figure as CSV, so every number in a figure can be checked.

The numbers come from ``results``: a line is one experiment, and experiments are never averaged
together. Accuracy is the best validation (top-1) accuracy of each run, drawn in percent (the
CSV keeps fractions, as the ledger does); size is float32 parameter bytes in MB (10^6 bytes, the
study's unit) or MiB, named on every label, and a compressed model's is its file's bytes (the
Pareto figure draws an arrow to it from the model it was compressed from). Figures are built
under a local style (no global matplotlib or seaborn state changes) and are not registered with
pyplot.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none assumed

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import FancyArrowPatch  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from . import results as R  # noqa: E402
from .errors import FireablateError, UsageError  # noqa: E402
from .files import atomic_write, lock  # noqa: E402

AXIS_LABELS = {
    "sr": "Squeeze ratio (SR)",
    "pct3x3": "3x3 filters, % of expand filters",
    "base_e": "base_e: expand filters of the first module",
    "incr_e": "incr_e: expand filters added every freq modules",
    "freq": "freq: modules per expand increase",
    "n_fire": "Fire modules",
    "preset": "Network",
    "bypass": "Bypass",
    "padding": "conv1 padding",
    "pool_after": "Max-pools after layers",
}
NAMES = {"sr": "squeeze ratio", "pct3x3": "share of 3x3 filters", "preset": "network"}  # for titles
ERRORBARS = ("sd", "ci", "none")
STYLES = ("default", "paper")
KINDS = ("sweep", "heatmap", "pareto", "curves")
ACC_LABEL = "Top-1 val. accuracy (%)"

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom: the CI of a mean over a
# handful of seeds is far wider than the normal 1.96 (12.7 for two seeds).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t95(df: int) -> float:
    if df < 1:
        return float("nan")
    if df <= len(_T95):
        return _T95[df - 1]
    z = 1.959964  # Cornish-Fisher expansion of t around the normal, exact to 3 decimals from 30 on
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def spread(sd: float, n: int, errorbar: str) -> float:
    """Half-length of a point's error bar: sd, the t-based 95% CI of the mean, or none (0)."""
    if errorbar == "none" or n < 2 or sd != sd:
        return 0.0
    return sd if errorbar == "sd" else t95(n - 1) * sd / math.sqrt(n)


def _bars(err: np.ndarray) -> np.ndarray | None:
    """Error bar lengths for ``errorbar``: none at all where no point has a spread."""
    return np.where(err > 0, err, np.nan) if (err > 0).any() else None


SPREAD_WORDS = {"sd": "mean ± sd", "ci": "mean with 95% CI", "none": "mean"}


@dataclass
class Drawn:
    """A figure and what it draws: ``table`` has one row per point and goes beside it as CSV."""

    figure: Figure
    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)  # what was kept apart, for the command line to say


class _Figure(Figure):
    """A figure written at the resolution it was made for.

    ``--dpi`` belongs to the figure, not to the code that writes it (``save`` passes its own
    default), so a figure made with ``dpi`` keeps it whatever dpi ``savefig`` is called with.
    """

    export_dpi: int | None = None

    def savefig(self, *args, **kwargs):
        if self.export_dpi is not None:
            kwargs["dpi"] = self.export_dpi
        return super().savefig(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Style and layout


@dataclass(frozen=True)
class _Look:
    width: float  # inches
    height: float
    font: float  # points, body text
    small: float  # size labels, caption
    legend_below: bool  # a narrow figure puts its legend under the axes


_LOOKS = {
    # A screen or a slide.
    "default": _Look(7.5, 4.6, 10.5, 8.5, legend_below=False),
    # One column of a two-column paper (3.5 in): text at 8 pt when printed at that width.
    "paper": _Look(3.5, 2.9, 8.0, 6.5, legend_below=True),
}


def _look(style: str) -> _Look:
    if style not in _LOOKS:
        raise UsageError(f"--style must be {' or '.join(_LOOKS)}, got {style!r}")
    return _LOOKS[style]


@contextlib.contextmanager
def _styled(look: _Look) -> Iterator[None]:
    """seaborn's whitegrid look at the style's text size, for this figure only."""
    rc = {**sns.axes_style("whitegrid"), "font.size": look.font, "axes.labelsize": look.font,
          "axes.titlesize": look.font, "xtick.labelsize": look.small + 0.5, "ytick.labelsize": look.small + 0.5,
          "legend.fontsize": look.small, "legend.title_fontsize": look.small, "figure.titlesize": look.font + 1,
          "lines.linewidth": 1.4 if look.legend_below else 1.8, "svg.fonttype": "none", "pdf.fonttype": 42}
    with plt.rc_context(rc):
        yield


def _canvas(look: _Look, dpi: int | None, title: str, caption: str, width: float | None = None,
            height: float | None = None):
    """A figure with ``title`` and, under it, the caption line; returns (figure, subfigure for axes)."""
    if dpi is not None and not 30 <= dpi <= 2400:
        raise UsageError(f"--dpi must be between 30 and 2400, got {dpi}")
    fig = _Figure(figsize=(width or look.width, height or look.height), layout="constrained")
    FigureCanvasAgg(fig)  # not pyplot's: nothing global keeps it alive
    fig.export_dpi = dpi
    fig.get_layout_engine().set(h_pad=0.04, w_pad=0.04)
    def fits(size: float) -> int:  # characters of text at ``size`` points that fit across the figure
        return int((width or look.width) * 72 / (size * 0.55))

    fig.suptitle("\n".join(textwrap.wrap(title, fits(look.font + 1) - 2)), fontweight="bold")
    body = fig.subfigures(1, 1)
    body.suptitle("\n".join(textwrap.wrap(caption, fits(look.small))), fontsize=look.small, color="0.3")
    return fig, body


def _legend(ax, body, look: _Look, handles: list, labels: list[str], title: str | None = None) -> None:
    """Outside the axes, never over data: at the right, or under a narrow figure."""
    if not handles:
        return
    if look.legend_below:
        body.legend(handles, labels, loc="outside lower center", ncols=1 if max(map(len, labels)) > 24 else 2,
                    frameon=False, title=title)
    else:
        wrapped = ["\n".join(textwrap.wrap(label, 34)) for label in labels]
        ax.legend(handles, wrapped, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, frameon=False,
                  title=title)


def _percent_axis(ax, lows: np.ndarray, highs: np.ndarray, headroom: float = 0.16, label: str = ACC_LABEL) -> None:
    """A y range that fits the data with room for labels above it, never beyond 0-100%."""
    lo, hi = float(np.nanmin(lows)), float(np.nanmax(highs))
    span = max(hi - lo, 4.0)  # a few points at least, so one value is not drawn as a cliff
    top = min(100.0, hi + span * headroom)
    # Room that 100% takes away above goes below, where the labels then have to go.
    bottom = max(0.0, lo - span * 0.08 - (hi + span * headroom - top))
    ax.set_ylim(bottom, top)
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
    ax.set_ylabel(label)


# ---------------------------------------------------------------------------------------------
# Labels that avoid markers, bars, each other and the edges


@dataclass
class _Label:
    x: float  # data coordinates of the point labelled
    y: float
    y_top: float  # the top and bottom of its error bar (y without one)
    y_bottom: float
    text: str
    color: str = "0.2"


def _place_labels(fig, ax, labels: list[_Label], points: list[tuple[float, float]], marker_px: float,
                  fontsize: float, lines: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> list:
    """Put each label where it covers no marker, error bar or other label, stays inside the axes,
    and is nearer its own marker than any other (so it cannot be read as another point's).

    Candidates are tried in order: next to the point (above its error bar, below it, right,
    left, diagonals), then farther out with a thin leader line; the first that breaks no rule
    wins, else the one that breaks the fewest. Lines joining the points count too, but less: a
    label may cross a line if it has to, never a marker.
    """
    fig.canvas.draw()  # the layout is final once drawn; labels are kept out of it below
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    frame = ax.get_window_extent(renderer)
    r = marker_px / 2 + 1
    centres = [tuple(to_px(p)) for p in points]
    hard = [Bbox.from_extents(px - r, py - r, px + r, py + r) for px, py in centres]
    for lab in labels:
        (bx, b0), (_, b1) = to_px((lab.x, lab.y_bottom)), to_px((lab.x, lab.y_top))
        hard.append(Bbox.from_extents(bx - 3, min(b0, b1), bx + 3, max(b0, b1)))
    soft = []
    for xs, ys in lines:
        px = to_px(np.column_stack([xs, ys]))
        for (x0, y0), (x1, y1) in zip(px[:-1], px[1:]):
            for t in np.linspace(0, 1, max(2, int(math.hypot(x1 - x0, y1 - y0) / 4))):
                cx, cy = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
                soft.append(Bbox.from_extents(cx - 1.5, cy - 1.5, cx + 1.5, cy + 1.5))

    def distance(box, x, y, y_high=None) -> float:
        """From a box to a point, or to a vertical bar from y up to y_high."""
        y_high = y if y_high is None else y_high
        return math.hypot(max(box.x0 - x, 0, x - box.x1), max(box.y0 - y_high, 0, y - box.y1))

    px_to_pt = 72 / fig.dpi

    def candidates(lab: _Label, far: float):
        m, g = marker_px / 2, 4 * far
        # Above and below clear the error bar, or the marker where the bar is shorter than it.
        (_, y), (_, top), (_, bottom) = to_px((lab.x, lab.y)), to_px((lab.x, lab.y_top)), to_px((lab.x, lab.y_bottom))
        up, down = max(0.0, (m + 1) - (top - y)) * px_to_pt, max(0.0, (m + 1) - (y - bottom)) * px_to_pt
        yield (lab.x, lab.y_top), (0, g + up), "center", "bottom"
        yield (lab.x, lab.y_bottom), (0, -g - down), "center", "top"
        yield (lab.x, lab.y), (m + g, 0), "left", "center"
        yield (lab.x, lab.y), (-m - g, 0), "right", "center"
        for dx, dy in ((1, 1), (-1, 1), (1, -1), (-1, -1)):
            yield (lab.x, lab.y), (dx * (m + g - 3), dy * (g + 2)), "left" if dx > 0 else "right", "bottom" if dy > 0 else "top"

    placed, texts = [], []
    for lab in labels:
        own = tuple(to_px((lab.x, lab.y)))
        (_, bar_low), (_, bar_high) = to_px((lab.x, lab.y_bottom)), to_px((lab.x, lab.y_top))
        best = None
        for far in (1, 3.5, 6):
            for xy, offset, ha, va in candidates(lab, far):
                leader = dict(arrowstyle="-", color=lab.color, lw=0.6, alpha=0.7, shrinkA=1, shrinkB=marker_px / 2 + 1)
                text = ax.annotate(lab.text, xy, xytext=offset, textcoords="offset points", ha=ha, va=va,
                                   fontsize=fontsize, color=lab.color, annotation_clip=False, zorder=5,
                                   arrowprops=leader if far > 1 else None)
                text.set_in_layout(False)
                text.update_positions(renderer)
                box = Text.get_window_extent(text, renderer).padded(1)  # the words, not the leader line
                inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
                mine = distance(box, own[0], min(bar_low, own[1]), max(bar_high, own[1]))  # its marker and bar
                nearer = any(distance(box, *c) < mine - 1 for c in centres if math.dist(c, own) > 1)
                cost = (0 if inside else 1000) + 100 * sum(box.overlaps(b) for b in hard + placed) \
                    + 50 * nearer + sum(box.overlaps(b) for b in soft) + 2 * (far > 1)
                if best is None or cost < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (cost, text, box)
                else:
                    text.remove()
                if best[0] <= 2 * (far > 1):
                    break
            if best[0] <= 2:
                break
        placed.append(best[2])
        texts.append(best[1])
    return texts


# ---------------------------------------------------------------------------------------------
# Accuracy against swept parameters


def _axes_of(data: R.SweepData, x: str | None, hue: str | None) -> tuple[str, str | None]:
    params = data.params
    for name, opt in (("--x", x), ("--hue", hue)):
        if opt is not None and opt not in params:
            raise UsageError(f"{name} {opt} is not a parameter of the sweep over {', '.join(params)}")
    x = x or (next(p for p in params if p != hue) if hue else params[0])
    if hue == x:
        raise UsageError(f"--x and --hue must differ, both are {x}")
    if hue is None and len(params) > 1:
        hue = next(p for p in params if p != x)
    return x, hue


def _size_text(size: float, unit: str) -> str:
    return f"{size:.3g} {unit}"


def sweep_figure(df: pd.DataFrame, params: str | Sequence[str], errorbar: str = "sd", x: str | None = None,
                 hue: str | None = None, size_unit: str = "MB", style: str = "default",
                 dpi: int | None = None) -> Drawn:
    """Accuracy against a swept parameter (the study's Fig. 4), every point labelled with its size.

    One line per experiment (and per value of ``hue`` for a grid): the mean over seeds with an
    error bar (``errorbar``: sd, a 95% t-interval, or none), single runs faint beside it. A
    categorical parameter (preset, bypass, padding, ...) is drawn as points per name, never joined.
    """
    if errorbar not in ERRORBARS:
        raise UsageError(f"--errorbar must be sd, ci or none, got {errorbar!r}")
    params = R.swept(params) if isinstance(params, str) else list(params)
    look = _look(style)
    data = R.sweep_data(df, params, size_unit)
    x, hue = _axes_of(data, x, hue)
    points, runs = data.points, data.runs
    if len(data.order[x]) < 2:
        raise FireablateError(f"nothing to plot: the sweep over {x} has a single value ({R.show_value(x, data.order[x][0])})")
    numeric = R.is_numeric(x)
    scale = 100 if x == "pct3x3" else 1  # pct3x3 is drawn in percent, as the study does
    size_col = R.size_column(size_unit)
    several = len(data.experiments) > 1
    line_key, line_label = _line_naming(params, x, hue, several)
    keys = list(dict.fromkeys(line_key(r) for _, r in points.iterrows()))

    palette = sns.color_palette("colorblind" if len(keys) <= 10 else "husl", n_colors=len(keys))
    x_pos = {R._text(v): i for i, v in enumerate(data.order[x])}
    dodge = 0.0 if numeric or len(keys) == 1 else min(0.6 / len(keys), 0.2)
    title = f"Accuracy vs {NAMES.get(x, x)}" + (f" and {NAMES.get(hue, hue)}" if hue else "")
    words = SPREAD_WORDS[errorbar] if points["n"].max() > 1 else "one run"
    caption = f"{data.caption()} ({words}{', dots: single runs' if points['n'].max() > 1 else ''})"
    with _styled(look):
        fig, body = _canvas(look, dpi, title, caption)
        ax = body.subplots()
        handles, lows, highs, marks, labels, drawn_lines = [], [], [], [], [], []
        size_by_x: dict[str, set] = {}
        for _, row in points.iterrows():
            size_by_x.setdefault(R._text(row[x]), set()).add(round(float(row[size_col]), 9))
        shared_sizes = all(len(s) == 1 for s in size_by_x.values())
        marker = 7 if not look.legend_below else 5
        for i, key in enumerate(keys):
            color = palette[i]
            mine = points[[line_key(r) == key for _, r in points.iterrows()]]
            mine_runs = runs[[line_key(r) == key for _, r in runs.iterrows()]]
            shift = (i - (len(keys) - 1) / 2) * dodge

            def pos(v):
                return float(v) * scale if numeric else x_pos[R._text(v)] + shift

            container, (xs, means, err), (singles_x, singles_y) = _sweep_line(
                ax, fig, look, mine, mine_runs, x, pos, color, line_label(key), errorbar, marker, numeric)
            handles.append(container)
            if numeric:
                drawn_lines.append((xs, means))
            lows += [*(means - err), *singles_y]
            highs += [*(means + err), *singles_y]
            marks += list(zip(xs, means)) + list(zip(singles_x, singles_y))
            for (xv, mean, e, (_, row)) in zip(xs, means, err, mine.iterrows()):
                if shared_sizes and not numeric:
                    continue  # the size is written under the name instead
                labels.append(_Label(xv, mean, mean + e, mean - e, _size_text(row[size_col], size_unit)))
        if shared_sizes and numeric:
            # One label per value when every line has the same network there: above the highest bar.
            labels = _one_label_per_x(labels)
        _percent_axis(ax, np.array(lows), np.array(highs))
        _sweep_x_axis(ax, data.order[x], x, scale, numeric, size_by_x if shared_sizes else None, size_unit)
        if several or hue:
            _legend(ax, body, look, handles, [h.get_label() for h in handles])
        _place_labels(fig, ax, labels, marks, marker * fig.dpi / 72, look.small, lines=drawn_lines)
    return Drawn(fig, points.copy(), data.notes())


def _line_naming(params: list[str], x: str, hue: str | None, several: bool):
    """How a sweep's lines are told apart: (key of a point's line, the line's legend label).

    A line is one experiment and one value of every swept parameter but ``x`` (``hue`` first).
    """
    splits = [p for p in params if p != x]
    if hue in splits:
        splits.remove(hue)
        splits.insert(0, hue)

    def line_key(row) -> tuple:
        return (row["experiment"], *(R._text(row[p]) for p in splits))

    def line_label(key) -> str:
        parts = [key[0]] if several else []
        parts += [f"{p}={R.show_value(p, v if not R.is_numeric(p) else float(v), percent=True)}"
                  for p, v in zip(splits, key[1:])]
        return ", ".join(parts)

    return line_key, line_label


def _sweep_line(ax, fig, look: _Look, mine: pd.DataFrame, mine_runs: pd.DataFrame, x: str, pos, color, label: str,
                errorbar: str, marker: float, numeric: bool):
    """One experiment's line: means with error bars, and faint dots for the runs behind them.

    Returns the errorbar container, (xs, means, err) and (single runs' xs, ys), all in percent.
    """
    xs = np.array([pos(v) for v in mine[x]])
    means = mine[R.ACC_MEAN].to_numpy(float) * 100
    err = np.array([spread(sd, n, errorbar) for sd, n in zip(mine[R.ACC_SD], mine["n"])]) * 100
    singles_x = np.array([pos(v) for v in mine_runs[x]])
    singles_y = mine_runs[R.ACC].to_numpy(float) * 100
    # Faint dots for the runs behind a mean, where there are several (one run is its mean).
    many = mine_runs[x].map(R._text).map(dict(zip(mine[x].map(R._text), mine["n"]))).to_numpy() > 1
    if many.any():
        _singles(ax, fig, singles_x[many], singles_y[many], color, look)
    container = ax.errorbar(xs, means, yerr=_bars(err), fmt="-o" if numeric else "o", color=color,
                            markersize=marker, capsize=3, elinewidth=1.1, zorder=3, label=label)
    container.lines[0].set_clip_on(False)  # a marker at 100% is drawn whole; its bar stops at the frame
    return container, (xs, means, err), (singles_x, singles_y)


def _sweep_x_axis(ax, order: list, x: str, scale: float, numeric: bool, sizes: dict | None, size_unit: str) -> None:
    """Ticks at the swept values; for names, the size under each when every line shares it (``sizes``)."""
    if numeric:
        ticks = [float(v) * scale for v in order]
        ax.set_xticks(ticks, [R.show_value(x, v) if scale == 1 else f"{float(v) * 100:g}" for v in order])
        span = max(ticks) - min(ticks)
        ax.set_xlim(min(ticks) - 0.06 * span, max(ticks) + 0.06 * span)
    else:
        names = [R.show_value(x, v) for v in order]
        if sizes is not None:
            names = [f"{n}\n{_size_text(next(iter(sizes[R._text(v)])), size_unit)}" for n, v in zip(names, order)]
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.grid(False, axis="x")
    if len(ax.get_xticks()) > 8 or (not numeric and sum(len(R.show_value(x, v)) for v in order) > 60):
        ax.tick_params(axis="x", labelrotation=30)
        for t in ax.get_xticklabels():
            t.set_ha("right")
    ax.set_xlabel(AXIS_LABELS.get(x, x) + ("" if numeric or sizes is None else f" (size in {size_unit}, float32)"))


def _singles(ax, fig, xs: np.ndarray, ys: np.ndarray, color, look: _Look) -> None:
    """Single runs as faint dots just left of their mean's bar, where the bar does not hide them;
    the shift is in points on the page, so the dots keep their data coordinates."""
    from matplotlib.transforms import ScaledTranslation

    shift = ScaledTranslation(-(4 if look.legend_below else 6) / 72, 0, fig.dpi_scale_trans)
    ax.scatter(xs, ys, s=12 if look.legend_below else 18, color=color, alpha=0.45, linewidths=0, zorder=2,
               transform=ax.transData + shift, clip_on=False)


def _one_label_per_x(labels: list[_Label]) -> list[_Label]:
    """Of labels at one x (the same size on every line), the one over the highest bar."""
    best: dict[float, _Label] = {}
    for lab in labels:
        if lab.x not in best or lab.y_top > best[lab.x].y_top:
            best[lab.x] = lab
    return list(best.values())


def heatmap_figure(df: pd.DataFrame, params: str | Sequence[str], x: str | None = None, hue: str | None = None,
                   size_unit: str = "MB", style: str = "default", dpi: int | None = None) -> Drawn:
    """A grid over two parameters as a heatmap: mean accuracy and size in every cell, one panel per
    experiment (and per value of any further grid parameter)."""
    params = R.swept(params) if isinstance(params, str) else list(params)
    if len(params) < 2:
        raise FireablateError(f"nothing to draw as a heatmap: the sweep over {params[0]} has one parameter; "
                              "a grid needs two (--param A --values ... --param B --values ...)")
    look = _look(style)
    data = R.sweep_data(df, params, size_unit)
    x, rows_param = _axes_of(data, x, hue)
    points = data.points
    size_col = R.size_column(size_unit)
    rest = [p for p in params if p not in (x, rows_param)]

    def panel_key(row) -> tuple:
        return (row["experiment"], *(R._text(row[p]) for p in rest))

    panels = list(dict.fromkeys(panel_key(r) for _, r in points.iterrows()))
    xs, ys = data.order[x], data.order[rows_param]
    means = points[R.ACC_MEAN].to_numpy(float) * 100
    vmin, vmax = float(np.nanmin(means)), float(np.nanmax(means))
    if vmax - vmin < 1:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    per_row = min(len(panels), 3)
    n_rows = math.ceil(len(panels) / per_row)
    cell = 0.85 if not look.legend_below else 0.55
    width = max(look.width, per_row * (len(xs) * cell + 1.2) + 1.0) if not look.legend_below else look.width
    height = max(look.height * 0.8, n_rows * (len(ys) * cell + 1.2) + 1.1)
    title = f"Accuracy over {NAMES.get(x, x)} and {NAMES.get(rows_param, rows_param)}"
    caption = f"{data.caption()}; each cell: mean accuracy{' ± sd' if points['n'].max() > 1 else ''}, size in {size_unit} (float32)"
    with _styled(look):
        fig, body = _canvas(look, dpi, title, caption, width=width, height=height)
        axes = np.atleast_1d(body.subplots(n_rows, per_row, squeeze=False)).ravel()
        cmap = matplotlib.colormaps["viridis"]
        image = None
        for ax, key in zip(axes, panels):
            mine = points[[panel_key(r) == key for _, r in points.iterrows()]]
            grid = np.full((len(ys), len(xs)), np.nan)
            for _, r in mine.iterrows():
                i, j = [R._text(v) for v in ys].index(R._text(r[rows_param])), [R._text(v) for v in xs].index(R._text(r[x]))
                grid[i, j] = r[R.ACC_MEAN] * 100
                bright = cmap((grid[i, j] - vmin) / (vmax - vmin))
                ink = "black" if 0.299 * bright[0] + 0.587 * bright[1] + 0.114 * bright[2] > 0.5 else "white"
                sd = f" ± {r[R.ACC_SD] * 100:.1f}" if r["n"] > 1 else ""
                ax.text(j, i, f"{grid[i, j]:.1f}{sd}%\n{_size_text(r[size_col], size_unit)}", ha="center",
                        va="center", fontsize=look.small, color=ink)
            ax.set_facecolor("0.92")  # a grid point with no done run shows as grey, not as a colour
            image = ax.imshow(grid, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
            ax.set_xticks(range(len(xs)), [R.show_value(x, v, percent=True) for v in xs])
            ax.set_yticks(range(len(ys)), [R.show_value(rows_param, v, percent=True) for v in ys])
            ax.set_xlabel(AXIS_LABELS.get(x, x))
            ax.set_ylabel(AXIS_LABELS.get(rows_param, rows_param))
            ax.grid(False)
            name = ", ".join([key[0]] * (len(data.experiments) > 1)
                             + [f"{p}={R.show_value(p, v, percent=True)}" for p, v in zip(rest, key[1:])])
            if name:
                ax.set_title("\n".join(textwrap.wrap(name, 40)), fontsize=look.small)
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        body.colorbar(image, ax=list(axes[:len(panels)]), label=ACC_LABEL, shrink=0.9)
    return Drawn(fig, points.copy(), data.notes())


# ---------------------------------------------------------------------------------------------
# The size/accuracy trade-off


def pareto_front(size: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Indices of points no other point beats on both size (smaller) and accuracy (higher), by size."""
    order = np.lexsort((-acc, size))
    front, best = [], -np.inf
    for i in order:
        if acc[i] > best:
            front.append(i)
            best = acc[i]
    return np.array(front, dtype=int)


def pareto_table(df: pd.DataFrame, size_unit: str = "MB") -> tuple[pd.DataFrame, R.Described, str]:
    """One row per variant (mean over its seeds), with its experiment (the data and training
    settings), for a compressed model the run it was compressed from ('parent run'), its label in
    the figure, and whether it is on that experiment's Pareto front; and the overrides the labels
    leave out because every model of their preset has them."""
    df = R._measured(df)
    size_col = R.size_column(size_unit)
    d = R.done_runs(df)
    if d.empty:
        raise FireablateError("nothing to plot: the ledger has no done runs")
    d = d.assign(_variant=R.variant_keys(d), _setup=R._joined(d[R.SETUP_COLUMNS]))
    described = R.describe(d.drop_duplicates("_setup").set_index("_setup"), network=False)
    rows = []
    for _, g in d.groupby("_variant", sort=False):
        first = g.iloc[0]
        rows.append({"experiment": described.labels[first["_setup"]], "model": R.variant_label(first),
                     **R._setup_cells(first), **R._stats(g[R.ACC]),
                     size_col: R.model_size(g, size_unit).iloc[0], "params": first["params"],
                     "run ids": " ".join(g["run_id"]),
                     "parent run": " ".join(dict.fromkeys(p for p in g["parent_run"].map(R._text) if p)),
                     "_setup": first["_setup"]})
    table = pd.DataFrame(rows)
    firsts = d.drop_duplicates("_variant")
    table["label"], shared = R.short_labels(firsts)
    table["on front"] = False
    for _, g in table.groupby("_setup", sort=False):
        # Each experiment has its own front: synthetic and real-data runs never share one.
        front = pareto_front(g[size_col].to_numpy(float), g[R.ACC_MEAN].to_numpy(float))
        table.loc[g.index[front], "on front"] = True
    for col in ("train images", "epochs", "n", "params"):
        table[col] = R._int_column(table[col])
    return table.drop(columns="_setup"), described, shared


def parent_links(table: pd.DataFrame) -> tuple[list[tuple[int, int]], list[str]]:
    """(parent's row, compressed model's row) of a ``pareto_table`` for each compressed model whose
    parent run has a point (its variant's, when the parent is one of several seeds); and the parent
    runs that have none (not done, or in a ledger not read)."""
    point_of = {rid: i for i, ids in table["run ids"].items() for rid in ids.split()}
    links, missing = [], []
    for i, parents in table["parent run"].items():
        for rid in parents.split():
            if rid in point_of:
                links.append((point_of[rid], i))
            else:
                missing.append(rid)
    return links, missing


LINK_COLOR = "0.45"  # the arrows from an original to its compressed models: grey, thin, under the points


def _draw_links(ax, table: pd.DataFrame, size_col: str, marker: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """A thin arrow from each compressed model's parent to it, under the markers; returns the
    arrows as segments, for the labels to avoid."""
    segments = []
    for parent, child in parent_links(table)[0]:
        xs = table.loc[[parent, child], size_col].to_numpy(float)
        ys = table.loc[[parent, child], R.ACC_MEAN].to_numpy(float) * 100
        # add_artist, not add_patch: the axis limits are set from the points alone.
        ax.add_artist(FancyArrowPatch((xs[0], ys[0]), (xs[1], ys[1]), arrowstyle="-|>", mutation_scale=8,
                                      color=LINK_COLOR, linewidth=0.8, shrinkA=marker / 2 + 1, shrinkB=marker / 2 + 1,
                                      zorder=2))
        segments.append((xs, ys))
    return segments


def _pareto_notes(experiments: list[str], described: R.Described, table: pd.DataFrame) -> list[str]:
    """What the command line says beside the figure: experiments kept apart, arrows not drawn."""
    notes = [] if len(experiments) < 2 else [
        f"{len(experiments)} experiments, each with its own front, differing in {', '.join(described.separated_by)}: "
        + "; ".join(repr(e) for e in experiments)]
    missing = parent_links(table)[1]
    if missing:
        notes.append(f"{len(missing)} compressed model(s) drawn without an arrow: their parent run(s) "
                     f"{', '.join(dict.fromkeys(missing))} have no point (not done, or in a ledger not read)")
    return notes


def pareto_figure(df: pd.DataFrame, size_unit: str = "MB", style: str = "default", dpi: int | None = None) -> Drawn:
    """Accuracy against size for every model variant (mean over seeds, single runs faint), each
    point labelled, coloured by experiment, with each experiment's Pareto front joined and an arrow
    from each compressed model's original to it."""
    look = _look(style)
    table, described, shared = pareto_table(df, size_unit)
    size_col = R.size_column(size_unit)
    runs = R.done_runs(df)
    runs = runs.assign(experiment=R._joined(runs[R.SETUP_COLUMNS]).map(described.labels), _variant=R.variant_keys(runs))
    experiments = list(dict.fromkeys(table["experiment"]))
    palette = sns.color_palette("colorblind", n_colors=max(len(experiments), 1))
    fronts = int(table["on front"].sum())
    title = "Accuracy vs model size"
    seeds = table["n"]
    seed_text = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
    parts = [f"{len(table)} models, {fronts} on the Pareto front", described.common, shared,
             f"{', '.join(described.separated_by)} per colour" if described.separated_by else "",
             f"{seed_text} seed{'s' if seeds.max() > 1 else ''} per model (mean ± sd"
             + (", dots: single runs)" if seeds.max() > 1 else ")")]
    caption = "; ".join(p for p in parts if p)
    with _styled(look):
        fig, body = _canvas(look, dpi, title, caption)
        ax = body.subplots()
        handles, labels, marks, lows, highs, lines, names = [], [], [], [], [], [], []
        marker = 7 if not look.legend_below else 5
        for color, name in zip(palette, experiments):
            mine = table[table["experiment"] == name].sort_values(size_col)
            singles = runs[runs["experiment"] == name]
            sx = R.model_size(singles, size_unit).to_numpy(float)
            sy = singles[R.ACC].to_numpy(float) * 100
            many = singles["_variant"].map(singles["_variant"].value_counts()).to_numpy() > 1
            if many.any():
                _singles(ax, fig, sx[many], sy[many], color, look)
            mx, my = mine[size_col].to_numpy(float), mine[R.ACC_MEAN].to_numpy(float) * 100
            err = np.nan_to_num(mine[R.ACC_SD].to_numpy(float) * 100)
            bars = ax.errorbar(mx, my, yerr=_bars(err), fmt="o", color=color, markersize=marker,
                               capsize=2.5, elinewidth=1, zorder=3)
            bars.lines[0].set_clip_on(False)
            front = mine[mine["on front"]]
            fx, fy = front[size_col].to_numpy(float), front[R.ACC_MEAN].to_numpy(float) * 100
            ax.plot(fx, fy, color=color, linewidth=1.2, drawstyle="steps-post", zorder=1)
            ax.scatter(fx, fy, s=(marker * 2.1) ** 2, facecolors="none", edgecolors=color, linewidths=1.2, zorder=4,
                       clip_on=False)
            # The steps as drawn (steps-post: across at the old accuracy, then up), for the labels to avoid.
            lines.append((np.repeat(fx, 2)[1:], np.repeat(fy, 2)[:-1]) if len(fx) > 1 else (fx, fy))
            handles.append(Line2D([], [], color=color, marker="o", markersize=marker, linestyle=""))
            labels.append(name if len(experiments) > 1 else "models (mean over seeds)")
            marks += list(zip(mx, my)) + list(zip(sx, sy))
            lows += [*(my - err), *sy]
            highs += [*(my + err), *sy]
            names += [_Label(xv, yv, yv + e, yv - e, "\n".join(textwrap.wrap(label, 30)), color=color)
                      for label, xv, yv, e in zip(mine["label"], mx, my, err)]
        handles.append(Line2D([], [], color="0.3", marker="o", markersize=marker * 2.1, markerfacecolor="none",
                              linewidth=1.2))
        labels.append("Pareto front" + (" (one per experiment)" if len(experiments) > 1 else ""))
        links = _draw_links(ax, table, size_col, marker)
        if links:
            handles.append(Line2D([], [], color=LINK_COLOR, linewidth=0.8, marker=">", markersize=4))
            labels.append("original → compressed")
        ax.set_xscale("log")
        sizes = table[size_col].to_numpy(float)
        ax.set_xlim(sizes.min() / 1.35, sizes.max() * 1.35)
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(f"Model size ({size_unit}, {R.size_basis(runs)}; log scale)")
        _percent_axis(ax, np.array(lows), np.array(highs), headroom=0.12)
        _legend(ax, body, look, handles, labels)
        _place_labels(fig, ax, names, marks, marker * fig.dpi / 72, look.small, lines=lines + links)
    return Drawn(fig, table, _pareto_notes(experiments, described, table))


# ---------------------------------------------------------------------------------------------
# Training curves


def curves_figure(histories: dict[str, pd.DataFrame], runs: pd.DataFrame | None = None, style: str = "default",
                  dpi: int | None = None) -> Drawn:
    """Training and validation accuracy and loss per epoch (the study's Fig. 3 and S4).

    ``runs``: the runs' ledger rows, for the caption (data, recipe, epochs).
    """
    look = _look(style)
    caption = "dashed: training, solid: validation"
    if runs is not None and not runs.empty:
        described = R.describe(runs.drop_duplicates("run_id").set_index("run_id"), network=False)
        caption = "; ".join(p for p in (described.common, ", ".join(described.separated_by) + " per run"
                                        if described.separated_by else "", caption) if p)
    rows = []
    with _styled(look):
        fig, body = _canvas(look, dpi, "Training curves", caption, width=look.width * (1.45 if not look.legend_below else 1),
                            height=look.height * (1 if not look.legend_below else 1.15))
        acc_ax, loss_ax = body.subplots(1, 2)
        palette = sns.color_palette("colorblind", n_colors=max(len(histories), 1))
        handles = []
        for color, (label, h) in zip(palette, histories.items()):
            acc_ax.plot(h["epoch"], h["train_acc"] * 100, color=color, linestyle="--")
            handles.append(acc_ax.plot(h["epoch"], h["val_acc"] * 100, color=color, label=label)[0])
            loss_ax.plot(h["epoch"], h["train_loss"], color=color, linestyle="--")
            loss_ax.plot(h["epoch"], h["val_loss"], color=color)
            for _, r in h.iterrows():
                rows.append({"run": label, **{c: r[c] for c in h.columns}})
        accs = np.concatenate([np.r_[h["train_acc"], h["val_acc"]] * 100 for h in histories.values()])
        _percent_axis(acc_ax, accs, accs, headroom=0.05, label="Top-1 accuracy (%)")
        acc_ax.set(xlabel="Epoch", title="Accuracy")
        loss_ax.set(xlabel="Epoch", ylabel="Cross-entropy loss", title="Loss")
        for axis in (acc_ax, loss_ax):
            axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        handles += [Line2D([], [], color="0.4", linestyle="--"), Line2D([], [], color="0.4")]
        _legend(loss_ax, body, look, handles, [*histories, "training", "validation"])
    table = pd.DataFrame(rows)
    if "epoch" in table:
        table["epoch"] = R._int_column(table["epoch"])
    return Drawn(fig, table)


HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")


def _read_history(path: Path) -> pd.DataFrame:
    """A run's history.csv, or one line saying why it cannot be drawn."""
    try:
        history = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, OSError):  # empty, binary, or unreadable
        raise FireablateError(f"{path} is not a readable history.csv (one row per epoch)") from None
    missing = [c for c in HISTORY_COLUMNS if c not in history.columns]
    if missing:
        raise FireablateError(f"{path} is not a fireablate history.csv: it lacks {', '.join(missing)}")
    return history


def find_histories(df: pd.DataFrame, run_ids: Sequence[str], ledger_dirs: Sequence[Path]) -> dict[str, pd.DataFrame]:
    """history.csv of each run (a unique prefix of its id is enough), next to the ledger if moved."""
    out = {}
    ids = list(dict.fromkeys(df["run_id"]))
    for want in run_ids:
        matches = [r for r in ids if r.startswith(want)]
        if not matches:
            raise UsageError(f"run {want!r} is not in the ledger")
        if len(matches) > 1:
            raise UsageError(f"run {want!r} is ambiguous: {', '.join(matches[:5])}")
        rid = matches[0]
        rows = df[df["run_id"] == rid]
        candidates = [Path(str(o)) / "history.csv" for o in rows["out_dir"] if str(o)]
        candidates += [d / rid / "history.csv" for d in ledger_dirs]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise FireablateError(f"no history.csv found for run {rid} (looked in {candidates[0].parent if candidates else 'its out_dir'})")
        row = rows.iloc[-1]
        label = f"{rid[:8]} {R.variant_label(row)}"
        out[label] = _read_history(path)
    return out


# ---------------------------------------------------------------------------------------------
# Files


def write(drawn: Drawn, path: Path, overwrite: bool = False) -> list[Path]:
    """The figure at ``path`` and its table beside it (same name, .csv): both, or an error.

    Neither is written unless both may be (see ``save``)."""
    figure = Path(path)
    table = figure.with_suffix(".csv")
    _write_own({figure: _rendered(drawn.figure, figure), table: drawn.table.to_csv(index=False).encode()}, overwrite)
    return [figure, table]


def save(fig: plt.Figure, path: Path, overwrite: bool = False) -> Path:
    """Write ``fig`` to ``path`` (png, svg or pdf, from the suffix) in one atomic step.

    An existing file is replaced only if fireablate wrote it and nobody has changed it since
    (its digest is in WRITTEN_RECORD beside it), or with ``overwrite``: someone else's file, or
    ours after an edit, is refused in one line before anything is written.
    """
    path = Path(path)
    _write_own({path: _rendered(fig, path)}, overwrite)
    return path


# Beside the figures: file name -> sha256 of the bytes fireablate wrote there. A file may be
# replaced while its bytes are still those (ours, unchanged); anything else is somebody's work.
WRITTEN_RECORD = ".fireablate-figures.json"


def _rendered(fig: plt.Figure, path: Path) -> bytes:
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=path.suffix.lstrip(".") or None, dpi=150)  # a figure made with a dpi keeps it
    finally:
        plt.close(fig)
    return buf.getvalue()


def _written_record(record: Path) -> dict[str, str]:
    try:
        written = json.loads(record.read_bytes())
    except (OSError, ValueError):  # missing or damaged: then no file counts as ours
        return {}
    return {k: v for k, v in written.items() if isinstance(v, str)} if isinstance(written, dict) else {}


def _digest_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    except OSError:
        return None


def _write_own(files: dict[Path, bytes], overwrite: bool) -> None:
    """Write each file atomically (no fsync: a figure is cheap to draw again), all or none."""
    for folder in dict.fromkeys(p.parent for p in files):
        folder.mkdir(parents=True, exist_ok=True)
        record = folder / WRITTEN_RECORD
        mine = {p: data for p, data in files.items() if p.parent == folder}
        with lock(record):  # two plots into one folder must not lose each other's entries
            written = _written_record(record)
            for p in mine:
                if (p.exists() or p.is_symlink()) and not overwrite and (written.get(p.name) != _digest_of(p)):
                    raise UsageError(f"{p} exists and fireablate did not write it (or it was changed since); "
                                     "choose another --out-dir or add --overwrite to replace it")
            for p, data in mine.items():
                atomic_write(p, data, durable=False)
                written[p.name] = hashlib.sha256(data).hexdigest()
            atomic_write(record, json.dumps(written, indent=1, sort_keys=True), durable=False)
