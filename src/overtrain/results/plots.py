"""The project's figures: loss-versus-pre-training curves in the style of the paper, as PNG and SVG.

Model-agnostic: a figure is a list of :class:`Curve` (x, y, an optional band) with optional
:class:`InflectionMark` dots, drawn on a log-x axis ("pre-training tokens" for language models, "T"
for the theory), one line per setting coloured along a sequential colormap. Every writer returns the
paths it wrote; files appear atomically (temporary name, then rename), so a killed run never leaves a
half-written figure. matplotlib is imported inside the functions (Agg backend, no display needed).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from overtrain.atomic import atomic_write_bytes
from overtrain.errors import OvertrainError

FIGURE_FORMATS = ("png", "svg")
"""Every figure is written in both formats: PNG for pages and docs, SVG for papers."""
DOTS_PER_INCH = 110
"""PNG resolution: sharp on screens, small in the repository."""
COLORMAP = "viridis"
"""Sequential colormap: a setting's colour tells its rank (small -> dark, large -> light)."""
COLORMAP_RANGE = (0.0, 0.85)
"""Part of the colormap used; the last 15% of viridis is a yellow too pale to read on white."""


@dataclass(frozen=True)
class Curve:
    """One line of a figure: y over x, with an optional shaded band [y_low, y_high]."""

    label: str
    """Legend text (also the key of the curve's inflection mark)."""
    x: Sequence[float] | np.ndarray
    """x values (e.g. pre-training tokens or time T), increasing."""
    y: Sequence[float] | np.ndarray
    """y values (e.g. loss), same length as x."""
    y_low: Sequence[float] | np.ndarray | None = None
    """Lower edge of the band (e.g. 10th percentile over seeds); None for no band."""
    y_high: Sequence[float] | np.ndarray | None = None
    """Upper edge of the band."""
    group: str | None = None
    """Curves with the same group share a colour (e.g. simulation and its closed form); default: label."""
    line_style: str = "-"
    """matplotlib line style: "-" solid, "--" dashed, ":" dotted, "" none."""
    marker: str | None = None
    """matplotlib marker drawn at each point, e.g. "o"; None for a plain line."""
    show_in_legend: bool = True
    """False hides the curve from the legend (e.g. one of many reference lines)."""
    color: str | None = None
    """A fixed matplotlib colour (e.g. "black" for a reference curve) instead of the colormap's."""


@dataclass(frozen=True)
class InflectionMark:
    """An inflection point: a dot at (x, y) with a horizontal bar over its interval [x_low, x_high]."""

    x: float
    x_low: float
    x_high: float
    y: float | None = None
    """Height of the dot; None reads it off the curve at x (interpolated in log x)."""


@dataclass(frozen=True)
class Panel:
    """One axes of a figure."""

    curves: Sequence[Curve]
    x_label: str
    y_label: str
    title: str = ""
    log_x: bool = True
    log_y: bool = False
    inflections: Mapping[str, InflectionMark] = field(default_factory=dict)
    """Inflection marks by curve label; a curve without one gets none."""
    note: str = ""
    """Small text in the lower-left corner of the axes (e.g. the parameters held fixed)."""
    y_limits: tuple[float, float] | None = None
    """Fixed (bottom, top) of the y axis, to zoom on the bottom of a U; None lets matplotlib choose."""
    x_in_tokens: bool = False
    """Label x ticks as token counts (500k, 1M, 16M) at the data's x values instead of powers of ten."""


def plot_curves(
    curves: Sequence[Curve],
    *,
    x_label: str,
    y_label: str,
    title: str,
    out_stem: Path,
    log_x: bool = True,
    log_y: bool = False,
    inflections: Mapping[str, InflectionMark] | None = None,
    note: str = "",
) -> list[Path]:
    """Write one single-axes figure as ``out_stem.png`` and ``out_stem.svg``; returns both paths."""
    panel = Panel(curves, x_label, y_label, "", log_x, log_y, inflections or {}, note)
    return plot_panels([panel], title=title, out_stem=out_stem, columns=1)


def plot_panels(panels: Sequence[Panel], *, title: str, out_stem: Path, columns: int = 2) -> list[Path]:
    """Write a grid of panels (row by row, ``columns`` per row) as PNG and SVG; returns the paths."""
    if not panels:
        raise OvertrainError(f"figure {out_stem.name!r} has no panels", "pass at least one Panel")
    for panel in panels:
        _check_panel(panel)
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    shared = _shared_legend_labels(panels)
    legend_rows = math.ceil(len(shared) / SHARED_LEGEND_COLUMNS) if shared else 0
    legend_inches = 0.25 * legend_rows + 0.2 * bool(shared)
    with plt.rc_context(_STYLE):
        height = 3.9 * rows + legend_inches
        figure, axes = plt.subplots(rows, columns, figsize=(5.6 * columns, height), squeeze=False)
        for panel, ax in zip(panels, axes.flat):
            _draw_panel(ax, panel, legend=not shared)
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        if title:
            figure.suptitle(title, fontweight="bold")
        if shared:
            # Every panel shows the same settings: one legend under the grid instead of one squeezing each axes.
            handles, labels = axes.flat[0].get_legend_handles_labels()
            figure.legend(handles, labels, loc="lower center", ncol=min(SHARED_LEGEND_COLUMNS, len(labels)), frameon=False)
            figure.tight_layout(rect=(0, legend_inches / height, 1, 1))
        else:
            figure.tight_layout()
        written = _save(figure, Path(out_stem))
        plt.close(figure)
    return written


_STYLE: dict[str, Any] = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "svg.hashsalt": "overtrain",  # stable SVG ids, so regenerated figures diff cleanly
}


