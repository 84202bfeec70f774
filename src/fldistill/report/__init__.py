"""Run reports: loading run folders, plots, and the comparison of runs.

Plotting functions are imported lazily so that loading runs does not import matplotlib.
"""

from __future__ import annotations

from typing import Any

from fldistill.report.compare import (
    RunRecord,
    bits_to_target,
    compare_runs,
    format_bits,
    load_run,
    render_table,
    rounds_to_target,
)

_PLOTS = ("plot_run", "plot_label_heatmap", "plot_overlay")

__all__ = [
    "RunRecord",
    "bits_to_target",
    "compare_runs",
    "format_bits",
    "load_run",
    "render_table",
    "rounds_to_target",
    *_PLOTS,
]


def __getattr__(name: str) -> Any:
    """Import plotting functions on first use."""
    if name in _PLOTS:
        from fldistill.report import plots

        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
