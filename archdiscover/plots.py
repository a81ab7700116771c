"""Plots of a training run, read from the engine's JSON-lines log.

The training engine appends one JSON object per epoch to ``run_dir/log.jsonl``::

    {"epoch": 1, "train_loss": 0.53, "val_loss": 0.41, "val_accuracy": 88.2,
     "density": 0.12, "weight_density": 0.11,
     "active_units": {"layers.1": 56, ...}, "widths": {"layers.1": 400, ...},
     "lam": 0.5, "lr": 0.1, "seconds": 1.9}

(a denoising run logs ``val_psnr`` in dB instead of ``val_accuracy`` in percent; either may
be absent when there is no validation set, and ``lam`` may be null).

* :func:`read_log` parses it: a resumed run may log an epoch twice (the last occurrence
  wins), a line cut short by a crash is skipped with a warning;
* :func:`plot_metrics` -- validation accuracy / PSNR and train / val loss per epoch;
* :func:`plot_scale_space` -- the inverse-scale-space path: active units of every layer,
  and the density, per epoch;
* :func:`plot_widths` -- supernet width against discovered width, per layer;
* :func:`report` -- all three, written as PNGs next to the log.

Figures are built with :class:`matplotlib.figure.Figure` and saved with
:meth:`~matplotlib.figure.Figure.savefig`, without pyplot: no global backend state, no
window, safe in a headless job or a worker thread.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

__all__ = [
    "epoch_axis",
    "layer_growth",
    "log_axis",
    "metrics_figure",
    "plot_metrics",
    "plot_scale_space",
    "plot_widths",
    "read_log",
    "report",
    "scale_space_figure",
    "series_styles",
    "widths_figure",
]

LOG_NAME = "log.jsonl"
FIGSIZE = (10.0, 4.0)
DPI = 120
MAX_LAYER_LINES = 10  # more layers than this: a heatmap (layer x epoch) instead of lines
MIXED_WIDTHS = 4.0  # widest / narrowest layer above this: plot active fractions, not counts
LOG_WIDTH_RATIO = 50.0  # max/min width above this: log y axis on the width chart

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- reading


def read_log(path: PathLike) -> list[dict[str, Any]]:
    """Read a JSON-lines training log.

    Args:
        path: the ``log.jsonl`` file.

    Returns:
        One dict per epoch, sorted by ``epoch``. When an epoch occurs more than once (a
        resumed run re-logs the epochs after its checkpoint) the last occurrence is kept.

    Blank lines are ignored. A line that is not valid JSON (say, the last line of a run
    killed mid-write), is not a JSON object, or has no integer ``epoch`` is skipped with a
    :class:`UserWarning` naming the file and the line number.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training log not found: {path}")
    by_epoch: dict[int, dict[str, Any]] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                warnings.warn(
                    f"{path}:{lineno}: skipping a line that is not valid JSON ({e.msg})",
                    stacklevel=2,
                )
                continue
            if not isinstance(record, dict):
                warnings.warn(
                    f"{path}:{lineno}: skipping a line that is not a JSON object", stacklevel=2
                )
                continue
            epoch = record.get("epoch")
            if isinstance(epoch, float) and epoch.is_integer():
                epoch = int(epoch)
            if not isinstance(epoch, int) or isinstance(epoch, bool):
                warnings.warn(
                    f"{path}:{lineno}: skipping a line without an integer 'epoch'", stacklevel=2
                )
                continue
            record["epoch"] = epoch
            by_epoch[epoch] = record  # a later occurrence (resumed run) replaces the earlier
    return [by_epoch[e] for e in sorted(by_epoch)]


# --------------------------------------------------------------------------- helpers


def _num(value: Any) -> float:
    """``value`` as a float; ``nan`` for null, absent or non-numeric values."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _series(log: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [_num(r.get(key)) for r in log]


def _has(values: Sequence[float]) -> bool:
    return any(math.isfinite(v) for v in values)


def _check_log(log: Sequence[dict[str, Any]]) -> None:
    if not log:
        raise ValueError("the training log has no epochs to plot")


def _new_figure(ncols: int) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="tight")
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def epoch_axis(ax: Axes, epochs: Sequence[float] = ()) -> None:
    """An epoch x axis: integer ticks only (never 2.5), epoch 0 (the sparse start) included."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if epochs and min(epochs) == max(epochs):  # a single epoch: keep integer ticks around it
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)


