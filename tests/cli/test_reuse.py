"""``ancer recertify`` (and its alias ``ancer certify --reuse``): a changed model certified from an
earlier run, end to end."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from scipy.stats import norm as normal

from ancer_cli.core.incremental import recovered_p_a_lower
from ancer_cli.core.sequential import cs_upper
from tests.helpers import (
    RESULT_HEADER,
    assert_domain_error,
    assert_usage_error,
    invoke,
    ok,
    rounded_down,
    save_colour_model,
    without_time,
    write_class_images,
)

N0, N = 20, 1000
EARLIER = ("--N0", N0, "--N", N, "--batch-size", 100, "--seed", 0, "--device", "cpu", "--max", 6)
REUSE = ("--alpha-zeta", 0.01, "--reuse-tolerance", 0.5, "--seed", 1, "--device", "cpu")


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Path:
    """A fixed-sigma certify run of the session's model (float noise: exact radii to compare)."""
    out = tmp_path_factory.mktemp("earlier") / "earlier.csv"
    ok("certify", "--model", model_path, "--sigma", 0.25, "--no-sound", "--out", out, *EARLIER)
    return out


def _rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()[1:]]


def test_unchanged_model_reuses_with_exactly_the_zero_disagreement_bound(
    earlier: Path, model_path: Path, tmp_path: Path
):
    out = tmp_path / "reused.csv"
    result = ok("recertify", earlier, "--model", model_path, "--out", out, *REUSE)
    assert "reused" in result.stdout and "fresh draws" in result.stderr
    assert out.read_text().splitlines()[0] == RESULT_HEADER + "\tsamples\tpath"
    before = {int(r[0]): r for r in _rows(earlier)}
    routes = set()
    for row in _rows(out):
        old = before[int(row[0])]
        routes.add(row[10])
        if row[10] != "reuse":
            continue
        draws = int(row[9]) // 2  # both models saw each fresh draw
        p = recovered_p_a_lower(float(old[3]), 0.25, "l2") - cs_upper(0, draws, 0.01)
        assert row[2] == old[2]
        assert rounded_down(0.25 * normal.ppf(p), row[3])
    assert "reuse" in routes
    record = json.loads(Path(str(out) + ".json").read_text())
    assert record["guarantee"]["alpha"] == pytest.approx(0.001 + 0.01)
    models = record["reuse"]["models"]
    assert models["original"]["sha256"] == models["changed"]["sha256"]
    assert record["reuse"]["earlier"]["seed"] == 0 and record["arguments"]["seed"] == 1
    assert record["totals"]["routes"]["reuse"] == sum(r[10] == "reuse" for r in _rows(out))


def test_reported_radii_are_kept_and_recorded(earlier: Path, model_path: Path, tmp_path: Path):
    """``--reuse-radius``: no reused row falls below a reported radius its earlier row reached
    (no relative tolerance otherwise); the radii are recorded, so resuming with others refuses."""
    before = {int(r[0]): float(r[3]) for r in _rows(earlier)}
    radius = round(0.5 * min(r for r in before.values() if r > 0), 6)
    out = tmp_path / "radii.csv"
    result = ok("certify", "--reuse", earlier, "--model", model_path, "--out", out,
                "--reuse-radius", radius, "--reuse-radius", 10, "--alpha-zeta", 0.01,
                "--seed", 1, "--device", "cpu")  # fmt: skip
    assert f"keeping radii {radius:g}, 10;" in result.stderr and "tolerance" not in result.stderr
    kept = [row for row in _rows(out) if row[10] == "reuse" and before[int(row[0])] >= radius]
    assert kept and all(float(row[3]) >= radius for row in kept)
    reuse = json.loads(Path(str(out) + ".json").read_text())["arguments"]["reuse"]
    assert reuse["radii"] == [radius, 10.0] and reuse["tolerance"] == 1.0
    again = invoke("certify", "--reuse", earlier, "--model", model_path, "--out", out,
                   "--reuse-radius", radius, "--alpha-zeta", 0.01, "--seed", 1,
                   "--device", "cpu", "--resume")  # fmt: skip
    assert again.exit_code != 0 and "radii" in again.output


def test_rows_certified_afresh_are_certifys_rows(earlier: Path, model_path: Path, tmp_path: Path):
    """Tolerance 0: no input can be reused; each is the row ``certify --seed 1`` writes."""
    out, plain = tmp_path / "afresh.csv", tmp_path / "plain.csv"
    ok("certify", "--reuse", earlier, "--model", model_path, "--out", out,
       "--reuse-tolerance", 0, "--seed", 1, "--device", "cpu")  # fmt: skip
    ok("certify", "--model", model_path, "--sigma", 0.25, "--no-sound", "--out", plain,
       *EARLIER[:-6], "--seed", 1, "--device", "cpu", "--max", 6)  # fmt: skip
    assert all(row[10] == "scratch" and int(row[9]) == N0 + N for row in _rows(out))
    assert without_time(out)[1:] == without_time(plain)[1:]


