"""The memory pass end to end through a certify run, with a hand-made model and inputs placed
so that certified regions collide (the memory-based certification of Alfarra et al. 2022).

The model is a stripe classifier on 2-pixel inputs: class 1 where ``|x_0| < 1``, class 0 outside.
Input A sits in the stripe with a huge theta: its noise mostly leaves the stripe, so the smoothed
classifier certifies class 0 on a large region around A. Input B lies inside A's region, where the
base classifier says 1: the memory classifier must answer A's class with A's sub-region. Input C
is in the stripe just beyond A's region with a small theta: its own region (class 1) overlaps A's
and must shrink to exactly the touching gap.

A run resumed after a crash, on the same toys (the command resuming end to end:
``tests/cli/test_certify.py``).
"""

import json
import math
from pathlib import Path

import pytest
import torch

from ancer_cli.certify import certify_dataset
from ancer_cli.core.choices import Sampling
from ancer_cli.core.radii import linf_half_width_of_radius
from ancer_cli.core.regions import regions_intersect
from ancer_cli.distributed import SINGLE, Session
from ancer_cli.results import format_down, read_results
from ancer_cli.settings import CertifyConfig, Sequential
from tests.helpers import without_time
from tests.runs import certify_toy, points, toy_inputs
from tests.toys import Stripe

THETA = {0: 10.0, 1: 0.3, 2: 0.3}
_data = points


def _norm_of(d: torch.Tensor, norm: str) -> float:
    return float(d.norm(p=2 if norm == "l2" else 1))


