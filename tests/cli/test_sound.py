"""``certify --sound`` and ``predict --sound`` end to end, and seeds no model can predict.

The core tests (``tests/core/test_sound.py``) check the law, the assembly and the certificate;
these check the command: a planted classifier forges a certificate through the float noise path
of ``ancer certify`` and not through ``--sound``, the grid is the data's, thetas are stated as
drawn, and the seed is fresh unless given or resumed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ancer_cli.core.choices import Norm, theta_from_sigma
from ancer_cli.core.law import Noise
from ancer_cli.core.sound import sound_theta
from ancer_cli.errors import AncerError
from ancer_cli.inputs import input_groups
from ancer_cli.theta_sources import fixed_theta
from tests.helpers import assert_domain_error, invoke, ok, read_rows, without_time

SIDE = 28
WATCHED = 600


class CancellationBits(nn.Module):
    """Class 1 iff some watched coordinate ``z`` has ``|z| < 1/510`` and a bit finer than
    ``2^-32``: next to a clean 0 the float noise keeps its fine bits, next to 1/255 the sum
    cancels exactly (Sterbenz) onto the coarse grid of the noise -- the model reads the clean
    image through the rounding."""

    def __init__(self, watched: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("watched", watched)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.float().flatten(1)[:, self.watched].double()
        fine = (z * 4294967296.0 != torch.round(z * 4294967296.0)) & (z.abs() < 1.0 / 510.0)
        hit = fine.any(dim=1).double()
        return torch.stack([1.0 - hit, hit], dim=1)


@pytest.fixture(scope="module")
def attack(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A TorchScript bit reader and a folder of two PNGs: x0 (600 black pixels on grey 128) and
    x1 (the same pixels at 1, i.e. 1/255), 0.166 apart in l2 over the three channels."""
    root = tmp_path_factory.mktemp("attack")
    order = torch.randperm(SIDE * SIDE, generator=torch.Generator().manual_seed(7))[:WATCHED]
    grey = torch.full((SIDE * SIDE,), 128, dtype=torch.uint8)
    grey[order] = 0
    raised = grey.clone()
    raised[order] = 1
    images = root / "images"
    images.mkdir()
    for name, values in (("x0.png", grey), ("x1.png", raised)):
        Image.fromarray(values.reshape(SIDE, SIDE).numpy(), mode="L").save(images / name)
    channels = torch.arange(3).repeat_interleave(WATCHED) * SIDE * SIDE
    watched = channels + order.repeat(3)
    model = root / "bits.pt"
    torch.jit.save(torch.jit.script(CancellationBits(watched)), str(model))
    distance = math.sqrt(3 * WATCHED) / 255
    return SimpleNamespace(model=model, images=images, distance=distance)


def _certify_pair(attack: SimpleNamespace, out: Path, *extra: str) -> list:
    ok(
        "certify", "--model", attack.model, "--dataset", "folder", "--data-root", attack.images,
        "--sigma", "0.5", "--N0", "100", "--N", "2000", "--alpha", "0.001", "--seed", "0",
        "--device", "cpu", "--out", out, *extra,
    )  # fmt: skip
    return read_rows(out)


def test_float_noise_forges_a_certificate_and_sound_noise_does_not(
    attack: SimpleNamespace, tmp_path: Path
) -> None:
    x0, x1 = _certify_pair(attack, tmp_path / "float.tsv", "--no-sound")
    # the hole, documented: x1 lies well inside x0's certified ball yet gets the other class
    assert x0.predict == 1 and float(x0.radius) > attack.distance
    assert x1.predict != x0.predict
    for extra in (("--sound",), (), ("--precision", "bf16", "--channels-last")):  # on by default
        x0, x1 = _certify_pair(attack, tmp_path / "sound.tsv", "--force", *extra)
        # the detector sees grid values only: no fine bit, the same class everywhere
        assert (x0.predict, x1.predict) == (0, 0)
        assert x0.radius == x1.radius and float(x0.radius) > 0


