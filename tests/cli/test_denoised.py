"""Denoised smoothing end to end: ``train --sigma 0``, ``train --denoiser`` (report, resume),
``certify``/``predict --denoiser`` (sidecar, the thetas' denoiser hash, shape refusals)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from ancer_cli.data import load_dataset
from ancer_cli.denoise import DenoiserConfig, cosine_lr, train_denoiser
from ancer_cli.distributed import SINGLE, Session
from ancer_cli.models.denoisers import DnCNN, denoiser_size, find_denoised, save_denoiser
from ancer_cli.reuse import ReuseRequest, plan_reuse
from tests.helpers import CERTIFY_FAST, assert_domain_error, invoke, ok, read_rows, train_model

DENOISER_FAST = ("--denoiser", "--device", "cpu", "--batch-size", "128")
CPU = Session(SINGLE, torch.device("cpu"))


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def save_random_denoiser(path: Path, seed: int, input_shape=(1, 8, 8)) -> Path:
    torch.manual_seed(seed)
    save_denoiser(
        path, model=DnCNN(input_shape[0], 3, 4), depth=3, width=4, dataset="digits",
        input_shape=input_shape, norm="l2", sigma_max=1.0, epoch=1, optimizer_state=None,
    )  # fmt: skip
    return path


def test_train_sigma_0_trains_a_clean_classifier(tmp_path: Path) -> None:
    out = tmp_path / "clean.pt"
    result = train_model(out, "--sigma", 0, epochs=1)
    assert "noise sigma=0.0" in result.stderr
    assert "test noisy acc -- (sigma 0)" in result.stderr
    checkpoint = load(out)
    assert (checkpoint["sigma"], checkpoint["epoch"]) == (0.0, 1)


def test_train_refuses_a_negative_sigma(tmp_path: Path) -> None:
    result = invoke("train", "--sigma", -0.1, "--out", tmp_path / "m.pt")
    assert result.exit_code == 2


@pytest.fixture(scope="module")
def denoiser_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A 2-epoch denoiser run, and the same run stopped after its first epoch's checkpoint
    (the training generator closed, as a kill would leave it) and resumed."""
    folder = tmp_path_factory.mktemp("denoisers")
    whole, resumed = folder / "whole.pt", folder / "resumed.pt"
    report = ok("train", *DENOISER_FAST, "--epochs", 2, "--out", whole).stderr
    depth, width = denoiser_size("digits")
    config = DenoiserConfig(depth=depth, width=width, epochs=2, batch_size=128)
    data = {split: load_dataset("digits", split, None) for split in ("train", "test")}
    run = train_denoiser(config, data["train"], data["test"], torch.device("cpu"), resumed)
    assert next(run).epoch == 1
    run.close()
    ok("train", *DENOISER_FAST, "--epochs", 2, "--out", resumed, "--resume")
    return whole, resumed, report


def test_train_denoiser_writes_its_checkpoint_and_reports_psnr(denoiser_runs) -> None:
    whole, _, report = denoiser_runs
    checkpoint = load(whole)
    assert checkpoint["format"] == "ancer-denoiser/1"
    assert (checkpoint["arch"], checkpoint["dataset"], checkpoint["epoch"]) == (
        "dncnn",
        "digits",
        2,
    )
    assert checkpoint["input_shape"] == [1, 8, 8] and checkpoint["sigma_max"] == 1.0
    lines = re.findall(
        r"^epoch +\d/2 .*test PSNR dB by sigma 0.12:\d+\.\d\d .*1:\d+\.\d\d", report, re.M
    )
    assert len(lines) == 2, report


def test_train_denoiser_resumes_to_the_same_weights(denoiser_runs) -> None:
    whole, resumed, _ = denoiser_runs
    a, b = load(whole)["state_dict"], load(resumed)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_the_denoiser_learning_rate_falls_along_a_cosine_to_zero() -> None:
    assert cosine_lr(1e-3, 0, 100) == 1e-3
    assert cosine_lr(1e-3, 50, 100) == pytest.approx(5e-4, abs=1e-18)
    assert cosine_lr(1e-3, 25, 100) == pytest.approx(1e-3 * (2 + 2**0.5) / 4, rel=1e-15)
    assert cosine_lr(1e-3, 100, 100) == 0.0 and cosine_lr(1e-3, 120, 100) == 0.0
    rates = [cosine_lr(1.0, step, 42) for step in range(43)]
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))


