"""Plots for the report, drawn with matplotlib's Agg renderer and returned as PNG bytes.

Figures are built with the object API (``Figure`` + ``FigureCanvasAgg``) inside each function:
nothing touches pyplot's global state or the caller's chosen backend, and importing this module
does not import matplotlib.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

# Rendering: inches at this dpi give crisp plots that the page scales down on small screens.
DPI = 150
PANEL_SIZE = (3.6, 2.8)  # inches per panel of a row of small plots
WIDE_SIZE = (7.2, 3.2)  # inches of a single wide plot
COLORS = {"train": "#2563eb", "test": "#dc2626", "codes": "#059669", "muted": "#6b7280"}
# Marker shapes tell the train and test curves of one plot apart without their colours (for
# readers who do not see red from blue, and on a grey printout).
MARKERS = {"train": "o", "test": "s"}
BASELINE_STYLES = {"uniform": ":", "unigram": "--"}
GRID_ALPHA = 0.3
CEILING_HEADROOM = 1.05  # room above a limit line so it does not sit on the frame
PLOT_HEADROOM = 1.15  # room above the highest line drawn
AXIS_ROOM = 1.5  # a uniform line beyond this times the prior plot's other lines is not drawn


def _new_figure(size: tuple[float, float]):
    """A matplotlib Figure attached to an Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software" metadata: the same data gives the same bytes.
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _style(axes, title: str, xlabel: str, ylabel: str = "") -> None:
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(xlabel, fontsize=9)
    if ylabel:
        axes.set_ylabel(ylabel, fontsize=9)
    axes.tick_params(labelsize=8)
    axes.grid(alpha=GRID_ALPHA)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)


def epoch_curve_png(
    epochs: Sequence[int],
    values: Sequence[float | None],
    title: str,
    color: str,
    ceiling: tuple[float, str] | None = None,
    ylabel: str = "",
) -> bytes:
    """One small plot of a per-epoch number, its axis named ``ylabel``; ``ceiling`` (value,
    label) adds a dotted limit line and starts the axis at zero (for counts such as codes used
    out of K)."""
    figure = _new_figure(PANEL_SIZE)
    axes = figure.subplots()
    known = [(e, v) for e, v in zip(epochs, values, strict=True) if v is not None]
    if known:
        axes.plot(*zip(*known, strict=True), marker="o", color=color)
    if len(known) == 1:  # one dot on an axis of fine ticks: its value, written beside it
        ((epoch, value),) = known
        axes.annotate(
            f"{value:.4g}", (epoch, value), xytext=(8, 0), textcoords="offset points",
            va="center", fontsize=9, color=color,
        )  # fmt: skip
    if ceiling is not None:
        limit, label = ceiling
        axes.axhline(limit, color=COLORS["muted"], linestyle=":", label=label)
        axes.set_ylim(0, limit * CEILING_HEADROOM)
        axes.legend(fontsize=8, loc="best")  # a fixed corner hid a collapsed codebook's point
    _epoch_ticks(axes, epochs)
    _style(axes, title, "epoch", ylabel)
    return _png(figure)


def _epoch_ticks(axes, epochs: Sequence[int]) -> None:
    """Whole epochs on the x axis; a single epoch gets its one tick (matplotlib would spread
    fractional ticks such as 0.96 ... 1.04 around a lone point)."""
    if len(set(epochs)) == 1:
        axes.set_xticks(list(epochs)[:1])
    else:
        axes.xaxis.get_major_locator().set_params(integer=True)


def baselines_on_axis(curves: Sequence[float], baselines: dict[str, float]) -> list[str]:
    """The baselines a prior plot draws: a uniform code far above the curves (log2 K bits,
    often 3-5 times the prior's) would squeeze the gap that matters, prior against unigram,
    into a sliver, so it is named in the legend instead."""
    others = [*curves, *(bits for name, bits in baselines.items() if name != "uniform")]
    if not others:
        return list(baselines)
    top = max(others) * AXIS_ROOM
    return [name for name, bits in baselines.items() if name != "uniform" or bits <= top]


def prior_nll_png(
    epochs: Sequence[int],
    train_bits: Sequence[float],
    test_bits: Sequence[float],
    baselines: dict[str, float],
) -> bytes:
    """Prior bits per code against epoch, with baselines (name -> bits) as horizontal lines."""
    figure = _new_figure(WIDE_SIZE)
    axes = figure.subplots()
    for split, bits in (("train", train_bits), ("test", test_bits)):
        style = {"marker": MARKERS[split], "color": COLORS[split]}
        axes.plot(epochs, bits, **style, label=f"prior, {split}")
    on_axis = baselines_on_axis([*train_bits, *test_bits], baselines)
    for name, bits in baselines.items():
        style = {"color": COLORS["muted"], "linestyle": BASELINE_STYLES.get(name, "-.")}
        if name in on_axis:
            axes.axhline(bits, **style, label=f"{name} ({bits:.2f})")
        else:
            axes.plot([], [], **style, label=f"{name} ({bits:.2f}, above this axis)")
    drawn = [*train_bits, *test_bits, *(baselines[name] for name in on_axis)]
    axes.set_ylim(0, max(drawn, default=1.0) * PLOT_HEADROOM)
    _epoch_ticks(axes, epochs)
    axes.legend(fontsize=8, loc="best")
    _style(axes, "negative log-likelihood of code grids", "epoch", "bits per code")
    return _png(figure)
