"""Commit, then draw: what a run certifies is fixed by hashes and recorded before any of its
randomness is known.

A run's :class:`Commitment` holds the SHA-256 of the model file (and of the denoiser), of every
input -- the exact tensor the noise is added to (:func:`tensor_digest`) -- and, for per-input
thetas, of every input's theta, with a digest of each whole list. It is written to the sidecar
before the seed of the inputs it commits is drawn (:class:`Segments`): a model, an image or a
theta file changed after the seed was published is refused on ``--resume``, on ``--reuse`` and
by ``ancer verify``, and inputs a resumed run adds get a seed drawn after they are committed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ancer_cli.errors import AncerError


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 (hex) of a tensor's dtype, shape and values, in C order on the CPU."""
    host = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{host.dtype}|{tuple(host.shape)}|".encode())
    digest.update(host.reshape(-1).view(torch.uint8).numpy().tobytes() if host.numel() else b"")
    return digest.hexdigest()


def theta_digest(theta: float | torch.Tensor) -> str:
    """SHA-256 of one input's theta (a number is hashed as a float64 0-d tensor)."""
    if not isinstance(theta, torch.Tensor):
        theta = torch.tensor(float(theta), dtype=torch.float64)
    return tensor_digest(theta)


def list_digest(digests: Mapping[int, str]) -> str:
    """SHA-256 of ``(index, digest)`` pairs in index order: one value for a whole list."""
    total = hashlib.sha256()
    for idx in sorted(digests):
        total.update(f"{idx}:{digests[idx]}\n".encode())
    return total.hexdigest()


@dataclass(frozen=True)
class Commitment:
    """What a run certifies, by hash: ``inputs`` and ``thetas`` map dataset indices to the
    digests of the input tensor and of its theta (``thetas`` empty for a fixed sigma, which the
    arguments record)."""

    model_sha256: str
    denoiser_sha256: str | None = None
    inputs: dict[int, str] = field(default_factory=dict)
    thetas: dict[int, str] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The sidecar's ``commitment``."""
        return {
            "model_sha256": self.model_sha256,
            "denoiser_sha256": self.denoiser_sha256,
            "inputs": {
                "digest": list_digest(self.inputs),
                "sha256": {str(i): d for i, d in sorted(self.inputs.items())},
            },
            "thetas": {
                "digest": list_digest(self.thetas),
                "sha256": {str(i): d for i, d in sorted(self.thetas.items())},
            }
            if self.thetas
            else None,
        }

    @staticmethod
    def from_record(record: Mapping[str, Any], where: str) -> Commitment:
        """Read a sidecar's ``commitment`` back; an :class:`AncerError` naming ``where`` for
        anything malformed (a record from before commitments has none)."""
        commitment = record.get("commitment")
        if not isinstance(commitment, Mapping):
            raise AncerError(
                f"{where} records no commitment (written by an older ancer, or edited): the "
                "hashes of its model and inputs are unknown; certify again"
            )
        try:
            inputs = _digests(commitment["inputs"])
            thetas = _digests(commitment["thetas"]) if commitment.get("thetas") else {}
            return Commitment(
                str(commitment["model_sha256"]),
                commitment.get("denoiser_sha256"),
                inputs,
                thetas,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise AncerError(f"{where} has a damaged commitment ({error!r})") from None

    def differences(self, other: Commitment, indices: Iterable[int]) -> list[str]:
        """What differs between this (recorded) commitment and ``other`` (the files now), for
        the inputs ``indices``, in words: one item per changed part."""
        found = []
        if self.model_sha256 != other.model_sha256:
            found.append(
                f"the model (SHA-256 {other.model_sha256[:12]}..., recorded "
                f"{self.model_sha256[:12]}...)"
            )
        if self.denoiser_sha256 != other.denoiser_sha256:
            found.append(
                f"the denoiser (SHA-256 {str(other.denoiser_sha256)[:12]}..., recorded "
                f"{str(self.denoiser_sha256)[:12]}...)"
            )
        for name, mine, theirs in (
            ("input", self.inputs, other.inputs),
            ("theta of input", self.thetas, other.thetas),
        ):
            changed = [i for i in indices if i in mine and mine[i] != theirs.get(i)]
            if changed:
                more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
                found.append(f"{name} {changed[0]}{more}")
        return found


def _digests(part: Mapping[str, Any]) -> dict[int, str]:
    digests = {int(k): str(v) for k, v in part["sha256"].items()}
    if list_digest(digests) != part["digest"]:
        raise ValueError("its digest does not match its list")
    return digests


def commit_inputs(
    indices: Sequence[int],
    load: Callable[[int], torch.Tensor],
    theta_of: Callable[[int], float | torch.Tensor] | None,
) -> tuple[dict[int, str], dict[int, str]]:
    """The digests of the inputs ``indices`` (``load(idx)``: the tensor the noise is added to)
    and, with ``theta_of``, of their thetas."""
    inputs = {idx: tensor_digest(load(idx)) for idx in indices}
    thetas = {idx: theta_digest(theta_of(idx)) for idx in indices} if theta_of else {}
    return inputs, thetas


@dataclass(frozen=True)
class Segment:
    """Inputs committed together and the seed drawn after their commitment."""

    seed: int
    indices: tuple[int, ...]

    def record(self) -> dict[str, Any]:
        return {"seed": self.seed, "indices": list(self.indices)}


@dataclass(frozen=True)
class Segments:
    """A run's segments in order: its first inputs, then those each resume added."""

    segments: tuple[Segment, ...] = ()

    def seeds(self) -> dict[int, int]:
        """Every committed index's seed."""
        return {idx: s.seed for s in self.segments for idx in s.indices}

    @property
    def committed(self) -> set[int]:
        return {idx for s in self.segments for idx in s.indices}

    def added(self, segment: Segment) -> Segments:
        return Segments((*self.segments, segment))

    def record(self) -> list[dict[str, Any]]:
        return [s.record() for s in self.segments]

    @staticmethod
    def from_record(record: Mapping[str, Any], where: str) -> Segments:
        """The segments a sidecar records (an error naming ``where`` if malformed)."""
        raw = record.get("segments")
        try:
            if not isinstance(raw, list):
                raise TypeError("no list of segments")
            return Segments(
                tuple(Segment(int(s["seed"]), tuple(int(i) for i in s["indices"])) for s in raw)
            )
        except (KeyError, TypeError, ValueError) as error:
            raise AncerError(
                f"{where} records no valid segments ({error}): written by an older ancer, or "
                "edited; certify again"
            ) from None