def test_train_denoiser_with_a_classifier_reports_its_accuracy(
    tmp_path: Path, model_path: Path
) -> None:
    out = tmp_path / "d.pt"
    result = ok(
        "train", *DENOISER_FAST, "--epochs", 1, "--objective", "classifier",
        "--classifier", model_path, "--sigma", 0.5, "--out", out,
    )  # fmt: skip
    assert re.search(r"denoised acc 0.12:\d\.\d{3}  0.25:\d\.\d{3}  0.5:\d\.\d{3}", result.stderr)
    assert load(out)["objective"] == "classifier"


def test_certify_and_predict_with_a_denoiser_record_it(tmp_path: Path, model_path: Path) -> None:
    denoiser = save_random_denoiser(tmp_path / "d.pt", seed=0)
    out = tmp_path / "r.csv"
    ok("certify", "--model", model_path, "--sigma", 0.25, "--denoiser", denoiser,
       "--max", 4, "--out", out, *CERTIFY_FAST)  # fmt: skip
    assert len(read_rows(out)) == 4
    arguments = json.loads(Path(f"{out}.json").read_text())["arguments"]
    assert arguments["denoiser"] == str(denoiser)
    assert len(arguments["denoiser_sha256"]) == 64
    ok("predict", "--model", model_path, "--sigma", 0.25, "--denoiser", denoiser, "--max", 4,
       "--N", 50, "--seed", 0, "--device", "cpu", "--out", tmp_path / "p.csv")  # fmt: skip


def test_a_denoiser_for_other_inputs_is_refused(tmp_path: Path, model_path: Path) -> None:
    denoiser = save_random_denoiser(tmp_path / "d.pt", seed=0, input_shape=(3, 8, 8))
    result = invoke(
        "certify", "--model", model_path, "--sigma", 0.25, "--denoiser", denoiser,
        "--max", 2, "--out", tmp_path / "r.csv", *CERTIFY_FAST,
    )  # fmt: skip
    assert_domain_error(result, "denoiser", "(3, 8, 8)", "(1, 8, 8)")


def test_certify_thetas_checks_the_denoiser_hash(tmp_path: Path, thetas_copy: Path) -> None:
    first = save_random_denoiser(tmp_path / "first.pt", seed=0)
    other = save_random_denoiser(tmp_path / "other.pt", seed=1)
    first_run = tmp_path / "first.csv"
    ok("certify", "--sigma", 0.25, "--model", json.loads(
        (thetas_copy / "manifest.json").read_text())["arguments"]["model"],
       "--denoiser", first, "--max", 1, "--out", first_run, *CERTIFY_FAST)  # fmt: skip
    sha = json.loads(Path(f"{first_run}.json").read_text())["arguments"]["denoiser_sha256"]
    manifest_path = thetas_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["arguments"].update(denoiser=str(first), denoiser_sha256=sha)
    manifest_path.write_text(json.dumps(manifest))

    def certify(*extra: object):
        return invoke("certify", "--thetas", thetas_copy, "--max", 2, "--no-memory",
                      "--out", tmp_path / f"r{len(extra)}.csv", *extra, *CERTIFY_FAST)  # fmt: skip

    assert_domain_error(certify("--denoiser", other), "another", "denoiser", sha[:12])
    assert_domain_error(certify(), "no denoiser", "--denoiser")
    result = certify("--denoiser", first)
    assert result.exit_code == 0, result.stderr


