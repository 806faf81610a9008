"""Pictures: certified-accuracy curves, radius distributions, theta maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.image import imread

from ancer_cli import analysis
from ancer_cli.analysis import Metric
from ancer_cli.analysis.pictures import InputTheta
from ancer_cli.errors import OutputError, ResultsError
from tests.analysis.frames import frame_of

# ---------------------------------------------------------------------------------------------
# plots


def test_plot_png_and_pdf(four: pd.DataFrame, tmp_path: Path) -> None:
    frames = {"a": four, "b": four.assign(correct=[1, 0, 0, 0])}
    for name in ("curve.png", "curve.PDF"):
        analysis.plot_certified_accuracy(frames, Metric.radius, tmp_path / name)
        assert (tmp_path / name).stat().st_size > 5_000
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "curve.PDF").read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.PDF", "curve.png"]


def test_plot_rejects_other_formats(four: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"\.png or \.pdf"):
        analysis.plot_certified_accuracy({"a": four}, Metric.radius, tmp_path / "curve.svg")


def test_plot_with_nothing_certified(tmp_path: Path) -> None:
    nothing = frame_of([(0, -1, 0.0, 0), (1, 2, 0.0, 0)])
    analysis.plot_certified_accuracy({"a": nothing}, Metric.radius, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# more plots: both metrics, radius distributions, theta maps


def pixels_of(path: Path) -> np.ndarray:
    """RGB pixels of a PNG as integers 0..255, shape (H, W, 3)."""
    return np.round(imread(path)[..., :3] * 255).astype(int)


def distinct_colours(pixels: np.ndarray) -> int:
    """Number of different RGB colours in an (H, W, 3) integer image."""
    return int(np.unique(pixels[..., 0] * 65536 + pixels[..., 1] * 256 + pixels[..., 2]).size)


def near(pixels: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    """How many pixels are within ``tolerance`` (L1) of ``rgb``."""
    return int((np.abs(pixels - np.array(rgb)).sum(axis=-1) <= tolerance).sum())


BLUE, ORANGE, GREEN = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C)


def test_plot_both_metrics_and_max_radius(four: pd.DataFrame, tmp_path: Path) -> None:
    frames = {"a": four, "b": four.assign(correct=[1, 0, 1, 0])}
    both = tmp_path / "both.png"
    analysis.plot_certified_accuracy(frames, [Metric.radius, Metric.proxy], both, max_radius=2.0)
    one = tmp_path / "one.png"
    analysis.plot_certified_accuracy(frames, Metric.radius, one)
    pixels, fewer = pixels_of(both), pixels_of(one)
    assert pixels.shape == (660, 960, 3)
    for rgb in (BLUE, ORANGE):
        assert near(pixels, rgb) > 50
    # the proxy lines add coloured pixels to the radius-only plot
    assert near(pixels, BLUE) + near(pixels, ORANGE) > near(fewer, BLUE) + near(fewer, ORANGE)


def test_proxy_ratios(four: pd.DataFrame) -> None:
    assert analysis.proxy_ratios(four).tolist() == pytest.approx([1.8, 1.5, 1.5])
    assert analysis.proxy_ratios(four.drop(columns="radius_proxy")).size == 0


@pytest.mark.parametrize("cdf", [False, True], ids=["histogram", "cdf"])
def test_plot_radius_distribution(four: pd.DataFrame, tmp_path: Path, cdf: bool) -> None:
    rng = np.random.default_rng(0)
    many = frame_of(
        [(0, 0, float(r), 1) for r in rng.uniform(0.1, 1.5, 80)],
        proxy=list(rng.uniform(1.6, 3.0, 80)),
    )
    cohen_like = many.drop(columns="radius_proxy").assign(radius=many["radius"] * 0.5)
    frames = {"ancer": many, "cohen": cohen_like, "four": four}
    path = tmp_path / "radii.png"
    analysis.plot_radius_distribution(frames, Metric.radius, path, cdf=cdf)
    pixels = pixels_of(path)
    assert pixels.shape == (630, 1650, 3)  # two panels: radii and radius_proxy / radius
    for rgb in (BLUE, ORANGE, GREEN):
        assert near(pixels, rgb) > 30, rgb
    assert distinct_colours(pixels) > 20


def test_plot_radius_distribution_without_certified_rows(tmp_path: Path) -> None:
    nothing = frame_of([(0, -1, 0.0, 0), (1, 2, 0.0, 0)])
    analysis.plot_radius_distribution({"a": nothing}, Metric.radius, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 5_000
    with pytest.raises(OutputError, match=r"\.png or \.pdf"):
        analysis.plot_radius_distribution({"a": nothing}, Metric.radius, tmp_path / "r.jpg")


def theta_input(index: int, channels: int, isotropic: bool = False) -> InputTheta:
    generator = torch.Generator().manual_seed(index)
    image = torch.rand(channels, 8, 8, generator=generator)
    theta = (
        torch.tensor(0.25) if isotropic else 0.25 + torch.rand(channels, 8, 8, generator=generator)
    )
    return InputTheta(index, image, theta, label=index % 10)


@pytest.mark.parametrize(
    ("channels", "each_channel", "isotropic", "columns"),
    [(3, True, False, 4), (1, False, True, 2)],
    ids=["rgb-each-channel", "grey-isotropic"],
)
def test_plot_theta_maps(
    tmp_path: Path, channels: int, each_channel: bool, isotropic: bool, columns: int
) -> None:
    pictures = [theta_input(i, channels, isotropic) for i in (0, 7)]
    path = tmp_path / "thetas.png"
    analysis.plot_theta_maps(pictures, path, each_channel=each_channel, theta_meaning="std")
    pixels = pixels_of(path)
    # figure size (2.9 * columns + 0.4) x (2.7 * rows) inches at 150 dpi
    assert pixels.shape == (810, round((2.9 * columns + 0.4) * 150), 3)
    assert distinct_colours(pixels) > 50


def test_plot_theta_maps_needs_inputs(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="at least one index"):
        analysis.plot_theta_maps([], tmp_path / "t.png")


def test_plot_proxy_without_proxy_columns(tmp_path: Path) -> None:
    cohen_like = frame_of([(0, 0, 0.5, 1), (1, 1, 0.2, 1)])
    analysis.plot_certified_accuracy({"a": cohen_like}, Metric.proxy, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 5_000
