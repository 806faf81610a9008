"""Results files: reading them in every accepted format (ours, the original ANCER scripts', the
original data-dependent smoothing package's) and refusing malformed ones; writing rows that
resume after a crash whatever number of processes left them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ancer_cli import analysis
from ancer_cli.errors import ResultsError
from ancer_cli.results import parse_time, read_results
from ancer_cli.settings import Metric
from tests.runs import certify_toy, points, toy_inputs
from tests.toys import Stripe

# ---------------------------------------------------------------------------------------------
# reading results files (the formats analysis accepts)

ANCER_SCRIPTS_FILE = (
    "idx\tlabel\tpredict\tradius\tradius_proxy\tcorrect\tmin_sigma\ttime\n"
    "0\t3\t3\t0.412\t0.953\t1\t0.25\t0:00:02.512345\n"
    "1\t8\t8\t0.81\t1.44\t1\t0.31\t0:00:02.401000\n"
    "2\t8\t1\t0.6\t0.7\t0\t0.2\t0:00:02.450000\n"
    "3\t0\t-1\t0.0\t0.0\t0\t0.25\t1 day, 0:00:01.000000\n"
)


def write(tmp_path: Path, text: str, name: str = "results.tsv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_original_ancer_scripts_format(tmp_path: Path) -> None:
    frame = read_results(write(tmp_path, ANCER_SCRIPTS_FILE))
    assert list(frame.columns) == [
        "idx",
        "label",
        "predict",
        "radius",
        "radius_proxy",
        "correct",
        "min_sigma",
        "time",
    ]
    assert frame["time"].tolist() == pytest.approx([2.512345, 2.401, 2.45, 86401.0])
    assert analysis.certified_accuracy(frame, 0.5) == 0.25
    assert analysis.certified_accuracy(frame, 0.5, Metric.proxy) == 0.5
    assert analysis.average_certified_radius(frame, Metric.proxy) == pytest.approx(
        (0.953 + 1.44) / 4
    )


def test_original_data_dependent_smoothing_format(tmp_path: Path) -> None:
    """Alfarra et al.'s isotropic certify script writes a per-input ``sigma`` column."""
    text = (
        "idx\tlabel\tpredict\tradius\tcorrect\tsigma\ttime\n"
        "0\t3\t3\t0.61\t1\t0.3012\t0:00:01.250000\n"
        "1\t8\t-1\t0.0\t0\t0.1203\t0:00:01.750000\n"
    )
    frame = read_results(write(tmp_path, text, "dds.tsv"))
    assert frame["sigma"].tolist() == ["0.3012", "0.1203"]  # extra columns are kept as text
    summary = analysis.summarize(frame, [0.5])
    assert summary.certified_accuracy == {0.5: 0.5}
    assert summary.median_time == pytest.approx(1.5)
    assert summary.average_proxy_radius is None


def test_parse_time() -> None:
    assert parse_time("15.4") == 15.4
    assert parse_time("0:02:31.238689") == pytest.approx(151.238689)
    assert parse_time("2 days, 1:00:00") == 2 * 86400 + 3600
    assert math.isnan(parse_time(""))


def test_trailing_tab_is_accepted(tmp_path: Path) -> None:
    text = "idx\tlabel\tpredict\tradius\tcorrect\n0\t1\t1\t0.5\t1\t\n1\t2\t-1\t0.0\t0\t\n"
    frame = read_results(write(tmp_path, text))
    assert frame["idx"].tolist() == [0, 1] and frame["correct"].tolist() == [1, 0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("idx\tlabel\tpredict\tcorrect\n0\t1\t1\t1\n", "lacks column.*radius"),
        ("idx\tlabel\tpredict\tradius\tcorrect\n0\t1\t1\tbig\t1\n", "line 2, column radius"),
        ("idx\tlabel\tpredict\tradius\tcorrect\ninf\t1\t1\t0.5\t1\n", "line 2, column idx"),
        ("idx\tlabel\tpredict\tradius\tcorrect\n0\t1\t1\t0.5\t2\n", "line 2, column correct"),
        ("idx\tlabel\tpredict\tradius\tcorrect\n0\t1\t1\t0.5\t1\t7\n", "more fields"),
        (
            "idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t1.0\n1\t1\t1\t0.5\t1\tsoon\n",
            "line 3, column time",
        ),
    ],
)
def test_malformed_files_raise_results_error(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ResultsError, match=message) as caught:
        read_results(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="does not exist"):
        read_results(tmp_path / "absent.tsv")
    with pytest.raises(ResultsError, match="is a directory"):
        read_results(tmp_path)


