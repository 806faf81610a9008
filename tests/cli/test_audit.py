"""``ancer audit`` end to end on the session's digits model: an honest file, then the same file with
every radius tripled."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.helpers import CERTIFY_FAST, assert_domain_error, invoke, ok

QUICK = ("--steps", 10, "--samples", 8, "--boundary-points", 4, "--N", 1000, "--seed", 0,
         "--device", "cpu")  # fmt: skip


def test_audit_of_honest_and_of_inflated_certificates(model_path: Path, tmp_path: Path) -> None:
    results = tmp_path / "fixed.csv"
    ok("certify", "--model", model_path, "--sigma", 0.25, "--max", 4, "--out", results,
       *CERTIFY_FAST)  # fmt: skip
    out = tmp_path / "audit.csv"
    result = ok("audit", results, "--out", out, *QUICK)
    assert "its rows are those its sidecar's digest records" in result.stdout
    assert "0 of 4 certificates violated" in result.stdout and "consistent" in result.stdout
    lines = out.read_text().splitlines()
    assert lines[0] == "idx\tradius\tviolated\tdistance\tvotes"
    stated = [line.split("\t") for line in results.read_text().splitlines()[1:]]
    assert [line.split("\t")[:2] for line in lines[1:]] == [[f[0], f[3]] for f in stated]
    record = json.loads(Path(f"{out}.json").read_text())
    assert record["format"] == "ancer-audit/1" and record["totals"]["violated"] == 0
    assert record["arguments"]["N"] == 1000 and record["audited"]["rows"] == "verified"

    inflated = tmp_path / "inflated.csv"
    shutil.copy(Path(f"{results}.json"), Path(f"{inflated}.json"))
    rows = [results.read_text().splitlines()[0]]
    for fields in stated:
        fields[3] = repr(3 * float(fields[3]))
        rows.append("\t".join(fields))
    inflated.write_text("\n".join(rows) + "\n")
    result = ok("audit", inflated, "--out", tmp_path / "inflated-audit.csv", *QUICK)
    assert "NOT those its run wrote" in result.stdout
    assert "certificates are not what the file claims" in result.stdout
    flagged = [line.split("\t") for line in (tmp_path / "inflated-audit.csv").read_text()
               .splitlines()[1:]]  # fmt: skip
    assert sum(int(f[2]) for f in flagged) >= 1
    assert all(float(f[3]) <= float(f[1]) for f in flagged)

    assert_domain_error(invoke("audit", tmp_path / "absent.csv", "--out", tmp_path / "a.csv"),
                        "does not exist")  # fmt: skip
