"""How one image file becomes ``x``: its pixel kind, read from the header; its exact values; and
the pixel grid a folder of such images lies on.

Every image is read at its real bit depth, or refused with one line naming the file:

=========================================  ==========================  =====================
what the file holds (PIL mode)             ``x`` (3 channels)           grid
=========================================  ==========================  =====================
8-bit: ``1``, ``L``, ``P``, ``RGB``,       ``k / 255``, as PIL's        ``1/255``
``RGBA``, ``LA``, ``PA``, ``CMYK``,        ``convert("RGB")`` gives it
``YCbCr``, ...                             (palette: its colours;
                                           alpha: dropped; CMYK: PIL's
                                           conversion)
16-bit grayscale: ``I;16``, ``I;16B``,     ``k / 65535``, the gray      ``1/65535``
``I;16L``, ``I`` decoded from 16 bits      copied to 3 channels
float: ``F`` (float TIFF)                  the values, which must lie   none
                                           in [0, 1] (never clipped);
                                           64-bit floats as float32
=========================================  ==========================  =====================

Refused: 16-bit colour (PIL decodes it to 8 bits, dropping the low byte of every sample), 32-bit
and signed integer images, other modes PIL cannot convert to RGB. A folder's grid is the finest
its images need: 8-bit values are on the 1/65535 grid too (``k / 255 = 257 k / 65535``), so 8-
and 16-bit images share the 1/65535 grid; one float image leaves the folder without a grid (float
noise only).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ancer_cli.data.base import EIGHT_BIT_LEVELS, SIXTEEN_BIT_LEVELS
from ancer_cli.errors import DataError

Geometry = Callable[[Any], Any]
"""A resize or crop of a PIL image (the ImageNet transform), applied before the values are read."""


class PixelKind(str, enum.Enum):
    """What one sample of an image file holds."""

    eight_bit = "8-bit"
    sixteen_bit = "16-bit"
    floating = "float"

    @property
    def levels(self) -> int | None:
        """The grid ``s`` its values lie on (``k / s``), ``None`` for float images."""
        return _LEVELS[self]


_LEVELS = {
    PixelKind.eight_bit: EIGHT_BIT_LEVELS,
    PixelKind.sixteen_bit: SIXTEEN_BIT_LEVELS,
    PixelKind.floating: None,
}

# PIL modes whose samples are 8-bit (or fewer bits, scaled by PIL to 0..255), read through
# convert("RGB") as before this module existed.
_EIGHT_BIT_MODES = frozenset(
    {"1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "LA", "La", "PA", "CMYK", "YCbCr", "LAB", "HSV"}
)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# rawmodes (how PIL unpacks the file's bytes) of unsigned 16-bit samples
_SIXTEEN_BIT_RAWMODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# "RGB;16B", "RGBA;16L", "LA;16B", "CMYK;16N", ...: 16 bits per sample that PIL packs into 8
# ("BGR;16", a 5-6-5 pixel of BMP, has no byte-order letter and is 8-bit material)
_WIDE_COLOUR_RAWMODE = re.compile(r";16[BLN]$")


def _rawmode(image: Any) -> str | None:
    """How PIL will unpack ``image``'s bytes (``"RGB;16B"``, ``"I;16"``, ...), known from the
    header before the pixels are read; ``None`` where the format does not say (GIF, WebP)."""
    tiles = getattr(image, "tile", None) or []
    if not tiles:
        return None
    args = tiles[0][3]
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _tiff_bits(image: Any) -> tuple[int, ...]:
    tags = getattr(image, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None  # BitsPerSample
    if isinstance(bits, int):
        return (bits,)
    return tuple(int(b) for b in bits) if bits else ()


def pixel_kind(image: Any, path: Path | str) -> PixelKind:
    """The kind of the opened, not yet loaded, PIL ``image`` (read from the header only), or a
    :class:`DataError` naming ``path`` for an image ancer does not read at its bit depth."""
    mode = image.mode
    rawmode = _rawmode(image)
    if mode in _EIGHT_BIT_MODES:
        wide = rawmode is not None and _WIDE_COLOUR_RAWMODE.search(rawmode) is not None
        if wide or max(_tiff_bits(image), default=8) > 8:
            raise DataError(
                f"image {path} has 16-bit colour samples ({image.format} {mode}), which PIL "
                "decodes to 8 bits only, dropping the low byte of every value; save it as 8-bit "
                "colour, or each channel as a 16-bit grayscale image"
            )
        return PixelKind.eight_bit
    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and rawmode in _SIXTEEN_BIT_RAWMODES):
        if rawmode is not None and rawmode not in _SIXTEEN_BIT_RAWMODES:
            raise DataError(
                f"image {path} is decoded from {rawmode} samples into 16 bits ({image.format} "
                f"{mode}); ancer reads unsigned 16-bit grayscale as k / 65535: save it as such "
                "or as 8-bit"
            )
        return PixelKind.sixteen_bit
    if mode == "F":
        return PixelKind.floating
    if mode == "I":
        raise DataError(
            f"image {path} holds 32-bit or signed integers ({image.format}, "
            f"{rawmode or 'mode I'}), which have no agreed range; save it as 8- or 16-bit "
            "unsigned, or as float values in [0, 1]"
        )
    raise DataError(
        f"image {path} has PIL mode {mode} ({image.format}), which ancer does not read; save it "
        "as 8-bit RGB or grayscale, 16-bit grayscale, or float in [0, 1]"
    )


def fits_grid(kind: PixelKind, grid_levels: int | None) -> bool:
    """Whether images of ``kind`` lie on the ``1 / grid_levels`` grid (any kind fits ``None``)."""
    if grid_levels is None:
        return True
    return kind.levels is not None and grid_levels % kind.levels == 0


@contextmanager
def open_image(path: Path | str) -> Iterator[Any]:
    """``path`` opened with PIL (lazily: the header is read, the pixels when asked for); an
    unreadable or corrupt file is a :class:`DataError` naming it, whenever PIL finds out."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            yield image
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise DataError(
            f"cannot read image {path} ({error}); remove or replace the file"
        ) from error