def test_reuse_takes_no_denoiser(tmp_path: Path, model_path: Path) -> None:
    denoiser = save_random_denoiser(tmp_path / "d.pt", seed=0)
    earlier = tmp_path / "earlier.csv"
    earlier.write_text("")
    result = invoke(
        "certify", "--reuse", earlier, "--model", model_path, "--denoiser", denoiser,
        "--out", tmp_path / "r.csv",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--denoiser" in result.stderr


def test_optimize_with_a_denoiser_records_it_and_certify_checks_it(
    tmp_path: Path, model_path: Path
) -> None:
    denoiser = save_random_denoiser(tmp_path / "d.pt", seed=0)
    thetas = tmp_path / "thetas"
    result = ok("optimize", "--model", model_path, "--denoiser", denoiser, "--max", 2,
                "--device", "cpu", "--out", thetas)  # fmt: skip
    assert "denoiser" in result.stderr
    for folder in (thetas, thetas / "isotropic"):
        arguments = json.loads((folder / "manifest.json").read_text())["arguments"]
        assert arguments["denoiser"] == str(denoiser) and len(arguments["denoiser_sha256"]) == 64

    def certify(*extra: object):
        return invoke("certify", "--thetas", thetas, "--out", tmp_path / f"r{len(extra)}.csv",
                      *extra, *CERTIFY_FAST)  # fmt: skip

    assert_domain_error(certify(), "no denoiser", "--denoiser")
    assert certify("--denoiser", denoiser).exit_code == 0
    # thetas optimized without a denoiser are refused with one
    plain = tmp_path / "plain"
    ok("optimize", "--model", model_path, "--method", "isotropic", "--max", 1, "--device", "cpu",
       "--out", plain)  # fmt: skip
    assert json.loads((plain / "manifest.json").read_text())["arguments"]["denoiser"] is None
    result = invoke("certify", "--thetas", plain, "--denoiser", denoiser, "--out",
                    tmp_path / "p.csv", *CERTIFY_FAST)  # fmt: skip
    assert_domain_error(result, "without a denoiser", "drop --denoiser")


def test_optimize_a_clean_classifier_needs_a_start_sigma(tmp_path: Path) -> None:
    clean = tmp_path / "clean.pt"
    train_model(clean, "--sigma", 0, epochs=1)
    result = invoke("optimize", "--model", clean, "--max", 1, "--out", tmp_path / "t")
    assert_domain_error(result, "without noise", "--sigma")


@pytest.fixture(scope="module")
def ddpm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised DDPM for 8x8 grey images, saved as diffusers saves one."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )  # fmt: skip
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    folder = tmp_path_factory.mktemp("ddpm") / "ddpm"
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(folder))
    return folder


def test_a_diffusers_ddpm_folder_certifies_end_to_end(
    tmp_path: Path, model_path: Path, ddpm_folder: Path
) -> None:
    out = tmp_path / "r.csv"
    ok("certify", "--model", model_path, "--sigma", 0.25, "--denoiser", ddpm_folder,
       "--max", 3, "--out", out, *CERTIFY_FAST)  # fmt: skip
    assert len(read_rows(out)) == 3
    arguments = json.loads(Path(f"{out}.json").read_text())["arguments"]
    assert arguments["denoiser"] == str(ddpm_folder) and len(arguments["denoiser_sha256"]) == 64
    config = json.loads((ddpm_folder / "scheduler" / "scheduler_config.json").read_text())
    betas = torch.linspace(config["beta_start"], config["beta_end"], 1000, dtype=torch.float64)
    roots = torch.cumprod(1 - betas, 0).sqrt()
    target = 1 / (1 + (2 * 0.25) ** 2) ** 0.5
    steps = arguments["denoiser_timesteps"]
    assert steps["t_star"] == int(torch.argmin((roots - target).abs()))
    assert steps["mismatch"] == pytest.approx(float(roots[steps["t_star"]]) - target, abs=1e-6)
    abar = float(roots[steps["t_star"]]) ** 2
    assert steps["sigma_at_t_star"] == pytest.approx(((1 - abar) / abar) ** 0.5 / 2, rel=1e-6)
    assert abs(steps["sigma_at_t_star"] - 0.25) < 0.01  # a 1000-step schedule lands close
    ok("predict", "--model", model_path, "--sigma", 0.25, "--denoiser", ddpm_folder, "--max", 2,
       "--N", 50, "--seed", 0, "--device", "cpu", "--out", tmp_path / "p.csv")  # fmt: skip
    # isotropic thetas: each input its own t*
    thetas = tmp_path / "iso"
    ok("optimize", "--model", model_path, "--method", "isotropic", "--denoiser", ddpm_folder,
       "--max", 2, "--iso-samples", 16, "--device", "cpu", "--out", thetas)  # fmt: skip
    iso = tmp_path / "iso.csv"
    ok("certify", "--thetas", thetas, "--denoiser", ddpm_folder, "--out", iso, *CERTIFY_FAST)
    recorded = json.loads(Path(f"{iso}.json").read_text())["arguments"]["denoiser_timesteps"]
    assert recorded["t_star_min"] <= recorded["t_star_max"]