def log_axis(ax: Axes, axis: str = "y") -> None:
    """A log scale whose labels are readable values, not only decades (a log axis that labels
    only 1, 10, 100 hides the values in between): every 1..9 of a decade for data spanning
    less than one decade, 1, 2 and 5 up to four decades, decades beyond. Call it after
    plotting (it reads the data's span)."""
    lim = ax.dataLim
    lo, hi = (lim.y0, lim.y1) if axis == "y" else (lim.x0, lim.x1)
    decades = math.log10(hi / lo) if lo > 0 and math.isfinite(hi / lo) else math.inf
    subs = tuple(range(1, 10)) if decades < 1 else (1.0, 2.0, 5.0) if decades < 4 else (1.0,)
    scale = ax.set_yscale if axis == "y" else ax.set_xscale
    scale("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10.0, subs=subs))
    target.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def series_styles(n: int) -> list[dict[str, Any]]:
    """``n`` line styles (color, line style, marker, width) that stay distinguishable where
    curves lie on top of each other (e.g. several layers at 100%): later lines are thinner,
    dashed differently, and put their markers at other epochs, so a line drawn over an
    earlier one never hides it."""
    colors = _colors(n)
    dashes = ("-", "--", "-.", ":")
    markers = ("o", "s", "^", "v", "D", "x", "+", "*")
    return [
        {
            "color": colors[i],
            "ls": dashes[i % len(dashes)],
            "marker": markers[i % len(markers)],
            "ms": 3.5,
            "lw": max(0.8, 2.4 - 0.15 * i),
            # staggered markers: on coinciding curves each one's markers still show
            "markevery": (i % min(n, 4), min(n, 4)),
        }
        for i in range(n)
    ]


def layer_growth(
    ax: Axes,
    epochs: Sequence[float],
    active: dict[str, Sequence[float]],
    widths: dict[str, float],
) -> str:
    """Draw how each layer's active units grow per epoch; returns what was drawn.

    * more than ``MAX_LAYER_LINES`` layers: a heatmap, one row per layer, colored by the
      active fraction (22 lines of one colormap could not be told apart);
    * widths that differ by more than ``MIXED_WIDTHS`` (a 784-wide output beside hidden
      layers of 30): one line per layer of the active fraction;
    * otherwise one line per layer of the active units, on a log axis when the counts span
      more than 10x (a fixed output layer of 784 beside hidden layers of 8 would squash
      them to the floor of a linear axis).
    """
    names = list(active)
    w = [widths.get(n, math.nan) for n in names]
    known = [v for v in w if math.isfinite(v) and v > 0]
    mixed = bool(known) and max(known) / min(known) > MIXED_WIDTHS
    if len(names) > MAX_LAYER_LINES:
        grid = [
            [a / wi if math.isfinite(a) and wi > 0 else math.nan for a in active[n]]
            for n, wi in zip(names, w, strict=True)
        ]
        lo = min(epochs) - 0.5
        hi = max(epochs) + 0.5
        im = ax.imshow(
            grid,
            aspect="auto",
            interpolation="nearest",
            cmap="viridis",
            vmin=0.0,
            vmax=1.0,
            extent=(lo, hi, len(names) - 0.5, -0.5),
        )
        ax.set_yticks(range(len(names)), names, fontsize=6 if len(names) > 24 else 7)
        ax.figure.colorbar(im, ax=ax, label="active fraction (active units / width)")
        ax.grid(False)
        return "heatmap"
    for name, style in zip(names, series_styles(len(names)), strict=True):
        ys = list(active[name])
        if mixed:
            wi = widths.get(name, math.nan)
            ys = [a / wi if wi > 0 else math.nan for a in ys]
        ax.plot(epochs, ys, label=name, **style)
    if mixed:
        ax.set_ylim(-0.02, 1.05)
        ax.set_ylabel("active fraction (active units / width)")
    else:
        values = [v for n in names for v in active[n] if math.isfinite(v) and v > 0]
        top = max(values or [1.0])
        if values and top / min(values) > 10:  # e.g. a fixed 784-wide output beside 8 units
            log_axis(ax, "y")
            ax.set_ylim(min(values) / 1.5, top * 1.5)
            ax.set_ylabel("active output units (log scale)")
        else:
            ax.set_ylim(0, top * 1.12 + 0.5)
            ax.set_ylabel("active output units")
    ax.legend(
        title="layer",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize="small",
        borderaxespad=0.0,
    )
    return "fraction" if mixed else "units"


def _no_data(ax: Axes, message: str) -> None:
    ax.text(
        0.5,
        0.5,
        message,
        transform=ax.transAxes,
        ha="center",
        va="center",
        color="0.4",
    )


def _save(fig: Figure, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _title(fig: Figure, text: str, title: str | None) -> None:
    fig.suptitle(f"{title}: {text}" if title else text)


def _layer_names(log: Sequence[dict[str, Any]], key: str) -> list[str]:
    """Layer names under ``key`` (a dict per record), in order of first appearance."""
    names: dict[str, None] = {}
    for r in log:
        d = r.get(key)
        if isinstance(d, dict):
            names.update(dict.fromkeys(d))
    return list(names)


def _colors(n: int) -> list[Any]:
    if n <= 10:
        cmap = colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    if n <= 20:
        cmap = colormaps["tab20"]
        return [cmap(i) for i in range(n)]
    cmap = colormaps["viridis"]
    return [cmap(i / (n - 1)) for i in range(n)]


# --------------------------------------------------------------------------- plots


def metrics_figure(log: Sequence[dict[str, Any]], *, title: str | None = None) -> Figure:
    """Plot validation quality and losses per epoch into one PNG.

    Left panel: validation accuracy (%) for a classification run, or validation PSNR (dB)
    for a denoising run (``val_psnr``), with the best epoch marked. Right panel: train and
    validation loss; the y axis is logarithmic when every plotted loss is positive.

    Args:
        log: records from :func:`read_log`.
        title: optional prefix of the figure title (e.g. the run's name).

    Returns:
        the :class:`~matplotlib.figure.Figure` (``plot_*`` saves it as a PNG).
    """
    _check_log(log)
    epochs = [r["epoch"] for r in log]
    fig, (ax_q, ax_l) = _new_figure(2)

    acc, psnr = _series(log, "val_accuracy"), _series(log, "val_psnr")
    if _has(acc):
        values, label, unit, fmt = acc, "validation accuracy (%)", "%", "{:.2f}%"
    elif _has(psnr):
        values, label, unit, fmt = psnr, "validation PSNR (dB)", "dB", "{:.2f} dB"
    else:
        values, label, unit, fmt = [], "validation metric", "", ""
    if values:
        ax_q.plot(epochs, values, marker="o", ms=3, color="C2", label=label)
        best = max((i for i, v in enumerate(values) if math.isfinite(v)), key=lambda i: values[i])
        ax_q.plot(
            [epochs[best]],
            [values[best]],
            marker="*",
            ms=12,
            color="C3",
            ls="none",
            label=f"best {fmt.format(values[best])} (epoch {epochs[best]})",
        )
        ax_q.legend(loc="lower right")
        ax_q.set_title("(a) validation " + ("accuracy" if unit == "%" else "PSNR"))
    else:
        _no_data(ax_q, "no validation metric in the log")
        ax_q.set_title("(a) validation")
    ax_q.set_ylabel(label)
    epoch_axis(ax_q, epochs)

    train, val = _series(log, "train_loss"), _series(log, "val_loss")
    plotted = []
    if _has(train):
        ax_l.plot(epochs, train, marker="o", ms=3, color="C0", label="train loss")
        plotted += [v for v in train if math.isfinite(v)]
    if _has(val):
        ax_l.plot(epochs, val, marker="s", ms=3, color="C1", label="validation loss")
        plotted += [v for v in val if math.isfinite(v)]
    if plotted:
        log_y = all(v > 0 for v in plotted)
        if log_y:
            log_axis(ax_l, "y")
        ax_l.set_ylabel("loss (log scale)" if log_y else "loss")
        ax_l.legend(loc="best")
    else:
        _no_data(ax_l, "no loss in the log")
        ax_l.set_ylabel("loss")
    ax_l.set_title("(b) loss")
    epoch_axis(ax_l, epochs)

    _title(fig, "training metrics", title)
    return fig


def scale_space_figure(log: Sequence[dict[str, Any]], *, title: str | None = None) -> Figure:
    """Plot the inverse-scale-space path: how each layer's width grows over training.

    Epoch 0 is the sparse start (the ``initial`` entry the engine logs with epoch 1), so the
    growth from the start can be seen. Left panel: :func:`layer_growth` (lines of active units
    or fractions, or a heatmap for many layers). Right panel: the density (percent of
    non-zero parameters) per epoch, ``density`` and, when logged, ``weight_density``.

    Args:
        log: records from :func:`read_log`.
        title: optional prefix of the figure title.

    Returns:
        the :class:`~matplotlib.figure.Figure` (``plot_*`` saves it as a PNG).
    """
    _check_log(log)
    records = list(log)
    initial = records[0].get("initial")
    if isinstance(initial, dict) and records[0].get("epoch") == 1:
        records = [{"epoch": 0, **initial}, *records]
    epochs = [r["epoch"] for r in records]
    fig, (ax_u, ax_d) = _new_figure(2)

    layers = _layer_names(records, "active_units")
    if layers:
        widths: dict[str, float] = {}  # the last logged (a supernet is fixed)
        for r in records:
            w = r.get("widths")
            if isinstance(w, dict):
                widths.update({k: _num(v) for k, v in w.items()})
        active = {
            name: [
                _num(r["active_units"].get(name))
                if isinstance(r.get("active_units"), dict)
                else math.nan
                for r in records
            ]
            for name in layers
        }
        kind = layer_growth(ax_u, epochs, active, widths)
        label = {"heatmap": " (heatmap: active fraction)", "fraction": " (fraction of width)"}
        ax_u.set_title("(a) active units per layer" + label.get(kind, ""))
    else:
        _no_data(ax_u, "no per-layer active units in the log")
        ax_u.set_ylabel("active output units")
        ax_u.set_title("(a) active units per layer")
    epoch_axis(ax_u, epochs)

    density = [100.0 * v for v in _series(records, "density")]
    weight_density = [100.0 * v for v in _series(records, "weight_density")]
    if _has(density) or _has(weight_density):
        styles = series_styles(2)
        if _has(density):
            ax_d.plot(epochs, density, label="density", **styles[0])
        if _has(weight_density):
            ax_d.plot(epochs, weight_density, label="weight density", **styles[1])
        top = max(v for v in density + weight_density if math.isfinite(v))
        ax_d.set_ylim(0, min(105.0, top * 1.15))  # headroom: no line on the frame
        ax_d.legend(loc="lower right")
    else:
        _no_data(ax_d, "no density in the log")
    ax_d.set_ylabel("density (% nonzero)")
    ax_d.set_title("(b) density")
    epoch_axis(ax_d, epochs)

    _title(fig, "inverse scale space", title)
    return fig


def widths_figure(log: Sequence[dict[str, Any]], *, title: str | None = None) -> Figure:
    """Grouped bar chart: supernet width against discovered width, per layer.

    The discovered width of a layer is its active output units at the last epoch; the
    supernet width is the last logged ``widths``. Discovered bars carry their numbers. Layer
    names are rotated when there are many, and the y axis is logarithmic when the widest
    layer is more than 50 times the narrowest.

    Args:
        log: records from :func:`read_log`.
        title: optional prefix of the figure title.

    Returns:
        the :class:`~matplotlib.figure.Figure` (``plot_*`` saves it as a PNG).
    """
    _check_log(log)
    fig, (ax,) = _new_figure(1)

    last = log[-1]
    active = last.get("active_units") if isinstance(last.get("active_units"), dict) else {}
    widths: dict[str, Any] = {}
    for r in log:  # the last logged widths, layer by layer
        w = r.get("widths")
        if isinstance(w, dict):
            widths.update(w)
    layers = list(dict.fromkeys([*widths, *active]))
    if layers:
        xs = list(range(len(layers)))
        sup = [_num(widths.get(n)) for n in layers]
        disc = [_num(active.get(n)) for n in layers]
        bar = 0.4
        ax.bar([x - bar / 2 for x in xs], sup, bar, color="0.75", edgecolor="0.5", label="supernet")
        bars = ax.bar(
            [x + bar / 2 for x in xs],
            disc,
            bar,
            color="C0",
            label=f"discovered (epoch {last['epoch']})",
        )
        positive = [v for v in sup + disc if math.isfinite(v) and v > 0]
        pos_widths = [v for v in sup if math.isfinite(v) and v > 0] or positive
        log_y = bool(pos_widths) and max(pos_widths) / min(pos_widths) > LOG_WIDTH_RATIO
        bottom = 0.5 if log_y else 0.0
        if log_y:
            log_axis(ax, "y")
            ax.set_ylim(bottom=bottom, top=max(positive) * 3)
        elif positive:
            ax.set_ylim(0, max(positive) * 1.12)
        ax.set_ylabel("output units (log scale)" if log_y else "output units")
        # numbers on the discovered bars (a zero-height bar gets its "0" at the axis floor)
        for rect, v in zip(bars, disc, strict=True):
            if math.isfinite(v):
                ax.annotate(
                    f"{v:g}",
                    (rect.get_x() + rect.get_width() / 2, max(v, bottom)),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize="small" if len(layers) <= 20 else "x-small",
                )
        many = len(layers) > 6
        ax.set_xticks(
            xs,
            layers,
            rotation=45 if many else 0,
            ha="right" if many else "center",
            fontsize="small" if many else None,
        )
        ax.set_xlim(-0.6, len(layers) - 0.4)
        total_sup = sum(v for v in sup if math.isfinite(v))
        total_disc = sum(v for v in disc if math.isfinite(v))
        ax.legend(  # outside the axes: a tall supernet bar never hides it
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0.0,
            title=f"units in total\n{total_disc:g} of {total_sup:g}",
            fontsize="small",
        )
        ax.grid(False, axis="x")
    else:
        _no_data(ax, "no layer widths in the log")
        ax.set_ylabel("output units")
    ax.set_xlabel("layer")

    _title(fig, "supernet vs discovered width per layer", title)
    return fig


def plot_metrics(
    log: Sequence[dict[str, Any]], path: PathLike, *, title: str | None = None
) -> Path:
    """:func:`metrics_figure` saved as a PNG at ``path`` (parent folders are created)."""
    return _save(metrics_figure(log, title=title), path)


def plot_scale_space(
    log: Sequence[dict[str, Any]], path: PathLike, *, title: str | None = None
) -> Path:
    """:func:`scale_space_figure` saved as a PNG at ``path`` (parent folders are created)."""
    return _save(scale_space_figure(log, title=title), path)


def plot_widths(log: Sequence[dict[str, Any]], path: PathLike, *, title: str | None = None) -> Path:
    """:func:`widths_figure` saved as a PNG at ``path`` (parent folders are created)."""
    return _save(widths_figure(log, title=title), path)


# --------------------------------------------------------------------------- report


def report(run_dir: PathLike, out_dir: PathLike | None = None) -> list[Path]:
    """Plot a run: ``metrics.png``, ``scale_space.png`` and ``widths.png``.

    Args:
        run_dir: the run directory holding ``log.jsonl``.
        out_dir: where to write the PNGs; default ``run_dir/plots`` (created if needed).

    Returns:
        The three paths, in that order.

    Raises:
        FileNotFoundError: ``run_dir/log.jsonl`` does not exist.
        ValueError: the log holds no epoch (empty, or no line could be parsed).
    """
    run_dir = Path(run_dir)
    log_path = run_dir / LOG_NAME
    if not log_path.is_file():
        raise FileNotFoundError(f"training log not found: {log_path}")
    log = read_log(log_path)
    if not log:
        raise ValueError(f"training log has no epochs: {log_path}")
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    name = run_dir.resolve().name or None
    return [
        plot_metrics(log, out / "metrics.png", title=name),
        plot_scale_space(log, out / "scale_space.png", title=name),
        plot_widths(log, out / "widths.png", title=name),
    ]