def test_bf16_thetas_l1_memory_pass_and_resume(model_path: Path, thetas_dir: Path, tmp_path: Path):
    earlier = tmp_path / "earlier.csv"
    ok("certify", "--thetas", thetas_dir, "--out", earlier, *EARLIER[:-2])
    assert Path(str(earlier) + ".pre-memory").is_file()
    out = tmp_path / "bf16.csv"
    args = ("certify", "--reuse", earlier, "--model", model_path, "--precision", "bf16",
            "--out", out, *REUSE)  # fmt: skip
    ok(*args)
    assert Path(str(out) + ".pre-memory").is_file()  # the memory pass ran on the new rows
    full = without_time(out)
    assert len(full) == 1 + 6 and all(len(row) == 8 for row in full)
    record = json.loads(Path(str(out) + ".json").read_text())
    assert record["arguments"]["precision"] == "bf16" and record["memory"]["enabled"]
    # resume: cut the rows before the memory pass to two, as a crash would (its sidecar not
    # finished yet: a finished file's rows are checked against their digest)
    working = Path(str(out) + ".pre-memory")
    lines = working.read_text().splitlines(keepends=True)
    working.write_text("".join(lines[:3]))
    out.unlink()
    Path(f"{out}.json").write_text(json.dumps({**record, "complete": False}))
    ok(*args, "--resume")
    assert without_time(out) == full
    assert json.loads(Path(str(out) + ".json").read_text())["totals"]["resumed_rows"] == 2


def test_l1_fixed_sigma(model_path: Path, tmp_path: Path):
    earlier = tmp_path / "earlier.csv"
    ok("certify", "--model", model_path, "--sigma", 0.25, "--norm", "l1", "--out", earlier,
       *EARLIER)  # fmt: skip
    out = tmp_path / "l1.csv"
    ok("certify", "--reuse", earlier, "--model", model_path, "--out", out, *REUSE)
    assert json.loads(Path(str(out) + ".json").read_text())["arguments"]["norm"] == "l1"
    assert {row[10] for row in _rows(out)} <= {"reuse", "scratch", "abstain"}


def test_refusals(earlier: Path, model_path: Path, tmp_path: Path):
    bare = tmp_path / "bare.csv"
    shutil.copy(earlier, bare)
    out = tmp_path / "out.csv"
    run = ("--model", model_path, "--out", out, "--device", "cpu")
    assert_domain_error(invoke("certify", "--reuse", bare, *run), "has no sidecar")
    record = json.loads(Path(str(earlier) + ".json").read_text())
    del record["arguments"]["N"]
    Path(str(bare) + ".json").write_text(json.dumps(record))
    assert_domain_error(invoke("recertify", bare, *run), "lacks arguments.N")
    # the original model is gone
    copy = tmp_path / "copy.pt"
    shutil.copy(model_path, copy)
    gone = tmp_path / "gone.csv"
    ok("certify", "--model", copy, "--sigma", 0.25, "--out", gone, *EARLIER)
    copy.unlink()
    assert_domain_error(invoke("certify", "--reuse", gone, *run), "copy.pt is missing")
    # a model of another dataset, and one that cannot read 1x8x8 inputs
    checkpoint = torch.load(model_path, weights_only=True)
    checkpoint["dataset"] = "mnist"
    other = tmp_path / "mnist.pt"
    torch.save(checkpoint, other)
    changed = ("--out", out, "--device", "cpu")
    assert_domain_error(
        invoke("certify", "--reuse", earlier, "--model", other, *changed), "made for mnist"
    )
    checkpoint["dataset"], checkpoint["input_shape"] = "digits", [1, 28, 28]
    torch.save(checkpoint, other)
    assert_domain_error(
        invoke("certify", "--reuse", earlier, "--model", other, *changed), "(1, 28, 28)"
    )
    # a black box with three logits
    three = save_colour_model(tmp_path / "colour3.pt", 3)
    assert_domain_error(invoke("certify", "--reuse", earlier, "--model", three, *changed), "logits")


def test_usage_errors(earlier: Path, model_path: Path):
    assert_usage_error(
        invoke("certify", "--reuse", earlier, "--model", model_path, "--sigma", 0.25), "--sigma"
    )
    assert_usage_error(invoke("certify", "--reuse", earlier, "--N", 50, "--model", model_path),
                       "--N")  # fmt: skip
    assert_usage_error(invoke("certify", "--reuse", earlier), "needs --model")
    assert_usage_error(invoke("certify", "--alpha-zeta", 0.01), "go with --reuse")
    assert_usage_error(invoke("certify", "--reuse-radius", 0.5), "go with --reuse")
    assert_usage_error(
        invoke("certify", "--reuse", earlier, "--model", model_path, "--reuse-radius", 0),
        "--reuse-radius must be a finite number > 0",
    )


def test_an_image_changed_on_disk_is_refused(tmp_path: Path):
    """Every reused input must be the one the earlier run certified: an image changed on disk
    afterwards (a few pixels) is named and refused, by recertify and by verify."""
    images = tmp_path / "images"
    for label in (0, 1):
        write_class_images(images / str(label), label, classes=2, count=2)
    model = save_colour_model(tmp_path / "colour.pt", 2)
    earlier = tmp_path / "earlier.csv"
    ok("certify", "--model", model, "--dataset", "folder", "--data-root", images, "--sigma", 0.1,
       "--norm", "l2", "--N0", 20, "--N", 500, "--seed", 0, "--device", "cpu",
       "--out", earlier)  # fmt: skip
    first = sorted((images / "1").iterdir())[0]
    picture = Image.open(first).convert("RGB")
    picture.putpixel((0, 0), (255, 255, 255))
    picture.save(first)
    result = invoke("recertify", earlier, "--model", model, "--out", tmp_path / "r.csv",
                    "--device", "cpu")  # fmt: skip
    assert_domain_error(result, "input 2", "changed since", str(earlier))
    result = invoke("verify", earlier, "--device", "cpu")
    assert result.exit_code == 1 and "mismatch: input 2 differs from the record" in result.stdout
