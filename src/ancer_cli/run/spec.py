"""What a run smooths, as its options give it (:class:`InputsSpec`) and as its record keeps it:
the one mapping between the two, in both directions (:func:`inputs_arguments`,
:func:`inputs_spec`).

certify, predict, reuse and attack write their sidecar's ``arguments`` with it, optimize its
manifest's; reuse reads an earlier run back with it, and certify reads a thetas folder's defaults
with it. Nothing here imports PyTorch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ancer_cli.core.choices import Norm, Precision
from ancer_cli.errors import AncerError
from ancer_cli.settings import CertifyMethod

SPEC_KEYS = (
    "model", "thetas", "sigma", "method", "dataset", "data_root", "split", "norm", "arch",
    "classes", "skip", "max", "precision", "channels_last", "seed", "sound", "denoiser",
)  # fmt: skip
"""The keys of the arguments record that :class:`InputsSpec`'s fields are written under."""


@dataclass(frozen=True)
class InputsSpec:
    """What certify, predict, reuse and attack smooth, with which thetas, on which inputs: the
    options they share. ``None`` means "as the thetas' manifest (or the model file) records it";
    exactly one of ``sigma`` and ``thetas`` is given. ``seed`` seeds every input's random streams
    (``None``: fresh OS entropy, drawn once the run is committed). ``sound`` draws the noise on
    the data's pixel grid (:mod:`ancer_cli.core.sound`); ``None``: wherever the data has one.
    ``denoiser``: the base classifier becomes ``model(denoiser(z, theta))``."""

    model: Path | None = None
    thetas: Path | None = None
    sigma: float | None = None
    method: CertifyMethod | None = None
    dataset: str | None = None
    data_root: Path | None = None
    split: str | None = None
    norm: Norm | None = None
    arch: str | None = None
    classes: Path | None = None
    skip: int = 1
    max_index: int | None = None
    precision: Precision = Precision.fp32
    channels_last: bool = False
    seed: int | None = None
    sound: bool | None = None
    denoiser: Path | None = None


@dataclass(frozen=True)
class Resolved:
    """What resolving a spec fixed (the model's and the data's answers to its ``None``s)."""

    method: CertifyMethod
    model_sha256: str
    dataset: str
    split: str
    norm: Norm
    sound: bool
    denoiser: Mapping[str, Any] | None = None
    """what the sidecar records of the denoiser (file, hash, diffusion timesteps)"""


def inputs_arguments(spec: InputsSpec, resolved: Resolved) -> dict[str, Any]:
    """The arguments record of ``spec`` once resolved: every field of the spec (paths made
    absolute, so that the record names the same files from any folder), with the dataset,
    split, norm, method and sound sampling it resolved to, the model's hash and the denoiser's
    record."""
    denoiser = dict(resolved.denoiser or {"denoiser": None, "denoiser_sha256": None})
    return {
        "method": resolved.method.value,
        "model": _path_text(spec.model),
        "model_sha256": resolved.model_sha256,
        "thetas": _path_text(spec.thetas),
        "sigma": spec.sigma,
        "dataset": resolved.dataset,
        "data_root": _path_text(spec.data_root),
        "split": resolved.split,
        "norm": resolved.norm.value,
        "arch": spec.arch,
        "classes": _path_text(spec.classes),
        "skip": spec.skip,
        "max": spec.max_index,
        "seed": spec.seed,
        "sound": resolved.sound,
        "precision": Precision(spec.precision).value,
        "channels_last": bool(spec.channels_last),
        **denoiser,
    }


def inputs_spec(arguments: Mapping[str, Any], where: str) -> InputsSpec:
    """The spec an arguments record was written from (:func:`inputs_arguments`); an
    :class:`AncerError` naming ``where`` and the key for a value of the wrong kind."""

    def value(key: str, kinds: tuple[type, ...], default: Any = None) -> Any:
        got = arguments.get(key, default)
        if got is None or (isinstance(got, kinds) and (bool in kinds or type(got) is not bool)):
            return got
        expected = " or ".join(kind.__name__ for kind in kinds)
        raise AncerError(f"{where}: arguments.{key} is {got!r}, expected {expected}")

    def path(key: str) -> Path | None:
        text = value(key, (str,))
        return Path(text) if text else None

    try:
        method = value("method", (str,))
        norm = value("norm", (str,))
        return InputsSpec(
            model=path("model"),
            thetas=path("thetas"),
            sigma=value("sigma", (int, float)),
            method=CertifyMethod(method) if method is not None else None,
            dataset=value("dataset", (str,)),
            data_root=path("data_root"),
            split=value("split", (str,)),
            norm=Norm(norm) if norm is not None else None,
            arch=value("arch", (str,)),
            classes=path("classes"),
            skip=int(value("skip", (int,), 1) or 1),
            max_index=value("max", (int,)),
            precision=Precision(value("precision", (str,), Precision.fp32.value)),
            channels_last=bool(value("channels_last", (bool,), False)),
            seed=value("seed", (int,)),
            sound=value("sound", (bool,)),
            denoiser=path("denoiser"),
        )
    except ValueError as error:  # an enum given a value it does not know
        raise AncerError(f"{where}: {error}") from None


SMOOTHING_FIELDS = (
    "model", "thetas", "sigma", "method", "dataset", "split", "norm", "arch", "classes", "sound",
    "denoiser",
)  # fmt: skip
"""The fields of :class:`InputsSpec` that say what is smoothed (given as options: not ``None``)."""


def results_spec(results: Path, record: Mapping[str, Any] | None, given: InputsSpec) -> InputsSpec:
    """What a run that smooths the classifier of results file ``results`` smooths (attack,
    audit): the spec its sidecar ``record``'s arguments were written from (:func:`inputs_spec`:
    model, denoiser, thetas or sigma, data, noise, precision), with ``given``'s seed, ``skip``
    and ``max`` (which select among the file's rows) and, where given, data root. A file without
    a sidecar (another tool's) is described by ``given``, which must then name the model and
    the noise; a file with one by its record alone: naming them too is an :class:`AncerError`.
    """
    sidecar = f"{results}.json"
    if record is None:
        if given.model is None or (given.sigma is None and given.thetas is None):
            raise AncerError(
                f"{results} has no sidecar {sidecar} saying what it certified: give --model "
                "with --sigma or --thetas (and --dataset, --norm if the model does not record "
                "them)"
            )
        return given
    named = [name for name in SMOOTHING_FIELDS if getattr(given, name) is not None]
    if named:
        options = ", ".join("--" + name.replace("_", "-") for name in named)
        raise AncerError(
            f"{results} records what it certified in {sidecar} (model, noise, data); leave out "
            f"{options}"
        )
    arguments = record.get("arguments")
    if not isinstance(arguments, Mapping):
        raise AncerError(f"sidecar {sidecar} holds no arguments; it is not an ancer run record")
    spec = inputs_spec(arguments, f"sidecar {sidecar}")
    if spec.model is None:
        raise AncerError(f"sidecar {sidecar} names no model (arguments.model)")
    return replace(
        spec,
        data_root=given.data_root or spec.data_root,
        skip=given.skip,
        max_index=given.max_index,
        seed=given.seed,
    )


def _path_text(path: Path | None) -> str | None:
    return str(Path(path).resolve()) if path is not None else None
