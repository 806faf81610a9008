"""The dataset loop of ``ancer certify``: inputs + thetas -> certificates -> result rows."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from ancer_cli.artifacts import (
    RESULT_HEADER,
    ResultsFile,
    atomic_writer,
    check_resumable,
    format_result_row,
    read_results,
    remove_stale_temporaries,
    results_sidecar_path,
    utc_now,
    write_json,
)
from ancer_cli.core.memory import Claim, memory_pass
from ancer_cli.core.noise import Norm, Stream, Theta, input_generator
from ancer_cli.core.radii import geometric_mean, min_theta
from ancer_cli.core.smoothing import ABSTAIN, certify_many, inputs_per_group
from ancer_cli.data import LoadedData
from ancer_cli.distributed import SINGLE, Ranks, collective, total
from ancer_cli.errors import AncerError, ModelError, OutputError


class CertifyMethod(str, enum.Enum):
    """How theta was chosen: one sigma for all (Cohen et al.), per-input scalar, per-input tensor."""

    fixed = "fixed"
    isotropic = "isotropic"
    ancer = "ancer"


ThetaSource = Callable[[int], Theta]
"""Maps a dataset index to the input's theta (a number or a tensor on the model's device)."""


@dataclass(frozen=True)
class CertifyConfig:
    """Sampling and confidence settings; the defaults are the command's defaults."""

    norm: Norm = Norm.l2
    n_selection: int = 100
    n_estimation: int = 100_000
    alpha: float = 0.001
    batch_size: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class ResultRow:
    """One line of the results file, plus the gap needed by the memory pass."""

    idx: int
    label: int
    predict: int
    radius: float
    radius_proxy: float
    correct: int
    min_sigma: float
    seconds: float
    gap: float

    def line(self) -> str:
        return format_result_row(
            self.idx,
            self.label,
            self.predict,
            self.radius,
            self.radius_proxy,
            self.correct,
            self.min_sigma,
            self.seconds,
        )


def select_indices(size: int, skip: int = 1, max_index: int | None = None) -> list[int]:
    """Dataset indices to certify, as in Cohen et al.'s scripts: every ``skip``-th index,
    stopping before ``max_index`` (all when ``None``)."""
    stop = size if max_index is None else min(size, max_index)
    return list(range(0, stop, skip))


def fixed_theta(theta: float) -> ThetaSource:
    """The same theta for every input (Cohen et al.'s fixed-sigma smoothing)."""
    return lambda _idx: theta


def certify_dataset(
    model: nn.Module,
    data: LoadedData,
    indices: Iterable[int],
    thetas: ThetaSource,
    config: CertifyConfig,
    device: torch.device,
) -> Iterator[ResultRow]:
    """Certify each dataset index in order and yield its row.

    Every input has its own random stream seeded from ``(config.seed, idx)``, so a row depends
    only on the seed, the model, the input and its theta -- not on which inputs come before.
    When a forward pass would otherwise be short (small ``N`` against ``batch_size``), a few
    consecutive inputs share forward passes (:func:`certify_many`), which changes no vote.
    ``time`` is the wall time of sampling and bounding (theta loading excluded), shared evenly
    by the inputs of a group.
    """
    order = list(indices)
    group = inputs_per_group(config.n_selection, config.n_estimation, config.batch_size)
    for start in range(0, len(order), group):
        chosen = order[start : start + group]
        group_thetas, failure = _load_thetas(thetas, chosen)
        chosen = chosen[: len(group_thetas)]  # certify what comes before a bad theta first
        if not chosen:
            assert failure is not None
            raise failure
        items = [data.dataset[idx] for idx in chosen]
        xs = torch.stack([x for x, _ in items]).to(device=device, dtype=torch.float32)
        generators = [input_generator(config.seed, idx, device, Stream.certify) for idx in chosen]
        began = time.perf_counter()
        certificates = certify_many(
            model,
            xs,
            group_thetas,
            config.norm,
            config.n_selection,
            config.n_estimation,
            config.alpha,
            config.batch_size,
            generators,
        )
        seconds = (time.perf_counter() - began) / len(chosen)
        for idx, (_, label), certificate in zip(chosen, items, certificates, strict=True):
            label = int(label)
            yield ResultRow(
                idx=idx,
                label=label,
                predict=certificate.prediction,
                radius=certificate.radius,
                radius_proxy=certificate.radius_proxy,
                correct=int(certificate.prediction == label and certificate.prediction != ABSTAIN),
                min_sigma=certificate.min_theta,
                seconds=seconds,
                gap=certificate.gap,
            )
        if failure is not None:
            raise failure


