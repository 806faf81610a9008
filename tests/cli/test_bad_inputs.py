"""Bad input of every kind: exit code 1 (domain error) or 2 (usage error), one clear line on
stderr, never a traceback, never a partial output presented as complete."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import (
    CERTIFY_FAST,
    OPTIMIZE_FAST,
    OPTIMIZED_INPUTS,
    assert_domain_error,
    assert_usage_error,
    describe,
    error_lines,
    invoke,
    train_model,
    write_class_images,
)

SIGMA = "0.25"


def fixed(model: Path, out: Path, *extra: object):
    """``ancer certify`` with fixed sigma and tiny sample counts."""
    return invoke(
        "certify", "--model", model, "--sigma", SIGMA, *CERTIFY_FAST, "--out", out, *extra
    )


def only_error_line(result) -> None:
    """The command failed before doing anything: stderr is the one error line."""
    assert result.stderr.strip() == error_lines(result)[0], describe(result)


def not_complete(out: Path) -> None:
    """No results presented as complete: no file, or a sidecar that says incomplete."""
    sidecar = Path(str(out) + ".json")
    if sidecar.exists():
        assert json.loads(sidecar.read_text())["complete"] is False
    else:
        assert not out.exists() or out.read_text().count("\n") <= 1


# ---------------------------------------------------------------------------------------------
# model files


def test_missing_model_file(tmp_path: Path) -> None:
    model = tmp_path / "nope.pt"
    result = fixed(model, tmp_path / "r.csv")
    assert_domain_error(result, str(model), "does not exist")
    only_error_line(result)
    assert not (tmp_path / "r.csv").exists()


def test_truncated_model_file(model_path: Path, tmp_path: Path) -> None:
    model = tmp_path / "cut.pt"
    data = model_path.read_bytes()
    model.write_bytes(data[: len(data) // 2])
    result = fixed(model, tmp_path / "r.csv")
    assert_domain_error(result, str(model), "corrupt")
    only_error_line(result)
    assert not (tmp_path / "r.csv").exists()


def test_random_bytes_model_file(tmp_path: Path) -> None:
    model = tmp_path / "noise.pt"
    model.write_bytes(random.Random(0).randbytes(4096))
    result = fixed(model, tmp_path / "r.csv")
    assert_domain_error(result, str(model), "not a PyTorch file")
    only_error_line(result)


def test_empty_model_file(tmp_path: Path) -> None:
    model = tmp_path / "empty.pt"
    model.write_bytes(b"")
    result = fixed(model, tmp_path / "r.csv")
    assert_domain_error(result, str(model), "empty")


# ---------------------------------------------------------------------------------------------
# datasets and architectures


def test_unknown_dataset_certify(model_path: Path, tmp_path: Path) -> None:
    result = fixed(model_path, tmp_path / "r.csv", "--dataset", "svhn")
    assert_domain_error(result, "unknown dataset 'svhn'", "digits")
    only_error_line(result)
    assert not (tmp_path / "r.csv").exists()


def test_unknown_dataset_train(tmp_path: Path) -> None:
    result = invoke("train", "--dataset", "svhn", "--device", "cpu", "--out", tmp_path / "m.pt")
    assert_domain_error(result, "unknown dataset 'svhn'")
    only_error_line(result)
    assert not (tmp_path / "m.pt").exists()


def test_unknown_arch(tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    result = invoke("train", "--arch", "resnet9000", "--epochs", 1, "--device", "cpu", "--out", out)
    assert_domain_error(result, "unknown architecture 'resnet9000'", "cnn")
    only_error_line(result)
    assert not out.exists()


def test_arch_contradicting_checkpoint(model_path: Path, tmp_path: Path) -> None:
    result = fixed(model_path, tmp_path / "r.csv", "--arch", "resnet20")
    assert_domain_error(result, "cnn", "resnet20")


@pytest.mark.parametrize(
    ("dataset", "fragment"),
    [
        ("cifar10", "cifar-10-batches-py"),
        ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
        ("imagenet", "with one sub-folder of images per class"),
        ("folder", "no class sub-folders"),
    ],
)
def test_dataset_folder_in_wrong_layout(tmp_path: Path, dataset: str, fragment: str) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "README.txt").write_text("not a dataset\n")
    out = tmp_path / "m.pt"
    result = invoke(
        "train", "--dataset", dataset, "--data-root", root, "--device", "cpu", "--out", out
    )
    line = assert_domain_error(result, str(root))
    only_error_line(result)
    assert fragment in line
    assert not out.exists()


def test_dataset_needing_root_without_one(tmp_path: Path) -> None:
    result = invoke("train", "--dataset", "cifar10", "--device", "cpu", "--out", tmp_path / "m.pt")
    assert_domain_error(result, "--data-root")


def test_certify_with_dataset_the_model_does_not_fit(model_path: Path, tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    result = fixed(model_path, tmp_path / "r.csv", "--dataset", "cifar10", "--data-root", root)
    assert_domain_error(result, "cifar-10-batches-py")
    assert not (tmp_path / "r.csv").exists()


# ---------------------------------------------------------------------------------------------
# impossible option values (usage errors, exit code 2)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--sigma", "-0.25"),
        ("--sigma", "0"),
        ("--sigma", "nan"),
        ("--N0", "0"),
        ("--N", "-5"),
        ("--alpha", "0"),
        ("--alpha", "1.5"),
        ("--batch-size", "0"),
        ("--skip", "0"),
        ("--max", "-1"),
    ],
)
def test_certify_impossible_values(
    model_path: Path, tmp_path: Path, option: str, value: str
) -> None:
    out = tmp_path / "r.csv"
    result = invoke(
        "certify",
        "--model",
        model_path,
        "--sigma",
        SIGMA,
        *CERTIFY_FAST,
        "--out",
        out,
        option,
        value,
    )
    message = assert_usage_error(result, option)
    assert value in message or value.lstrip("-") in message
    assert not out.exists()


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [
        ("train", "--sigma", "-1"),
        ("train", "--epochs", "0"),
        ("train", "--lr", "-0.1"),
        ("optimize", "--sigma", "-1"),
        ("optimize", "--iterations", "0"),
        ("optimize", "--iso-samples", "0"),
        ("optimize", "--kappa", "-1"),
    ],
)
def test_train_optimize_impossible_values(
    model_path: Path, tmp_path: Path, command: str, option: str, value: str
) -> None:
    out = tmp_path / "out"
    args: list[object] = [command, "--device", "cpu", "--out", out, option, value]
    if command == "optimize":
        args += ["--model", model_path]
    result = invoke(*args)
    assert_usage_error(result, option)
    assert not out.exists()


def test_certify_without_sigma_or_thetas(model_path: Path, tmp_path: Path) -> None:
    result = invoke("certify", "--model", model_path, "--out", tmp_path / "r.csv")
    assert_usage_error(result, "--sigma", "--thetas")


def test_certify_with_sigma_and_thetas(model_path: Path, thetas_dir: Path, tmp_path: Path) -> None:
    result = invoke(
        "certify",
        "--model",
        model_path,
        "--sigma",
        SIGMA,
        "--thetas",
        thetas_dir,
        "--out",
        tmp_path / "r.csv",
    )
    assert_usage_error(result, "--sigma", "--thetas")


def test_unknown_norm_is_a_usage_error(model_path: Path, tmp_path: Path) -> None:
    result = fixed(model_path, tmp_path / "r.csv", "--norm", "linf")
    assert_usage_error(result, "linf")


# ---------------------------------------------------------------------------------------------
# outputs


def test_certify_refuses_existing_out(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    out.write_text("precious\n")
    result = fixed(model_path, out)
    assert_domain_error(result, str(out), "already exists", "--force")
    only_error_line(result)
    assert out.read_text() == "precious\n"
    assert not Path(str(out) + ".json").exists()


def test_force_and_resume_together(model_path: Path, tmp_path: Path) -> None:
    result = fixed(model_path, tmp_path / "r.csv", "--force", "--resume")
    assert_domain_error(result, "--force", "--resume")


@pytest.mark.parametrize("command", ["certify", "train"])
def test_out_under_a_file(model_path: Path, tmp_path: Path, command: str) -> None:
    (tmp_path / "missing").write_text("a file where the folder of --out should be")
    out = tmp_path / "missing" / "out.file"
    if command == "certify":
        result = fixed(model_path, out)
    else:
        result = invoke("train", "--epochs", 1, "--device", "cpu", "--out", out)
    assert_domain_error(result, str(out.parent), "cannot create folder")
    assert out.parent.is_file()


def test_unwritable_output_folder(model_path: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into a 0o500 folder anyway; test_out_under_a_file covers it")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = fixed(model_path, locked / "r.csv")
        assert_domain_error(result, str(locked / "r.csv"), "cannot write")
    finally:
        locked.chmod(0o700)
    assert not (locked / "r.csv").exists()


def test_resume_without_sidecar(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    out.write_text("idx\tlabel\tpredict\tradius\tradius_proxy\tcorrect\tmin_sigma\ttime\n")
    result = fixed(model_path, out, "--resume")
    assert_domain_error(result, str(out), "--force")


def test_resume_foreign_file(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    out.write_text("a,b,c\n1,2,3\n")
    first = fixed(model_path, tmp_path / "good.csv", "--max", 1)
    assert first.exit_code == 0, describe(first)
    shutil.copy(tmp_path / "good.csv.json", str(out) + ".json")
    result = fixed(model_path, out, "--resume", "--max", 1)
    assert_domain_error(result, str(out), "is not the file its run wrote")
    assert out.read_text() == "a,b,c\n1,2,3\n"


# ---------------------------------------------------------------------------------------------
# malformed thetas


def write_theta(path: Path, value: object) -> None:
    path.unlink()
    if isinstance(value, bytes):
        path.write_bytes(value)
    else:
        torch.save(value, path)


BAD_THETAS = {
    "wrong_shape": (torch.full((3, 32, 32), 0.3), ["(3, 32, 32)", "(1, 8, 8)"]),
    "nan": (torch.full((1, 8, 8), float("nan")), ["NaN"]),
    "negative": (torch.full((1, 8, 8), 0.3).index_fill_(2, torch.tensor([3]), -0.1), ["<= 0"]),
    "zero": (torch.zeros((1, 8, 8)), ["<= 0"]),
    "inf": (torch.full((1, 8, 8), float("inf")), ["infinite"]),
    "garbage": (random.Random(1).randbytes(300), ["cannot be read"]),
    "integer": (torch.ones((1, 8, 8), dtype=torch.int64), ["int64"]),
    "not_a_tensor": ({"theta": [0.3]}, ["theta"]),
}


@pytest.mark.parametrize("kind", sorted(BAD_THETAS))
def test_malformed_theta_file(thetas_copy: Path, tmp_path: Path, kind: str) -> None:
    value, fragments = BAD_THETAS[kind]
    bad = thetas_copy / "theta_test_2.pt"
    write_theta(bad, value)
    out = tmp_path / "r.csv"
    result = invoke("certify", "--thetas", thetas_copy, *CERTIFY_FAST, "--out", out)
    assert_domain_error(result, str(bad), *fragments)
    not_complete(out)


def test_missing_theta_file_listed_in_manifest(thetas_copy: Path, tmp_path: Path) -> None:
    missing = thetas_copy / "theta_test_3.pt"
    missing.unlink()
    out = tmp_path / "r.csv"
    result = invoke("certify", "--thetas", thetas_copy, *CERTIFY_FAST, "--out", out)
    assert_domain_error(result, str(missing), "missing")
    not_complete(out)


def test_malformed_manifest(thetas_copy: Path, tmp_path: Path) -> None:
    (thetas_copy / "manifest.json").write_text("{not json")
    result = invoke("certify", "--thetas", thetas_copy, *CERTIFY_FAST, "--out", tmp_path / "r.csv")
    assert_domain_error(result, "manifest", "JSON")
    assert not (tmp_path / "r.csv").exists()


def test_unfinished_thetas_refused(thetas_copy: Path, tmp_path: Path) -> None:
    manifest = json.loads((thetas_copy / "manifest.json").read_text())
    manifest["complete"] = False
    (thetas_copy / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("certify", "--thetas", thetas_copy, *CERTIFY_FAST, "--out", tmp_path / "r.csv")
    assert_domain_error(result, "--resume")
    assert not (tmp_path / "r.csv").exists()


def test_thetas_of_another_model(thetas_dir: Path, model_path: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(model_path, weights_only=True)
    checkpoint["epoch"] = 99  # the same weights, another file: another SHA-256
    other = tmp_path / "other.pt"
    torch.save(checkpoint, other)
    out = tmp_path / "r.csv"
    result = invoke(
        "certify", "--thetas", thetas_dir, "--model", other, *CERTIFY_FAST, "--out", out
    )
    assert_domain_error(result, "another model", "SHA-256")
    only_error_line(result)
    assert not out.exists()


def test_thetas_of_another_norm(thetas_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    result = invoke("certify", "--thetas", thetas_dir, "--norm", "l1", *CERTIFY_FAST, "--out", out)
    assert_domain_error(result, "l2", "l1", "norm")
    only_error_line(result)
    assert not out.exists()


def test_method_contradicting_thetas(thetas_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    result = invoke(
        "certify",
        "--thetas",
        thetas_dir,
        "--method",
        "isotropic",
        *CERTIFY_FAST,
        "--out",
        out,
    )
    assert_domain_error(result, "isotropic", "ancer")
    assert not out.exists()


def test_missing_thetas_path(model_path: Path, tmp_path: Path) -> None:
    thetas = tmp_path / "nothing"
    result = invoke(
        "certify",
        "--thetas",
        thetas,
        "--model",
        model_path,
        "--dataset",
        "digits",
        "--norm",
        "l2",
        *CERTIFY_FAST,
        "--out",
        tmp_path / "r.csv",
    )
    assert_domain_error(result, str(thetas), "optimize")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("0.3\n" * 10, "10 values"),
        ("0.3\nabc\n" * 250, "cannot be read"),
        ("0.3\n-1\n" * 250, "<= 0"),
    ],
)
def test_bad_isotropic_values_file(
    model_path: Path, tmp_path: Path, content: str, fragment: str
) -> None:
    source = tmp_path / "sigmas.txt"
    source.write_text(content)
    out = tmp_path / "r.csv"
    result = invoke(
        "certify",
        "--thetas",
        source,
        "--model",
        model_path,
        "--dataset",
        "digits",
        "--norm",
        "l2",
        *CERTIFY_FAST,
        "--out",
        out,
    )
    assert_domain_error(result, str(source), fragment)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# accuracy


def test_accuracy_on_file_with_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("idx\tlabel\tpredict\n0\t1\t1\n")
    result = invoke("accuracy", path)
    assert_domain_error(result, str(path), "radius", "correct")
    only_error_line(result)
    assert result.stdout == ""


def test_accuracy_on_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    result = invoke("accuracy", path)
    assert_domain_error(result, str(path), "does not exist")


# ---------------------------------------------------------------------------------------------
# mismatches between the pieces of a run


def test_optimize_resume_with_other_hyperparameters(thetas_copy: Path, model_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in thetas_copy.glob("theta_test_*.pt")}
    result = invoke(
        "optimize",
        "--model",
        model_path,
        "--out",
        thetas_copy,
        "--max",
        OPTIMIZED_INPUTS,
        *OPTIMIZE_FAST,
        "--iterations",
        7,
        "--resume",
    )
    assert_domain_error(result, "cannot resume", "hyperparameters", "--force")
    only_error_line(result)
    assert {p.name: p.read_bytes() for p in thetas_copy.glob("theta_test_*.pt")} == before


def test_optimize_out_is_a_file(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "thetas.pt"
    out.write_bytes(b"x")
    result = invoke("optimize", "--model", model_path, "--out", out, *OPTIMIZE_FAST)
    assert_domain_error(result, str(out), "folder")
    assert out.read_bytes() == b"x"


def test_certify_out_is_a_folder(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    out.mkdir()
    result = fixed(model_path, out, "--force", "--max", 2)
    assert_domain_error(result, str(out))
    assert out.is_dir() and not any(out.iterdir())
    assert not Path(str(out) + ".json").exists()


def test_thetas_for_another_split(thetas_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    result = invoke(
        "certify", "--thetas", thetas_dir, "--split", "train", *CERTIFY_FAST, "--out", out
    )
    assert_domain_error(result, "split", "'test'", "'train'")
    only_error_line(result)
    assert not out.exists()


def test_thetas_whose_model_was_moved(thetas_copy: Path, tmp_path: Path) -> None:
    manifest_path = thetas_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    gone = tmp_path / "moved-away" / "model.pt"
    manifest["arguments"]["model"] = str(gone)
    manifest_path.write_text(json.dumps(manifest))
    out = tmp_path / "r.csv"
    result = invoke("certify", "--thetas", thetas_copy, *CERTIFY_FAST, "--out", out)
    assert_domain_error(result, str(gone), "--model")
    assert not out.exists()


def test_model_that_cannot_process_the_dataset(model_path: Path, tmp_path: Path) -> None:
    root = tmp_path / "images"
    for name, colour in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), colour).save(root / name / "a.png")
    out = tmp_path / "r.csv"
    result = fixed(model_path, out, "--dataset", "folder", "--data-root", root)
    assert_domain_error(result, str(model_path), "(3, 8, 8)")
    only_error_line(result)
    assert not out.exists()


@pytest.mark.parametrize("device", ["banana", "cuda:7"])
def test_unusable_device(model_path: Path, tmp_path: Path, device: str) -> None:
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    result = invoke(
        "certify",
        "--model",
        model_path,
        "--sigma",
        SIGMA,
        "--N0",
        20,
        "--N",
        200,
        "--device",
        device,
        "--out",
        tmp_path / "r.csv",
    )
    assert_domain_error(result, "--device", device)
    only_error_line(result)


class _Payload:
    """Unpickling this would create the folder ``marker`` (harmless stand-in for real code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_model_file_that_would_run_code_is_refused(model_path: Path, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    checkpoint = torch.load(model_path, weights_only=True)
    checkpoint["extra"] = _Payload(marker)
    model = tmp_path / "evil.pt"
    torch.save(checkpoint, model)
    result = fixed(model, tmp_path / "r.csv")
    assert_domain_error(result, str(model), "run code", "os.makedirs")
    assert not marker.exists()
    assert not (tmp_path / "r.csv").exists()


def test_method_that_needs_thetas_with_sigma(model_path: Path, tmp_path: Path) -> None:
    result = fixed(model_path, tmp_path / "r.csv", "--method", "ancer")
    assert_usage_error(result, "--method ancer", "--thetas")


def test_train_resume_from_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    torch.save({"weights": torch.zeros(3)}, out)
    before = out.read_bytes()
    result = invoke("train", "--epochs", 1, "--device", "cpu", "--out", out, "--resume")
    assert_domain_error(result, str(out), "ancer checkpoint")
    assert out.read_bytes() == before


# ---------------------------------------------------------------------------------------------
# image folders: class lists and labels


def folder_run(model: Path, root: Path, out: Path, *extra: object):
    return invoke(
        "certify", "--model", model, "--dataset", "folder", "--data-root", root, "--sigma",
        SIGMA, *CERTIFY_FAST, "--out", out, *extra,
    )  # fmt: skip


def test_label_out_of_the_models_range(colour_model: Path, tmp_path: Path) -> None:
    write_class_images(tmp_path / "images" / "12", 9, 10)
    out = tmp_path / "r.csv"
    result = folder_run(colour_model, tmp_path / "images", out)
    assert_domain_error(result, "returns 10 logits", "need 13", "largest label is 12")
    only_error_line(result)
    assert not out.exists() and not Path(str(out) + ".json").exists()


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (None, ["does not exist"]),
        ("", ["is empty"]),
        ("cat\ncat\n", ["names 'cat' twice"]),
        ("dog\nbird\n", ["sub-folder 'cat'", "not a class of --classes"]),
        (b"\xff\xfe\x00", ["UTF-8"]),
    ],
    ids=["missing", "empty", "duplicate", "unknown-name", "binary"],
)
def test_bad_class_list(
    colour_model: Path, tmp_path: Path, content: str | bytes | None, fragments: list[str]
) -> None:
    write_class_images(tmp_path / "images" / "cat", 3, 10)
    names = tmp_path / "classes.txt"
    if isinstance(content, bytes):
        names.write_bytes(content)
    elif content is not None:
        names.write_text(content)
    out = tmp_path / "r.csv"
    result = folder_run(colour_model, tmp_path / "images", out, "--classes", names)
    assert_domain_error(result, str(names), *fragments)
    only_error_line(result)
    assert not out.exists()