@pytest.mark.parametrize("sequential", [None, Sequential()], ids=["fixed-N", "sequential"])
@pytest.mark.parametrize("device_name", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_reassign_and_shrink_through_run_certify(norm, device_name, sequential, tmp_path):
    model, device = Stripe(), torch.device(device_name)
    sampling = Sampling(100, 20_000, 0.001, 5000)
    config = CertifyConfig(sampling, sequential)
    # A's certificate depends only on (seed, index, x, theta): compute it first to place C
    alone = toy_inputs(model, _data([(0, 0)], [1]), THETA.get, norm, device=device)
    a_row = next(certify_dataset(alone, [0], config, {0: 0}, device, None))
    assert a_row.predict == 0 and a_row.radius > 0
    reach = a_row.radius  # radius of A's (isotropic) region: THETA[0] * its gap
    gap_a = a_row.radius / THETA[0]
    c_point = (0.0, reach + 0.2)
    data = _data([(0, 0), (0, 0.5), c_point], [1, 1, 1])

    out = tmp_path / "r.csv"
    outcome = certify_toy(
        toy_inputs(model, data, THETA.get, norm, device=device), out, sampling=sampling,
        sequential=sequential, memory=True, session=Session(SINGLE, device),
    )  # fmt: skip
    assert outcome is not None
    summary = outcome.totals
    before = read_results(tmp_path / "r.csv.pre-memory")
    after = read_results(out)

    assert summary.memory is not None
    assert summary.memory.reassigned == [1] and summary.memory.shrunk == [2]
    assert summary.memory.changed_predictions == [1]
    # B: the base classifier says 1, the smoothed one certifies 1 -- but B lies in A's region
    assert before.loc[1, "predict"] == 1
    distance_b = _norm_of(torch.tensor([0.0, 0.5]), norm) / THETA[0]
    assert after.loc[1, "predict"] == 0 and after.loc[1, "correct"] == 0
    assert after.loc[1, "min_sigma"] == pytest.approx(THETA[0])
    assert after.loc[1, "radius"] == pytest.approx(THETA[0] * (gap_a - distance_b), rel=1e-5)
    # C: class 1 kept, gap shrunk to touch A's region as reported (radius rounded toward zero)
    reported_reach = float(after.loc[0, "radius"])
    assert reported_reach <= reach
    c_center = data.dataset[2][0].flatten().double()  # as stored: float32
    touching = (_norm_of(c_center, norm) - reported_reach) / THETA[2]
    assert before.loc[2, "predict"] == 1 and before.loc[2, "radius"] > THETA[2] * touching
    assert after.loc[2, "predict"] == 1
    assert after.loc[2, "radius"] <= THETA[2] * touching * (1 + 1e-9)
    assert after.loc[2, "radius"] == pytest.approx(THETA[2] * touching, rel=1e-5)
    # A itself is untouched, and the stored regions of different classes no longer meet
    assert after.loc[0].to_dict() == before.loc[0].to_dict()
    gap_c = after.loc[2, "radius"] / THETA[2]
    meets = regions_intersect(
        c_center,
        THETA[2],
        gap_c,
        torch.zeros(1, 2),
        torch.full((1, 1), THETA[0]),
        [reported_reach / THETA[0]],
        norm,
    )
    assert not bool(meets[0])
    record_text = (tmp_path / "r.csv.json").read_text()
    assert '"reassigned": 1' in record_text and '"shrunk": 1' in record_text
    if sequential is not None:  # rewritten rows keep the samples each input used
        assert list(after["samples"]) == list(before["samples"])
        assert list(after["stop"]) == list(before["stop"])


def test_no_collision_changes_nothing(tmp_path):
    data = _data([(5, 0), (0, 40), (-30, 0)], [0, 1, 0])
    thetas = {0: 0.5, 1: 0.3, 2: 1.0}.get
    out = tmp_path / "r.csv"
    outcome = certify_toy(
        toy_inputs(Stripe(), data, thetas), out, sampling=Sampling(100, 5000, 0.001, 5000),
        memory=True,
    )  # fmt: skip
    assert outcome is not None
    summary = outcome.totals
    assert summary.memory is not None
    assert not (summary.memory.reassigned or summary.memory.shrunk)
    assert out.read_text() == (tmp_path / "r.csv.pre-memory").read_text()
    assert math.isclose(summary.correct, 3)


@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("method", ["fixed", "isotropic", "ancer"])
def test_radius_linf_is_the_box_of_the_region_each_row_states(method, norm, tmp_path):
    """``radius_linf`` is the l-infinity box of the row's written radius and theta: the input's
    own, or, for the input the memory pass reassigns (B, inside A's region), A's."""
    data = _data([(0, 0), (0, 0.5), (-60.0, 0)], [1, 1, 0])
    per_pixel = {0: [10.0, 12.0], 1: [0.3, 0.4], 2: [0.5, 0.25]}
    thetas = {
        "fixed": 0.3,
        "isotropic": THETA.get,
        "ancer": lambda i: torch.tensor(per_pixel[i]).view(1, 1, 2),
    }[method]
    out = tmp_path / "r.csv"
    certify_toy(toy_inputs(Stripe(), data, thetas, norm), out, sampling=Sampling(100, 20_000))
    lines = out.read_text().splitlines()
    assert lines[0].split("\t")[7:] == ["time", "radius_linf"]
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[2] for r in rows] == (["1", "1", "0"] if method == "fixed" else ["0", "0", "0"])
    for row in rows:
        idx = int(row[0])
        own = 0 if method != "fixed" and idx == 1 else idx  # B took A's region and theta
        theta = thetas if method == "fixed" else thetas(own)
        assert float(row[6]) == pytest.approx(float(torch.as_tensor(theta).min()))
        expected = linf_half_width_of_radius(theta, float(row[3]), norm, 2)
        assert row[8] == format_down(expected)
        assert (float(row[8]) > 0) == (float(row[3]) > 0)


@pytest.mark.parametrize("left", ["", "idx\tlabel\tpre"])
def test_resume_after_a_crash_before_the_header_was_written(tmp_path, left):
    """The sidecar is written before the results file gets its header, so a crash can leave an
    empty (or half-headed) results file beside a sidecar; a resumed run starts it over."""
    inputs = toy_inputs(Stripe(), _data([(0, 0), (0, 0.5), (3, 0)], [1, 1, 0]), 0.3)
    sampling = Sampling(20, 200, 0.001, 500)
    full = tmp_path / "full.csv"
    certify_toy(inputs, full, sampling=sampling)
    out = tmp_path / "crash.csv"
    out.write_text(left)
    record = json.loads(Path(f"{full}.json").read_text())
    Path(f"{out}.json").write_text(json.dumps({**record, "complete": False}))
    certify_toy(inputs, out, sampling=sampling, seed=None, resume=True)
    assert without_time(out) == without_time(full)
    assert json.loads(Path(f"{out}.json").read_text())["complete"] is True