def test_sound_certify_states_the_grid_and_tau(attack: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "sound.tsv"
    _certify_pair(attack, out, "--sound")
    record = json.loads(out.with_name(out.name + ".json").read_text())
    assert record["arguments"]["sound"] is True
    sound = record["sound"]
    assert sound["grid_levels"] == 255 and sound["step"] == "1/255"
    per_pixel = (2 * math.ceil(9 * 255 * 0.5) + 4) * 2.0**-53
    assert sound["tau"] == pytest.approx(3 * SIDE * SIDE * per_pixel, rel=1e-6)


def test_sound_l1_certifies_the_half_width_it_draws(model_path: Path, tmp_path: Path) -> None:
    """digits has the 1/16 grid: l1 noise is uniform on {-M..M} steps, stated as (M + 1/2)/16."""
    out = tmp_path / "l1.tsv"
    result = ok(
        "certify", "--model", model_path, "--norm", "l1", "--sigma", "0.25", "--max", "3",
        "--N0", "20", "--N", "200", "--device", "cpu", "--sound", "--out", out,
    )  # fmt: skip
    assert "sound noise on the 1/16 grid" in result.output
    theta = theta_from_sigma(0.25, "l1")  # 0.433: M = round(16 x 0.433 - 1/2) = 6
    stated = sound_theta(theta, "l1", 16)
    assert stated == pytest.approx(6.5 / 16) and stated <= 6.5 / 16
    for row in read_rows(out):
        assert float(row.min_sigma) == pytest.approx(stated, rel=1e-6)


def test_sound_certify_with_thetas_and_predict(
    thetas_dir: Path, model_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ancer.tsv"
    ok(
        "certify", "--thetas", thetas_dir, "--N0", "20", "--N", "200", "--device", "cpu",
        "--sound", "--seed", "1", "--out", out,
    )  # fmt: skip
    assert len(read_rows(out)) > 0
    predictions = tmp_path / "predict.tsv"
    result = ok(
        "predict", "--model", model_path, "--sigma", "0.25", "--max", "3", "--N", "200",
        "--device", "cpu", "--sound", "--out", predictions,
    )  # fmt: skip
    assert "sound noise on the 1/16 grid" in result.output


def test_inputs_off_the_grid_are_refused_with_their_index() -> None:
    on = torch.full((1, 8, 8), 3 / 16)
    off = on.clone()
    off[0, 2, 5] += 1e-3
    inputs = SimpleNamespace(
        data=SimpleNamespace(dataset=[(on, 0), (off, 1), (on, 2)]),
        thetas=fixed_theta(0.25),
        grid_levels=16,
        noise=Noise(Norm.l2, 16),
    )
    groups = input_groups(inputs, [0, 1, 2], 3, torch.device("cpu"), None)  # type: ignore[arg-type]
    first = next(groups)  # the input before the bad one is certified first
    assert first.indices == [0]
    with pytest.raises(AncerError, match=r"^input 1: input is not on the 1/16 grid"):
        next(groups)


def test_sound_refuses_data_without_a_grid(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ancer_cli.inputs as inputs

    loaded = inputs.load_run_inputs

    def gridless(*args, **kwargs):
        run = loaded(*args, **kwargs)
        return dataclasses.replace(run, data=dataclasses.replace(run.data, grid_levels=None))

    monkeypatch.setattr(inputs, "load_run_inputs", gridless)
    result = invoke(
        "certify", "--model", model_path, "--sigma", "0.25", "--max", "2", "--device", "cpu",
        "--sound", "--out", tmp_path / "r.tsv",
    )  # fmt: skip
    assert_domain_error(result, "--sound needs data on a pixel grid", "--no-sound")
    # without --sound, data without a grid gets float noise (the default is "where possible")
    result = ok(
        "certify", "--model", model_path, "--sigma", "0.25", "--max", "2", "--N0", "20", "--N",
        "100", "--device", "cpu", "--out", tmp_path / "float.tsv",
    )  # fmt: skip
    assert "float noise" in result.output
    record = json.loads((tmp_path / "float.tsv.json").read_text())
    assert record["arguments"]["sound"] is False and "sound" not in record


def test_sound_is_the_default_where_the_data_has_a_grid(model_path: Path, tmp_path: Path) -> None:
    default, sound = tmp_path / "default.tsv", tmp_path / "sound.tsv"
    for out, extra in ((default, ()), (sound, ("--sound",))):
        ok(
            "certify", "--model", model_path, "--sigma", "0.25", "--max", "3", "--N0", "20",
            "--N", "200", "--seed", "5", "--device", "cpu", "--out", out, *extra,
        )  # fmt: skip
    assert without_time(default) == without_time(sound)
    assert json.loads((tmp_path / "default.tsv.json").read_text())["arguments"]["sound"] is True


# ---------------------------------------------------------------------------------------------
# image folders at their bit depth: 16-bit images on the 1/65535 grid, float images without one


def _folder_of(root: Path, plane: np.ndarray, name: str, label: int) -> Path:
    """Two copies of the gray ``plane`` (read as 3 equal channels) under ``root/label/``."""
    for i in range(2):
        path = root / str(label) / f"{i}.{name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(plane).save(path)
    return root


def _certify_folder(model: Path, root: Path, out: Path, *extra: str):
    return invoke(
        "certify", "--model", model, "--dataset", "folder", "--data-root", root,
        "--sigma", "0.25", "--N0", "20", "--N", "200", "--seed", "0", "--device", "cpu",
        "--out", out, *extra,
    )  # fmt: skip


def test_16_bit_images_are_certified_on_their_own_grid(colour_model: Path, tmp_path: Path):
    """Gray 21845 / 65535 = 1/3 is class 3 for the colour model (red = 3 / 9)."""
    plane = np.full((8, 8), 21845, dtype=np.uint16)
    plane[2, 3] = 21846  # a value no 8-bit image has
    root = _folder_of(tmp_path / "sixteen", plane, "png", 3)
    out = tmp_path / "r.tsv"
    result = _certify_folder(colour_model, root, out)
    assert result.exit_code == 0, result.output
    assert "sound noise on the 1/65535 grid" in result.output and "caution" not in result.output
    assert [(row.predict, row.correct) for row in read_rows(out)] == [(3, 1)] * 2
    record = json.loads(out.with_name(out.name + ".json").read_text())
    assert record["arguments"]["sound"] is True
    assert record["sound"]["grid_levels"] == 65535 and record["sound"]["step"] == "1/65535"
    per_pixel = (2 * math.ceil(9 * 65535 * 0.25) + 4) * 2.0**-53
    assert record["sound"]["tau"] == pytest.approx(3 * 64 * per_pixel, rel=1e-6)


def test_float_images_get_float_noise_and_refuse_sound(colour_model: Path, tmp_path: Path):
    plane = np.full((8, 8), 1 / 3, dtype=np.float32)
    root = _folder_of(tmp_path / "float", plane, "tif", 3)
    out = tmp_path / "r.tsv"
    result = _certify_folder(colour_model, root, out)
    assert result.exit_code == 0, result.output
    assert "float noise, seed 0" in result.output and "sound noise on the" not in result.output
    assert "caution: 2 of the 2 images under" in result.stderr
    assert "lie on no pixel grid, so certify and predict draw float noise" in result.stderr
    assert [(row.predict, row.correct) for row in read_rows(out)] == [(3, 1)] * 2
    record = json.loads(out.with_name(out.name + ".json").read_text())
    assert record["arguments"]["sound"] is False and "sound" not in record
    refused = _certify_folder(colour_model, root, tmp_path / "s.tsv", "--sound")
    assert_domain_error(refused, "--sound needs data on a pixel grid", "--no-sound")


# ---------------------------------------------------------------------------------------------
# seeds


def _seed_of(out: Path) -> int:
    return json.loads(out.with_name(out.name + ".json").read_text())["arguments"]["seed"]


def _fixed(model_path: Path, out: Path, *extra: object):
    return ok(
        "certify", "--model", model_path, "--sigma", "0.25", "--max", "4", "--N0", "20",
        "--N", "200", "--device", "cpu", "--out", out, *extra,
    )  # fmt: skip


def test_runs_without_a_seed_draw_fresh_ones_and_the_recorded_seed_reproduces(
    model_path: Path, tmp_path: Path
) -> None:
    first, second = tmp_path / "a.tsv", tmp_path / "b.tsv"
    printed = _fixed(model_path, first).output
    _fixed(model_path, second)
    seed = _seed_of(first)
    assert seed != _seed_of(second)
    assert seed >= 0 and f"seed {seed}" in re.sub(r"\s+", " ", printed)
    again = tmp_path / "again.tsv"
    _fixed(model_path, again, "--seed", seed)
    assert without_time(again) == without_time(first)


def test_resume_without_a_seed_reuses_the_recorded_one(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.tsv"
    _fixed(model_path, out)
    full = without_time(out)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]))  # an interrupted run: the header and one row
    sidecar = out.with_name(out.name + ".json")
    record = json.loads(sidecar.read_text())
    record["complete"] = False
    sidecar.write_text(json.dumps(record))
    _fixed(model_path, out, "--resume")
    assert without_time(out) == full
    assert _seed_of(out) == record["arguments"]["seed"]
