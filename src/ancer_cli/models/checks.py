"""Is the base classifier a function of one input? A cheap check, run before certifying.

Why. Randomized smoothing certifies ``g(x) = argmax_c P(f(x + eps) = c)`` for a base classifier
``f`` of one input. A model whose answer for one input depends on what else shares its forward
pass -- BatchNorm left in training mode, a layer that reads batch statistics, an output that
depends on the batch size -- is not such an ``f``: certify evaluates it on batches of noisy copies
of *one* input, so it can read that input's batch mean (a far less noisy view of ``x`` than one
copy) and answer differently for two inputs that lie inside each other's certified balls. Measured:
a TorchScript model that reads the batch mean certified ``x0`` as class 0 and ``x1``, 0.166 away,
as class 1, both at radius 1.599.

How. :func:`check_per_input` forwards ``copies`` noisy copies of one or two real inputs in five
more arrangements and compares their logits with those of the whole batch at once:

1. the whole batch again (the same call twice must agree: a model that does not, dropout left
   in training mode, say, is refused with its own message);
2. the first ``singles`` copies one by one (batch size 1);
3. the batch in reverse order, in two halves;
4. the batch in a random order behind as many black images, then behind as many white ones:
   every batch statistic moves halfway to 0, then halfway to 1, so a model that thresholds one
   crosses its threshold in one of the two, wherever the threshold lies between.

An item *deviates* when one of its logits moves by more than ``tolerance`` (0.02) times the
logits' scale, the largest logit magnitude of the two arrangements compared, and the model is
refused when at least a quarter of an arrangement's items deviate. Floating point does change
logits with the batch arrangement (cuDNN and MKL pick other kernels for other batch sizes), so
the check runs in float32 with TF32 off (an :class:`~ancer_cli.core.precision.AutocastClassifier`
is unwrapped: ``--precision`` does not change what the model computes, only how exactly): honest
models then move by parts in 10^7 of the scale (3e-7 measured on a resnet20 on the CPU), five
orders of magnitude below the tolerance, and argmax flips at near-ties are never counted on their
own. A model that reads its batch moves most items: BatchNorm in training mode by 0.04 to 0.9 of
the scale when its batch is padded (randomly initialised and trained-like resnet20s, a small
CNN), the batch-mean model above by the whole scale; they fail at every seed.

Threat model. The check detects models that read batch statistics or the batch size. It cannot
detect a model written to behave per input on the check's arrangements yet differently elsewhere
(on batches larger than the check's, on a particular input, after a number of calls), nor does
it look inside Python: ``--arch package.module:factory`` runs the user's own code, which is
trusted by construction, as is the code of a denoiser. A model *file* (checkpoint, TorchScript,
``torch.export``) runs no Python when loaded, but its graph may compute anything: this check is
what stands between such a graph and a certificate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ancer_cli.core.precision import AutocastClassifier
from ancer_cli.data.base import LoadedData
from ancer_cli.errors import ModelError, first_line

CHECK_COPIES = 32
"""Noisy copies forwarded in every arrangement."""
CHECK_SINGLES = 8
"""Copies forwarded one at a time (batch size 1)."""
LOGIT_TOLERANCE = 0.02
"""A logit moving by more than this fraction of the logits' scale is not float noise."""
DEVIATING_SHARE = 0.25
"""The model is refused when this share of an arrangement's items deviate."""


@dataclass(frozen=True)
class BatchCheck:
    """What :func:`check_per_input` found on a model that passed.

    ``forward_passes`` and ``items`` count the model calls and the inputs they carried;
    ``deviation`` is the largest logit change between two arrangements, as a fraction of the
    logits' scale (float noise: about 1e-7); ``seconds`` is the wall time of the check.
    """

    forward_passes: int
    items: int
    deviation: float
    seconds: float


def check_inputs(data: LoadedData, count: int = 2) -> torch.Tensor:
    """The first ``count`` inputs of ``data`` (fewer if it has fewer), ``(m, C, H, W)`` float32:
    real inputs for :func:`check_per_input`."""
    size = data.size
    chosen = [data.dataset[i][0] for i in range(min(count, size))]
    if not chosen:
        raise ModelError(f"the {data.info.name} {data.split} split is empty: nothing to check")
    return torch.stack(chosen).to(torch.float32)


