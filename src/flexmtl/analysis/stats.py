"""Summaries over seeds: mean and the half-width of a 95% Student-t confidence interval."""

from __future__ import annotations

import math
from collections.abc import Sequence

# two-sided 95% quantiles t_{0.975, df} for df = 1..30; beyond that the normal 1.96 is
# within 2% of the exact value
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)


def t_quantile_975(df: int) -> float:
    if df < 1:
        raise ValueError("need at least two values for a confidence interval")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def summarize(values: Sequence[float]) -> dict:
    """``{"mean", "ci95", "std", "n", "values"}``; ``ci95`` is NaN for a single value."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        raise ValueError("no values to summarize")
    mean = sum(vals) / n
    if n == 1:
        return {"mean": mean, "ci95": math.nan, "std": math.nan, "n": 1, "values": vals}
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    return {
        "mean": mean,
        "ci95": t_quantile_975(n - 1) * std / math.sqrt(n),
        "std": std,
        "n": n,
        "values": vals,
    }


def format_mean_ci(summary: dict, digits: int = 4) -> str:
    """``"0.1234 ± 0.0056"`` (or just the mean when there is one value)."""
    if math.isnan(summary["ci95"]):
        return f"{summary['mean']:.{digits}f}"
    return f"{summary['mean']:.{digits}f} ± {summary['ci95']:.{digits}f}"
