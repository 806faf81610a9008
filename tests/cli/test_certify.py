"""``ancer certify`` end to end: fixed sigma, per-input thetas (ours, original ANCER folders,
isotropic value files), determinism, resume and the JSON sidecar.

Radii are checked against an independent recomputation: with N estimation samples the count nA
of the predicted class is one of 0..N, so the printed radius must be, for some nA, the exact
``min(theta) * gap(Clopper-Pearson(nA, N))`` rounded toward zero.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from scipy.stats import beta
from scipy.stats import norm as normal

from ancer_cli.core.radii import linf_half_width_of_radius
from ancer_cli.data import load_dataset
from ancer_cli.results import format_down
from tests.helpers import (
    CERTIFY_FAST,
    OPTIMIZE_FAST,
    OPTIMIZED_INPUTS,
    RESULT_HEADER,
    assert_domain_error,
    assert_usage_error,
    describe,
    error_lines,
    invoke,
    ok,
    on_device,
    read_rows,
    rounded_down,
    rounded_near,
    save_colour_model,
    without_time,
    write_class_images,
)

SIGMA = 0.25
N = 200
ALPHA = 0.001


def gaps(norm: str, n: int = N, alpha: float = ALPHA) -> list[float]:
    """Every possible non-abstaining gap for ``n`` estimation samples."""
    found = []
    for n_a in range(1, n + 1):
        p_low = float(beta.ppf(alpha, n_a, n - n_a + 1))
        if p_low >= 0.5:
            found.append(float(normal.ppf(p_low)) if norm == "l2" else 2 * p_low - 1)
    return found


def matching_gap(row, low: float, mean: float, norm: str) -> float:
    """The gap that explains the row's radius and radius_proxy (both rounded down)."""
    matches = [
        g
        for g in gaps(norm)
        if rounded_down(low * g, row.radius) and rounded_down(mean * g, row.radius_proxy)
    ]
    assert len(matches) == 1, (row, matches)
    return matches[0]


def labels() -> list[int]:
    data = load_dataset("digits", "test")
    return [int(data.dataset[i][1]) for i in range(len(data.dataset))]


def certify(*args: object):
    return ok("certify", *CERTIFY_FAST, *args)