def check_per_input(
    model: nn.Module,
    inputs: torch.Tensor,
    where: str,
    *,
    noise: float = 0.25,
    copies: int = CHECK_COPIES,
    singles: int = CHECK_SINGLES,
    seed: int = 0,
    tolerance: float = LOGIT_TOLERANCE,
) -> BatchCheck:
    """Refuse ``model`` unless its logits for an input do not depend on what shares its forward
    pass (module docstring); return what the check measured.

    ``inputs``: ``(m, C, H, W)``, one or two real inputs, on the model's device; the copies are
    ``inputs[i % m] + noise * N(0, I)`` (``noise``: the run's sigma; the noise comes from a CPU
    generator seeded with ``seed``, so the check is the same on every device). ``where`` names
    the model in the one-line :class:`ModelError`. The model is called as given (its train/eval
    mode untouched; an autocast wrapper removed) under ``torch.inference_mode``, in float32 with
    TF32 off.
    """
    started = time.perf_counter()
    if inputs.ndim != 4 or inputs.shape[0] < 1:
        raise ValueError(f"inputs must be (m, C, H, W) with m >= 1, got {tuple(inputs.shape)}")
    count = max(2, copies)
    generator = torch.Generator().manual_seed(seed)
    eps = torch.randn((count, *inputs.shape[1:]), generator=generator)
    order = torch.randperm(count, generator=generator)
    source = torch.arange(count) % inputs.shape[0]
    batch = inputs[source.to(inputs.device)] + noise * eps.to(inputs.device, inputs.dtype)
    if isinstance(model, AutocastClassifier):
        model = model.model
    calls = _Calls(model, where)

    with torch.inference_mode(), _full_float32():
        reference = calls(batch)
        repeat = calls(batch)
        deviating, deviation = _compare(reference, repeat, tolerance)
        if deviating:
            raise ModelError(
                f"model {where} gives different logits for the same batch twice ({deviating} of "
                f"{count} inputs moved by up to {deviation:.3g} of the logits' scale): ancer "
                "certifies deterministic per-input classifiers only (dropout in training mode?)"
            )
        alone = min(max(1, singles), count)
        arrangements: list[tuple[str, Callable[[], torch.Tensor]]] = [
            ("one at a time", lambda: torch.cat([calls(batch[i : i + 1]) for i in range(alone)])),
            ("in two halves, reversed", lambda: _halves_reversed(calls, batch)),
            ("shuffled behind black images", lambda: _padded(calls, batch, order, 0.0)),
            ("shuffled behind white images", lambda: _padded(calls, batch, order, 1.0)),
        ]
        worst = deviation
        for how, arrange in arrangements:
            logits = arrange()
            deviating, deviation = _compare(reference[: logits.shape[0]], logits, tolerance)
            worst = max(worst, deviation)
            if deviating >= max(1, math.ceil(DEVIATING_SHARE * logits.shape[0])):
                raise ModelError(
                    f"model {where} is not a function of one input: forwarded {how}, "
                    f"{deviating} of {logits.shape[0]} inputs got other logits (up to "
                    f"{deviation:.3g} of their scale) than in one batch, so its predictions "
                    "change with what shares its forward pass (BatchNorm in training mode or "
                    "batch statistics?); ancer certifies per-input classifiers only"
                )
    return BatchCheck(calls.passes, calls.items, worst, time.perf_counter() - started)


@contextmanager
def _full_float32() -> Iterator[None]:
    """float32 matrix products and convolutions without TF32, restored afterwards."""
    cudnn = torch.backends.cudnn
    matmul = torch.get_float32_matmul_precision()
    with cudnn.flags(
        enabled=cudnn.enabled,
        benchmark=cudnn.benchmark,
        deterministic=cudnn.deterministic,
        allow_tf32=False,
    ):
        torch.set_float32_matmul_precision("highest")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(matmul)


class _Calls:
    """``model`` on a batch, as float32 logits ``(B, K)``; counts the calls, turns a failure or a
    wrong shape into a one-line :class:`ModelError`."""

    def __init__(self, model: nn.Module, where: str) -> None:
        self.model, self.where = model, where
        self.passes = self.items = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        size = batch.shape[0]
        try:
            logits = self.model(batch)
        except Exception as error:  # noqa: BLE001 - any failure of the user's model
            raise ModelError(
                f"model {self.where} fails on a batch of {size} input(s) ({first_line(error)}); "
                "ancer forwards batches of any size, one input included"
            ) from error
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != size:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
            raise ModelError(
                f"model {self.where} returns {shape} for a batch of {size} inputs; expected "
                f"logits of shape ({size}, classes)"
            )
        self.passes += 1
        self.items += size
        return logits.detach().float()


def _halves_reversed(
    calls: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor
) -> torch.Tensor:
    backwards = batch.flip(0)
    middle = batch.shape[0] // 2
    logits = torch.cat([calls(backwards[:middle]), calls(backwards[middle:])])
    return logits.flip(0)


def _padded(
    calls: Callable[[torch.Tensor], torch.Tensor],
    batch: torch.Tensor,
    order: torch.Tensor,
    value: float,
) -> torch.Tensor:
    """The batch shuffled by ``order`` behind as many constant images of ``value``; the logits
    of the batch's own items, back in their order."""
    count = batch.shape[0]
    shuffled = batch[order.to(batch.device)]
    logits = calls(torch.cat([torch.full_like(shuffled, value), shuffled]))[count:]
    restored = torch.empty_like(logits)
    restored[order.to(logits.device)] = logits
    return restored


def _compare(expected: torch.Tensor, got: torch.Tensor, tolerance: float) -> tuple[int, float]:
    """How many items' logits moved by more than ``tolerance`` times the scale (the largest
    finite logit magnitude of the two), and the largest move as a fraction of that scale. A
    logit that is NaN or infinite in one arrangement and not the same in the other moves by the
    whole scale."""
    finite_e, finite_g = torch.isfinite(expected), torch.isfinite(got)
    magnitudes = torch.cat([expected[finite_e].abs(), got[finite_g].abs()])
    scale = float(magnitudes.max()) if magnitudes.numel() else 0.0
    scale = scale if scale > 0.0 else 1.0  # all logits zero: compare absolutely
    same = (expected == got) | (torch.isnan(expected) & torch.isnan(got))
    fixed = torch.where(same, 0.0, 1.0).to(got.dtype)
    moved = torch.where(finite_e & finite_g, (got - expected).abs() / scale, fixed)
    per_item = moved.amax(dim=1) if moved.shape[1] else moved.new_zeros(moved.shape[0])
    return int((per_item > tolerance).sum()), float(per_item.max())
