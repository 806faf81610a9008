"""``ancer train`` end to end: checkpoint format, epoch reports, resume, l1/stability, refusals."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ancer_cli.data import dataset_info, load_dataset
from ancer_cli.models import build_model
from tests.helpers import (
    assert_domain_error,
    assert_usage_error,
    error_lines,
    invoke,
    train_model,
    write_class_images,
)

SPEC_KEYS = {
    "format",
    "arch",
    "num_classes",
    "dataset",
    "input_shape",
    "norm",
    "sigma",
    "epoch",
    "state_dict",
    "optimizer_state",
}
EPOCH_LINE = re.compile(
    r"^epoch +(\d+)/(\d+) .*test clean acc (\d\.\d{3}) +test noisy acc (\d\.\d{3})", re.M
)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), f"{key} differs"


def clean_accuracy(checkpoint: dict) -> float:
    """Clean test accuracy of a digits checkpoint, computed here from its state dict."""
    model = build_model(checkpoint["arch"], dataset_info("digits"))
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    data = load_dataset("digits", "test")
    xs = torch.stack([data.dataset[i][0] for i in range(len(data.dataset))])
    ys = torch.tensor([int(data.dataset[i][1]) for i in range(len(data.dataset))])
    with torch.no_grad():
        return float((model(xs).argmax(1) == ys).float().mean())


@pytest.fixture(scope="module")
def one_epoch_l2(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 1-epoch default (noise, l2) run to compare the l1 and stability runs with."""
    path = tmp_path_factory.mktemp("train1") / "l2.pt"
    train_model(path, epochs=1)
    return load(path)


def test_checkpoint_has_spec_format(model_path: Path) -> None:
    checkpoint = load(model_path)
    assert set(checkpoint) == SPEC_KEYS
    assert checkpoint["format"] == "ancer-model/1"
    assert checkpoint["arch"] == "cnn"
    assert checkpoint["num_classes"] == 10
    assert checkpoint["dataset"] == "digits"
    assert list(checkpoint["input_shape"]) == [1, 8, 8]
    assert checkpoint["norm"] == "l2"
    assert checkpoint["sigma"] == 0.25
    assert checkpoint["epoch"] == 3
    state = checkpoint["state_dict"]
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    assert isinstance(checkpoint["optimizer_state"], dict)
    # the state dict fits the architecture it names
    build_model("cnn", dataset_info("digits")).load_state_dict(state)
    # written atomically: no temporary file left beside it
    assert sorted(p.name for p in model_path.parent.iterdir()) == ["model.pt"]


def test_reports_clean_and_noisy_accuracy_each_epoch(trained) -> None:
    result = trained.result
    assert "saved" in result.stderr and str(trained.path) in result.stderr
    found = EPOCH_LINE.findall(result.stderr)
    assert [(int(e), int(n)) for e, n, _, _ in found] == [(1, 3), (2, 3), (3, 3)]
    for _, _, clean, noisy in found:
        assert 0.0 <= float(clean) <= 1.0 and 0.0 <= float(noisy) <= 1.0
    # the last reported clean accuracy is the saved model's, to the 3 printed decimals
    last_clean = float(found[-1][2])
    assert last_clean == pytest.approx(clean_accuracy(load(trained.path)), abs=0.0005 + 1e-9)
    # a 3-epoch digits cnn learns something
    assert last_clean > 0.5


