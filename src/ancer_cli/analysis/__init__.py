"""Reading results files for people: metrics, comparison tables and plots (nothing here prints).

- :mod:`.metrics` -- certified accuracy, ACR, abstention, high-probability bounds of one frame;
- :mod:`.tables` -- several frames side by side, rendered as markdown, LaTeX, CSV or JSON;
- :mod:`.plots` -- certified-accuracy curves, radius distributions and theta maps;
- :mod:`.compare` -- several results files read, checked and summarised side by side;
- :mod:`.attacks` -- certified against empirical accuracy (a results file and an attack file).

The names are loaded on first use, so that :mod:`.labels` is read without pandas.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ancer_cli.analysis.attacks import AttackComparison, compare_attack
    from ancer_cli.analysis.compare import (
        Comparison,
        compare,
    )
    from ancer_cli.analysis.labels import (
        default_labels,
    )
    from ancer_cli.analysis.metrics import (
        AccuracySummary,
        Confidence,
        HighProbabilityAccuracy,
        abstention_rate,
        average_certified_radius,
        certified_accuracy,
        certified_accuracy_curve,
        certified_counts,
        check_results,
        clean_accuracy,
        confidence_from_record,
        false_certificate_bound,
        high_probability_curve,
        labeled_rows,
        median_time,
        proxy_ratios,
        summarize,
    )
    from ancer_cli.analysis.plots import (
        plot_attack_comparison,
        plot_certified_accuracy,
        plot_radius_distribution,
        plot_theta_maps,
    )
    from ancer_cli.analysis.tables import (
        ABSTENTION_ROW,
        ACR_PROXY_ROW,
        ACR_ROW,
        ALPHA_ROW,
        CLEAN_ROW,
        FALSE_CERTIFICATES_ROW,
        INPUTS_ROW,
        LABELED_ROW,
        MEAN_SAMPLES_ROW,
        MEDIAN_SAMPLES_ROW,
        TIME_ROW,
        accuracy_row,
        best_mask,
        format_cell,
        high_probability_row,
        latex_escape,
        render,
        render_csv,
        render_json,
        render_latex,
        render_markdown,
        summaries_to_json,
        summary_table,
        table_from_summaries,
    )
    from ancer_cli.settings import DEFAULT_RADII, DEFAULT_RHO, PLOT_SUFFIXES, Metric

_EXPORTS = {
    "AttackComparison": ("ancer_cli.analysis.attacks", "AttackComparison"),
    "compare_attack": ("ancer_cli.analysis.attacks", "compare_attack"),
    "Comparison": ("ancer_cli.analysis.compare", "Comparison"),
    "compare": ("ancer_cli.analysis.compare", "compare"),
    "default_labels": ("ancer_cli.analysis.labels", "default_labels"),
    "DEFAULT_RADII": ("ancer_cli.settings", "DEFAULT_RADII"),
    "DEFAULT_RHO": ("ancer_cli.settings", "DEFAULT_RHO"),
    "AccuracySummary": ("ancer_cli.analysis.metrics", "AccuracySummary"),
    "Confidence": ("ancer_cli.analysis.metrics", "Confidence"),
    "HighProbabilityAccuracy": ("ancer_cli.analysis.metrics", "HighProbabilityAccuracy"),
    "Metric": ("ancer_cli.settings", "Metric"),
    "abstention_rate": ("ancer_cli.analysis.metrics", "abstention_rate"),
    "average_certified_radius": ("ancer_cli.analysis.metrics", "average_certified_radius"),
    "certified_accuracy": ("ancer_cli.analysis.metrics", "certified_accuracy"),
    "certified_accuracy_curve": ("ancer_cli.analysis.metrics", "certified_accuracy_curve"),
    "certified_counts": ("ancer_cli.analysis.metrics", "certified_counts"),
    "check_results": ("ancer_cli.analysis.metrics", "check_results"),
    "clean_accuracy": ("ancer_cli.analysis.metrics", "clean_accuracy"),
    "confidence_from_record": ("ancer_cli.analysis.metrics", "confidence_from_record"),
    "false_certificate_bound": ("ancer_cli.analysis.metrics", "false_certificate_bound"),
    "high_probability_curve": ("ancer_cli.analysis.metrics", "high_probability_curve"),
    "labeled_rows": ("ancer_cli.analysis.metrics", "labeled_rows"),
    "median_time": ("ancer_cli.analysis.metrics", "median_time"),
    "proxy_ratios": ("ancer_cli.analysis.metrics", "proxy_ratios"),
    "summarize": ("ancer_cli.analysis.metrics", "summarize"),
    "PLOT_SUFFIXES": ("ancer_cli.settings", "PLOT_SUFFIXES"),
    "plot_attack_comparison": ("ancer_cli.analysis.plots", "plot_attack_comparison"),
    "plot_certified_accuracy": ("ancer_cli.analysis.plots", "plot_certified_accuracy"),
    "plot_radius_distribution": ("ancer_cli.analysis.plots", "plot_radius_distribution"),
    "plot_theta_maps": ("ancer_cli.analysis.plots", "plot_theta_maps"),
    "ABSTENTION_ROW": ("ancer_cli.analysis.tables", "ABSTENTION_ROW"),
    "ACR_PROXY_ROW": ("ancer_cli.analysis.tables", "ACR_PROXY_ROW"),
    "ACR_ROW": ("ancer_cli.analysis.tables", "ACR_ROW"),
    "ALPHA_ROW": ("ancer_cli.analysis.tables", "ALPHA_ROW"),
    "CLEAN_ROW": ("ancer_cli.analysis.tables", "CLEAN_ROW"),
    "FALSE_CERTIFICATES_ROW": ("ancer_cli.analysis.tables", "FALSE_CERTIFICATES_ROW"),
    "INPUTS_ROW": ("ancer_cli.analysis.tables", "INPUTS_ROW"),
    "LABELED_ROW": ("ancer_cli.analysis.tables", "LABELED_ROW"),
    "MEAN_SAMPLES_ROW": ("ancer_cli.analysis.tables", "MEAN_SAMPLES_ROW"),
    "MEDIAN_SAMPLES_ROW": ("ancer_cli.analysis.tables", "MEDIAN_SAMPLES_ROW"),
    "TIME_ROW": ("ancer_cli.analysis.tables", "TIME_ROW"),
    "accuracy_row": ("ancer_cli.analysis.tables", "accuracy_row"),
    "best_mask": ("ancer_cli.analysis.tables", "best_mask"),
    "format_cell": ("ancer_cli.analysis.tables", "format_cell"),
    "high_probability_row": ("ancer_cli.analysis.tables", "high_probability_row"),
    "latex_escape": ("ancer_cli.analysis.tables", "latex_escape"),
    "render": ("ancer_cli.analysis.tables", "render"),
    "render_csv": ("ancer_cli.analysis.tables", "render_csv"),
    "render_json": ("ancer_cli.analysis.tables", "render_json"),
    "render_latex": ("ancer_cli.analysis.tables", "render_latex"),
    "render_markdown": ("ancer_cli.analysis.tables", "render_markdown"),
    "summaries_to_json": ("ancer_cli.analysis.tables", "summaries_to_json"),
    "summary_table": ("ancer_cli.analysis.tables", "summary_table"),
    "table_from_summaries": ("ancer_cli.analysis.tables", "table_from_summaries"),
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        loaded = import_module(_EXPORTS[name][0])
        # bind every name of that module: importing it bound the package attribute of the same
        # name (``compare``) to the module itself
        for exported, (module, attribute) in _EXPORTS.items():
            if module == loaded.__name__:
                globals()[exported] = getattr(loaded, attribute)
        return globals()[name]
    raise AttributeError(f"module 'ancer_cli.analysis' has no attribute {name!r}")

__all__ = [
    "ABSTENTION_ROW",
    "ACR_PROXY_ROW",
    "ACR_ROW",
    "ALPHA_ROW",
    "CLEAN_ROW",
    "DEFAULT_RADII",
    "DEFAULT_RHO",
    "FALSE_CERTIFICATES_ROW",
    "INPUTS_ROW",
    "LABELED_ROW",
    "MEAN_SAMPLES_ROW",
    "MEDIAN_SAMPLES_ROW",
    "PLOT_SUFFIXES",
    "TIME_ROW",
    "AccuracySummary",
    "AttackComparison",
    "Comparison",
    "Confidence",
    "HighProbabilityAccuracy",
    "Metric",
    "abstention_rate",
    "accuracy_row",
    "average_certified_radius",
    "best_mask",
    "certified_accuracy",
    "certified_accuracy_curve",
    "certified_counts",
    "check_results",
    "clean_accuracy",
    "compare",
    "compare_attack",
    "confidence_from_record",
    "default_labels",
    "false_certificate_bound",
    "format_cell",
    "high_probability_curve",
    "high_probability_row",
    "labeled_rows",
    "latex_escape",
    "median_time",
    "plot_attack_comparison",
    "plot_certified_accuracy",
    "plot_radius_distribution",
    "plot_theta_maps",
    "proxy_ratios",
    "render",
    "render_csv",
    "render_json",
    "render_latex",
    "render_markdown",
    "summaries_to_json",
    "summarize",
    "summary_table",
    "table_from_summaries",
]