def _check_panel(panel: Panel) -> None:
    for curve in panel.curves:
        length = len(curve.x)
        sizes = [len(values) for values in (curve.y, curve.y_low, curve.y_high) if values is not None]
        if any(size != length for size in sizes):
            raise OvertrainError(f"curve {curve.label!r} has x and y of different lengths", "pass arrays of equal length")
        if (curve.y_low is None) != (curve.y_high is None):
            raise OvertrainError(f"curve {curve.label!r} has only one edge of its band", "pass both y_low and y_high")


def curve_colors(curves: Sequence[Curve]) -> dict[str, Any]:
    """Colour of each group, evenly spaced along the sequential colormap in order of appearance."""
    import matplotlib

    groups = list(dict.fromkeys(curve.group or curve.label for curve in curves if curve.color is None))
    colormap = matplotlib.colormaps[COLORMAP]
    low, high = COLORMAP_RANGE
    positions = np.linspace(low, high, len(groups)) if len(groups) > 1 else [low]
    return {group: colormap(position) for group, position in zip(groups, positions)}


SHARED_LEGEND_COLUMNS = 3
MANY_LEGEND_ENTRIES = 4
"""Above this many entries a per-panel legend goes outside the axes, and panels that all show the same
settings share one legend under the figure."""


def _legend_labels(panel: Panel) -> list[str]:
    return [curve.label for curve in panel.curves if curve.show_in_legend]


def _shared_legend_labels(panels: Sequence[Panel]) -> list[str]:
    """The labels every panel shows, when they are the same many labels in every panel (else none)."""
    first = _legend_labels(panels[0])
    if len(panels) < 2 or len(first) <= MANY_LEGEND_ENTRIES or any(_legend_labels(panel) != first for panel in panels):
        return []
    return first


def _draw_panel(ax: Any, panel: Panel, legend: bool = True) -> None:
    colors = curve_colors(panel.curves)
    for curve in panel.curves:
        color = curve.color or colors[curve.group or curve.label]
        x, y = np.asarray(curve.x, dtype=float), np.asarray(curve.y, dtype=float)
        if curve.y_low is not None and curve.y_high is not None:
            ax.fill_between(
                x, np.asarray(curve.y_low, float), np.asarray(curve.y_high, float), color=color, alpha=0.18, linewidth=0
            )
        ax.plot(
            x,
            y,
            linestyle=curve.line_style or "none",
            marker=curve.marker,
            markersize=3.5,
            color=color,
            linewidth=1.8,
            label=curve.label if curve.show_in_legend else "_nolegend_",
        )
        mark = panel.inflections.get(curve.label)
        if mark is not None:
            _draw_inflection(ax, mark, x, y, color, panel.log_x)
    ax.set_xscale("log" if panel.log_x else "linear")
    ax.set_yscale("log" if panel.log_y else "linear")
    if panel.x_in_tokens:
        _token_ticks(ax, panel.curves)
    if panel.y_limits is not None:
        ax.set_ylim(*panel.y_limits)
    ax.set_xlabel(panel.x_label)
    ax.set_ylabel(panel.y_label)
    if panel.title:
        ax.set_title(panel.title)
    if panel.note:
        ax.text(0.02, 0.03, panel.note, transform=ax.transAxes, fontsize=8, color="0.35", va="bottom")
    if legend and any(curve.show_in_legend for curve in panel.curves):
        # Outside on the right when there are many settings, so no line is ever hidden by the legend.
        many = sum(curve.show_in_legend for curve in panel.curves) > MANY_LEGEND_ENTRIES
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False) if many else ax.legend(loc="best", framealpha=0.85)


def _token_ticks(ax: Any, curves: Sequence[Curve]) -> None:
    """Ticks at the budgets themselves, labelled like the logs (1M, 2M, ...)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    from overtrain.units import format_tokens

    budgets = sorted({float(value) for curve in curves for value in curve.x})
    ax.xaxis.set_major_locator(FixedLocator(budgets))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([format_tokens(value) for value in budgets])


def _draw_inflection(ax: Any, mark: InflectionMark, x: np.ndarray, y: np.ndarray, color: Any, log_x: bool) -> None:
    height = mark.y if mark.y is not None else _interpolate(mark.x, x, y, log_x)
    errors = [[max(mark.x - mark.x_low, 0.0)], [max(mark.x_high - mark.x, 0.0)]]
    ax.errorbar(
        [mark.x],
        [height],
        xerr=errors,
        fmt="o",
        color=color,
        markersize=7,
        markeredgecolor="black",
        markeredgewidth=0.8,
        capsize=3,
        elinewidth=1.4,
        zorder=5,
        label="_nolegend_",
    )


def _interpolate(point: float, x: np.ndarray, y: np.ndarray, log_x: bool) -> float:
    if log_x and np.all(x > 0) and point > 0:
        return float(np.interp(np.log(point), np.log(x), y))
    return float(np.interp(point, x, y))


def _save(figure: Any, out_stem: Path) -> list[Path]:
    written = []
    for extension in FIGURE_FORMATS:
        path = out_stem.with_name(f"{out_stem.name}.{extension}")
        buffer = io.BytesIO()
        # tight_layout already made room for outside legends; bbox_inches="tight" would cost another draw.
        figure.savefig(buffer, format=extension, dpi=DOTS_PER_INCH, metadata=_metadata(extension))
        atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    return written


def _metadata(extension: str) -> dict[str, Any]:
    # No creation date in the files: the same numbers give byte-identical figures.
    return {"Date": None} if extension == "svg" else {"Software": "overtrain"}