@pytest.mark.slow
def test_train_emits_no_warnings(tmp_path: Path) -> None:
    # A fresh process: torch reports some warnings only once per process, so an in-process run
    # after the session fixture would not see them. STYLE: no warnings left behind.
    result = subprocess.run(
        [sys.executable, "-m", "ancer_cli", "train", "--epochs", "1", "--device", "cpu"]
        + ["--out", str(tmp_path / "m.pt")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr


def test_resume_continues_to_the_same_state_as_an_uninterrupted_run(
    tmp_path: Path, model_path: Path
) -> None:
    out = tmp_path / "resumed.pt"
    train_model(out, epochs=2)
    assert load(out)["epoch"] == 2
    result = train_model(out, "--resume", epochs=3)
    epochs_run = [int(e) for e, _, _, _ in EPOCH_LINE.findall(result.stderr)]
    assert epochs_run == [3], result.stderr  # epochs 1-2 are not trained again
    resumed, uninterrupted = load(out), load(model_path)
    assert resumed["epoch"] == uninterrupted["epoch"] == 3
    assert_same_state(resumed["state_dict"], uninterrupted["state_dict"])
    # the optimizer's momentum buffers too
    buffers = [
        s["momentum_buffer"] for s in resumed["optimizer_state"]["optimizer"]["state"].values()
    ]
    expected = [
        s["momentum_buffer"]
        for s in uninterrupted["optimizer_state"]["optimizer"]["state"].values()
    ]
    assert len(buffers) == len(expected) > 0
    assert all(torch.equal(a, b) for a, b in zip(buffers, expected, strict=True))


def test_resume_with_another_sigma_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    train_model(out, epochs=1)
    before = out.read_bytes()
    result = invoke(
        "train", "--epochs", 2, "--device", "cpu", "--out", out, "--resume", "--sigma", 0.5
    )
    assert_domain_error(result, str(out), "sigma")
    assert out.read_bytes() == before


def test_l1_training(tmp_path: Path, one_epoch_l2: dict) -> None:
    out = tmp_path / "l1.pt"
    result = train_model(out, "--norm", "l1", "--sigma", 0.5, epochs=1)
    assert "l1 noise sigma=0.5" in result.stderr
    assert len(EPOCH_LINE.findall(result.stderr)) == 1
    checkpoint = load(out)
    assert (checkpoint["norm"], checkpoint["sigma"], checkpoint["epoch"]) == ("l1", 0.5, 1)
    assert checkpoint["optimizer_state"]["config"]["norm"] == "l1"
    # uniform noise gives other weights than Gaussian noise from the same seed
    first = next(iter(checkpoint["state_dict"]))
    assert not torch.equal(checkpoint["state_dict"][first], one_epoch_l2["state_dict"][first])


def test_stability_training(tmp_path: Path, one_epoch_l2: dict) -> None:
    out = tmp_path / "stab.pt"
    train_model(out, "--training", "stability", "--stability-weight", 6.0, epochs=1)
    checkpoint = load(out)
    assert checkpoint["epoch"] == 1 and checkpoint["norm"] == "l2"
    config = checkpoint["optimizer_state"]["config"]
    assert config["training"] == "stability" and config["stability_weight"] == 6.0
    keys = list(checkpoint["state_dict"])
    assert any(
        not torch.equal(checkpoint["state_dict"][k], one_epoch_l2["state_dict"][k]) for k in keys
    ), "stability training trained exactly like noise training"


def test_refuses_existing_out_without_force_or_resume(tmp_path: Path) -> None:
    out = tmp_path / "taken.pt"
    out.write_bytes(b"precious")
    result = invoke("train", "--epochs", 1, "--device", "cpu", "--out", out)
    assert_domain_error(result, str(out), "already exists", "--force")
    assert result.stderr.strip() == error_lines(result)[0]  # nothing else was started
    assert out.read_bytes() == b"precious"
    # --force overwrites it with a real checkpoint
    train_model(out, "--force", epochs=1)
    assert load(out)["format"] == "ancer-model/1"


@pytest.mark.parametrize(
    ("option", "value"), [("--lr", "0.001"), ("--seed", "5"), ("--batch-size", "7")]
)
def test_resume_with_other_hyperparameters_is_refused(
    tmp_path: Path, option: str, value: str
) -> None:
    # Resuming with another lr, seed or batch size would silently give a model that matches
    # neither run (the optimizer state even overrides --lr), while the checkpoint's record
    # would claim the new values for every epoch. certify and optimize refuse such resumes.
    out = tmp_path / "m.pt"
    train_model(out, epochs=1)
    before = out.read_bytes()
    result = invoke(
        "train", "--epochs", 2, "--device", "cpu", "--out", out, "--resume", option, value
    )
    line = assert_domain_error(result, str(out))
    name = option.lstrip("-")
    assert name in line or name.replace("-", "_") in line, line
    assert out.read_bytes() == before


@pytest.mark.cuda
def test_train_on_cuda_writes_a_checkpoint_that_loads_without_a_gpu(tmp_path: Path) -> None:
    out = tmp_path / "cuda.pt"
    train_model(out, "--device", "cuda", epochs=1)  # the last --device wins
    checkpoint = torch.load(out, weights_only=True)  # no map_location: as on a CPU-only machine
    tensors = [*checkpoint["state_dict"].values()]
    for state in checkpoint["optimizer_state"]["optimizer"]["state"].values():
        tensors += [value for value in state.values() if isinstance(value, torch.Tensor)]
    assert tensors and all(tensor.device.type == "cpu" for tensor in tensors)
    assert clean_accuracy(checkpoint) > 0.3  # learned something on the GPU (chance: 0.1)
    result = train_model(out, "--device", "cuda", "--resume", epochs=2)
    assert [int(e) for e, _, _, _ in EPOCH_LINE.findall(result.stderr)] == [2], result.stderr


def test_train_on_a_folder_with_a_class_list(tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("red\ngreen\nblue\nblack\n")
    for split, count in (("train", 4), ("test", 2)):
        write_class_images(tmp_path / "data" / split / "red", 3, 4, count=count)
        write_class_images(tmp_path / "data" / split / "black", 0, 4, count=count)
    out = tmp_path / "m.pt"
    result = train_model(
        out, "--dataset", "folder", "--data-root", tmp_path / "data", "--arch", "cnn",
        "--classes", names, epochs=1,
    )  # fmt: skip
    assert "labels from sub-folders named in --classes" in result.stderr
    assert "red -> 0, black -> 3" in result.stderr
    checkpoint = load(out)
    assert checkpoint["num_classes"] == 4 and checkpoint["dataset"] == "folder"


def test_train_refuses_splits_whose_sorted_names_differ(tmp_path: Path) -> None:
    write_class_images(tmp_path / "data" / "train" / "cat", 1, 4)
    write_class_images(tmp_path / "data" / "train" / "dog", 2, 4)
    write_class_images(tmp_path / "data" / "test" / "dog", 2, 4)
    out = tmp_path / "m.pt"
    result = invoke(
        "train", "--dataset", "folder", "--data-root", tmp_path / "data", "--arch", "cnn",
        "--epochs", 1, "--device", "cpu", "--out", out,
    )  # fmt: skip
    assert_domain_error(result, "different class sub-folders", "cat", "--classes FILE")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# the training methods: consistency, MACER, SmoothAdv (their losses: tests/core/test_training.py)

METHOD_RUNS = {  # --training: tiny settings of its own options, and what the record then holds
    "consistency": (
        ("--consistency-weight", 5, "--entropy-weight", 0.25),
        {"noisy_samples": 2, "consistency_weight": 5.0, "entropy_weight": 0.25, "lr": 0.05},
    ),
    "macer": (
        ("--noisy-samples", 4, "--macer-beta", 8, "--macer-margin", 4, "--macer-warmup", 1),
        {
            "noisy_samples": 4,
            "macer_weight": 12.0,
            "macer_beta": 8.0,
            "macer_margin": 4.0,
            "macer_warmup": 1,
            "lr": 0.01,
        },
    ),  # fmt: skip
    "smoothadv": (
        (
            "--noisy-samples",
            2,
            "--smoothadv-eps",
            0.5,
            "--smoothadv-steps",
            2,
            "--smoothadv-warmup",
            2,
        ),
        {
            "noisy_samples": 2,
            "smoothadv_eps": 0.5,
            "smoothadv_steps": 2,
            "smoothadv_warmup": 2,
            "lr": 0.05,
        },
    ),  # fmt: skip
}


@pytest.mark.parametrize(
    "training",
    [
        pytest.param(name, marks=[pytest.mark.slow] if name != "consistency" else [])
        for name in sorted(METHOD_RUNS)
    ],
)
def test_method_training_records_its_settings(
    tmp_path: Path, training: str, one_epoch_l2: dict
) -> None:
    options, recorded = METHOD_RUNS[training]
    out = tmp_path / f"{training}.pt"
    result = train_model(out, "--training", training, *options, epochs=1)
    assert f"training {training} (--noisy-samples {recorded['noisy_samples']}" in result.stderr
    assert len(EPOCH_LINE.findall(result.stderr)) == 1
    checkpoint = load(out)
    assert (checkpoint["norm"], checkpoint["sigma"], checkpoint["epoch"]) == ("l2", 0.25, 1)
    config = checkpoint["optimizer_state"]["config"]
    assert config["training"] == training
    assert {key: config[key] for key in recorded} == recorded
    # only this method's settings are recorded
    others = {"stability_weight", "consistency_weight", "macer_beta", "smoothadv_eps"}
    assert set(config) & others <= set(recorded)
    first = next(iter(checkpoint["state_dict"]))
    assert not torch.equal(checkpoint["state_dict"][first], one_epoch_l2["state_dict"][first])


@pytest.mark.slow
@pytest.mark.parametrize("training", ["macer", "smoothadv"])
def test_method_resume_continues_to_the_same_state(tmp_path: Path, training: str) -> None:
    # Epoch 2 is the first with MACER's robustness term (warm-up 1) and the first with
    # SmoothAdv's full eps (warm-up 2): the resumed epoch must know its epoch, and draw the
    # same noise for the copies and the attack.
    tiny = {
        "macer": ("--noisy-samples", 2, "--macer-warmup", 1),
        "smoothadv": ("--noisy-samples", 2, "--smoothadv-steps", 1, "--smoothadv-warmup", 2),
    }
    options = ("--training", training, *tiny[training], "--batch-size", 128)
    uninterrupted, resumed = tmp_path / "whole.pt", tmp_path / "resumed.pt"
    train_model(uninterrupted, *options, epochs=2)
    train_model(resumed, *options, epochs=1)
    result = train_model(resumed, *options, "--resume", epochs=2)
    assert [int(e) for e, _, _, _ in EPOCH_LINE.findall(result.stderr)] == [2], result.stderr
    assert_same_state(load(resumed)["state_dict"], load(uninterrupted)["state_dict"])


@pytest.mark.parametrize(
    ("option", "value"),
    [("--consistency-weight", 20), pytest.param("--noisy-samples", 3, marks=pytest.mark.slow)],
)
def test_resume_with_other_method_settings_is_refused(
    tmp_path: Path, option: str, value: int
) -> None:
    out = tmp_path / "m.pt"
    train_model(out, "--training", "consistency", "--batch-size", 256, epochs=1)
    before = out.read_bytes()
    result = invoke(
        "train", "--epochs", 2, "--device", "cpu", "--out", out, "--resume",
        "--training", "consistency", "--batch-size", 256, option, value,
    )  # fmt: skip
    assert_domain_error(result, str(out), option)
    assert out.read_bytes() == before
    result = invoke(
        "train", "--epochs", 2, "--device", "cpu", "--out", out, "--resume",
        "--training", "macer", "--batch-size", 256,
    )  # fmt: skip
    assert_domain_error(result, str(out), "--training 'consistency'")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--macer-beta", 4), ("--macer-beta goes with --training macer, not noise",)),
        (("--training", "macer", "--entropy-weight", 1),
         ("--entropy-weight goes with --training consistency",)),
        (("--stability-weight", 3), ("--stability-weight goes with --training stability",)),
        (("--training", "macer", "--norm", "l1"), ("l2 noise only", "Phi^-1")),
        (("--training", "smoothadv", "--norm", "l1"), ("l2 noise only", "no l1 attack")),
        (("--training", "consistency", "--noisy-samples", 1), ("--noisy-samples must be >= 2",)),
        (("--training", "consistency", "--sigma", 0), ("give --sigma > 0",)),
        (("--training", "smoothadv", "--smoothadv-steps", 0), ("--smoothadv-steps must be",)),
        (("--denoiser", "--training", "macer"), ("--training macer trains a classifier",)),
        (("--denoiser", "--noisy-samples", 2), ("--noisy-samples trains a classifier",)),
    ],
)  # fmt: skip
def test_method_options_that_do_not_apply_are_usage_errors(
    tmp_path: Path, args: tuple, fragments: tuple[str, ...]
) -> None:
    out = tmp_path / "m.pt"
    result = invoke("train", "--epochs", 1, "--device", "cpu", "--out", out, *args)
    assert_usage_error(result, *fragments)
    assert not out.exists()