# ---------------------------------------------------------------------------------------------
# writing rows: certify's results loop on a stripe classifier (class 1 where |x_0| < 1)


def _interrupted(reference: Path, out: Path) -> None:
    """The sidecar the run of ``reference`` had before it finished, as ``out``'s."""
    record = json.loads(Path(f"{reference}.json").read_text())
    for key in ("totals", "rows_sha256", "finished", "memory"):
        record.pop(key, None)
    Path(f"{out}.json").write_text(json.dumps({**record, "complete": False}))


# ---------------------------------------------------------------------------------------------
# resuming what runs with other numbers of processes left behind


def _split(lines: list[str], indices: list[int]) -> str:
    return "".join(lines[1 + i] for i in indices)


@pytest.mark.parametrize("memory", [False, True])
def test_resume_gathers_rows_left_by_any_number_of_processes(tmp_path, memory):
    """Leftovers of a 3-process run (shards, one cut mid-line), of a 2-process run and of a
    single process, in one folder; a single-process --resume certifies exactly the indices
    without a complete row and ends with the rows of an uninterrupted run, in index order."""
    xy = [(0.1 * i - 2, 0.0) for i in range(9)]
    data = points(xy, [int(abs(x) < 1) for x, _ in xy])
    inputs = toy_inputs(Stripe(), data, 0.3 if not memory else {i: 0.3 for i in range(9)}.get)
    reference = tmp_path / "reference.csv"
    certify_toy(inputs, reference, memory=memory)
    working = Path(str(reference) + ".pre-memory") if memory else reference
    lines = working.read_text().splitlines(keepends=True)
    header = lines[0]

    out = tmp_path / "r.csv"
    left = Path(str(out) + ".pre-memory") if memory else out
    Path(f"{left}.rank0-of-3").write_text(header + _split(lines, [0, 3]))
    Path(f"{left}.rank2-of-3").write_text(header + _split(lines, [2]) + lines[1 + 5][:7])
    Path(f"{left}.rank1-of-2").write_text(header + _split(lines, [3, 7]))  # 3 twice
    left.write_text(header + _split(lines, [8]))
    _interrupted(reference, out)
    written: list[int] = []
    started: list[tuple[int, int]] = []
    outcome = certify_toy(
        inputs, out, memory=memory, resume=True, seed=None,
        on_row=lambda row: written.append(row.idx), on_start=lambda *a: started.append(a),
    )  # fmt: skip
    assert outcome is not None and outcome.totals.resumed == 5
    assert started == [(5, 4)] and written == [1, 4, 5, 6]
    assert [line.split("\t")[:7] for line in out.read_text().splitlines()] == [
        line.split("\t")[:7] for line in reference.read_text().splitlines()
    ]
    kept = left.read_text().splitlines(keepends=True)
    assert [kept[1 + i] for i in (0, 2, 3, 7, 8)] == [lines[1 + i] for i in (0, 2, 3, 7, 8)]
    assert not list(tmp_path.glob("r.csv*.rank*")), "the shards were merged and removed"


def test_a_fresh_run_ignores_shards_of_an_earlier_one(tmp_path):
    data = points([(0.0, 0.0), (3.0, 0.0)], [1, 0])
    out = tmp_path / "r.csv"
    stale = Path(f"{out}.rank1-of-4")
    stale.write_text("idx\tlabel\tpredict\tradius\tradius_proxy\tcorrect\tmin_sigma\ttime\n"
                     "1\t0\t7\t9.0\t9.0\t0\t0.3\t1.0\n")  # fmt: skip
    certify_toy(toy_inputs(Stripe(), data, 0.3), out)
    assert not stale.exists()
    assert read_results(out)["predict"].tolist() == [1, 0]
