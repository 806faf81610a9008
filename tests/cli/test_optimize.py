"""``ancer optimize`` end to end: folder layout, manifest, theta files, determinism, resume."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import ancer_cli
from ancer_cli.core.choices import Norm
from ancer_cli.core.law import Noise
from ancer_cli.core.optimize import GuardedAncerConfig, IsotropicSearchConfig
from ancer_cli.data import load_dataset
from tests.helpers import (
    CERTIFY_FAST,
    OPTIMIZE_CERTIFIED_FAST,
    OPTIMIZE_FAST,
    OPTIMIZED_INPUTS,
    assert_domain_error,
    assert_usage_error,
    invoke,
    ok,
    on_device,
    read_rows,
)

SIGMA = 0.25


def theta_names(count: int) -> set[str]:
    return {f"theta_test_{i}.pt" for i in range(count)}


def load(path: Path) -> torch.Tensor:
    return torch.load(path, map_location="cpu", weights_only=True)


def optimize(model_path: Path, out: Path, *extra: object):
    return ok(
        "optimize",
        "--model",
        model_path,
        "--out",
        out,
        "--max",
        OPTIMIZED_INPUTS,
        *OPTIMIZE_FAST,
        *extra,
    )


def test_folder_layout(thetas_dir: Path) -> None:
    count = OPTIMIZED_INPUTS
    assert {p.name for p in thetas_dir.iterdir()} == theta_names(count) | {
        "isotropic",
        "manifest.json",
    }
    assert (thetas_dir / "isotropic").is_dir()
    assert {p.name for p in (thetas_dir / "isotropic").iterdir()} == theta_names(count) | {
        "manifest.json"
    }


def test_manifest_fields(thetas_dir: Path, model_path: Path) -> None:
    manifest = json.loads((thetas_dir / "manifest.json").read_text())
    arguments = manifest["arguments"]
    assert manifest["format"] == "ancer-thetas/1"
    assert manifest["method"] == "ancer"
    assert manifest["complete"] is True
    assert arguments["norm"] == "l2"
    assert arguments["sigma"] == SIGMA
    assert arguments["dataset"] == "digits" and arguments["split"] == "test"
    assert manifest["indices"] == list(range(OPTIMIZED_INPUTS))
    assert Path(arguments["model"]) == model_path.resolve()
    assert arguments["model_sha256"] == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert manifest["package_version"] == ancer_cli.__version__
    assert arguments["seed"] == 0
    assert manifest["device"].startswith("cpu")
    assert manifest["wall_seconds"] > 0
    hyper = arguments["hyperparameters"]
    assert hyper["isotropic"] == {"iterations": 5, "lr": 0.04, "samples": 8}
    assert hyper["ancer"] == {"iterations": 5, "lr": 0.04, "samples": 8, "kappa": 2.0}
    assert hyper["batch_size"] > 0

    iso = json.loads((thetas_dir / "isotropic" / "manifest.json").read_text())
    assert iso["format"] == "ancer-thetas/1" and iso["method"] == "isotropic"
    assert iso["complete"] is True and iso["indices"] == manifest["indices"]
    assert iso["arguments"]["model_sha256"] == arguments["model_sha256"]
    assert iso["arguments"]["hyperparameters"]["isotropic"] == hyper["isotropic"]


def test_theta_files(thetas_dir: Path) -> None:
    moved = False
    for idx in range(OPTIMIZED_INPUTS):
        theta = load(thetas_dir / f"theta_test_{idx}.pt")
        iso = load(thetas_dir / "isotropic" / f"theta_test_{idx}.pt")
        assert theta.dtype == iso.dtype == torch.float32
        assert theta.shape == (1, 8, 8)
        assert iso.shape == ()
        assert float(iso) > 0 and bool(torch.isfinite(theta).all())
        assert bool((theta >= iso).all()), f"input {idx}: ancer theta below its isotropic theta"
        moved = moved or bool((theta > iso).any())
    assert moved, "the ANCER stage never moved theta above the isotropic start"
    isos = [
        float(load(thetas_dir / "isotropic" / f"theta_test_{i}.pt"))
        for i in range(OPTIMIZED_INPUTS)
    ]
    assert any(value != SIGMA for value in isos), "the isotropic stage never moved theta"


def test_same_seed_gives_bit_identical_thetas(
    thetas_dir: Path, model_path: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    optimize(model_path, again)
    for sub in ("", "isotropic"):
        for idx in range(OPTIMIZED_INPUTS):
            first = load(thetas_dir / sub / f"theta_test_{idx}.pt")
            second = load(again / sub / f"theta_test_{idx}.pt")
            assert first.dtype == second.dtype and torch.equal(first, second), (sub, idx)


def test_resume_skips_done_inputs(thetas_copy: Path, thetas_dir: Path, model_path: Path) -> None:
    # an interrupted run: inputs 4 and 5 lack their ANCER theta, 5 also its isotropic one
    for path in (
        thetas_copy / "theta_test_4.pt",
        thetas_copy / "theta_test_5.pt",
        thetas_copy / "isotropic" / "theta_test_5.pt",
    ):
        path.unlink()
    for manifest in (thetas_copy / "manifest.json", thetas_copy / "isotropic" / "manifest.json"):
        payload = json.loads(manifest.read_text())
        payload["complete"] = False
        payload.pop("wall_seconds", None)
        manifest.write_text(json.dumps(payload))
    kept = [thetas_copy / f"theta_test_{i}.pt" for i in range(4)] + [
        thetas_copy / "isotropic" / f"theta_test_{i}.pt" for i in range(5)
    ]
    stamps = {path: os.stat(path).st_mtime_ns for path in kept}

    result = optimize(model_path, thetas_copy, "--resume")
    assert "2 inputs optimized, 4 kept" in result.stdout
    for path, stamp in stamps.items():
        assert os.stat(path).st_mtime_ns == stamp, f"{path} was rewritten"
    for sub in ("", "isotropic"):
        for idx in (4, 5):
            redone = load(thetas_copy / sub / f"theta_test_{idx}.pt")
            original = load(thetas_dir / sub / f"theta_test_{idx}.pt")
            torch.testing.assert_close(redone, original, rtol=1e-5, atol=1e-6)
    manifest = json.loads((thetas_copy / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["indices"] == list(range(6))


def test_method_isotropic_equals_the_isotropic_stage(
    thetas_dir: Path, model_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "iso"
    optimize(model_path, out, "--method", "isotropic")
    assert {p.name for p in out.iterdir()} == theta_names(OPTIMIZED_INPUTS) | {"manifest.json"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "isotropic"
    assert "ancer" not in manifest["arguments"]["hyperparameters"]
    for idx in range(OPTIMIZED_INPUTS):
        theta = load(out / f"theta_test_{idx}.pt")
        assert theta.shape == () and theta.dtype == torch.float32
        assert torch.equal(theta, load(thetas_dir / "isotropic" / f"theta_test_{idx}.pt"))


def test_ancer_from_given_isotropic_thetas(
    thetas_dir: Path, model_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "from_iso"
    optimize(model_path, out, "--isotropic-thetas", thetas_dir / "isotropic")
    assert not (out / "isotropic").exists()
    for idx in range(OPTIMIZED_INPUTS):
        assert torch.equal(
            load(out / f"theta_test_{idx}.pt"), load(thetas_dir / f"theta_test_{idx}.pt")
        )


def test_refuses_non_empty_out_without_force(thetas_copy: Path, model_path: Path) -> None:
    before = load(thetas_copy / "theta_test_0.pt")
    result = invoke(
        "optimize", "--model", model_path, "--out", thetas_copy, "--max", 6, *OPTIMIZE_FAST
    )
    assert_domain_error(result, str(thetas_copy), "--force")
    assert torch.equal(load(thetas_copy / "theta_test_0.pt"), before)


def test_skip_and_max_select_indices(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "sel"
    ok(
        "optimize",
        "--model",
        model_path,
        "--out",
        out,
        "--method",
        "isotropic",
        "--skip",
        2,
        "--max",
        5,
        *OPTIMIZE_FAST,
    )
    assert {p.name for p in out.glob("theta_*.pt")} == {
        "theta_test_0.pt",
        "theta_test_2.pt",
        "theta_test_4.pt",
    }
    assert json.loads((out / "manifest.json").read_text())["indices"] == [0, 2, 4]


def test_train_split_names_files_after_the_split(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "train_thetas"
    ok(
        "optimize",
        "--model",
        model_path,
        "--out",
        out,
        "--method",
        "isotropic",
        "--split",
        "train",
        "--max",
        2,
        *OPTIMIZE_FAST,
    )
    assert {p.name for p in out.glob("*.pt")} == {"theta_train_0.pt", "theta_train_1.pt"}
    assert json.loads((out / "manifest.json").read_text())["arguments"]["split"] == "train"
    results = tmp_path / "train.csv"
    ok("certify", "--thetas", out, *CERTIFY_FAST, "--out", results)
    data = load_dataset("digits", "train")
    rows = read_rows(results)
    assert [(r.idx, r.label) for r in rows] == [(i, int(data.dataset[i][1])) for i in (0, 1)]
    assert json.loads(Path(str(results) + ".json").read_text())["arguments"]["split"] == "train"


def test_ancer_from_an_isotropic_values_file(model_path: Path, tmp_path: Path) -> None:
    values = [0.2 + 0.001 * i for i in range(500)]
    source = tmp_path / "sigmas.txt"
    source.write_text("\n".join(map(str, values)) + "\n")
    out = tmp_path / "from_values"
    optimize(model_path, out, "--isotropic-thetas", source)
    assert not (out / "isotropic").exists()
    for idx in range(OPTIMIZED_INPUTS):
        theta = load(out / f"theta_test_{idx}.pt")
        floor = torch.tensor(values[idx], dtype=torch.float32)
        assert theta.shape == (1, 8, 8) and bool((theta >= floor).all())


# ---------------------------------------------------------------------------------------------
# on CUDA (benchmarks/gpu_check.sh runs these; skipped without a CUDA device)


@pytest.mark.cuda
def test_optimize_on_cuda(cuda_thetas_dir: Path) -> None:
    manifest = json.loads((cuda_thetas_dir / "manifest.json").read_text())
    assert manifest["device"].startswith("cuda") and manifest["complete"] is True
    moved = False
    for idx in range(OPTIMIZED_INPUTS):
        theta = load(cuda_thetas_dir / f"theta_test_{idx}.pt")
        iso = load(cuda_thetas_dir / "isotropic" / f"theta_test_{idx}.pt")
        assert theta.device.type == "cpu" and theta.dtype == torch.float32  # saved portable
        assert theta.shape == (1, 8, 8) and iso.shape == ()
        assert bool(torch.isfinite(theta).all()) and bool((theta >= iso).all())
        moved = moved or bool((theta > iso).any())
    assert moved, "the ANCER stage never moved theta on CUDA"


@pytest.mark.cuda
@pytest.mark.parametrize(
    "options",
    [("--precision", "bf16", "--channels-last"), ("--precision", "fp16")],
    ids=["bf16-channels-last", "fp16"],
)
def test_optimize_speed_options_on_cuda(model_path: Path, tmp_path: Path, options) -> None:
    out = tmp_path / "thetas"
    ok(
        "optimize",
        "--model",
        model_path,
        "--out",
        out,
        "--max",
        2,
        *on_device(OPTIMIZE_FAST, "cuda"),
        *options,
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arguments"]["precision"] == options[1]
    assert manifest["arguments"]["channels_last"] == ("--channels-last" in options)
    for idx in range(2):
        theta = load(out / f"theta_test_{idx}.pt")
        assert theta.shape == (1, 8, 8) and bool(torch.isfinite(theta).all())
        assert bool((theta >= load(out / "isotropic" / f"theta_test_{idx}.pt")).all())


# ---------------------------------------------------------------------------------------------
# the default objective: certified search and guarded ANCER


@pytest.fixture(scope="module")
def certified_dir(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certified") / "thetas"
    ok("optimize", "--model", model_path, "--out", out, "--max", OPTIMIZED_INPUTS,
       *OPTIMIZE_CERTIFIED_FAST)  # fmt: skip
    return out


def test_certified_objective_is_the_default_and_recorded(certified_dir: Path) -> None:
    manifest = json.loads((certified_dir / "manifest.json").read_text())
    hyper = manifest["arguments"]["hyperparameters"]
    assert hyper["objective"] == "certified"
    assert hyper["isotropic_search"]["samples"] == 64
    assert hyper["ancer_guarded"]["iterations"] == 5
    assert hyper["ancer_guarded"]["guard_samples"] == 64
    assert "isotropic" not in hyper and "ancer" not in hyper
    search = IsotropicSearchConfig(samples=64)
    bound = (
        search.max_forward_equivalents
        + GuardedAncerConfig(iterations=5, samples=16, guard_samples=64).max_forward_equivalents
    )
    assert 0 < manifest["forward_equivalents_per_input"] <= bound
    iso = json.loads((certified_dir / "isotropic" / "manifest.json").read_text())
    assert iso["arguments"]["hyperparameters"]["isotropic_search"] == hyper["isotropic_search"]


def test_certified_thetas_stay_on_the_searched_grid_and_above_it(certified_dir: Path):
    search = IsotropicSearchConfig(samples=64)
    grid = [SIGMA * search.ratio**k for k in range(-search.levels, search.levels + 1)]
    for idx in range(OPTIMIZED_INPUTS):
        iso = float(load(certified_dir / "isotropic" / f"theta_test_{idx}.pt"))
        assert min(abs(iso - g) / g for g in grid) < 1e-5  # theta0 * ratio**k, within bounds
        theta = load(certified_dir / f"theta_test_{idx}.pt")
        assert theta.shape == (1, 8, 8) and bool((theta >= iso * (1 - 1e-6)).all())


def test_reference_only_options_are_usage_errors_with_the_default(model_path, tmp_path):
    for option in ("--iso-iterations", "--iso-lr"):
        result = invoke("optimize", "--model", model_path, "--out", tmp_path / "t", option, 5)
        assert_usage_error(result, option, "--objective reference")
    result = invoke("optimize", "--model", model_path, "--out", tmp_path / "t",
                    "--objective", "reference", "--guard-samples", 64)  # fmt: skip
    assert_usage_error(result, "--guard-samples")
    for option in ("--sound", "--no-sound"):
        result = invoke("optimize", "--model", model_path, "--out", tmp_path / "t",
                        "--objective", "reference", option)  # fmt: skip
        assert_usage_error(result, "--sound/--no-sound", "--objective certified")
    assert not (tmp_path / "t").exists()


def test_resume_refuses_another_objective(model_path: Path, certified_dir: Path, tmp_path):
    copy = tmp_path / "thetas"
    shutil.copytree(certified_dir, copy)
    result = invoke("optimize", "--model", model_path, "--out", copy, "--max",
                    OPTIMIZED_INPUTS, *OPTIMIZE_FAST, "--resume")  # fmt: skip
    assert_domain_error(result, "objective")


def test_certified_objective_scores_under_the_noise_certify_draws(
    model_path, tmp_path, monkeypatch
):
    """Both stages get the run's noise: sound on the digits' 1/16 grid by default (certify's
    default), float with --no-sound; the first line says which and the manifest records it."""
    import ancer_cli.optimize as run

    seen: list[tuple[str, Noise]] = []
    search, guarded = run.search_isotropic, run.optimize_ancer_guarded

    def spy_search(model, x, theta0, noise, *rest):
        seen.append(("isotropic", noise))
        return search(model, x, theta0, noise, *rest)

    def spy_guarded(model, x, theta_iso, noise, *rest):
        seen.append(("ancer", noise))
        return guarded(model, x, theta_iso, noise, *rest)

    monkeypatch.setattr(run, "search_isotropic", spy_search)
    monkeypatch.setattr(run, "optimize_ancer_guarded", spy_guarded)
    for option, noise, words in (
        ((), Noise(Norm.l2, 16), "sound noise on the 1/16 grid"),
        (("--no-sound",), Noise(Norm.l2), "float noise"),
    ):
        seen.clear()
        out = tmp_path / f"thetas{len(option)}"
        result = ok("optimize", "--model", model_path, "--out", out, "--max", 2,
                    *OPTIMIZE_CERTIFIED_FAST, *option)  # fmt: skip
        assert seen == [("isotropic", noise), ("ancer", noise)]
        assert words in result.output.splitlines()[0]
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["arguments"]["sound"] is (noise.grid is not None)
