"""Rows keyed by more than the dataset index: several rows per input (``(idx, eps)``), cut short,
sharded and merged in key order."""

from __future__ import annotations

from pathlib import Path

from ancer_cli.run.rows import ResultsFile, complete_rows, index_key, merge_rows

COLUMNS = ("idx", "eps", "value")


def pair_key(fields):
    return int(fields[0]), float(fields[1])


def line(idx: int, eps: float) -> str:
    return f"{idx}\t{eps!r}\t{idx * eps}\n"


def test_rows_of_one_input_are_told_apart_by_their_key(tmp_path: Path) -> None:
    path = tmp_path / "rows.tsv"
    header = "\t".join(COLUMNS) + "\n"
    path.write_text(header + line(0, 0.25) + line(0, 0.5) + line(1, 0.25) + "1\t0.5")
    rows = complete_rows(path, COLUMNS, pair_key)
    assert [key for key, _ in rows] == [(0, 0.25), (0, 0.5), (1, 0.25)]  # the cut line dropped
    assert [key for key, _ in complete_rows(path, COLUMNS)] == [0, 0, 1]  # index_key by default
    with ResultsFile(path, resume=True, columns=COLUMNS, key=pair_key) as results:
        assert results.done == [(0, 0.25), (0, 0.5), (1, 0.25)]
        results.append(line(1, 0.5))
    assert path.read_text() == header + line(0, 0.25) + line(0, 0.5) + line(1, 0.25) + line(1, 0.5)


def test_shards_merge_in_key_order(tmp_path: Path) -> None:
    working = tmp_path / "rows.tsv"
    header = "\t".join(COLUMNS) + "\n"
    Path(f"{working}.rank0-of-2").write_text(header + line(0, 0.5) + line(1, 0.25))
    Path(f"{working}.rank1-of-2").write_text(header + line(0, 0.25) + line(1, 0.5))
    keys = [(i, e) for i in (0, 1) for e in (0.25, 0.5)]
    rows = merge_rows(working, COLUMNS, keys, pair_key)
    assert sorted(rows) == keys
    assert working.read_text() == header + "".join(line(i, e) for i, e in keys)
    assert not list(tmp_path.glob("*.rank*"))
    assert index_key(["7", "x"]) == 7
