"""Analysis of runs: statistics over seeds and plots of what was learned."""

from flexmtl.analysis.stats import format_mean_ci, summarize, t_quantile_975

__all__ = ["format_mean_ci", "summarize", "t_quantile_975"]