@pytest.fixture(scope="module")
def fixed_run(model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("fixed") / "fixed.csv"
    result = certify("--model", model_path, "--sigma", SIGMA, "--skip", 2, "--max", 7, "--out", out)
    return out, result


# ---------------------------------------------------------------------------------------------
# fixed sigma


def test_fixed_header_and_rows_in_index_order(fixed_run) -> None:
    out, result = fixed_run
    text = out.read_text()
    assert text.splitlines()[0] == (
        "idx\tlabel\tpredict\tradius\tradius_proxy\tcorrect\tmin_sigma\ttime\tradius_linf"
    )
    assert text.endswith("\n")
    rows = read_rows(out)
    assert [row.idx for row in rows] == [0, 2, 4, 6]
    truth = labels()
    for row in rows:
        assert row.label == truth[row.idx]
        assert row.predict == -1 or 0 <= row.predict < 10
        assert row.correct == int(row.predict == row.label and row.predict != -1)
        assert float(row.time) >= 0 and ":" not in row.time
    assert f"{out}: 4 inputs" in result.stdout


def test_fixed_radius_is_cohens_radius_rounded_down(fixed_run) -> None:
    out, _ = fixed_run
    rows = read_rows(out)
    assert any(row.predict != -1 for row in rows), "nothing certified; model too weak?"
    for row in rows:
        assert rounded_near(SIGMA, row.min_sigma)
        assert row.radius == row.radius_proxy  # isotropic: min(theta) == geomean(theta)
        # the l-infinity box of an 8x8 ball: radius / sqrt(64), rounded down
        box = linf_half_width_of_radius(SIGMA, float(row.radius), "l2", 64)
        assert row.radius_linf == format_down(box)
        assert float(row.radius_linf) <= float(row.radius) / 8
        if row.predict == -1:
            assert float(row.radius) == 0.0 and row.correct == 0
        else:
            matching_gap(row, SIGMA, SIGMA, "l2")


@pytest.mark.parametrize("sound", ["--no-sound", "--sound"])
def test_fixed_l1_uses_sqrt3_sigma_and_linear_gap(
    model_path: Path, tmp_path: Path, sound: str
) -> None:
    """theta = sqrt(3) sigma; sound noise (the default on digits) states the grid half-width
    it draws, (M + 1/2)/16 with M = round(16 theta - 1/2)."""
    out = tmp_path / "l1.csv"
    certify(
        "--model", model_path, "--sigma", SIGMA, "--norm", "l1", "--max", 4, "--out", out, sound
    )
    theta = math.sqrt(3) * SIGMA
    if sound == "--sound":
        theta = (round(16 * theta - 0.5) + 0.5) / 16
    rows = read_rows(out)
    assert [row.idx for row in rows] == [0, 1, 2, 3]
    for row in rows:
        assert rounded_near(theta, row.min_sigma)
        assert row.radius == row.radius_proxy
        if row.predict != -1:
            matching_gap(row, theta, theta, "l1")
    sidecar = json.loads((tmp_path / "l1.csv.json").read_text())
    assert sidecar["arguments"]["norm"] == "l1"


def test_sidecar_records_the_run(fixed_run, model_path: Path) -> None:
    out, _ = fixed_run
    sidecar = json.loads(Path(str(out) + ".json").read_text())
    assert sidecar["complete"] is True
    arguments = sidecar["arguments"]
    assert arguments["model_sha256"] == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert arguments["seed"] == 0
    assert arguments["sigma"] == SIGMA and arguments["N"] == N and arguments["N0"] == 20
    assert arguments["alpha"] == ALPHA and arguments["method"] == "fixed"
    assert (arguments["skip"], arguments["max"]) == (2, 7)
    assert sidecar["device"].startswith("cpu")
    assert {"ancer", "torch", "python"} <= set(sidecar["versions"])
    assert sidecar["totals"]["inputs"] == 4


def test_same_seed_same_results_other_seed_still_valid(
    fixed_run, model_path: Path, tmp_path: Path
) -> None:
    out, _ = fixed_run
    again = tmp_path / "again.csv"
    args = ("--model", model_path, "--sigma", SIGMA, "--skip", 2, "--max", 7)
    certify(*args, "--out", again)
    assert without_time(again) == without_time(out)

    other = tmp_path / "seed1.csv"
    certify(*args, "--seed", 1, "--out", other)
    rows, reference = read_rows(other), read_rows(out)
    assert [(r.idx, r.label) for r in rows] == [(r.idx, r.label) for r in reference]
    for row in rows:
        assert row.radius == row.radius_proxy
        if row.predict != -1:
            matching_gap(row, SIGMA, SIGMA, "l2")
    assert json.loads((tmp_path / "seed1.csv.json").read_text())["arguments"]["seed"] == 1


def test_resume_after_a_cut_line_completes_like_an_uninterrupted_run(
    model_path: Path, tmp_path: Path
) -> None:
    args = ("--model", model_path, "--sigma", SIGMA, "--max", 5)
    full = tmp_path / "full.csv"
    certify(*args, "--out", full)
    lines = full.read_text().splitlines(keepends=True)
    assert len(lines) == 6
    part = tmp_path / "part.csv"
    # crash while writing the row of index 2: header, rows 0 and 1, half of row 2
    part.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    sidecar = json.loads(Path(str(full) + ".json").read_text())
    Path(str(part) + ".json").write_text(json.dumps({**sidecar, "complete": False}))

    result = certify(*args, "--out", part, "--resume")
    assert without_time(part) == without_time(full)
    kept = part.read_text().splitlines(keepends=True)
    assert kept[:3] == lines[:3]  # rows already written are kept as they were, time included
    assert [row.idx for row in read_rows(part)] == [0, 1, 2, 3, 4]
    assert "2 rows kept" in result.stdout
    assert json.loads(Path(str(part) + ".json").read_text())["complete"] is True


def test_resume_with_other_n_is_refused(fixed_run, model_path: Path, tmp_path: Path) -> None:
    out, _ = fixed_run
    copy = tmp_path / "copy.csv"
    shutil.copy(out, copy)
    shutil.copy(str(out) + ".json", str(copy) + ".json")
    before = copy.read_text()
    result = invoke(
        "certify",
        "--model",
        model_path,
        "--sigma",
        SIGMA,
        "--skip",
        2,
        "--max",
        7,
        "--N0",
        20,
        "--N",
        300,
        "--device",
        "cpu",
        "--out",
        copy,
        "--resume",
    )
    assert_domain_error(result, "N=200", "N=300", str(copy))
    # refused before anything starts: no banner, no progress bar, only the error line
    assert result.stderr.strip() == error_lines(result)[0], describe(result)
    assert copy.read_text() == before


def test_resume_with_a_larger_max_extends_a_finished_run(
    fixed_run, model_path: Path, tmp_path: Path
) -> None:
    """Rows depend on their index alone: --resume with a larger --max keeps every row and
    certifies only the indices added, ending with the rows of one run; a smaller --max is
    refused (it would keep rows the run no longer asks for)."""
    full, _ = fixed_run
    args = ("--model", model_path, "--sigma", SIGMA, "--skip", 2)
    out = tmp_path / "grown.csv"
    certify(*args, "--max", 3, "--out", out)
    first = out.read_text().splitlines(keepends=True)
    result = certify(*args, "--max", 7, "--out", out, "--resume")
    assert "2 rows kept" in result.stdout
    assert without_time(out) == without_time(full)
    assert out.read_text().splitlines(keepends=True)[:3] == first  # kept as written
    sidecar = json.loads(Path(str(out) + ".json").read_text())
    assert sidecar["arguments"]["max"] == 7 and sidecar["complete"] is True
    assert sidecar["totals"]["resumed_rows"] == 2 and sidecar["totals"]["inputs"] == 4

    before = out.read_text()
    shrunk = invoke("certify", *CERTIFY_FAST, *args, "--max", 5, "--out", out, "--resume")
    assert_domain_error(shrunk, "cannot resume", "max=7", "max=5")
    assert shrunk.stderr.strip() == error_lines(shrunk)[0], describe(shrunk)
    assert out.read_text() == before


# ---------------------------------------------------------------------------------------------
# per-input thetas


@pytest.fixture(scope="module")
def ancer_run(thetas_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("ancer") / "ancer.csv"
    return out, certify("--thetas", thetas_dir, "--out", out)


def test_certify_ancer_thetas(ancer_run, thetas_dir: Path, model_path: Path) -> None:
    out, result = ancer_run
    rows = read_rows(out)
    assert [row.idx for row in rows] == list(range(OPTIMIZED_INPUTS))
    assert any(row.predict != -1 for row in rows)
    truth = labels()
    for row in rows:
        assert row.label == truth[row.idx]
        theta = torch.load(thetas_dir / f"theta_test_{row.idx}.pt", weights_only=True)
        low = float(theta.min())
        mean = float(torch.exp(torch.log(theta.double()).mean()))
        assert rounded_near(low, row.min_sigma)
        assert float(row.radius_proxy) >= float(row.radius)
        if row.predict != -1:
            matching_gap(row, low, mean, "l2")
        else:
            assert float(row.radius) == float(row.radius_proxy) == 0.0
    sidecar = json.loads(Path(str(out) + ".json").read_text())
    assert sidecar["arguments"]["method"] == "ancer" and sidecar["complete"] is True
    assert (
        sidecar["arguments"]["model_sha256"] == hashlib.sha256(model_path.read_bytes()).hexdigest()
    )


def test_certify_isotropic_thetas(thetas_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "iso.csv"
    certify("--thetas", thetas_dir / "isotropic", "--out", out)
    rows = read_rows(out)
    assert [row.idx for row in rows] == list(range(OPTIMIZED_INPUTS))
    for row in rows:
        theta = float(torch.load(thetas_dir / "isotropic" / f"theta_test_{row.idx}.pt"))
        assert rounded_near(theta, row.min_sigma)
        assert row.radius == row.radius_proxy
        if row.predict != -1:
            matching_gap(row, theta, theta, "l2")
    assert json.loads(Path(str(out) + ".json").read_text())["arguments"]["method"] == "isotropic"


def test_original_ancer_folder_without_manifest(
    ancer_run, thetas_dir: Path, model_path: Path, tmp_path: Path
) -> None:
    out, _ = ancer_run
    # The original package saves thetas[i] of the optimized batch: a view into the storage of
    # the whole batch, written as it is.
    original = tmp_path / "original"
    original.mkdir()
    count = OPTIMIZED_INPUTS
    batch = torch.stack(
        [torch.load(thetas_dir / f"theta_test_{i}.pt", weights_only=True) for i in range(count)]
    )
    for i in range(count):
        torch.save(batch[i], original / f"theta_test_{i}.pt")
    plain = tmp_path / "plain.csv"
    certify(
        "--thetas",
        original,
        "--model",
        model_path,
        "--dataset",
        "digits",
        "--norm",
        "l2",
        "--out",
        plain,
    )
    assert without_time(plain) == without_time(out)


def test_original_ancer_folder_needs_dataset_and_norm(
    thetas_dir: Path, model_path: Path, tmp_path: Path
) -> None:
    original = tmp_path / "original"
    original.mkdir()
    shutil.copy(thetas_dir / "theta_test_0.pt", original / "theta_test_0.pt")
    result = invoke(
        "certify", "--thetas", original, "--model", model_path, "--out", tmp_path / "r.csv"
    )
    assert_domain_error(result, "manifest", "--dataset", "--norm")
    assert not (tmp_path / "r.csv").exists()


def test_isotropic_values_file(model_path: Path, tmp_path: Path) -> None:
    values = [0.2 + 0.0002 * i for i in range(500)]  # one per digits test input
    source = tmp_path / "sigmas.txt"
    source.write_text("".join(f"{v}\n" for v in values))
    out = tmp_path / "values.csv"
    certify(
        "--thetas",
        source,
        "--model",
        model_path,
        "--dataset",
        "digits",
        "--norm",
        "l2",
        "--skip",
        100,
        "--out",
        out,
    )
    rows = read_rows(out)
    assert [row.idx for row in rows] == [0, 100, 200, 300, 400]
    for row in rows:
        theta = float(torch.tensor(values[row.idx], dtype=torch.float32))
        assert rounded_near(theta, row.min_sigma)
        assert row.radius == row.radius_proxy
        if row.predict != -1:
            matching_gap(row, theta, theta, "l2")
    sidecar = json.loads(Path(str(out) + ".json").read_text())
    assert sidecar["arguments"]["method"] == "isotropic"


def test_resume_after_a_crash_with_thetas(ancer_run, thetas_copy: Path, tmp_path: Path) -> None:
    """An unreadable theta file is refused before anything is written (the run hashes every
    theta it certifies first); a run that dies after input 2 (its rows cut, its sidecar not
    finished, as a kill leaves them), resumed, ends with exactly the rows of an uninterrupted
    run: nothing lost, nothing duplicated."""
    full, _ = ancer_run
    good = (thetas_copy / "theta_test_3.pt").read_bytes()
    (thetas_copy / "theta_test_3.pt").write_bytes(b"not a tensor")
    out = tmp_path / "crash.csv"
    crashed = invoke("certify", "--thetas", thetas_copy, *CERTIFY_FAST, "--out", out)
    assert_domain_error(crashed, "theta_test_3.pt")
    assert not out.exists() and not Path(f"{out}.pre-memory").exists()

    (thetas_copy / "theta_test_3.pt").write_bytes(good)
    certify("--thetas", thetas_copy, "--out", out)
    working = Path(f"{out}.pre-memory")
    working.write_text("".join(working.read_text().splitlines(keepends=True)[:4]))
    out.unlink()
    record = json.loads(Path(f"{out}.json").read_text())
    Path(f"{out}.json").write_text(json.dumps({**record, "complete": False}))
    result = certify("--thetas", thetas_copy, "--out", out, "--resume")
    assert "3 rows kept" in result.stdout
    assert without_time(out) == without_time(full)
    assert json.loads(Path(str(out) + ".json").read_text())["complete"] is True


def test_resume_without_max_extends_a_run_with_thetas(ancer_run, thetas_dir: Path, tmp_path: Path):
    """Per-input thetas with the memory pass: the rows before the pass are kept, the pass runs
    again over every input, and the file equals an uninterrupted run's."""
    full, _ = ancer_run
    out = tmp_path / "grown.csv"
    certify("--thetas", thetas_dir, "--max", 2, "--out", out)
    result = certify("--thetas", thetas_dir, "--out", out, "--resume")
    assert "2 rows kept" in result.stdout
    assert without_time(out) == without_time(full)
    assert json.loads(Path(str(out) + ".json").read_text())["arguments"]["max"] is None


def test_thetas_with_skip_and_max(ancer_run, thetas_dir: Path, tmp_path: Path) -> None:
    full, _ = ancer_run
    out = tmp_path / "some.csv"
    certify("--thetas", thetas_dir, "--skip", 2, "--max", 5, "--out", out)
    rows = without_time(out)
    reference = without_time(full)
    assert rows == [reference[0]] + [reference[1 + i] for i in (0, 2, 4)]


def test_accuracy_reads_certify_output(fixed_run) -> None:
    out, _ = fixed_run
    rows = read_rows(out)
    result = ok("accuracy", out, "--radius", 0, "--format", "json")
    entry = json.loads(result.stdout)["files"][out.name]
    assert entry["inputs"] == len(rows)
    assert entry["clean_accuracy"] == sum(r.correct for r in rows) / len(rows)
    assert entry["abstention_rate"] == sum(r.predict == -1 for r in rows) / len(rows)


def test_l1_thetas_round_trip(model_path: Path, tmp_path: Path) -> None:
    thetas = tmp_path / "l1"
    ok(
        "optimize",
        "--model",
        model_path,
        "--out",
        thetas,
        "--norm",
        "l1",
        "--max",
        3,
        *OPTIMIZE_FAST,
    )
    manifest = json.loads((thetas / "manifest.json").read_text())
    assert manifest["arguments"]["norm"] == "l1"
    out = tmp_path / "l1.csv"
    certify("--thetas", thetas, "--out", out, "--no-sound")  # the values as written
    rows = read_rows(out)
    assert [row.idx for row in rows] == [0, 1, 2]
    for row in rows:
        theta = torch.load(thetas / f"theta_test_{row.idx}.pt", weights_only=True)
        low = float(theta.min())
        mean = float(torch.exp(torch.log(theta.double()).mean()))
        assert rounded_near(low, row.min_sigma)
        if row.predict != -1:
            matching_gap(row, low, mean, "l1")
    assert json.loads(Path(str(out) + ".json").read_text())["arguments"]["norm"] == "l1"


def test_isotropic_values_pt_file(model_path: Path, tmp_path: Path) -> None:
    """Data-dependent smoothing's own output: one 1-d tensor with a theta per dataset index."""
    values = torch.linspace(0.2, 0.4, 500)
    source = tmp_path / "thetas.pt"
    torch.save(values, source)
    out = tmp_path / "values.csv"
    certify(
        "--thetas",
        source,
        "--model",
        model_path,
        "--dataset",
        "digits",
        "--norm",
        "l2",
        "--skip",
        250,
        "--out",
        out,
    )
    rows = read_rows(out)
    assert [row.idx for row in rows] == [0, 250]
    for row in rows:
        theta = float(values[row.idx])
        assert rounded_near(theta, row.min_sigma)
        if row.predict != -1:
            matching_gap(row, theta, theta, "l2")


# ---------------------------------------------------------------------------------------------
# sequential certification


def test_radius_mode_decides_each_radius_and_records_samples(model_path: Path, tmp_path: Path):
    out = tmp_path / "radius.csv"
    cap = 20_000
    result = ok(
        "certify", "--model", model_path, "--sigma", SIGMA, "--max", 12, "--N", cap,
        "--radius", 0.5, "--radius", 0.25, "--out", out, "--device", "cpu",
    )  # fmt: skip
    lines = out.read_text().splitlines()
    # the seed's eight columns in their order, radius_linf, the sequential ones after them
    assert lines[0] == RESULT_HEADER.rstrip("\n") + "\tsamples\tstop"
    rows = [line.split("\t") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == list(range(12))
    samples = [int(r[9]) for r in rows]
    assert all(100 < s <= 100 + cap for s in samples)
    assert sum(samples) / len(samples) < (100 + cap) / 4  # most inputs decided early
    for r in rows:
        radius, stop = float(r[3]), r[10]
        assert stop in {"certified", "cannot", "abstain", "cap"}
        if stop == "certified":
            assert radius >= 0.5  # certified at every requested radius
        if stop == "cannot":
            assert radius < 0.5
    record = json.loads(Path(str(out) + ".json").read_text())
    assert record["arguments"]["sequential"]["mode"] == "radius"
    assert record["arguments"]["sequential"]["radii"] == [0.25, 0.5]
    totals = record["totals"]
    assert totals["mean_samples_per_input"] == pytest.approx(sum(samples) / len(samples))
    assert totals["samples_cap_per_input"] == 100 + cap
    assert sum(totals["stops"].values()) == 12
    assert "samples per input: mean" in result.stdout
    table = ok("accuracy", out, "--radius", 0.5, "--format", "csv").stdout
    assert "mean samples per input" in table and "median samples per input" in table


@pytest.mark.slow
def test_adaptive_mode_and_proxy_radius_with_thetas(thetas_copy: Path, tmp_path: Path):
    out = tmp_path / "adaptive.csv"
    ok("certify", "--thetas", thetas_copy, "--N", 5000, "--sequential", "--out", out,
       "--device", "cpu")  # fmt: skip
    rows = [line.split("\t") for line in out.read_text().splitlines()[1:]]
    assert {r[10] for r in rows} <= {"converged", "abstain", "cap"}
    assert all(int(r[9]) <= 5100 for r in rows)
    proxy = tmp_path / "proxy.csv"
    ok("certify", "--thetas", thetas_copy, "--N", 5000, "--radius", 0.3, "--metric", "proxy",
       "--out", proxy, "--device", "cpu")  # fmt: skip
    for r in (line.split("\t") for line in proxy.read_text().splitlines()[1:]):
        if r[10] == "certified":
            assert float(r[4]) >= 0.3  # radius_proxy, the unit asked for


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--radius", "-1"), "--radius"),
        (("--radius", "nan"), "--radius"),
        (("--metric", "proxy"), "--metric"),
        (("--tolerance", "0.2"), "--tolerance"),
        (("--sequential", "--tolerance", "-0.1"), "--tolerance"),
    ],
)
def test_sequential_usage_errors(model_path: Path, tmp_path: Path, args, fragment):
    result = invoke(
        "certify", "--model", model_path, "--sigma", SIGMA, "--out", tmp_path / "r.csv", *args
    )
    assert_usage_error(result, fragment)
    assert not (tmp_path / "r.csv").exists()


def test_resume_refuses_another_mode(model_path: Path, tmp_path: Path):
    out = tmp_path / "r.csv"
    base = ("certify", "--model", model_path, "--sigma", SIGMA, "--max", 3, "--N", 2000)
    ok(*base, "--radius", 0.5, "--out", out, "--device", "cpu")
    result = invoke(*base, "--radius", 0.25, "--out", out, "--resume", "--device", "cpu")
    assert_domain_error(result, "sequential.radii")
    result = invoke(*base, "--out", out, "--resume", "--device", "cpu")
    assert_domain_error(result, "header")


# on CUDA (benchmarks/gpu_check.sh runs these; skipped without a CUDA device)


def certify_on_cuda(*args: object):
    return ok("certify", *on_device(CERTIFY_FAST, "cuda"), *args)


@pytest.mark.cuda
def test_same_seed_same_results_on_cuda_twice(model_path: Path, tmp_path: Path) -> None:
    # batch 64: several forward passes per input, and certify_many groups (N0 = 20 < 64)
    args = ("--model", model_path, "--sigma", SIGMA, "--max", 8, "--batch-size", 64)
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    certify_on_cuda(*args, "--out", first)
    certify_on_cuda(*args, "--out", second)
    assert without_time(first) == without_time(second)
    rows = read_rows(first)
    assert [row.idx for row in rows] == list(range(8))
    assert any(row.predict != -1 for row in rows), "nothing certified on CUDA"
    for row in rows:
        if row.predict != -1:
            matching_gap(row, SIGMA, SIGMA, "l2")
    sidecar = json.loads((tmp_path / "first.csv.json").read_text())
    assert sidecar["device"].startswith("cuda")


@pytest.mark.cuda
def test_device_auto_picks_cuda(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "auto.csv"
    ok(
        "certify",
        "--N0",
        20,
        "--N",
        N,
        "--model",
        model_path,
        "--sigma",
        SIGMA,
        "--max",
        2,
        "--out",
        out,
    )
    sidecar = json.loads((tmp_path / "auto.csv.json").read_text())
    assert sidecar["device"].startswith("cuda"), sidecar["device"]
    assert len(read_rows(out)) == 2


@pytest.mark.cuda
@pytest.mark.parametrize(
    "options",
    [
        ("--channels-last",),
        ("--precision", "bf16"),
        ("--precision", "bf16", "--channels-last"),
        ("--precision", "fp16", "--channels-last"),
    ],
    ids=["fp32-channels-last", "bf16", "bf16-channels-last", "fp16-channels-last"],
)
def test_speed_options_on_cuda(model_path: Path, tmp_path: Path, options) -> None:
    out = tmp_path / "fast.csv"
    certify_on_cuda("--model", model_path, "--sigma", SIGMA, "--max", 4, "--out", out, *options)
    rows = read_rows(out)
    assert [row.idx for row in rows] == [0, 1, 2, 3]
    assert any(row.predict != -1 for row in rows)
    for row in rows:
        if row.predict != -1:
            matching_gap(row, SIGMA, SIGMA, "l2")
    arguments = json.loads((tmp_path / "fast.csv.json").read_text())["arguments"]
    precision = options[options.index("--precision") + 1] if "--precision" in options else "fp32"
    assert arguments["precision"] == precision
    assert arguments["channels_last"] == ("--channels-last" in options)


@pytest.mark.cuda
def test_ancer_thetas_and_memory_pass_on_cuda(cuda_thetas_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ancer.csv"
    result = certify_on_cuda(
        "--thetas", cuda_thetas_dir, "--out", out, "--precision", "bf16", "--channels-last"
    )
    rows = read_rows(out)
    assert [row.idx for row in rows] == list(range(OPTIMIZED_INPUTS))
    assert any(row.predict != -1 for row in rows)
    for row in rows:
        theta = torch.load(cuda_thetas_dir / f"theta_test_{row.idx}.pt", weights_only=True)
        low = float(theta.min())
        mean = float(torch.exp(torch.log(theta.double()).mean()))
        assert rounded_near(low, row.min_sigma)
        if row.predict != -1:
            matching_gap(row, low, mean, "l2")
    sidecar = json.loads((tmp_path / "ancer.csv.json").read_text())
    assert sidecar["device"].startswith("cuda") and sidecar["complete"] is True
    assert sidecar["memory"]["enabled"] is True and "reassigned" in sidecar["memory"]
    assert (tmp_path / "ancer.csv.pre-memory").exists()
    assert "memory pass" in result.stdout


# image folders as users have them: class-index names, a class list, any subset, no labels

CIFAR10_NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()


def certify_folder(model: Path, root: Path, out: Path, *extra: object):
    return certify(
        "--model", model, "--dataset", "folder", "--data-root", root, "--sigma", SIGMA,
        "--out", out, *extra,
    )  # fmt: skip


def test_ten_class_model_on_one_class_index_folder(colour_model: Path, tmp_path: Path):
    root = tmp_path / "mine"
    write_class_images(root / "7", 7, 10, count=3)
    out = tmp_path / "r.csv"
    result = certify_folder(colour_model, root, out)
    rows = read_rows(out)
    assert [(row.label, row.predict, row.correct) for row in rows] == [(7, 7, 1)] * 3
    assert "labels from sub-folders named by class index: 7 -> 7" in result.stderr
    sidecar = json.loads(Path(str(out) + ".json").read_text())
    assert sidecar["labels"] == {"rule": "index", "classes_file": None, "labels": {"7": 7}}
    assert sidecar["arguments"]["classes"] is None


def test_subset_of_classes_named_in_a_class_list(colour_model: Path, tmp_path: Path):
    root = tmp_path / "mine"
    write_class_images(root / "dog", 5, 10)
    write_class_images(root / "cat", 3, 10)
    names = tmp_path / "cifar10_classes.txt"
    names.write_text("\n".join(CIFAR10_NAMES) + "\n")
    out = tmp_path / "r.csv"
    result = certify_folder(colour_model, root, out, "--classes", names)
    rows = read_rows(out)
    assert [row.label for row in rows] == [3, 3, 5, 5]
    assert all(row.correct == 1 for row in rows)
    assert "cat -> 3, dog -> 5" in result.stderr and "caution" not in result.stderr
    sidecar = json.loads(Path(str(out) + ".json").read_text())
    assert sidecar["labels"]["rule"] == "classes-file"
    assert sidecar["labels"]["labels"] == {"cat": 3, "dog": 5}
    assert sidecar["arguments"]["classes"] == str(names)
    # the sorted-names rule would call cat 0 and dog 1: it is used, and said, without the list
    plain = tmp_path / "plain.csv"
    warned = certify_folder(colour_model, root, plain)
    assert [row.label for row in read_rows(plain)] == [0, 0, 1, 1]
    assert "labels from sorted sub-folder names: cat -> 0, dog -> 1" in warned.stderr
    assert "caution" in warned.stderr and "--classes FILE" in warned.stderr


def test_imagenet_subset_with_a_1000_class_model(tmp_path: Path):
    model = save_colour_model(tmp_path / "resnet50-like.pt", 1000)
    wnids = [f"n{1440764 + 11 * k:08d}" for k in range(1000)]
    synsets = tmp_path / "LOC_synset_mapping.txt"
    synsets.write_text("".join(f"{w} class number {k}\n" for k, w in enumerate(wnids)))
    for k in (0, 999):
        write_class_images(tmp_path / "imagenet" / "val" / wnids[k], k, 1000, size=(40, 30))
    out = tmp_path / "r.csv"
    certify(
        "--model", model, "--dataset", "imagenet", "--data-root", tmp_path / "imagenet",
        "--classes", synsets, "--sigma", SIGMA, "--out", out, "--N0", 10, "--N", 30,
    )  # fmt: skip
    rows = read_rows(out)
    assert [row.label for row in rows] == [0, 0, 999, 999]
    assert all(row.correct == int(row.predict == row.label) for row in rows)


def test_flat_folder_of_unlabeled_images(colour_model: Path, tmp_path: Path):
    root = tmp_path / "photos"
    for k in (2, 8):
        write_class_images(root / "tmp", k, 10, count=1)
        (root / "tmp" / "0.png").rename(root / f"photo_{k}.png")
    (root / "tmp").rmdir()
    out = tmp_path / "r.csv"
    result = certify_folder(colour_model, root, out)
    rows = read_rows(out)
    assert [(row.label, row.predict, row.correct) for row in rows] == [(-1, 2, 0), (-1, 8, 0)]
    assert all(float(row.radius) > 0 for row in rows)
    assert "no labels (accuracy not measured)" in result.stdout
    assert "unlabeled (label -1)" in result.stderr
    sidecar = json.loads(Path(str(out) + ".json").read_text())
    assert sidecar["labels"]["rule"] == "unlabeled"
    assert sidecar["totals"]["labeled"] == 0
    assert sidecar["totals"]["certified_accuracy_at_0"] is None

    report = ok("accuracy", out, "--format", "json", "-r", 0, "-r", 0.25)
    entry = json.loads(report.stdout)["files"][out.name]
    assert entry["inputs"] == 2 and entry["labeled_inputs"] == 0
    assert entry["clean_accuracy"] is None and entry["certified_accuracy"]["0.25"] is None
    assert entry["abstention_rate"] == 0.0
    assert "no labels" in report.stderr and "not applicable" in report.stderr
    table = ok("accuracy", out, "--format", "markdown", "-r", 0.25).stdout
    assert "| certified accuracy at 0.25 | - |" in table
    assert "| labeled inputs | 0 |" in table and "| abstention rate | 0.000 |" in table


def test_optimize_records_the_class_list_for_certify(colour_model: Path, tmp_path: Path):
    root = tmp_path / "mine"
    write_class_images(root / "truck", 9, 10)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CIFAR10_NAMES) + "\n")
    thetas = tmp_path / "thetas"
    ok(
        "optimize", "--model", colour_model, "--dataset", "folder", "--data-root", root,
        "--classes", names, "--sigma", SIGMA, "--method", "isotropic", "--out", thetas,
        *OPTIMIZE_FAST,
    )  # fmt: skip
    manifest = json.loads((thetas / "manifest.json").read_text())
    assert manifest["arguments"]["classes"] == str(names.resolve())
    assert manifest["labels"]["labels"] == {"truck": 9}
    out = tmp_path / "r.csv"
    certify("--thetas", thetas, "--out", out)
    assert [row.label for row in read_rows(out)] == [9, 9]


# ---------------------------------------------------------------------------------------------
# the original data-dependent smoothing package's isotropic file, and ours for its scripts


def original_isotropic_file(path: Path, sigmas: torch.Tensor) -> Path:
    """As ``OptimizeIsotropicSmoothingParameters.run_optimization`` writes it: ``theta_0`` (one
    entry per input of its test loader, here the selected inputs) filled batch by batch with
    the optimized sigmas, then ``torch.save(theta_0, filename)``; its scripts name the file
    ``isotropic_parameters``, without a suffix."""
    theta_0 = 0.25 * torch.ones(len(sigmas))
    for batch in torch.arange(len(sigmas)).split(4):  # the loader's batches
        theta_0[batch] = sigmas[batch].detach()
    torch.save(theta_0, path)
    return path


@pytest.mark.parametrize("form", ["torch", "text"])
def test_isotropic_file_with_one_value_per_selected_input(
    model_path: Path, tmp_path: Path, form: str
) -> None:
    selected = list(range(0, 20, 2))  # --skip 2 --max 20: 10 inputs
    sigmas = torch.linspace(0.15, 0.35, len(selected))
    if form == "torch":
        source = original_isotropic_file(tmp_path / "isotropic_parameters", sigmas)
    else:
        source = tmp_path / "sigmas.txt"
        source.write_text("".join(f"{float(v)!r}\n" for v in sigmas))
    common = ("--model", model_path, "--dataset", "digits", "--norm", "l2", "--skip", 2,
              "--max", 20)  # fmt: skip
    out = tmp_path / "selected.csv"
    result = certify("--thetas", source, *common, "--out", out)
    assert "one value per selected input" in result.stderr
    rows = read_rows(out)
    assert [row.idx for row in rows] == selected
    for row, sigma in zip(rows, sigmas, strict=True):
        assert rounded_near(float(sigma), row.min_sigma)
    # the same sigmas written one per dataset index certify exactly the same rows
    per_index = torch.full((500,), 0.3)
    per_index[selected] = sigmas
    full = tmp_path / "per_index.pt"
    torch.save(per_index, full)
    reference = tmp_path / "per_index.csv"
    certify("--thetas", full, *common, "--out", reference)
    assert without_time(out) == without_time(reference)


def test_optimize_from_an_original_isotropic_file(model_path: Path, tmp_path: Path) -> None:
    sigmas = torch.tensor([0.2, 0.3, 0.4])
    source = original_isotropic_file(tmp_path / "isotropic_parameters", sigmas)
    out = tmp_path / "ancer"
    ok(
        "optimize", "--model", model_path, "--out", out, "--isotropic-thetas", source,
        "--max", 3, *OPTIMIZE_FAST,
    )  # fmt: skip
    for idx, sigma in enumerate(sigmas):
        theta = torch.load(out / f"theta_test_{idx}.pt", weights_only=True)
        assert bool((theta >= sigma).all())  # ANCER keeps theta above its isotropic start


def test_our_folders_as_the_original_scripts_read_them(thetas_dir: Path, tmp_path: Path) -> None:
    """The README's recipe: the original certify_dataset.py reads an ANCER folder of ours as it
    is (``--optimized-sigmas thetas/``), and an isotropic folder once gathered into one tensor
    with one sigma per dataset index (``torch.load(...)[i]`` for every index it certifies)."""
    ancer_folder = str(thetas_dir)
    for i in range(0, OPTIMIZED_INPUTS):  # their get_ancer_sigma, for --skip 1 --max 6
        theta_i = torch.relu(torch.load(ancer_folder + "/theta_test_" + str(i) + ".pt"))
        assert theta_i.shape == (1, 8, 8) and bool((theta_i > 0).all())

    # the recipe of the README, verbatim apart from the paths and the split's size
    folder = str(thetas_dir / "isotropic")
    manifest = json.loads(Path(f"{folder}/manifest.json").read_text())
    split, sigma = manifest["arguments"]["split"], manifest["arguments"]["sigma"]
    sigmas = torch.full((500,), sigma)  # the split's size; other inputs keep the initial sigma
    for i in manifest["indices"]:
        sigmas[i] = torch.load(f"{folder}/theta_{split}_{i}.pt")
    torch.save(sigmas, tmp_path / "isotropic_sigmas.pt")

    all_sigmas = torch.load(tmp_path / "isotropic_sigmas.pt")  # as their script reads it
    for i in range(OPTIMIZED_INPUTS):
        theta = torch.load(thetas_dir / "isotropic" / f"theta_test_{i}.pt", weights_only=True)
        assert torch.Tensor([all_sigmas[i].item()]).item() == float(theta)
