"""Bad and hostile model files: missing, empty, truncated, code-running."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest
import torch

from ancer_cli.errors import ModelError
from ancer_cli.models import (
    CHECKPOINT_FORMAT,
    load_model,
    read_checkpoint,
)
from tests.models.fakes import CPU

# ---------------------------------------------------------------------------------------------
# bad files


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model file .*absent\.pt does not exist"):
        load_model(tmp_path / "absent.pt", CPU)
    with pytest.raises(ModelError, match="is a directory"):
        load_model(tmp_path, CPU)
    with pytest.raises(ModelError, match="does not exist"):
        read_checkpoint(tmp_path / "absent.pt")


def test_empty_truncated_and_random_files(tmp_path: Path, checkpoint_path: Path) -> None:
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match=r"empty\.pt is empty"):
        load_model(empty, CPU)
    data = checkpoint_path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"truncated\.pt is corrupt or not a PyTorch file"):
        load_model(truncated, CPU)
    garbage = tmp_path / "random.pt"
    garbage.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(ModelError, match=r"random\.pt is corrupt or not a PyTorch file") as bad:
        load_model(garbage, CPU)
    assert "\n" not in str(bad.value)
    with pytest.raises(ModelError, match="corrupt or not a PyTorch file"):
        read_checkpoint(garbage)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch_save", "pickle_protocol_2", "pickle_protocol_5"])
def test_code_executing_pickle_is_refused(tmp_path: Path, container: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"format": CHECKPOINT_FORMAT, "state_dict": _Evil(marker)}
    if container == "torch_save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle, protocol=int(container[-1]))
    with pytest.raises(
        ModelError, match=r"evil\.pt was refused: loading it would run code \(it references "
    ) as refused:
        load_model(path, CPU)
    assert "system" in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(ModelError, match="refused"):
        read_checkpoint(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# text files given as models


RESULTS_TABLE = (
    "idx\tlabel\tpredict\tradius\tradius_proxy\tcorrect\tmin_sigma\ttime\n"
    "0\t7\t7\t0.5\t0.5\t1\t0.25\t0.01\n"
)


@pytest.mark.parametrize(
    ("text", "looks"),
    [
        (RESULTS_TABLE, "it looks like a results table, tab-separated: idx label predict radius"),
        ("a,b,c\n1,2,3\n", "it looks like a table, comma-separated: a b c)"),
        ("hello world\n", None),
    ],
)
def test_text_file_says_what_it_is_and_what_a_model_file_is(
    tmp_path: Path, text: str, looks: str | None
) -> None:
    path = tmp_path / "results.tsv"
    path.write_text(text)
    with pytest.raises(ModelError, match=r"results\.tsv is a text file.*, not a model; ") as bad:
        load_model(path, CPU)
    message = str(bad.value)
    if looks is not None:
        assert looks in message
    for kind in ("checkpoint written by ancer train", "state dict", "--arch", "TorchScript",
                 "torch.export"):  # fmt: skip
        assert kind in message
    assert "run code" not in message and "\n" not in message and "\t" not in message
    with pytest.raises(ModelError, match="is a text file"):
        read_checkpoint(path)


def test_code_running_pickle_written_as_text_is_still_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": _Evil(marker)}, handle, protocol=0)
    with pytest.raises(ModelError, match="loading it would run code"):
        load_model(path, CPU)
    assert not marker.exists()
