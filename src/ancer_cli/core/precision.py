"""Speed options of the base classifier: precision, memory format, CPU memory reuse.

A lower precision is part of the certified base classifier ``f``: the smoothed classifier being
certified is the one built on the low-precision ``f``, which computes its logits under
:func:`torch.autocast` from the noisy batch the caller hands it and returns them as fp32; votes
are int64 counts and the bounds are computed in double precision on the host. So a lower precision
adds no error of its own *after* the noisy input is formed. The noisy input itself is exact only
with the sound sampler (:mod:`ancer_cli.core.sound`), which assembles it in integers on the data's
grid: the default float noise, ``x + theta * eps`` added in fp32, rounds in a way that depends on
the bits of ``x``, so its law is not a translate of the law at a neighbouring point and a base
classifier that reads low-order bits can forge certificates (Voracek & Hein, ICLR 2023). In
optimization a lower precision only changes which theta is found.

Channels-last (NHWC) weights let convolution libraries skip layout conversions; the values are the
same, only the summation order inside a convolution may change. The noisy inputs stay contiguous
NCHW, so the random stream fills the same pixels as without the option.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ancer_cli.core.choices import Precision

_DTYPES = {
    Precision.fp32: torch.float32,
    Precision.bf16: torch.bfloat16,
    Precision.fp16: torch.float16,
}


def precision_dtype(precision: Precision | str) -> torch.dtype:
    """``torch.float32``, ``torch.bfloat16`` or ``torch.float16``."""
    return _DTYPES[Precision(precision)]


class AutocastClassifier(nn.Module):
    """``model`` evaluated under ``torch.autocast(dtype)``; logits returned as fp32.

    Input ``(B, C, H, W)`` in fp32 (the caller's noisy batch, untouched), output ``(B, K)`` fp32.
    Gradients flow through, so optimization works unchanged. The device type comes from the input.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            logits = self.model(x)
        return logits.float()

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"


def prepare_model(
    model: nn.Module, precision: Precision | str = Precision.fp32, channels_last: bool = False
) -> nn.Module:
    """The base classifier with the requested speed options.

    ``channels_last`` converts the 4-d weights of ``model`` to channels-last *in place* (as
    ``Module.to`` does). A precision other than fp32 wraps the model in
    :class:`AutocastClassifier`. With the defaults ``model`` itself is returned, unchanged.
    """
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    dtype = precision_dtype(precision)
    if dtype is torch.float32:
        return model
    return AutocastClassifier(model, dtype)


def speed_options_record(
    precision: Precision | str = Precision.fp32, channels_last: bool = False
) -> dict[str, Any]:
    """What a sidecar or manifest records about these options: ``{"precision", "channels_last"}``."""
    return {"precision": Precision(precision).value, "channels_last": bool(channels_last)}