def test_class_list_with_more_classes_than_logits(colour_model: Path, tmp_path: Path) -> None:
    write_class_images(tmp_path / "images" / "n01", 3, 10)
    names = tmp_path / "imagenet.txt"
    names.write_text("".join(f"n{k:02d}\n" for k in range(1000)))
    result = folder_run(colour_model, tmp_path / "images", tmp_path / "r.csv",
                        "--classes", names)  # fmt: skip
    assert_domain_error(result, "returns 10 logits", "need 1000", "lists 1000 classes")


def test_class_list_for_a_dataset_with_fixed_labels(model_path: Path, tmp_path: Path):
    names = tmp_path / "classes.txt"
    names.write_text("zero\none\n")
    result = fixed(model_path, tmp_path / "r.csv", "--classes", names)
    assert_domain_error(result, "dataset digits has fixed labels", "drop --classes")
    only_error_line(result)


def test_accuracy_plot_of_a_file_without_labels(tmp_path: Path) -> None:
    path = tmp_path / "unlabeled.csv"
    path.write_text(
        "idx\tlabel\tpredict\tradius\tradius_proxy\tcorrect\tmin_sigma\ttime\n"
        "0\t-1\t3\t0.4\t0.4\t0\t0.25\t0.1\n"
    )
    result = invoke("accuracy", path, "--plot", tmp_path / "curve.png")
    assert_domain_error(result, str(path), "no labels", "--plot")
    assert result.stdout == "" and not (tmp_path / "curve.png").exists()


