"""What the analysis figures share, so that they read as a paper's would: a pyplot-free `Figure` (no global
backend switch, returned to the caller and to tests), font sizes legible at the saved size, a few integer ticks
on channel axes, legends built from the drawn artists' own handles, titles naming ε and the attack, atomic
saving."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

TITLE, LABEL, TICK, LEGEND = 10, 9, 8, 8   # points, at figure sizes of 2-6 inches per panel
DPI = 150
MAX_TICKS = 6                              # major ticks on a channel / rank axis
NATURAL, ADVERSARIAL, RELEVANCE = "tab:blue", "tab:red", "dimgray"


def new_figure(nrows: int, ncols: int, panel: tuple[float, float], **subplots):
    """(Figure, axes as an nrows × ncols array), constrained layout, `subplots` passed on (sharex, sharey)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **subplots)


def style_axes(ax, channel_x: bool = False, channel_y: bool = False) -> None:
    """Legible tick and label sizes; at most MAX_TICKS integer ticks on the channel axes."""
    from matplotlib.ticker import MaxNLocator

    ax.tick_params(labelsize=TICK)
    ax.xaxis.label.set_size(LABEL)
    ax.yaxis.label.set_size(LABEL)
    ax.title.set_size(TITLE)
    if channel_x:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=MAX_TICKS, integer=True))
    if channel_y:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=MAX_TICKS, integer=True))


def legend_from(target, artists: Iterable, **kwargs):
    """A legend (on an Axes or the Figure) whose entries are these drawn artists, labelled by their own labels,
    so that each entry's colour and marker is the artist's."""
    artists = list(artists)
    return target.legend(artists, [a.get_label() for a in artists], fontsize=LEGEND, **kwargs)


def common_limits(values: Iterable, pad: float = 0.05, include_zero: bool = False) -> tuple[float, float]:
    """(low, high) covering every array in `values`, padded by `pad` of the range: one scale for all panels."""
    import numpy as np

    finite = [np.asarray(v, dtype=float).ravel() for v in values]
    finite = np.concatenate([v[np.isfinite(v)] for v in finite]) if finite else np.zeros(0)
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    span = hi - lo or max(abs(hi), 1.0)
    return lo - pad * span, hi + pad * span


def set_title(fig, *lines: str) -> None:
    """The figure's title, each line wrapped to the figure's width (no line runs off the saved image)."""
    import textwrap

    width = max(int(fig.get_figwidth() * 72 / (0.55 * TITLE)), 40)
    text = "\n".join(textwrap.fill(part, width) for line in lines for part in line.split("\n"))
    fig.suptitle(text, fontsize=TITLE)


def eps_text(eps: float) -> str:
    """8/255 for ε = 8/255 (L∞ radii are quoted in pixel units)."""
    return f"{eps * 255:.3g}/255"


def save_figure(fig, path: Path, dpi: int = DPI) -> Path:
    """Write the PNG atomically (a temporary name, then a rename)."""
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi)
    tmp.replace(path)
    return path
