"""Pictures: certified accuracy against radius, radius distributions, theta maps. Written with
matplotlib's Agg canvas (never pyplot's global state), atomically, as .png or .pdf.

matplotlib is imported when a picture is drawn, not with this module: everything else in the
package and the command-line program (``certify``, ``optimize``, ...) runs without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from ancer_cli.analysis.metrics import (
    certified_accuracy_curve,
    certified_radii,
    labeled_rows,
    metric_values,
    proxy_ratios,
)
from ancer_cli.analysis.pictures import InputTheta
from ancer_cli.artifacts import atomic_writer
from ancer_cli.errors import OutputError, ResultsError
from ancer_cli.settings import PLOT_SUFFIXES, Metric

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ancer_cli.analysis.attacks import AttackComparison

_LINE_STYLES = ("-", "--", "-.", ":")


_METRIC_AXIS = {
    Metric.radius: "radius",
    Metric.proxy: "proxy radius (radius_proxy)",
    Metric.linf: "l-infinity half-width (radius_linf)",
}


def _check_plot_path(path: Path) -> str:
    """The matplotlib format of ``path`` (``png`` or ``pdf``); anything else is an OutputError."""
    suffix = Path(path).suffix.lower()
    if suffix not in PLOT_SUFFIXES:
        raise OutputError(f"cannot plot to {path}: the file name must end in .png or .pdf")
    return suffix[1:]


def _new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (no pyplot global state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise OutputError(
            f"drawing pictures needs matplotlib, which cannot be imported ({error}); "
            "install it with: pip install matplotlib"
        ) from error
    figure = Figure(figsize=(width, height), dpi=150, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path, image_format: str) -> None:
    with atomic_writer(Path(path), "wb") as handle:
        figure.savefig(handle, format=image_format)


def _colour(index: int) -> str:
    """The ``index``-th colour of matplotlib's default cycle (C0, C1, ..., then again)."""
    return f"C{index % 10}"