# ---------------------------------------------------------------------------------------------
# isotropic value files of the original package: lengths


def values_run(model: Path, source: Path, out: Path, *extra: object):
    return invoke(
        "certify", "--thetas", source, "--model", model, "--dataset", "digits", "--norm", "l2",
        *CERTIFY_FAST, "--out", out, *extra,
    )  # fmt: skip


def test_isotropic_file_of_neither_length_names_all_three(model_path: Path, tmp_path: Path) -> None:
    source = tmp_path / "isotropic_parameters"
    torch.save(0.25 * torch.ones(40), source)  # the original's output for --max 40
    out = tmp_path / "r.csv"
    result = values_run(model_path, source, out, "--skip", 2, "--max", 40)  # 20 selected
    assert_domain_error(result, str(source), "40 values", "has 500 inputs", "or 20 (one per")
    only_error_line(result)
    assert not out.exists()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (torch.full((3, 8), 0.25), "shape (3, 8)"),
        ({"sigmas": torch.ones(5)}, "holds a dict"),
        (torch.tensor([0.2, float("nan"), 0.3]), "NaN"),
        (torch.tensor([0.2, 0.0, 0.3]), "<= 0"),
    ],
    ids=["2-d", "dict", "nan", "zero"],
)
def test_bad_original_isotropic_file(
    model_path: Path, tmp_path: Path, value: object, fragment: str
) -> None:
    source = tmp_path / "isotropic_parameters"  # no suffix, as the original names it
    torch.save(value, source)
    out = tmp_path / "r.csv"
    result = values_run(model_path, source, out, "--max", 3)
    assert_domain_error(result, str(source), fragment)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# predict


