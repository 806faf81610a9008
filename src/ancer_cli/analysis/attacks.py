"""Certified against empirical accuracy: a results file (lower bounds) and an ``ancer attack``
file (upper bounds) of the same inputs, compared at the attack's eps -- what ``ancer accuracy
RESULTS --attack ATTACK`` reports.

Certified accuracy at eps is the fraction of the inputs correct with a certified radius ``>=
eps`` in the column that measures the attacker's ball: ``radius`` for an l2 attack on an l2
certificate and an l1 attack on an l1 one, ``radius_linf`` for an l-infinity attack. Empirical
accuracy at eps is the fraction of the inputs whose attacked point PREDICT still labels
correctly. The first can only be below the truth (but for the certificates' ``alpha``), the
second only above it (but for PREDICT's); the gap between them is what neither knows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ancer_cli.analysis.metrics import certified_accuracy_curve, check_results, labeled_rows
from ancer_cli.errors import ResultsError
from ancer_cli.results import (
    is_prediction_frame,
    read_attack_results,
    read_results,
    read_results_record,
)
from ancer_cli.settings import Metric

CERTIFIED = "certified (lower)"
EMPIRICAL = "empirical (upper)"
GAP = "gap"


@dataclass(frozen=True)
class AttackComparison:
    """Certified and empirical accuracy of the same ``inputs`` at each ``eps`` of the attack
    (sorted): the ``metric`` column of the results ``frame`` against the attack's rows."""

    results: Path
    attack: Path
    threat: str
    metric: Metric
    eps: list[float]
    certified: dict[float, float]
    empirical: dict[float, float]
    inputs: int
    frame: pd.DataFrame
    settings: Mapping[str, Any]
    """what the attack's sidecar records of the attack (perturbation, settings, N, alpha)"""

    @property
    def gap(self) -> dict[float, float]:
        """Empirical less certified accuracy at each eps (what is not known)."""
        return {e: self.empirical[e] - self.certified[e] for e in self.eps}

    def table(self) -> pd.DataFrame:
        """One row per eps (``eps 0.25``), columns certified, empirical and the gap."""
        table = pd.DataFrame(
            {
                CERTIFIED: [self.certified[e] for e in self.eps],
                EMPIRICAL: [self.empirical[e] for e in self.eps],
                GAP: [self.gap[e] for e in self.eps],
            },
            index=[f"eps {e:g}" for e in self.eps],
            dtype=float,
        )
        table.index.name = "quantity"
        return table

    def record(self) -> dict[str, Any]:
        """The comparison as JSON-ready values (eps written as floats, e.g. ``"0.5"``)."""

        def keyed(values: Mapping[float, float]) -> dict[str, float | None]:
            return {repr(e): (None if math.isnan(v) else v) for e, v in values.items()}

        return {
            "results": str(self.results),
            "attack": str(self.attack),
            "threat": self.threat,
            "metric": self.metric.value,
            "column": self.metric.column,
            "inputs": self.inputs,
            "eps": self.eps,
            "certified_accuracy": keyed(self.certified),
            "empirical_accuracy": keyed(self.empirical),
            "gap": keyed(self.gap),
            "attack_settings": dict(self.settings),
        }


def metric_of_threat(threat: str, norm: str, results: Path, attack: Path) -> Metric:
    """The results column that measures the attacker's ball: ``radius_linf`` for an l-infinity
    attack, ``radius`` for an attack in the certificates' own norm; a
    :class:`ResultsError` for an l2 attack on l1 certificates or the reverse."""
    if threat == "linf":
        return Metric.linf
    if threat == norm:
        return Metric.radius
    raise ResultsError(
        f"{attack} attacked {threat} balls but {results} certifies {norm} balls (radius): "
        f"compare an attack in {norm} (--threat {norm}) or in l-infinity (radius_linf)"
    )


def compare_attack(results: Path, attack: Path) -> AttackComparison:
    """Read a results file and an attack file of the same inputs and compare them at the
    attack's eps. The attack's threat comes from its sidecar; the certificates' norm from
    theirs (``l2`` without one: Cohen et al.'s and the original scripts' files are l2). Raises
    :class:`ResultsError` (one line) for files of different inputs or labels, an attack without
    its sidecar, an eps some input lacks, or a ball the results cannot measure."""
    frame = read_results(results)
    if is_prediction_frame(frame):
        raise ResultsError(f"{results} holds predictions, not certificates: no radius to compare")
    rows = read_attack_results(attack)
    record = read_results_record(attack)
    arguments = (record or {}).get("arguments") or {}
    threat = arguments.get("threat")
    if threat not in ("l2", "l1", "linf"):
        raise ResultsError(
            f"{attack} has no sidecar recording its threat ({attack}.json, arguments.threat): "
            "the ball it attacked is unknown"
        )
    norm = ((read_results_record(results) or {}).get("arguments") or {}).get("norm") or "l2"
    metric = metric_of_threat(threat, str(norm), results, attack)
    check_results(frame, metric, results)
    certified_inputs = dict(zip(frame["idx"].tolist(), frame["label"].tolist(), strict=True))
    attacked = dict(zip(rows["idx"].tolist(), rows["label"].tolist(), strict=True))
    if set(certified_inputs) != set(attacked):
        only = sorted(set(certified_inputs) ^ set(attacked))
        raise ResultsError(
            f"{results} ({len(certified_inputs)} inputs) and {attack} ({len(attacked)} inputs) "
            f"are files of different inputs (input {only[0]} is in one only); attack the "
            "results file itself: ancer attack RESULTS"
        )
    differ = [i for i in certified_inputs if certified_inputs[i] != attacked[i]]
    if differ:
        raise ResultsError(
            f"{results} and {attack} give input {differ[0]} different labels "
            f"({certified_inputs[differ[0]]} and {attacked[differ[0]]}): not the same data"
        )
    eps = sorted({float(e) for e in rows["eps"]})
    scored = labeled_rows(frame)
    certified = certified_accuracy_curve(scored, eps, metric)
    empirical: dict[float, float] = {}
    for e in eps:
        at = rows[rows["eps"] == e]
        if set(at["idx"].tolist()) != set(attacked):
            missing = sorted(set(attacked) - set(at["idx"].tolist()))
            raise ResultsError(
                f"{attack} has no row for input {missing[0]} at eps {e:g}: an unfinished "
                "attack; finish it with ancer attack --resume"
            )
        at = at[at["label"].to_numpy() >= 0]
        empirical[e] = float(at["correct"].mean()) if len(at) else math.nan
    settings = {
        key: arguments.get(key) for key in ("perturbation", "attack", "N", "alpha", "seed")
    }
    return AttackComparison(
        results=Path(results),
        attack=Path(attack),
        threat=str(threat),
        metric=metric,
        eps=eps,
        certified={e: float(v) for e, v in zip(eps, np.asarray(certified), strict=True)},
        empirical=empirical,
        inputs=len(scored),
        frame=scored,
        settings=settings,
    )
