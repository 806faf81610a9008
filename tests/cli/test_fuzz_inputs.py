"""Property-based bad-input campaign: whatever the files and options hold, every command ends
with exit code 0, 1 (one ``error:`` line) or 2 (a usage error) -- never a traceback, and never a
partial output presented as complete."""

import errno
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import assert_domain_error, describe, error_lines, invoke

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CERTIFY_TINY = ("--N0", "10", "--N", "50", "--device", "cpu")


def _clean_end(result) -> None:
    """Exit 0, or a deliberate exit 1 with exactly one ``error:`` line, or a usage error."""
    assert result.exit_code in (0, 1, 2), describe(result)
    if result.exit_code != 0:
        assert isinstance(result.exception, SystemExit), describe(result)
    assert "Traceback" not in result.output, describe(result)
    if result.exit_code == 1:
        assert len(error_lines(result)) == 1, describe(result)


def _fresh(tmp_path: Path, name: str) -> Path:
    """``tmp_path / name`` with nothing of an earlier example left: the file or folder, its
    sidecar and working files."""
    path = tmp_path / name
    for left in tmp_path.glob(f"{name}*"):
        if left.is_dir():
            shutil.rmtree(left)
        else:
            left.unlink()
    return path


# --- results files ---------------------------------------------------------------------------

_cells = st.one_of(
    st.integers(-3, 12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "abc", "0:00:01.5", "1e400", "-1", " 3 ", "nan", "\\", '"']),
    st.text(max_size=6),
)
_header_names = st.lists(
    st.sampled_from(["idx", "label", "predict", "radius", "radius_proxy", "correct", "time", "x"]),
    min_size=0,
    max_size=8,
)


@pytest.mark.slow
@SETTINGS
@given(header=_header_names, rows=st.lists(st.lists(_cells, max_size=9), max_size=5))
def test_accuracy_on_arbitrary_tables(tmp_path, header, rows):
    path = _fresh(tmp_path, "fuzz.tsv")
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")
    _clean_end(invoke("accuracy", path, "--format", "json"))


@pytest.mark.slow
@SETTINGS
@given(data=st.binary(max_size=300))
def test_accuracy_on_arbitrary_bytes(tmp_path, data):
    path = _fresh(tmp_path, "bytes.tsv")
    path.write_bytes(data)
    result = invoke("accuracy", path)
    _clean_end(result)


# --- model files -----------------------------------------------------------------------------


@pytest.mark.slow
@SETTINGS
@given(cut=st.floats(0.0, 0.999), flip=st.integers(0, 2**31))
def test_truncated_or_corrupted_checkpoints(model_path, tmp_path, cut, flip):
    data = bytearray(model_path.read_bytes())
    corrupt = _fresh(tmp_path, "model.pt")
    if flip % 2:
        position = flip % len(data)
        data[position] ^= 0xFF
        corrupt.write_bytes(bytes(data))
    else:
        corrupt.write_bytes(bytes(data[: int(len(data) * cut)]))
    out = _fresh(tmp_path, "r.csv")
    result = invoke(
        "certify", "--model", corrupt, "--sigma", "0.25", "--max", "2", *CERTIFY_TINY, "--out", out
    )
    _clean_end(result)
    if result.exit_code != 0:
        assert not out.exists() or '"complete": true' not in Path(str(out) + ".json").read_text()


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"format": "ancer-model/1", "payload": Exploit()}, path)
    result = invoke(
        "certify", "--model", path, "--sigma", "0.25", *CERTIFY_TINY, "--out", tmp_path / "r.csv"
    )
    assert_domain_error(result, str(path))
    assert not marker.exists()


# --- theta files and manifests ---------------------------------------------------------------

_theta_values = st.sampled_from([0.3, -0.1, 0.0, math.nan, math.inf, 1e-30])
_shapes = st.sampled_from([(1, 8, 8), (), (8, 8), (3, 32, 32), (1, 8, 8, 1), (64,)])
_dtypes = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64, torch.bool])


@pytest.mark.slow
@SETTINGS
@given(shape=_shapes, dtype=_dtypes, value=_theta_values, poke=_theta_values)
def test_arbitrary_theta_files(thetas_dir, model_path, tmp_path, shape, dtype, value, poke):
    folder = _fresh(tmp_path, "thetas")
    shutil.copytree(thetas_dir, folder)
    theta = torch.full(shape, value).to(dtype)
    if theta.numel() and dtype.is_floating_point:
        theta.view(-1)[0] = poke
    torch.save(theta, folder / "theta_test_2.pt")
    out = _fresh(tmp_path, "r.csv")
    result = invoke("certify", "--thetas", folder, *CERTIFY_TINY, "--out", out)
    _clean_end(result)
    if result.exit_code == 1:
        assert "theta_test_2.pt" in error_lines(result)[0]
        sidecar = Path(str(out) + ".json")
        assert not sidecar.exists() or '"complete": true' not in sidecar.read_text()


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(), st.text(max_size=5)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@pytest.mark.slow
@SETTINGS
@given(
    key=st.sampled_from(["format", "method", "arguments", "indices", "complete", "dataset"]),
    value=_json_values,
    garbage=st.booleans(),
)
def test_arbitrary_manifests(thetas_dir, tmp_path, key, value, garbage):
    folder = _fresh(tmp_path, "thetas")
    shutil.copytree(thetas_dir, folder)
    manifest = folder / "manifest.json"
    if garbage:
        manifest.write_text(json.dumps(value)[: max(1, len(json.dumps(value)) // 2)] + "{")
    else:
        payload = json.loads(manifest.read_text())
        payload[key] = value
        manifest.write_text(json.dumps(payload))
    result = invoke(
        "certify", "--thetas", folder, *CERTIFY_TINY, "--out", _fresh(tmp_path, "r.csv")
    )
    _clean_end(result)


# --- dataset folders -------------------------------------------------------------------------

_tree = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "train/a", "test/b", "val/c", "x/y/z", ""]),
        st.sampled_from(["img.png", "img.txt", "broken.png", "big.png", ".hidden.png"]),
    ),
    max_size=6,
)