def plot_certified_accuracy(
    frames: Mapping[str, pd.DataFrame],
    metric: Metric | Sequence[Metric],
    path: Path,
    points: int = 1001,
    max_radius: float | None = None,
) -> None:
    """Write the certified accuracy against radius of each labelled frame to ``path``.

    One colour per frame (legend from the labels). ``metric`` is one metric or several: with
    both, each frame gets a solid line on ``radius`` and a dashed one on ``radius_proxy`` in
    its colour (frames without ``radius_proxy`` get the solid line only). The radius axis runs
    from 0 to ``max_radius``, by default 5 % past the largest certified radius plotted; the
    accuracy axis from 0 to 1. ``path`` must end in ``.png`` or ``.pdf``; the file is written
    atomically. Uses matplotlib's Agg canvas, never pyplot's global state.
    """
    image_format = _check_plot_path(path)
    metrics = [metric] if isinstance(metric, Metric) else list(metric)
    if not metrics:
        raise ResultsError("plot_certified_accuracy needs at least one metric")
    lines = [
        (index, label, labeled_rows(frame), m)  # accuracy is measured on labeled rows
        for index, (label, frame) in enumerate(frames.items())
        for m in metrics
        if m.column in frame.columns
    ]
    largest = max(
        (float(certified_radii(frame, m).max(initial=0.0)) for _, _, frame, m in lines),
        default=0.0,
    )
    if max_radius is not None:
        upper = float(max_radius)
    else:
        upper = 1.05 * largest if largest > 0 else 1.0
    radii = np.linspace(0.0, upper, points)

    figure = _new_figure(6.4, 4.4)
    axes = figure.add_subplot()
    several = len(metrics) > 1
    for index, label, frame, m in lines:
        # with several metrics the style tells the metric; otherwise it changes every 10 files
        style = _LINE_STYLES[metrics.index(m)] if several else _LINE_STYLES[(index // 10) % 4]
        axes.plot(
            radii,
            certified_accuracy_curve(frame, radii, m),
            label=f"{label} ({m.column})" if several else label,
            linewidth=1.8,
            color=_colour(index),
            linestyle=style,
        )
    axes.set_xlim(0.0, upper)
    axes.set_ylim(0.0, 1.0)
    what = _METRIC_AXIS[metrics[0]] if not several else "radius (solid) / radius_proxy (dashed)"
    axes.set_xlabel(f"{what}, input units (pixels in [0, 1])")
    axes.set_ylabel("certified accuracy")
    axes.set_title("Certified accuracy against radius")
    axes.grid(True, alpha=0.4)
    if lines:
        axes.legend(loc="upper right", fontsize="small")
    else:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    _save(figure, path, image_format)


def plot_attack_comparison(
    comparison: AttackComparison, path: Path, points: int = 1001, max_radius: float | None = None
) -> None:
    """Write certified (lower) and empirical (upper) accuracy against eps to ``path``: the
    certified-accuracy curve of the results file on the compared column, the attack's accuracy
    at each of its eps (markers joined by a dashed line), and the gap at each eps as a bar. The
    eps axis runs from 0 to ``max_radius``, by default 5 % past the largest eps or certified
    radius."""
    image_format = _check_plot_path(path)
    metric, eps = comparison.metric, np.asarray(comparison.eps, dtype=float)
    largest = max(
        float(eps.max(initial=0.0)),
        float(certified_radii(comparison.frame, metric).max(initial=0.0)),
    )
    upper = float(max_radius) if max_radius is not None else (1.05 * largest or 1.0)
    radii = np.linspace(0.0, upper, points)
    figure = _new_figure(6.4, 4.4)
    axes = figure.add_subplot()
    axes.plot(
        radii,
        certified_accuracy_curve(comparison.frame, radii, metric),
        color=_colour(0),
        linewidth=1.8,
        label=f"certified (lower bound, {metric.column})",
    )
    certified = np.array([comparison.certified[e] for e in comparison.eps])
    empirical = np.array([comparison.empirical[e] for e in comparison.eps])
    axes.plot(
        eps,
        empirical,
        color=_colour(1),
        linewidth=1.2,
        linestyle="--",
        marker="o",
        label=f"empirical ({comparison.threat} attack, upper bound)",
    )
    # the gap is known at the attack's eps only: a bar at each, not an area between them
    axes.vlines(eps, certified, empirical, color=_colour(1), alpha=0.3, linewidth=6, label="gap")
    axes.set_xlim(0.0, upper)
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel(f"eps = {_METRIC_AXIS[metric]}, input units (pixels in [0, 1])")
    axes.set_ylabel("accuracy")
    axes.set_title("Certified and empirical robust accuracy")
    axes.grid(True, alpha=0.4)
    axes.legend(loc="upper right", fontsize="small")
    _save(figure, path, image_format)


def _distribution(axes: Axes, samples: Mapping[str, tuple[int, np.ndarray]], cdf: bool) -> None:
    """Overlaid step histograms (shared bins) or empirical CDFs, one colour per sample."""
    values = [v for _, v in samples.values() if len(v)]
    if not values:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
        return
    everything = np.concatenate(values)
    low, high = float(everything.min()), float(everything.max())
    if high <= low:
        low, high = low - 0.5 * max(abs(low), 1e-3), high + 0.5 * max(abs(high), 1e-3)
    bins = np.linspace(low, high, 31)
    for label, (index, v) in samples.items():
        if not len(v):
            continue
        if cdf:
            ordered = np.sort(v)
            fraction = np.arange(1, len(ordered) + 1) / len(ordered)
            axes.step(
                np.concatenate([[low], ordered]),
                np.concatenate([[0.0], fraction]),
                where="post",
                color=_colour(index),
                linewidth=1.8,
                label=f"{label} (n={len(v)})",
            )
        else:
            axes.hist(v, bins=list(bins), histtype="stepfilled", color=_colour(index), alpha=0.15)
            axes.hist(
                v,
                bins=list(bins),
                histtype="step",
                linewidth=1.8,
                color=_colour(index),
                label=f"{label} (n={len(v)})",
            )
    axes.set_ylabel("fraction of inputs at most x" if cdf else "inputs")
    if cdf:
        axes.set_ylim(0.0, 1.02)
    else:
        from matplotlib.ticker import MaxNLocator

        axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of inputs
    axes.grid(True, alpha=0.4)
    axes.legend(loc="lower right" if cdf else "upper right", fontsize="small")


def plot_radius_distribution(
    frames: Mapping[str, pd.DataFrame],
    metric: Metric,
    path: Path,
    cdf: bool = False,
) -> None:
    """Write the distribution of per-input radii of each labelled frame to ``path``.

    Left panel: the ``metric`` radius of every correctly certified row (``correct == 1``), as
    overlaid step histograms on shared bins or, with ``cdf``, empirical CDFs. Right panel (when
    any frame is an anisotropic run): the ratio ``radius_proxy / radius`` of rows with
    ``radius > 0`` (:func:`proxy_ratios`) of those frames; frames whose ratios are all 1
    (fixed sigma, isotropic thetas) are named in the panel instead of drawn. ``path`` must end
    in ``.png`` or ``.pdf``; written atomically.
    """
    image_format = _check_plot_path(path)
    radii = {
        label: (
            index,
            metric_values(frame, metric)[frame["correct"].to_numpy() == 1]
            if metric.column in frame.columns
            else np.empty(0),
        )
        for index, (label, frame) in enumerate(frames.items())
    }
    every_ratio = {
        label: (index, proxy_ratios(frame))
        for index, (label, frame) in enumerate(frames.items())
        if Metric.proxy.column in frame.columns
    }
    # radii are written rounded toward zero with 7 digits, so isotropic ratios are 1 +- 1e-6
    isotropic = [
        label for label, (_, r) in every_ratio.items() if np.allclose(r, 1.0, rtol=0, atol=1e-5)
    ]
    ratios = {label: item for label, item in every_ratio.items() if label not in isotropic}
    figure = _new_figure(11.0 if ratios else 6.4, 4.2)
    panels = figure.subplots(1, 2 if ratios else 1, squeeze=False)[0]
    kind = "CDF" if cdf else "histogram"
    _distribution(panels[0], radii, cdf)
    panels[0].set_xlabel(f"{_METRIC_AXIS[metric]} of correctly certified inputs")
    panels[0].set_title(f"Certified radius per input ({kind})")
    if ratios:
        _distribution(panels[1], ratios, cdf)
        panels[1].set_title(f"radius_proxy / radius per input ({kind})")
        note = f"\nratio 1 (isotropic), not drawn: {', '.join(isotropic)}" if isotropic else ""
        panels[1].set_xlabel(f"radius_proxy / radius{note}")
    _save(figure, path, image_format)


def plot_theta_maps(
    pictures: Sequence[InputTheta],
    path: Path,
    each_channel: bool = False,
    theta_meaning: str = "theta",
) -> None:
    """Write, for every input (:class:`~ancer_cli.thetas.InputTheta`), its image beside a heat
    map of its theta.

    One row per input: the image (grey for one channel, RGB for three), then theta per pixel
    -- the mean over channels, or with ``each_channel`` one map per channel -- with a colour
    bar in theta units (``theta_meaning`` labels it, e.g. "noise std"). Titles give the
    index, label and theta's min / geometric mean / max. Written atomically to ``path``
    (``.png`` or ``.pdf``).
    """
    image_format = _check_plot_path(path)
    if not pictures:
        raise ResultsError("no inputs to draw; give at least one index")
    channels = max(int(p.image.shape[0]) for p in pictures)
    maps = channels if each_channel and channels > 1 else 1
    columns = 1 + maps
    figure = _new_figure(2.9 * columns + 0.4, 2.7 * len(pictures))
    grid = figure.subplots(len(pictures), columns, squeeze=False)
    for row, picture in zip(grid, pictures, strict=True):
        image = picture.image.detach().cpu().to(torch.float64).numpy()
        theta = np.broadcast_to(picture.theta.detach().cpu().to(torch.float64).numpy(), image.shape)
        shown = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
        row[0].imshow(
            np.clip(shown, 0.0, 1.0),
            cmap="gray" if image.shape[0] == 1 else None,
            vmin=0.0,
            vmax=1.0,
            interpolation="nearest",
        )
        label = "" if picture.label is None else f", label {picture.label}"
        row[0].set_title(f"input {picture.index}{label}", fontsize="medium")
        geomean = float(np.exp(np.log(theta).mean()))
        summary = f"min {theta.min():.3g}, geomean {geomean:.3g}, max {theta.max():.3g}"
        heat = [theta.mean(axis=0)] if maps == 1 else [theta[c] for c in range(maps)]
        low, high = float(theta.min()), float(theta.max())
        if high <= low:  # isotropic: one value; give the colour bar a visible range around it
            low, high = 0.95 * low, 1.05 * high
        for column, values in enumerate(heat, start=1):
            axes = row[column]
            shown_map = axes.imshow(
                values, cmap="viridis", vmin=low, vmax=high, interpolation="nearest"
            )
            name = (
                "theta"
                if maps == 1 and channels == 1
                else ("theta, channel mean" if maps == 1 else f"theta, channel {column - 1}")
            )
            axes.set_title(name if column > 1 else f"{name}\n{summary}", fontsize="medium")
            colorbar = figure.colorbar(shown_map, ax=axes, fraction=0.046, pad=0.04)
            colorbar.set_label(theta_meaning, fontsize="small")
        for axes in row:
            axes.set_xticks([])
            axes.set_yticks([])
    _save(figure, path, image_format)