def decode(
    image: Any, kind: PixelKind, path: Path | str, geometry: Geometry | None = None
) -> torch.Tensor:
    """``image`` (of ``kind``) as ``x``: float32 ``(3, H, W)``, each value ``k / s`` exactly
    (``s = kind.levels``; the float value itself for float images), after ``geometry`` (a resize
    and crop) if given.

    8-bit images go through ``convert("RGB")`` and torchvision's ``to_tensor`` (so the values are
    the correctly rounded ``k / 255``); 16-bit ones are resized, if at all, in PIL's 32-bit
    integer mode, which rounds to integers, so ``x`` stays on the grid; float images must lie in
    [0, 1] (and finite) before and after ``geometry``: a value outside is a :class:`DataError`,
    never clipped.
    """
    if kind is PixelKind.eight_bit:
        from torchvision.transforms.functional import to_tensor

        rgb = image.convert("RGB")
        return to_tensor(geometry(rgb) if geometry is not None else rgb)
    if kind is PixelKind.sixteen_bit:
        plane = image
        if geometry is not None:
            plane = geometry(image if image.mode == "I" else image.convert("I"))
        values = np.asarray(plane)
        if values.size and not 0 <= values.min() <= values.max() <= SIXTEEN_BIT_LEVELS:
            raise DataError(  # bilinear weights are non-negative: not seen in practice
                f"image {path}: resizing moved its 16-bit values to [{values.min()}, "
                f"{values.max()}]; ancer does not clip them: resize the image yourself"
            )
        gray = torch.from_numpy(values.astype(np.float32)).div_(float(SIXTEEN_BIT_LEVELS))
    else:
        _check_unit_range(np.asarray(image), path, "holds")
        plane = geometry(image) if geometry is not None else image
        values = np.asarray(plane, dtype=np.float32)
        if geometry is not None:
            _check_unit_range(values, path, "resized holds")
        gray = torch.from_numpy(values.copy())
    return gray.unsqueeze(0).repeat(3, 1, 1)


def _check_unit_range(values: np.ndarray, path: Path | str, what: str) -> None:
    if values.size == 0:
        return
    finite = np.isfinite(values)
    kept = values[finite]
    low, high = (float(kept.min()), float(kept.max())) if kept.size else (0.0, 0.0)
    if kept.size == values.size and 0.0 <= low and high <= 1.0:
        return
    span = f"values in [{low:.6g}, {high:.6g}]" if kept.size else "no finite value"
    if kept.size < values.size:
        span += " and NaN or infinity"
    raise DataError(
        f"float image {path} {what} {span}; ancer reads float images as pixel values in "
        "[0, 1] and never clips them: rescale the image"
    )


@dataclass
class PixelSurvey:
    """The pixel kinds of a folder's images, read from their headers: how many of each, and the
    first file of each. Files PIL cannot open are left out (reading them fails later, naming
    them)."""

    counts: dict[PixelKind, int] = field(default_factory=dict)
    first: dict[PixelKind, str] = field(default_factory=dict)

    def add(self, kind: PixelKind, path: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.first.setdefault(kind, path)

    @property
    def grid_levels(self) -> int | None:
        """The finest grid every image lies on: 255 (8-bit only), 65535 (some 16-bit), ``None``
        (some float image)."""
        if PixelKind.floating in self.counts:
            return None
        if PixelKind.sixteen_bit in self.counts:
            return SIXTEEN_BIT_LEVELS
        return EIGHT_BIT_LEVELS

    def note(self, directory: Path) -> str | None:
        """One line for a command to show when the folder has no grid: why sound sampling is off
        and the noise is float noise. ``None`` when the folder has a grid."""
        if self.grid_levels is not None:
            return None
        floats = self.counts[PixelKind.floating]
        total = sum(self.counts.values())
        return (
            f"{floats} of the {total} images under {directory} are float images (the first: "
            f"{self.first[PixelKind.floating]}), which lie on no pixel grid, so certify and "
            "predict draw float noise, not sound noise on a grid (8- and 16-bit images have one)"
        )


_JPEG_START = b"\xff\xd8\xff"
"""A JPEG file's first bytes: PIL decodes JPEG at 8 bits only (12-bit and lossless JPEG it cannot
read at all), so such a file is 8-bit or fails when it is read."""


def survey_images(paths: Iterable[str]) -> PixelSurvey:
    """The :class:`PixelSurvey` of ``paths``, from their headers only (no pixel is decoded): a
    JPEG from its first three bytes, any other file through PIL's lazy open (about 35 us per small
    PNG). An image ancer refuses (see :func:`pixel_kind`) is a :class:`DataError` now rather than
    when it is read."""
    from PIL import Image, UnidentifiedImageError

    survey = PixelSurvey()
    for path in paths:
        try:
            with open(path, "rb") as handle:
                if handle.read(len(_JPEG_START)) == _JPEG_START:
                    survey.add(PixelKind.eight_bit, path)
                    continue
                handle.seek(0)
                with Image.open(handle) as image:
                    kind = pixel_kind(image, path)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            continue  # reported, naming the file, when it is read
        survey.add(kind, path)
    return survey
