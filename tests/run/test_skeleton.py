"""The start of every run: commit, then draw. Inputs a resumed run adds get a seed drawn after
they are committed; a resumed run refuses a changed model or input; the sidecar records each
segment of inputs with its seed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import ancer_cli.core.noise as noise_module
from ancer_cli.core.choices import Sampling
from ancer_cli.core.law import Noise
from ancer_cli.core.noise import Stream, input_generator
from ancer_cli.core.smoothing import ABSTAIN, certify
from ancer_cli.data import LoadedData
from ancer_cli.errors import AncerError, OutputError
from tests.runs import certify_toy, points, toy_inputs
from tests.toys import Stripe

SAMPLING = Sampling(20, 200, 0.05, 220)


class Coin(nn.Module):
    """A base classifier that answers class 0 or 1 by a hash of the noisy input's bytes: for
    every input, each class with probability 1/2 over fresh noise, so no certificate is valid
    anywhere -- but for one known noise stream, some inputs happen to collect a majority."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.detach().reshape(len(x), -1).numpy()
        bits = [hashlib.sha256(row.tobytes()).digest()[0] & 1 for row in rows]
        one = torch.tensor(bits, dtype=x.dtype)
        return torch.stack([1 - one, one], dim=1) * 10


def _segments(out: Path) -> list[dict]:
    return json.loads(Path(f"{out}.json").read_text())["segments"]


def test_inputs_added_by_resume_get_a_fresh_seed(tmp_path: Path) -> None:
    xy = [(0.2 * i - 1, 0.0) for i in range(8)]
    data = points(xy, [int(abs(x) < 1) for x, _ in xy])
    out = tmp_path / "r.csv"
    certify_toy(toy_inputs(Stripe(), data, 0.3, indices=range(4)), out, seed=None)
    first = _segments(out)
    assert [s["indices"] for s in first] == [[0, 1, 2, 3]]
    kept = out.read_text()
    outcome = certify_toy(toy_inputs(Stripe(), data, 0.3), out, seed=None, resume=True)
    assert outcome is not None and outcome.totals.resumed == 4
    second = _segments(out)
    assert second[0] == first[0] and second[1]["indices"] == [4, 5, 6, 7]
    assert second[1]["seed"] != first[0]["seed"]
    assert out.read_text().startswith(kept)  # the first rows are kept as they were
    record = json.loads(Path(f"{out}.json").read_text())
    assert record["arguments"]["seed"] == first[0]["seed"]  # the first segment's


def test_a_resume_refuses_a_changed_input_or_model(tmp_path: Path) -> None:
    data = points([(0.0, 0.0), (3.0, 0.0)], [1, 0])
    out = tmp_path / "r.csv"
    certify_toy(toy_inputs(Stripe(), data, 0.3), out)
    record = json.loads(Path(f"{out}.json").read_text())
    Path(f"{out}.json").write_text(json.dumps({**record, "complete": False}))  # interrupted
    moved = points([(0.0, 0.0), (3.0, 1 / 16)], [1, 0])
    with pytest.raises(OutputError, match="input 1 changed since it was certified"):
        certify_toy(toy_inputs(Stripe(), moved, 0.3), out, resume=True)
    other = Stripe()
    other.register_buffer("width", torch.tensor(2.0))
    with pytest.raises(OutputError, match="written with model_sha256="):
        certify_toy(toy_inputs(other, data, 0.3), out, resume=True)
    with pytest.raises(OutputError, match="written with seed 0, this run has --seed 5"):
        certify_toy(toy_inputs(Stripe(), data, 0.3), out, resume=True, seed=5)


def test_an_input_fitted_to_a_published_seed_is_certified_only_with_that_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack on resume: the first run's seed is in its sidecar, so whoever adds an input
    before the run is extended can pick, among many candidates, one whose draws under that seed
    happen to give one class a majority. Certified with the published seed (what resume did
    for added inputs) it gets a certificate no input of this classifier can have; with the seed
    drawn after the input is committed, it abstains."""
    base = [(0.1, 0.2), (0.3, 0.4)]
    out = tmp_path / "r.csv"
    certify_toy(toy_inputs(Coin(), points(base, [0, 0]), 0.25), out, sampling=SAMPLING, seed=None)
    published = _segments(out)[0]["seed"]
    # the attacker regenerates input 2's draws under the published seed for many candidates
    fitted = None
    for k in range(400):
        x = torch.tensor([[[0.5 + k / 1000, 0.5]]])
        generator = input_generator(published, 2, "cpu", Stream.certify)
        law = Noise().law(0.25, x.shape)
        if certify(Coin(), x, law, SAMPLING, generator).prediction != ABSTAIN:
            fitted = (0.5 + k / 1000, 0.5)
            break
    assert fitted is not None
    data = points([*base, fitted], [0, 0, 1])

    forged = tmp_path / "forged.csv"  # as resume used to: the added input on the old seed
    certify_toy(toy_inputs(Coin(), data, 0.25), forged, sampling=SAMPLING, seed=published)
    assert forged.read_text().splitlines()[3].split("\t")[2] != str(ABSTAIN)

    monkeypatch.setattr(noise_module, "fresh_seed", lambda: 20261207)  # a seed nobody knew
    certify_toy(toy_inputs(Coin(), data, 0.25), out, sampling=SAMPLING, seed=None, resume=True)
    assert _segments(out)[1] == {"seed": 20261207, "indices": [2]}
    assert out.read_text().splitlines()[3].split("\t")[2] == str(ABSTAIN)


class _Swapped(TensorDataset):
    """A dataset whose input ``idx`` moves by one grid step once ``swap`` is set: a file
    changed on disk after the run committed it and published its seed."""

    def __init__(self, data: LoadedData, idx: int) -> None:
        super().__init__(*data.dataset.tensors)  # type: ignore[attr-defined]
        self.idx, self.swap = idx, False

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        x, y = super().__getitem__(i)
        return (x + 1 / 16 if self.swap and i == self.idx else x), y


def test_an_input_changed_after_the_seed_is_published_is_refused(tmp_path: Path) -> None:
    """The sidecar names the seed before any input is certified; an input changed after that
    (when the rows start) is refused with one line, the inputs before it written."""
    data = points([(0.0, 0.0), (3.0, 0.0), (0.5, 0.0)], [1, 0, 1])
    swapped = _Swapped(data, 1)
    changing = replace(data, dataset=swapped)
    out = tmp_path / "r.csv"

    def publish(done: int, total: int) -> None:
        assert json.loads(Path(f"{out}.json").read_text())["arguments"]["seed"] == 0
        swapped.swap = True

    with pytest.raises(AncerError, match="input 1 changed since this run committed it"):
        certify_toy(toy_inputs(Stripe(), changing, 0.3), out, on_start=publish)
    assert [line.split("\t")[0] for line in out.read_text().splitlines()[1:]] == ["0"]
