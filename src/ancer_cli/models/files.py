"""Reading model files without running their code: what kind of file it is (from the zip member
names) and ``torch.load(weights_only=True)`` with one-line errors that name a refused global.
"""

from __future__ import annotations

import codecs
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ancer_cli.errors import ModelError

MODEL_KINDS: tuple[str, ...] = ("checkpoint", "torchscript", "export", "factory")


ACCEPTED_FILES = (
    "a model file is a checkpoint written by ancer train (or Cohen et al.'s), a state dict saved "
    "with torch.save (then give --arch NAME or --arch package.module:factory), a TorchScript "
    "archive (torch.jit.save) or a torch.export program (torch.export.save)"
)


KIND_NAMES = {
    "torchscript": "TorchScript archive",
    "export": "torch.export program",
}


def check_model_file(path: Path) -> None:
    """One-line :class:`ModelError` unless ``path`` is a readable, non-empty file."""
    if not path.exists():
        raise ModelError(f"model file {path} does not exist; check --model")
    if path.is_dir():
        raise ModelError(f"model file {path} is a directory; give the .pt file inside it")
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ModelError(f"cannot read model file {path} ({error.strerror or error})") from error
    if size == 0:
        raise ModelError(f"model file {path} is empty (0 bytes); {ACCEPTED_FILES}")


def detect_file_kind(path: Path) -> str:
    """``torchscript``, ``export``, ``zip`` (torch.save) or ``other`` from the zip member names.

    Looking inside the archive avoids ``torch.load``, which would silently hand a TorchScript
    archive to ``torch.jit.load``.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return "other"
    # Members are "<archive name>/<member>"; drop the first component.
    members = {name.split("/", 1)[1] if "/" in name else name for name in names}
    if any(
        member in ("archive_format", "serialized_exported_program.json")
        or (member.startswith("models/") and member.endswith(".json"))
        for member in members
    ):
        return "export"
    if "constants.pkl" in members or any(member.startswith("code/") for member in members):
        return "torchscript"
    return "zip"


_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+)")


_REFUSED_PHRASES = (
    "reduce for unrecognized function",
    "Can only create new object",
    "Can only build Tensor",
)


def load_weights_only(path: Path) -> Any:
    """``torch.load(path, weights_only=True, map_location="cpu")`` with one-line ModelErrors."""
    try:
        with warnings.catch_warnings():
            # Legacy (non-zip) files pickled with protocol > 2 warn; the restricted unpickler
            # still guards them, so the warning only adds noise.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        _refuse_text_file(path, error)
        text = str(error)
        found = _REFUSED_GLOBAL.search(text)
        # torch's unpickler stops at the first opcode it cannot handle (e.g. a protocol-4 FRAME)
        # before it meets the global, so look for foreign globals ourselves, without executing.
        foreign = found.group(1).rstrip(".") if found else _foreign_global(path)
        if foreign or any(phrase in text for phrase in _REFUSED_PHRASES):
            culprit = f" (it references {foreign})" if foreign else ""
            raise ModelError(
                f"model file {path} was refused: loading it would run code{culprit}; ancer loads "
                "models with torch.load(weights_only=True); if you trust the file, re-save just "
                "its state_dict (tensors) and load that"
            ) from error
        raise ModelError(
            f"model file {path} is corrupt or not a PyTorch file ({torch_reason(error)}); "
            f"{ACCEPTED_FILES}"
        ) from error
    except Exception as error:  # noqa: BLE001 - torch.load raises many types on bad bytes
        _refuse_text_file(path, error)
        raise ModelError(
            f"model file {path} is corrupt or not a PyTorch file ({torch_reason(error)}); "
            f"{ACCEPTED_FILES}"
        ) from error


# How much of a file decides whether it is text.
_TEXT_PROBE = 1 << 16


def _refuse_text_file(path: Path, error: BaseException) -> None:
    """Raise a ModelError saying what ``path`` is when it is a text file torch could not load
    (a results table given as ``--model`` is the usual case); return for anything else."""
    note = describe_text_file(path)
    if note is not None:
        raise ModelError(f"model file {path} is {note}, not a model; {ACCEPTED_FILES}") from error


def describe_text_file(path: Path) -> str | None:
    """``"a text file"``, with what it looks like where that can be told (a results table, a
    table), or ``None`` for anything else: binary files, and pickles written as text (protocol
    0), which the unpickler's own messages describe. Reads the file, never unpickles it."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_TEXT_PROBE)
    except OSError:
        return None
    try:  # incremental: a character cut at the end of the probe is not an error
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return None
    if not text.strip() or any(char < " " and char not in "\t\n\r" for char in text):
        return None
    if _is_pickle(path):
        return None
    first = text.strip().splitlines()[0]
    for separator, layout in (("\t", "tab-separated"), (",", "comma-separated")):
        columns = [column.strip() for column in first.split(separator)]
        if len(columns) > 1:
            what = "a results table" if columns[0] == "idx" else "a table"
            shown = " ".join(columns[:5])[:80] + (" ..." if len(columns) > 5 else "")
            return f"a text file (it looks like {what}, {layout}: {shown})"
    return "a text file"


def _is_pickle(path: Path) -> bool:
    """Whether ``path`` holds one complete pickle stream (read with ``pickletools`` only)."""
    try:
        with open(path, "rb") as handle:
            for _ in pickletools.genops(handle):
                pass
    except Exception:  # noqa: BLE001 - text that is no pickle fails in many ways
        return False
    return True


# Globals a weights-only file may legitimately name (tensor rebuilding, containers).
_TENSOR_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "_codecs.encode")


_PICKLE_STRINGS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})


def _foreign_global(path: Path) -> str | None:
    """The first global outside torch a pickle stream names, read with ``pickletools`` only.

    Scans the consecutive pickles of a legacy ``torch.save`` file; returns ``None`` for bytes
    that are not a pickle at all.
    """
    strings: list[str] = []
    try:
        with open(path, "rb") as handle:
            while handle.read(1):
                handle.seek(-1, 1)
                for opcode, argument, _ in pickletools.genops(handle):
                    if opcode.name in _PICKLE_STRINGS:
                        strings.append(str(argument))
                        continue
                    if opcode.name in ("GLOBAL", "INST"):
                        name = str(argument).replace(" ", ".")
                    elif opcode.name == "STACK_GLOBAL":
                        name = ".".join(strings[-2:]) if len(strings) >= 2 else "a global"
                    else:
                        continue
                    if not name.startswith(_TENSOR_GLOBAL_PREFIXES):
                        return name
    except Exception:  # noqa: BLE001 - garbage bytes end the scan
        return None
    return None


def torch_reason(error: BaseException) -> str:
    """The first line of what torch said about a file it could not load (at most 200 chars)."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return f"{type(error).__name__}: unexpected end of file or bad data"
    reason = lines[0]
    # torch appends a long paragraph after the first sentence of a zip error.
    if "This is an internal miniz error" in reason:
        reason = reason.split("This is an internal miniz error")[0].strip().rstrip(".")
    return reason[:200]
