"""Writers of the real on-disk dataset formats, for tiny test data: idx-ubyte files (MNIST), python
pickles (CIFAR-10), image trees (folders) and the 16-bit colour images PIL cannot write."""

from __future__ import annotations

import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """An idx-ubyte file: big-endian magic, one big-endian uint32 per dimension, uint8 data."""
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist(root: Path, n_train: int = 6, n_test: int = 4) -> dict[str, np.ndarray]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    arrays = {}
    for prefix, count in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, 2051)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, 2049)
        arrays[f"{prefix}_images"], arrays[f"{prefix}_labels"] = images, labels
    return arrays


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    batch = {
        b"batch_label": b"tiny batch",
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    with open(path, "wb") as handle:
        pickle.dump(batch, handle, protocol=2)


def make_cifar(root: Path, per_batch: int = 2) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        write_cifar_batch(folder / name, data, labels)
        written[name] = data
        written[name + "_labels"] = np.array(labels)
    meta = {
        b"num_cases_per_batch": per_batch,
        b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
        + [b"dog", b"frog", b"horse", b"ship", b"truck"],
        b"num_vis": 3072,
    }
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump(meta, handle, protocol=2)
    return written


def write_png(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def make_image_tree(root: Path, classes: tuple[str, ...], size: tuple[int, int], per: int) -> None:
    for index, name in enumerate(classes):
        for i in range(per):
            write_png(root / name / f"{i}.png", size, (index * 60, i * 40, 200))


def write_png_16bit(path: Path, samples: np.ndarray) -> None:
    """A 16-bit PNG of ``samples`` (uint16, ``(H, W)`` gray, ``(H, W, 2)`` gray + alpha,
    ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA), written by hand: PIL writes 16-bit gray only."""
    height, width = samples.shape[:2]
    channels = 1 if samples.ndim == 2 else samples.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = samples.reshape(height, width * channels).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(tag + data))
        return struct.pack(">I", len(data)) + tag + data + crc

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def write_tiff_16bit_rgb(path: Path, samples: np.ndarray) -> None:
    """An uncompressed little-endian TIFF of uint16 RGB ``samples`` ``(H, W, 3)``, by hand (PIL
    writes no 16-bit colour)."""
    height, width = samples.shape[:2]
    data = samples.astype("<u2").tobytes()
    entry_count = 10
    bits_offset = 8 + 2 + entry_count * 12 + 4
    data_offset = bits_offset + 6

    def entry(tag: int, kind: int, count: int, value: bytes) -> bytes:
        return struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\x00")

    short, long = (lambda v: struct.pack("<H", v)), (lambda v: struct.pack("<I", v))
    entries = [
        entry(256, 4, 1, long(width)),
        entry(257, 4, 1, long(height)),
        entry(258, 3, 3, long(bits_offset)),  # BitsPerSample 16, 16, 16
        entry(259, 3, 1, short(1)),  # no compression
        entry(262, 3, 1, short(2)),  # RGB
        entry(273, 4, 1, long(data_offset)),
        entry(277, 3, 1, short(3)),  # samples per pixel
        entry(278, 4, 1, long(height)),  # one strip
        entry(279, 4, 1, long(len(data))),
        entry(284, 3, 1, short(1)),  # interleaved
    ]
    directory = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"II*\x00" + struct.pack("<I", 8) + directory + struct.pack("<3H", 16, 16, 16) + data
    )
