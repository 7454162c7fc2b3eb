"""Analysis of runs: statistics over seeds and plots of what was learned."""

from flexmtl.analysis.embeddings import cosine_similarity, group_tasks
from flexmtl.analysis.stats import format_mean_ci, summarize, t_quantile_975

__all__ = ["cosine_similarity", "group_tasks", "format_mean_ci", "summarize", "t_quantile_975"]