def predict_run(model: Path, out: Path, *extra: object):
    return invoke(
        "predict", "--model", model, "--sigma", SIGMA, "--N", 200, "--device", "cpu",
        "--out", out, *extra,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("option", "value"),
    [("--N", "0"), ("--alpha", "1.5"), ("--batch-size", "0"), ("--skip", "0"), ("--max", "-1"),
     ("--sigma", "nan")],
)  # fmt: skip
def test_predict_impossible_values(model_path: Path, tmp_path: Path, option, value) -> None:
    out = tmp_path / "p.csv"
    assert_usage_error(predict_run(model_path, out, option, value), option)
    assert not out.exists()


def test_predict_needs_sigma_or_thetas(model_path: Path, tmp_path: Path) -> None:
    result = invoke("predict", "--model", model_path, "--out", tmp_path / "p.csv")
    assert_usage_error(result, "--sigma", "--thetas")
    result = predict_run(model_path, tmp_path / "p.csv", "--method", "ancer")
    assert_usage_error(result, "--method ancer", "--thetas")


def test_predict_resume_refuses_other_arguments_and_foreign_files(
    model_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "p.csv"
    assert predict_run(model_path, out, "--max", 2).exit_code == 0
    before = out.read_text()
    result = predict_run(model_path, out, "--max", 2, "--resume", "--N", 300)
    assert_domain_error(result, "cannot resume", "N=200", "N=300")
    only_error_line(result)
    assert out.read_text() == before
    # a certify results file is not a predictions file, even with a matching sidecar
    certified = tmp_path / "r.csv"
    assert fixed(model_path, certified, "--max", 2).exit_code == 0
    Path(f"{certified}.json").write_text(Path(f"{out}.json").read_text())
    result = predict_run(model_path, certified, "--max", 2, "--resume")
    assert_domain_error(result, str(certified), "is not the file its run wrote")


def test_predict_with_thetas_of_another_model(
    thetas_dir: Path, model_path: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.pt"
    train_model(other, "--seed", 1, epochs=1)
    out = tmp_path / "p.csv"
    result = invoke("predict", "--thetas", thetas_dir, "--model", other, "--N", 100,
                    "--device", "cpu", "--out", out)  # fmt: skip
    assert_domain_error(result, "another model")
    assert not out.exists()


def test_accuracy_plot_of_predictions(tmp_path: Path) -> None:
    path = tmp_path / "predictions.tsv"
    path.write_text("idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t0.5\n")
    result = invoke("accuracy", path, "--plot", tmp_path / "curve.png")
    assert_domain_error(result, str(path), "predictions", "--plot")
    assert result.stdout == "" and not (tmp_path / "curve.png").exists()