@pytest.mark.slow
@SETTINGS
@given(tree=_tree)
def test_arbitrary_folder_datasets(tmp_path, tree):
    from PIL import Image

    root = _fresh(tmp_path, "data")
    root.mkdir()
    for folder, name in tree:
        target = root / folder
        target.mkdir(parents=True, exist_ok=True)
        if name == "img.txt":
            (target / name).write_text("hello")
        elif name == "broken.png":
            (target / name).write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        else:
            size = (12, 10) if name == "big.png" else (8, 8)
            Image.new("RGB", size, (10, 200, 30)).save(target / name)
    out = _fresh(tmp_path, "m.pt")
    result = invoke(
        "train",
        "--dataset",
        "folder",
        "--data-root",
        root,
        "--arch",
        "cnn",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        out,
    )
    _clean_end(result)


# --- option combinations ---------------------------------------------------------------------

_numbers = st.one_of(
    st.integers(-3, 3).map(str),
    st.sampled_from(["0", "1e-9", "0.5", "1", "1.5", "nan", "inf", "-inf", "abc", "", "1e400"]),
)


@pytest.mark.slow
@SETTINGS
@given(n0=_numbers, n=_numbers, alpha=_numbers, sigma=_numbers, batch=_numbers, skip=_numbers)
def test_arbitrary_certify_options(model_path, tmp_path, n0, n, alpha, sigma, batch, skip):
    out = _fresh(tmp_path, "r.csv")
    result = invoke(
        "certify",
        "--model",
        model_path,
        "--sigma",
        sigma,
        "--N0",
        n0,
        "--N",
        n,
        "--alpha",
        alpha,
        "--batch-size",
        batch,
        "--skip",
        skip,
        "--max",
        "2",
        "--device",
        "cpu",
        "--out",
        out,
    )
    _clean_end(result)


# --- write errors ----------------------------------------------------------------------------


def test_full_disk_while_writing_rows_is_a_clean_error(model_path, tmp_path, monkeypatch):
    import builtins

    from ancer_cli.run import rows

    out = tmp_path / "full.csv"

    class FillingUp:
        """A results file on a disk that fills up after the header and one row."""

        def __init__(self, handle):
            self.handle, self.writes = handle, 0

        def write(self, text):
            self.writes += 1
            if self.writes > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(text)

        def __getattr__(self, name):
            return getattr(self.handle, name)

    def fake_open(path, *args, **kwargs):
        handle = builtins.open(path, *args, **kwargs)
        return FillingUp(handle) if Path(path) == out else handle

    monkeypatch.setattr(rows, "open", fake_open, raising=False)
    result = invoke(
        "certify",
        "--model",
        model_path,
        "--sigma",
        "0.25",
        "--max",
        "5",
        *CERTIFY_TINY,
        "--out",
        out,
    )
    assert_domain_error(result, "No space left on device", str(out))
    assert '"complete": false' in (tmp_path / "full.csv.json").read_text()


def test_unwritable_output_folder(model_path, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        probe = locked / "probe"
        try:
            probe.write_text("")
            probe.unlink()
            pytest.skip("this user can write into a read-only folder (root)")
        except OSError:
            pass
        result = invoke(
            "certify",
            "--model",
            model_path,
            "--sigma",
            "0.25",
            "--max",
            "2",
            *CERTIFY_TINY,
            "--out",
            locked / "r.csv",
        )
        assert_domain_error(result, "cannot write")
    finally:
        locked.chmod(0o700)


def test_output_in_a_read_only_filesystem(model_path):
    """A folder nobody can write to, root included: /proc (Linux)."""
    if not Path("/proc/self").exists():
        pytest.skip("needs Linux /proc")
    result = invoke(
        "certify",
        "--model",
        model_path,
        "--sigma",
        "0.25",
        "--max",
        "2",
        *CERTIFY_TINY,
        "--out",
        "/proc/ancer-results.csv",
    )
    assert_domain_error(result, "cannot write", "/proc/ancer-results.csv")
    for name in ("train", "optimize"):
        args = (
            ["--out", "/proc/ancer-model.pt"]
            if name == "train"
            else ["--model", model_path, "--out", "/proc/ancer-thetas", "--max", "1"]
        )
        result = invoke(
            name, *args, "--epochs" if name == "train" else "--iterations", "1", "--device", "cpu"
        )
        assert_domain_error(result, "/proc/ancer-")
