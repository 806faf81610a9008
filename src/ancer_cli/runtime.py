"""Devices, process-wide settings and provenance records shared by every command.

Importable without PyTorch (it is imported where a device is used): the command line sets the
process up before it knows whether a command will run or only print its help.
"""

from __future__ import annotations

import ctypes
import platform
import sys
from typing import TYPE_CHECKING, Any

from ancer_cli.errors import AncerError

if TYPE_CHECKING:
    import torch


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``; ``cuda``; ``cuda:k``."""
    import torch

    text = spec.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as error:
        raise AncerError(
            f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:K"
        ) from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AncerError(f"--device {spec}: CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AncerError(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif device.type != "cpu":
        raise AncerError(f"--device {spec!r} is not supported; use auto, cpu, cuda or cuda:K")
    return device


def describe_device(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    """Versions recorded in manifests and sidecars."""
    import numpy
    import scipy
    import torch

    from ancer_cli import __version__

    return {
        "ancer": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
    }


_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def retain_freed_memory() -> bool:
    """Keep the memory the process frees mapped, so the next forward pass reuses it.

    By default glibc serves large blocks (a batch's activations) with fresh ``mmap`` pages and
    returns them to the kernel when they are freed, and it trims the top of its heap; every
    forward pass on the CPU then page-faults tens of megabytes of zeroed pages back in. Measured
    with ``benchmarks/speed.py`` on a 2-core VM this is a third or more of a CPU forward pass.
    ``mallopt(M_MMAP_MAX, 0)`` and ``mallopt(M_TRIM_THRESHOLD, -1)`` make glibc keep freed blocks
    for reuse. The setting is process-wide and the resident size stays at its peak, so only an
    application (the CLI) should call this, once, at start-up. Returns whether it took effect:
    ``False`` without glibc (macOS, Windows, musl), where nothing is changed.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))


_HOST_MEMORY_RETAINED = False


def retain_host_memory() -> bool:
    """Process-wide, once at start-up of the command-line program: keep freed CPU memory mapped
    for reuse (see :func:`retain_freed_memory`). Returns whether it took effect;
    :func:`host_memory_retained` reports it for sidecars and manifests."""
    global _HOST_MEMORY_RETAINED
    _HOST_MEMORY_RETAINED = retain_freed_memory()
    return _HOST_MEMORY_RETAINED


def host_memory_retained() -> bool:
    return _HOST_MEMORY_RETAINED


def provenance(device: torch.device) -> dict[str, Any]:
    """What every sidecar and manifest records about where it was made: the device, whether
    freed host memory was retained, and the versions of the package and its main libraries."""
    return {
        "device": describe_device(device),
        "host_memory_retained": host_memory_retained(),
        "versions": versions(),
    }
