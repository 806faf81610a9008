"""Devices and process-wide settings shared by every command."""

from __future__ import annotations

import platform
from typing import Any

import torch

from ancer_cli.errors import AncerError


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``; ``cuda``; ``cuda:k``."""
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
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    """Versions recorded in manifests and sidecars."""
    import numpy
    import scipy

    from ancer_cli import __version__

    return {
        "ancer": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
    }


_HOST_MEMORY_RETAINED = False


def retain_host_memory() -> bool:
    """Process-wide, once at start-up of the command-line program: keep freed CPU memory mapped
    for reuse (see :func:`ancer_cli.core.precision.retain_freed_memory`). Returns whether it
    took effect; :func:`host_memory_retained` reports it for sidecars and manifests."""
    from ancer_cli.core.precision import retain_freed_memory

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
