"""The one mapping between a run's options and its record: every option written, read back as
it was given (paths made absolute), and malformed records refused with one line."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from ancer_cli.core.choices import Norm, Precision
from ancer_cli.errors import AncerError
from ancer_cli.run.spec import SPEC_KEYS, InputsSpec, Resolved, inputs_arguments, inputs_spec
from ancer_cli.settings import CertifyMethod


def _every_option(tmp_path: Path) -> InputsSpec:
    """A spec with every field set to a value other than its default."""
    return InputsSpec(
        model=tmp_path / "model.pt",
        thetas=tmp_path / "thetas",
        sigma=0.5,
        method=CertifyMethod.ancer,
        dataset="folder",
        data_root=tmp_path / "images",
        split="train",
        norm=Norm.l1,
        arch="package.module:factory",
        classes=tmp_path / "classes.txt",
        skip=3,
        max_index=40,
        precision=Precision.bf16,
        channels_last=True,
        seed=12345,
        sound=False,
        denoiser=tmp_path / "denoiser.pt",
    )


def test_every_option_round_trips(tmp_path: Path) -> None:
    spec = _every_option(tmp_path)
    assert {f.name for f in fields(InputsSpec)} == {
        "max_index" if key == "max" else key for key in SPEC_KEYS
    }
    for field in fields(InputsSpec):  # the spec really sets every option
        assert getattr(spec, field.name) != field.default, field.name
    resolved = Resolved(
        method=CertifyMethod.ancer,
        model_sha256="ab" * 32,
        dataset="folder",
        split="train",
        norm=Norm.l1,
        sound=False,
        denoiser={"denoiser": str(spec.denoiser), "denoiser_sha256": "cd" * 32},
    )
    arguments = inputs_arguments(spec, resolved)
    assert set(SPEC_KEYS) <= set(arguments)
    assert arguments["model_sha256"] == "ab" * 32
    assert arguments["denoiser_sha256"] == "cd" * 32
    assert inputs_spec(arguments, "test") == spec


def test_relative_paths_are_recorded_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = InputsSpec(model=Path("model.pt"), sigma=0.25)
    resolved = Resolved(CertifyMethod.fixed, "00" * 32, "digits", "test", Norm.l2, True)
    arguments = inputs_arguments(spec, resolved)
    assert arguments["model"] == str(tmp_path / "model.pt")
    assert arguments["denoiser"] is None and arguments["denoiser_sha256"] is None
    back = inputs_spec(arguments, "test")
    assert back.model == tmp_path / "model.pt" and back.denoiser is None
    assert back.dataset == "digits" and back.norm is Norm.l2 and back.sound is True


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model", 7, "arguments.model is 7, expected str"),
        ("skip", "2", "arguments.skip is '2', expected int"),
        ("sound", 1, "arguments.sound is 1, expected bool"),
        ("max", True, "arguments.max is True, expected int"),
        ("norm", "l3", "'l3' is not a valid Norm"),
    ],
)
def test_malformed_records_are_refused(key: str, value: object, message: str) -> None:
    arguments = {"model": "/m.pt", "sigma": 0.25, "norm": "l2", key: value}
    with pytest.raises(AncerError, match=message) as caught:
        inputs_spec(arguments, "sidecar r.csv.json")
    assert str(caught.value).startswith("sidecar r.csv.json: ")