def test_a_diffusion_denoiser_refuses_per_pixel_thetas(
    tmp_path: Path, model_path: Path, thetas_copy: Path, ddpm_folder: Path
) -> None:
    manifest = json.loads((thetas_copy / "manifest.json").read_text())
    for key in ("denoiser", "denoiser_sha256"):  # thetas that record no denoiser
        manifest["arguments"].pop(key, None)
    (thetas_copy / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("certify", "--thetas", thetas_copy, "--denoiser", ddpm_folder, "--max", 1,
                    "--out", tmp_path / "r.csv", *CERTIFY_FAST)  # fmt: skip
    assert_domain_error(result, "diffusion model", "not ANCER thetas")
    result = invoke("optimize", "--model", model_path, "--denoiser", ddpm_folder, "--max", 1,
                    "--device", "cpu", "--out", tmp_path / "t")  # fmt: skip
    assert_domain_error(result, "diffusion model", "--method isotropic")


def test_sequential_and_speed_options_apply_with_a_denoiser(
    tmp_path: Path, model_path: Path
) -> None:
    denoiser = save_random_denoiser(tmp_path / "d.pt", seed=0)
    out = tmp_path / "r.csv"
    ok("certify", "--model", model_path, "--sigma", 0.25, "--denoiser", denoiser, "--max", 3,
       "--radius", 0.25, "--precision", "bf16", "--channels-last", "--out", out,
       *CERTIFY_FAST)  # fmt: skip
    header = Path(out).read_text().splitlines()[0].split("\t")
    assert header[-2:] == ["samples", "stop"] and len(Path(out).read_text().splitlines()) == 4
    arguments = json.loads(Path(f"{out}.json").read_text())["arguments"]
    assert arguments["precision"] == "bf16" and arguments["denoiser"] == str(denoiser)


def test_train_denoiser_resume_refuses_other_options(tmp_path: Path) -> None:
    out = tmp_path / "d.pt"
    ok("train", *DENOISER_FAST, "--epochs", 1, "--out", out)
    result = invoke(
        "train", *DENOISER_FAST, "--epochs", 2, "--sigma", 0.5, "--out", out, "--resume"
    )
    assert_domain_error(result, "cannot resume", "--sigma 1.0", "0.5")
    result = invoke("train", *DENOISER_FAST, "--epochs", 2, "--lr", 0.01, "--out", out, "--resume")
    assert_domain_error(result, "cannot resume", "--lr 0.001")


def test_recertify_of_a_denoised_run_keeps_the_denoiser(tmp_path: Path, model_path: Path) -> None:
    """The earlier run's base classifier is model(denoiser(z)): reuse compares it with
    changed(denoiser(z)) -- the denoiser carried over, never the bare classifiers -- and records
    it. (An unchanged classifier then disagrees nowhere and every row is reused.)"""
    denoiser = save_random_denoiser(tmp_path / "d.pt", seed=0)
    earlier = tmp_path / "earlier.csv"
    ok("certify", "--model", model_path, "--sigma", 0.25, "--denoiser", denoiser, "--max", 3,
       "--N0", 20, "--N", 4000, "--batch-size", 400, "--seed", 0, "--device", "cpu",
       "--out", earlier)  # fmt: skip
    changed = tmp_path / "changed.pt"
    shutil.copy(model_path, changed)
    out = tmp_path / "reused.csv"
    request = ReuseRequest(results=earlier, model=changed, out=out, tolerance=1.0, seed=1)
    plan = plan_reuse(request, CPU)
    original, again = (find_denoised(model) for model in (plan.pair.original, plan.pair.changed))
    assert original is not None and again is not None
    assert again.denoiser is original.denoiser and again.classifier is not original.classifier
    plan.run.close()
    ok("recertify", earlier, "--model", changed, "--out", out, "--reuse-tolerance", 1.0,
       "--seed", 1, "--device", "cpu")  # fmt: skip
    before = json.loads(Path(f"{earlier}.json").read_text())["arguments"]
    after = json.loads(Path(f"{out}.json").read_text())["arguments"]
    assert after["denoiser"] == before["denoiser"] == str(denoiser)
    assert after["denoiser_sha256"] == before["denoiser_sha256"]
    header, *lines = out.read_text().splitlines()
    column = header.split("\t").index("path")
    routes = [line.split("\t")[column] for line in lines]
    assert routes and set(routes) <= {"reuse", "abstain"}
