"""The dataset loop of ``ancer predict``: rows equal PREDICT input by input on its own random
stream, the results loop shared with certify resumes leftovers, and unlabeled rows count as
such."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ancer_cli.core.law import Noise
from ancer_cli.core.noise import Stream, input_generator
from ancer_cli.core.smoothing import predict
from ancer_cli.data import LoadedData
from ancer_cli.predict import predict_dataset
from ancer_cli.settings import PredictConfig
from tests.runs import points, predict_toy, toy_inputs
from tests.toys import Threshold

HEADER = "idx\tlabel\tpredict\tcorrect\ttime\n"
SEED = 3


def _data(xs: list[float], labels: list[int]) -> LoadedData:
    return points([(x, 0.0) for x in xs], labels)


CONFIG = PredictConfig(num=400, alpha=0.01, batch_size=1000)
POINTS = [-2.0, -0.05, 0.0, 0.04, 1.5, 3.0]


def test_rows_are_predict_on_each_inputs_own_stream() -> None:
    model, device = Threshold(), torch.device("cpu")
    data = _data(POINTS, [0, 0, 1, 1, 1, -1])
    thetas = {i: 0.2 + 0.1 * i for i in range(len(POINTS))}.get
    inputs = toy_inputs(model, data, thetas)
    seeds = dict.fromkeys(range(len(POINTS)), SEED)
    rows = list(predict_dataset(inputs, range(len(POINTS)), CONFIG, seeds, device, None))
    for row in rows:
        x, label = data.dataset[row.idx]
        generator = input_generator(SEED, row.idx, device, Stream.predict)
        law = Noise().law(thetas(row.idx), x.shape)
        expected = predict(model, x, law, 400, 0.01, 1000, generator)
        assert (row.label, row.predict) == (int(label), expected)
        assert row.correct == int(expected == label and expected != -1)
    assert rows[0].predict == 0 and rows[-1].predict == 1 and rows[-1].correct == 0
    assert -1 in [row.predict for row in rows]  # near the boundary PREDICT abstains


def test_run_predict_writes_resumes_and_counts(tmp_path: Path) -> None:
    data = _data(POINTS, [0, 0, 1, 1, 1, -1])
    indices = list(range(len(POINTS)))
    inputs = toy_inputs(Threshold(), data, 0.3)
    reference = tmp_path / "reference.csv"
    summary = predict_toy(inputs, reference, config=CONFIG, seed=SEED)
    assert summary is not None
    lines = reference.read_text().splitlines(keepends=True)
    assert lines[0] == HEADER and [int(line.split("\t")[0]) for line in lines[1:]] == indices
    assert summary.predicted == 6 and summary.labeled == 5
    assert summary.correct == sum(int(line.split("\t")[3]) for line in lines[1:])

    out = tmp_path / "p.csv"  # a 2-process run that stopped, and a cut line
    Path(f"{out}.rank1-of-2").write_text(HEADER + lines[2] + lines[4][:3])
    out.write_text(HEADER + lines[5])
    record = json.loads(Path(f"{reference}.json").read_text())
    Path(f"{out}.json").write_text(json.dumps({**record, "complete": False}))
    written: list[int] = []
    again = predict_toy(
        inputs, out, config=CONFIG, seed=None, resume=True,
        on_row=lambda row: written.append(row.idx),
    )  # fmt: skip
    assert again is not None and again.resumed == 2 and written == [0, 2, 3, 5]
    assert [line.split("\t")[:4] for line in out.read_text().splitlines()] == [
        line.split("\t")[:4] for line in reference.read_text().splitlines()
    ]
    assert not list(tmp_path.glob("p.csv.rank*"))
    assert '"complete": true' in Path(f"{out}.json").read_text()