def _load_thetas(thetas: ThetaSource, indices: list[int]) -> tuple[list[Theta], AncerError | None]:
    """Thetas of ``indices`` up to the first that cannot be loaded, and that error."""
    loaded: list[Theta] = []
    for idx in indices:
        try:
            loaded.append(thetas(idx))
        except AncerError as error:
            return loaded, error
    return loaded, None


@dataclass(frozen=True)
class MemorySummary:
    """What the memory pass changed: inputs inside an earlier region, inputs whose gap shrank."""

    reassigned: list[int]
    shrunk: list[int]
    changed_predictions: list[int]


@dataclass(frozen=True)
class CertifySummary:
    certified: int
    resumed: int
    correct: int
    abstained: int
    mean_radius: float
    seconds: float
    memory: MemorySummary | None


def pre_memory_path(out: Path) -> Path:
    """Where the certificates are written before the memory pass: ``results.csv.pre-memory``."""
    return Path(str(out) + ".pre-memory")


def check_compatible(model: nn.Module, data: LoadedData, device: torch.device, where: str) -> None:
    """One forward pass on the first input: the model must accept the dataset's inputs and
    return one logit per class of the dataset."""
    x, _ = data.dataset[0]
    try:
        with torch.inference_mode():
            logits = model(x.unsqueeze(0).to(device=device, dtype=torch.float32))
    except Exception as error:  # any failure here is a model/data mismatch, not a bug of ours
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(
            f"model {where} cannot process {data.info.name} inputs of shape "
            f"{tuple(x.shape)}: {first}"
        ) from error
    if logits.ndim != 2 or logits.shape[1] != data.info.num_classes:
        raise ModelError(
            f"model {where} returns logits of shape {tuple(logits.shape)} for one input; "
            f"{data.info.name} has {data.info.num_classes} classes, expected (1, "
            f"{data.info.num_classes})"
        )


def apply_memory(
    rows: pd.DataFrame,
    lines: list[str],
    data: LoadedData,
    thetas: ThetaSource,
    norm: Norm,
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[str], MemorySummary]:
    """Run the memory pass over certified rows (index order) and return the final TSV lines.

    ``lines`` are the rows as written; a row the pass does not change is kept verbatim. The gap of each row is recovered as ``radius / min(theta)`` from the written radius (rounded
    toward zero) and the exact theta, so it never exceeds the certified gap.
    """
    claims = []
    for idx, predict, radius in zip(rows["idx"], rows["predict"], rows["radius"], strict=True):
        idx = int(idx)
        gap = 0.0 if predict == ABSTAIN else float(radius) / min_theta(thetas(idx))
        claims.append(Claim(idx=idx, predict=int(predict), gap=gap))
    decisions = memory_pass(
        claims, lambda i: data.dataset[i][0], thetas, norm, device, progress=progress
    )
    final = []
    for decision, line, label, seconds in zip(
        decisions, lines, rows["label"], rows["time"], strict=True
    ):
        if not (decision.reassigned or decision.shrunk):
            final.append(line)
            continue
        theta = thetas(decision.theta_idx)
        abstained = decision.predict == ABSTAIN
        gap = 0.0 if abstained else decision.gap
        final.append(
            format_result_row(
                decision.idx,
                int(label),
                decision.predict,
                min_theta(theta) * gap,
                geometric_mean(theta) * gap,
                int(not abstained and decision.predict == int(label)),
                min_theta(theta),
                float(seconds),
            )
        )
    before = dict(zip(rows["idx"].astype(int), rows["predict"].astype(int), strict=True))
    summary = MemorySummary(
        reassigned=[d.idx for d in decisions if d.reassigned],
        shrunk=[d.idx for d in decisions if d.shrunk],
        changed_predictions=[d.idx for d in decisions if d.predict != before[d.idx]],
    )
    return final, summary


def shard_path(working: Path, ranks: Ranks) -> Path:
    """The file one rank of a distributed run writes: ``results.csv.rank1-of-4``."""
    return Path(f"{working}.rank{ranks.rank}-of-{ranks.world_size}")


def merge_shards(working: Path, ranks: Ranks, indices: list[int]) -> None:
    """Rank 0: merge every rank's shard into ``working`` in index order, then remove them."""
    shards = [shard_path(working, Ranks(r, ranks.world_size)) for r in range(ranks.world_size)]
    rows: dict[int, str] = {}
    for shard in shards:
        lines = shard.read_text().splitlines(keepends=True)
        if not lines or lines[0] != RESULT_HEADER:
            raise OutputError(f"shard {shard} lost its header; rerun with --force")
        for line in lines[1:]:
            rows[int(line.split("\t", 1)[0])] = line
    if sorted(rows) != sorted(indices):
        missing = sorted(set(indices) - set(rows))
        raise OutputError(
            f"the shards of {working} lack indices {missing[:5]}; rerun with --resume"
        )
    with atomic_writer(working) as handle:
        handle.write(RESULT_HEADER)
        handle.writelines(rows[i] for i in sorted(rows))
    for shard in shards:
        shard.unlink()


