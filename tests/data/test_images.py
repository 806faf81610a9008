"""Image files read at their real bit depth, in the formats users have: 16-bit grayscale PNG, TIFF
and PGM on the 1/65535 grid, float TIFF without a grid, the 8-bit kinds (palette, alpha, CMYK,
bilevel) exactly as before, what is refused, folders mixing kinds, and ImageNet's resize."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from ancer_cli.core.sound import to_grid
from ancer_cli.data import load_dataset
from ancer_cli.data.images import PixelKind, fits_grid, open_image, pixel_kind, survey_images
from ancer_cli.errors import DataError
from tests.data.writers import write_png, write_png_16bit, write_tiff_16bit_rgb

GRAY16 = np.array([[0, 1, 12345, 65535], [257, 32768, 65534, 2]], dtype=np.uint16)
FLOATS = np.array([[0.0, 0.1, 0.5, 0.999999], [1e-8, 0.25, 1 / 3, 0.75]], dtype=np.float32)


def save(array: np.ndarray, path: Path, **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


def on_three_channels(gray: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(gray.astype(np.float32)).unsqueeze(0).repeat(3, 1, 1)


@pytest.mark.parametrize("name", ["gray.png", "gray.tif", "gray.pgm"])
def test_16_bit_grayscale_is_read_as_k_over_65535(tmp_path: Path, name: str) -> None:
    path = save(GRAY16, tmp_path / "a" / name)
    with Image.open(path) as image:  # PIL writes and reads the 16 bits back
        assert image.mode in ("I;16", "I") and np.array_equal(np.asarray(image), GRAY16)
    loaded = load_dataset("folder", "test", data_root=tmp_path)
    assert loaded.grid_levels == 65535 and loaded.grid_note is None
    x, label = loaded.dataset[0]
    assert x.shape == (3, 2, 4) and x.dtype == torch.float32 and label == 0
    assert torch.equal(x, on_three_channels(GRAY16) / 65535)
    assert float(x[0, 0, 2]) == float(np.float32(12345 / 65535))  # correctly rounded k / 65535
    assert torch.equal(to_grid(x, 65535), on_three_channels(GRAY16).int())


def test_float_tiff_has_no_grid_and_says_why(tmp_path: Path) -> None:
    path = save(FLOATS, tmp_path / "a" / "plane.tif")
    with Image.open(path) as image:
        assert image.mode == "F" and pixel_kind(image, path) is PixelKind.floating
    loaded = load_dataset("folder", "test", data_root=tmp_path)
    assert loaded.grid_levels is None
    assert loaded.grid_note is not None and "1 of the 1 images" in loaded.grid_note
    assert str(path) in loaded.grid_note and "float" in loaded.grid_note
    assert torch.equal(loaded.dataset[0][0], on_three_channels(FLOATS))  # the values, exactly


@pytest.mark.parametrize(
    ("values", "shown"),
    [
        (FLOATS * 1.5, r"values in \[0, 1.5\]"),
        (FLOATS - 0.5, r"values in \[-0.5, 0.49"),
        (np.where(FLOATS > 0.7, np.nan, FLOATS), r"values in \[0, 0.5\] and NaN or infinity"),
    ],
)
def test_float_values_outside_0_1_are_refused_not_clipped(
    tmp_path: Path, values: np.ndarray, shown: str
) -> None:
    save(values, tmp_path / "a" / "bright.tif")
    loaded = load_dataset("folder", "test", data_root=tmp_path)  # headers only so far
    with pytest.raises(DataError, match=rf"float image .*bright\.tif holds {shown}.* never clips"):
        loaded.dataset[0]


def eight_bit_kinds(folder: Path) -> dict[str, Path]:
    """One 4x2 image of each 8-bit kind a user may have."""
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]] * 2, dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(4)
    alpha = np.dstack([rgb, np.array([[0, 80, 160, 255]] * 2, dtype=np.uint8)])
    cmyk = np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [255, 0, 0, 0], [10, 20, 30, 40]]] * 2)
    folder.mkdir(parents=True)
    files = {
        "palette": folder / "palette.png",
        "rgba": folder / "rgba.png",
        "la": folder / "la.png",
        "cmyk_tiff": folder / "cmyk.tif",
        "cmyk_jpeg": folder / "cmyk.jpg",
        "bilevel": folder / "bilevel.png",
        "gray_jpeg": folder / "gray.jpg",
    }
    palette.save(files["palette"])
    Image.fromarray(alpha, "RGBA").save(files["rgba"])
    Image.fromarray(alpha[..., [0, 3]], "LA").save(files["la"])
    Image.fromarray(cmyk.astype(np.uint8), "CMYK").save(files["cmyk_tiff"])
    Image.fromarray(cmyk.astype(np.uint8), "CMYK").save(files["cmyk_jpeg"], quality=95)
    Image.fromarray(rgb[..., 0] > 128).save(files["bilevel"])
    Image.fromarray(rgb[..., 1]).save(files["gray_jpeg"])
    return files


def test_8_bit_kinds_read_as_before_on_the_255_grid(tmp_path: Path) -> None:
    files = eight_bit_kinds(tmp_path / "a")
    loaded = load_dataset("folder", "test", data_root=tmp_path)
    assert loaded.grid_levels == 255 and loaded.grid_note is None
    read = {
        Path(path).name: loaded.dataset[i][0] for i, (path, _) in enumerate(loaded.dataset.samples)
    }
    for path in files.values():
        with Image.open(path) as image:
            before = transforms.ToTensor()(image.convert("RGB"))  # what every image went through
        x = read[path.name]
        assert torch.equal(x, before), path.name  # byte-identical
        assert torch.equal(to_grid(x, 255).float() / 255, x)

    def pixels(key: str) -> list[list[int]]:
        return (read[files[key].name][:, 0] * 255).round().int().t().tolist()

    # palette: its RGB colours; alpha: dropped, the stored colours kept; CMYK: PIL's conversion
    assert pixels("palette") == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]
    assert pixels("rgba") == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]
    assert pixels("la") == [[255] * 3, [0] * 3, [0] * 3, [10] * 3]
    assert pixels("cmyk_tiff")[:3] == [[255, 255, 255], [0, 0, 0], [0, 255, 255]]
    assert pixels("bilevel") == [[255] * 3, [0] * 3, [0] * 3, [0] * 3]


def test_16_bit_colour_is_refused_in_one_line(tmp_path: Path) -> None:
    """PIL decodes 16-bit colour to 8 bits, dropping the low byte: refused, not truncated."""
    samples = np.random.default_rng(0).integers(0, 65536, (2, 4, 4), dtype=np.uint16)
    cases = {
        "rgb.png": lambda path: write_png_16bit(path, samples[..., :3]),
        "rgba.png": lambda path: write_png_16bit(path, samples),
        "gray_alpha.png": lambda path: write_png_16bit(path, samples[..., :2]),
        "rgb.tif": lambda path: write_tiff_16bit_rgb(path, samples[..., :3]),
    }
    for name, write in cases.items():
        root = tmp_path / name
        write(root / "a" / name)
        with pytest.raises(DataError, match=rf"image .*{name} has 16-bit colour samples") as caught:
            load_dataset("folder", "test", data_root=root)
        assert "\n" not in str(caught.value)
    # hand-written 16-bit gray reads back exactly, so the writer is not what is refused
    write_png_16bit(tmp_path / "gray" / "a" / "gray.png", GRAY16)
    loaded = load_dataset("folder", "test", data_root=tmp_path / "gray")
    assert torch.equal(to_grid(loaded.dataset[0][0], 65535)[0], torch.from_numpy(GRAY16).int())


def test_32_bit_integer_images_are_refused(tmp_path: Path) -> None:
    save(GRAY16.astype(np.int32) * 3, tmp_path / "a" / "wide.tif")
    with pytest.raises(DataError, match=r"wide\.tif holds 32-bit or signed integers"):
        load_dataset("folder", "test", data_root=tmp_path)


def test_8_and_16_bit_images_share_the_65535_grid(tmp_path: Path) -> None:
    eight = np.array([[0, 1, 128, 255], [2, 3, 254, 77]], dtype=np.uint8)
    save(eight, tmp_path / "a" / "eight.png")
    save(GRAY16, tmp_path / "a" / "sixteen.png")
    loaded = load_dataset("folder", "test", data_root=tmp_path)
    assert loaded.grid_levels == 65535
    x8, x16 = loaded.dataset[0][0], loaded.dataset[1][0]
    # k / 255 is 257 k / 65535: the same float32, read as before, on the finer grid
    assert torch.equal(x8, on_three_channels(eight) / 255)
    assert torch.equal(to_grid(x8, 65535), 257 * on_three_channels(eight).int())
    assert torch.equal(to_grid(x16, 65535), on_three_channels(GRAY16).int())


def test_one_float_image_leaves_the_folder_without_a_grid(tmp_path: Path) -> None:
    save(GRAY16, tmp_path / "a" / "sixteen.png")
    write_png(tmp_path / "a" / "eight.png", (4, 2), (1, 2, 3))
    save(FLOATS, tmp_path / "b" / "plane.tif")
    loaded = load_dataset("folder", "test", data_root=tmp_path)
    assert loaded.grid_levels is None
    assert loaded.grid_note is not None and "1 of the 3 images" in loaded.grid_note
    assert torch.equal(loaded.dataset[1][0], on_three_channels(GRAY16) / 65535)
    assert torch.equal(loaded.dataset[2][0], on_three_channels(FLOATS))


def test_an_image_off_the_surveyed_grid_is_refused_when_read(tmp_path: Path) -> None:
    write_png(tmp_path / "a" / "0.png", (4, 2), (1, 2, 3))
    loaded = load_dataset("folder", "test", data_root=tmp_path)
    assert loaded.grid_levels == 255
    save(GRAY16, tmp_path / "a" / "0.png")  # replaced after the dataset was loaded
    with pytest.raises(DataError, match=r"0\.png is a 16-bit image .* the 1/255 grid"):
        loaded.dataset[0]


def test_kinds_fit_the_grids_that_hold_them() -> None:
    assert fits_grid(PixelKind.eight_bit, 255) and fits_grid(PixelKind.eight_bit, 65535)
    assert fits_grid(PixelKind.sixteen_bit, 65535) and not fits_grid(PixelKind.sixteen_bit, 255)
    assert not fits_grid(PixelKind.floating, 65535) and not fits_grid(PixelKind.floating, 255)
    assert all(fits_grid(kind, None) for kind in PixelKind)


def test_a_survey_reads_headers_and_skips_what_pil_cannot_open(tmp_path: Path) -> None:
    good = save(GRAY16, tmp_path / "good.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"no png here")
    survey = survey_images([str(broken), str(good)])
    assert survey.counts == {PixelKind.sixteen_bit: 1} and survey.grid_levels == 65535
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        with open_image(broken):
            pass


def test_imagenet_resizes_16_bit_images_as_integers(tmp_path: Path) -> None:
    gray = np.random.default_rng(3).integers(0, 65536, (260, 300), dtype=np.uint16)
    save(gray, tmp_path / "val" / "n01" / "0.png")
    loaded = load_dataset("imagenet", "val", data_root=tmp_path)
    assert loaded.grid_levels == 65535
    x = loaded.dataset[0][0]
    assert x.shape == (3, 224, 224)
    # PIL's bilinear resize of the 32-bit integer image, cropped: integers, so on the grid
    geometry = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    expected = np.asarray(geometry(Image.fromarray(gray).convert("I")))
    assert torch.equal(to_grid(x, 65535), on_three_channels(expected).int())


def test_imagenet_resizes_float_images_in_float_and_8_bit_ones_as_before(tmp_path: Path) -> None:
    plane = np.random.default_rng(4).random((260, 300), dtype=np.float32)
    save(plane, tmp_path / "float" / "val" / "n01" / "0.tif")
    floats = load_dataset("imagenet", "val", data_root=tmp_path / "float")
    assert floats.grid_levels is None and floats.grid_note is not None
    x = floats.dataset[0][0]
    assert x.shape == (3, 224, 224) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    write_png(tmp_path / "eight" / "val" / "n01" / "0.png", (300, 260), (10, 200, 77))
    eight = load_dataset("imagenet", "val", data_root=tmp_path / "eight")
    old = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()]
    )
    with Image.open(tmp_path / "eight" / "val" / "n01" / "0.png") as image:
        assert torch.equal(eight.dataset[0][0], old(image.convert("RGB")))
    assert eight.grid_levels == 255
