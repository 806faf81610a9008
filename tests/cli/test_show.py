"""``ancer show`` end to end: inputs beside heat maps of their thetas.

Pictures are checked by what a reader would see: the right size (one row per input, one map per
channel), the viridis colours of a heat map and the grey or RGB pixels of the images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from PIL import Image

from ancer_cli.analysis.pictures import read_input_thetas
from ancer_cli.errors import ThetaError
from ancer_cli.thetas import save_theta, theta_path
from tests.helpers import assert_domain_error, assert_usage_error, invoke, ok

DPI = 150


def pixels_of(path: Path) -> np.ndarray:
    return np.round(imread(path)[..., :3] * 255).astype(int)


def figure_shape(rows: int, columns: int) -> tuple[int, int, int]:
    """Pixel shape of the picture: (2.9 * columns + 0.4) x (2.7 * rows) inches at 150 dpi."""
    return (round(2.7 * rows * DPI), round((2.9 * columns + 0.4) * DPI), 3)


def distinct_colours(pixels: np.ndarray) -> int:
    """Number of different RGB colours in an (H, W, 3) integer image."""
    return int(np.unique(pixels[..., 0] * 65536 + pixels[..., 1] * 256 + pixels[..., 2]).size)


def viridis_pixels(pixels: np.ndarray) -> int:
    """Pixels close to one of viridis's colours (the heat maps and colour bars)."""
    from matplotlib import colormaps

    palette = np.round(colormaps["viridis"](np.linspace(0, 1, 64))[:, :3] * 255).astype(int)
    codes, counts = np.unique(
        pixels[..., 0] * 65536 + pixels[..., 1] * 256 + pixels[..., 2], return_counts=True
    )
    colours = np.stack([codes // 65536, codes // 256 % 256, codes % 256], axis=1)
    distance = np.abs(colours[:, None] - palette[None]).sum(axis=-1).min(axis=1)
    # exclude greys: viridis has none, the digits and the axes have many
    chroma = colours.max(axis=1) - colours.min(axis=1)
    return int(counts[(distance <= 6) & (chroma > 40)].sum())


# ---------------------------------------------------------------------------------------------
# thetas written by ancer optimize (with a manifest)


def test_show_chosen_inputs(thetas_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "thetas.png"
    result = ok("show", "--thetas", thetas_dir, "--index", 0, "--index", 5, "--out", out)
    assert f"wrote {out}" in result.stderr and "ancer thetas of test inputs 0, 5" in result.stderr
    pixels = pixels_of(out)
    assert pixels.shape == figure_shape(rows=2, columns=2)
    assert viridis_pixels(pixels) > 5_000
    assert distinct_colours(pixels) > 100
    grey = pixels[..., 0] == pixels[..., 1]
    assert (grey & (pixels[..., 0] > 30) & (pixels[..., 0] < 220)).sum() > 500  # the digits


def test_show_defaults_to_the_first_inputs_and_refuses_to_overwrite(
    thetas_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "thetas.png"
    result = ok("show", "--thetas", thetas_dir, "--out", out)
    assert "inputs 0, 1, 2, 3" in result.stderr
    assert pixels_of(out).shape == figure_shape(rows=4, columns=2)
    assert_domain_error(invoke("show", "--thetas", thetas_dir, "--out", out), "--force")
    ok("show", "--thetas", thetas_dir / "isotropic", "-i", 2, "--out", out, "--force")
    assert pixels_of(out).shape == figure_shape(rows=1, columns=2)


def test_show_pdf(thetas_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "thetas.pdf"
    ok("show", "--thetas", thetas_dir, "-i", 1, "--out", out)
    assert out.read_bytes()[:5] == b"%PDF-"


def test_show_errors(thetas_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.png"
    assert_domain_error(
        invoke("show", "--thetas", thetas_dir, "-i", 400, "--out", out),
        "no theta for test index 400",
    )
    assert_domain_error(
        invoke("show", "--thetas", tmp_path / "absent", "--out", out), "do not exist"
    )
    (tmp_path / "no").write_text("a file where the folder of --out should be")
    assert_domain_error(
        invoke("show", "--thetas", thetas_dir, "--out", tmp_path / "no" / "t.png"),
        "cannot create folder",
    )
    assert_domain_error(
        invoke("show", "--thetas", thetas_dir, "--dataset", "mnist", "--out", out),
        "mnist",
    )
    assert_usage_error(invoke("show", "--thetas", thetas_dir, "--out", tmp_path / "t.svg"))
    assert_usage_error(invoke("show", "--thetas", thetas_dir, "-i", -1, "--out", out))
    assert not out.exists()


def test_show_help_lists_every_option() -> None:
    from typer.testing import CliRunner

    from ancer_cli.cli import app

    result = CliRunner().invoke(app, ["show", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--thetas", "--out", "--index", "--dataset", "--data-root", "--split",
                   "--each-channel", "--force"):  # fmt: skip
        assert option in result.stdout


# ---------------------------------------------------------------------------------------------
# original ANCER folders (no manifest) and isotropic value files


def test_original_folder_needs_dataset(thetas_dir: Path, tmp_path: Path) -> None:
    original = tmp_path / "original"
    shutil.copytree(thetas_dir, original, ignore=shutil.ignore_patterns("isotropic"))
    (original / "manifest.json").unlink()
    out = tmp_path / "t.png"
    assert_domain_error(
        invoke("show", "--thetas", original, "--out", out), "manifest.json", "--dataset"
    )
    ok("show", "--thetas", original, "--dataset", "digits", "-i", 3, "--out", out)
    assert pixels_of(out).shape == figure_shape(rows=1, columns=2)


def test_isotropic_values_file(tmp_path: Path) -> None:
    values = tmp_path / "sigmas.pt"
    torch.save(torch.linspace(0.1, 0.6, 500), values)
    chosen = read_input_thetas(values, [0, 499], dataset="digits")
    assert [item.index for item in chosen.inputs] == [0, 499]
    assert float(chosen.inputs[1].theta) == pytest.approx(0.6)
    assert chosen.thetas.method == "isotropic" and chosen.norm is None
    out = tmp_path / "t.png"
    ok("show", "--thetas", values, "--dataset", "digits", "-i", 10, "--out", out)
    assert out.stat().st_size > 5_000


def test_read_input_thetas_matches_the_files(thetas_dir: Path) -> None:
    chosen = read_input_thetas(thetas_dir, [4, 2])
    manifest = json.loads((thetas_dir / "manifest.json").read_text())
    assert chosen.norm == manifest["arguments"]["norm"] == "l2"
    from ancer_cli.data import load_dataset

    data = load_dataset("digits", "test")
    for item in chosen.inputs:
        image, label = data.dataset[item.index]
        assert torch.equal(item.image, image) and item.label == label
        saved = torch.load(theta_path(thetas_dir, "test", item.index), weights_only=True)
        assert torch.equal(item.theta, saved) and item.theta.shape == (1, 8, 8)
    with pytest.raises(ThetaError, match="no theta for test index 77"):
        read_input_thetas(thetas_dir, [77])


# ---------------------------------------------------------------------------------------------
# colour images: one map per channel or their mean


@pytest.fixture
def rgb_thetas(tmp_path: Path) -> tuple[Path, Path]:
    """A 2-class folder dataset of 12x10 RGB images and an original-layout ANCER folder."""
    root = tmp_path / "images"
    generator = np.random.default_rng(0)
    for label, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(2):
            pixels = generator.integers(0, 256, (10, 12, 3), dtype=np.uint8)
            pixels[..., label] = 255
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    thetas = tmp_path / "thetas"
    thetas.mkdir()
    for idx in range(4):
        theta = torch.full((3, 10, 12), 0.25)
        theta[idx % 3, :, : 3 + idx] = 0.9  # a band of large theta in one channel
        save_theta(theta_path(thetas, "test", idx), theta)
    return root, thetas


@pytest.mark.parametrize(("each", "columns"), [(False, 2), (True, 4)], ids=["mean", "each"])
def test_rgb_pictures(
    rgb_thetas: tuple[Path, Path], tmp_path: Path, each: bool, columns: int
) -> None:
    root, thetas = rgb_thetas
    out = tmp_path / "rgb.png"
    extra = ["--each-channel"] if each else []
    ok("show", "--thetas", thetas, "--dataset", "folder", "--data-root", root,
       "-i", 0, "-i", 3, "--out", out, *extra)  # fmt: skip
    pixels = pixels_of(out)
    assert pixels.shape == figure_shape(rows=2, columns=columns)
    assert viridis_pixels(pixels) > 3_000
    # the red and green images of the two classes
    assert ((pixels[..., 0] > 240) & (pixels[..., 1] < 200)).sum() > 500
    assert ((pixels[..., 1] > 240) & (pixels[..., 0] < 200)).sum() > 500
