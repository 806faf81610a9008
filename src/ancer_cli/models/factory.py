"""User architectures: ``--arch package.module:factory`` builds the user's own ``nn.Module``."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from ancer_cli.errors import ModelError, first_line


def build_factory(spec: str, num_classes: int | None) -> nn.Module:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ModelError(f"--arch {spec!r} must look like package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - a user module can fail to import in any way
        raise ModelError(
            f"--arch {spec}: cannot import module {module_name} ({type(error).__name__}: "
            f"{first_line(error)}); make sure it is importable (PYTHONPATH or an installed package)"
        ) from error
    try:
        factory = functools.reduce(getattr, attribute.split("."), module)
    except AttributeError as error:
        raise ModelError(
            f"--arch {spec}: module {module_name} ({getattr(module, '__file__', '?')}) has no "
            f"attribute {attribute}"
        ) from error
    if not callable(factory):
        raise ModelError(f"--arch {spec}: {attribute} is a {type(factory).__name__}, not callable")
    try:
        if num_classes is not None and _accepts_num_classes(factory):
            built = factory(num_classes=num_classes)
        else:
            built = factory()
    except Exception as error:  # noqa: BLE001 - user code
        raise ModelError(
            f"--arch {spec}: calling the factory failed ({type(error).__name__}: "
            f"{first_line(error)})"
        ) from error
    if not isinstance(built, nn.Module):
        raise ModelError(
            f"--arch {spec}: the factory returned a {type(built).__name__}, expected a "
            "torch.nn.Module"
        )
    return built


def _accepts_num_classes(factory: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        (p.name == "num_classes" and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        or p.kind is inspect.Parameter.VAR_KEYWORD
        for p in parameters
    )
