"""Reproduction of both papers: ``flexmtl reproduce`` runs every figure and table that can run
on the machine at hand and writes ``REPRODUCTION.md`` with the published result, ours (mean ±
95% CI over seeds), the data used, each claim judged and a verdict by one rule.

* :mod:`flexmtl.reproduction.studies` -- the catalogue: for each figure or table, the
  experiment and its protocol (paper-length and ``--quick``), the published result, and
  how our runs are measured against it.
* :mod:`flexmtl.reproduction.report` -- running the studies (resumable) and writing the
  report and its figures.
"""

from flexmtl.reproduction import gumbel_matrix, soft_ordering  # noqa: F401  (registers them)
from flexmtl.reproduction.report import reproduce, write_report
from flexmtl.reproduction.studies import (
    RULE,
    STUDIES,
    Assessment,
    Claim,
    ClaimResult,
    Protocol,
    Study,
    get_study,
    verdict,
)

__all__ = ["RULE", "STUDIES", "Assessment", "Claim", "ClaimResult", "Protocol", "Study",
           "get_study", "reproduce", "verdict", "write_report"]