def check_resume(out: Path, arguments: dict[str, Any], memory: bool, ranks: Ranks = SINGLE) -> None:
    """Refuse to resume ``out`` if its sidecar records other arguments (names the first)."""
    working = pre_memory_path(out) if memory else out
    mine = shard_path(working, ranks) if ranks.distributed else working
    if mine.exists() or out.exists():
        check_resumable(results_sidecar_path(out), arguments, str(out))


def run_certify(
    model: nn.Module,
    data: LoadedData,
    indices: list[int],
    thetas: ThetaSource,
    config: CertifyConfig,
    device: torch.device,
    out: Path,
    record: dict[str, Any],
    resume: bool = False,
    memory: bool = False,
    on_row: Callable[[ResultRow], None] | None = None,
    on_memory: Callable[[int, int], None] | None = None,
    ranks: Ranks = SINGLE,
) -> CertifySummary | None:
    """Certify ``indices`` into the results file ``out`` and its JSON sidecar.

    Rows are appended and flushed one by one, in index order -- into ``out`` itself, or, with
    ``memory``, into ``out.pre-memory``, from which the memory pass then writes ``out``
    atomically once every input is certified. With ``resume``, rows already written are kept
    (the sidecar must record the same ``record["arguments"]``) and only the remaining indices
    are certified. The sidecar says ``"complete": false`` until the end.

    In a distributed run each rank certifies its share into its own shard file; rank 0 merges
    the shards in index order, runs the memory pass, writes the sidecar and returns the
    summary (other ranks return ``None``).
    """
    sidecar = results_sidecar_path(out)
    working = pre_memory_path(out) if memory else out
    mine = shard_path(working, ranks) if ranks.distributed else working
    began = time.perf_counter()
    started = utc_now()

    def begin() -> None:
        if resume:
            check_resume(out, record["arguments"], memory, ranks)
        if ranks.is_main:  # nobody writes before every rank has passed this point
            remove_stale_temporaries(out.parent, out.name)

    collective(ranks, begin)
    if ranks.is_main:
        write_json(sidecar, {**record, "complete": False, "started": started})

    def certify_share() -> int:
        share = ranks.share(indices)
        with ResultsFile(mine, resume=resume and mine.exists()) as results:
            done = set(results.done)
            unexpected = done.difference(share)
            if unexpected:
                raise OutputError(
                    f"cannot resume {mine}: it holds index {min(unexpected)}, which this run "
                    "would not certify; use the same --skip/--max or --force to start over"
                )
            for row in certify_dataset(
                model, data, [i for i in share if i not in done], thetas, config, device
            ):
                results.append(row.line())
                if on_row is not None:
                    on_row(row)
        return len(done)

    resumed = total(ranks, collective(ranks, certify_share))
    if not ranks.is_main:
        return None
    if ranks.distributed:
        merge_shards(working, ranks, indices)
    memory_summary = None
    if memory:
        lines = working.read_text().splitlines(keepends=True)[1:]
        lines, memory_summary = apply_memory(
            read_results(working), lines, data, thetas, config.norm, device, on_memory
        )
        with atomic_writer(out) as handle:
            handle.write(RESULT_HEADER)
            handle.writelines(lines)
    frame = read_results(out)
    summary = CertifySummary(
        certified=len(frame),
        resumed=resumed,
        correct=int(frame["correct"].sum()),
        abstained=int((frame["predict"] == ABSTAIN).sum()),
        mean_radius=float((frame["radius"] * frame["correct"]).mean()) if len(frame) else 0.0,
        seconds=time.perf_counter() - began,
        memory=memory_summary,
    )
    memory_record: dict[str, Any] = {"enabled": memory}
    if memory_summary is not None:
        memory_record.update(
            before_pass=str(working),
            reassigned=len(memory_summary.reassigned),
            shrunk=len(memory_summary.shrunk),
            changed_predictions=len(memory_summary.changed_predictions),
            reassigned_indices=memory_summary.reassigned,
            shrunk_indices=memory_summary.shrunk,
        )
    write_json(
        sidecar,
        {
            **record,
            "complete": True,
            "started": started,
            "finished": utc_now(),
            "memory": memory_record,
            "totals": {
                "inputs": summary.certified,
                "resumed_rows": summary.resumed,
                "correct": summary.correct,
                "abstained": summary.abstained,
                "certified_accuracy_at_0": summary.correct / max(summary.certified, 1),
                "average_certified_radius": summary.mean_radius,
                "seconds_this_run": summary.seconds,
            },
        },
    )
    return summary
