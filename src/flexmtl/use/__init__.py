"""Using what training produced: load a finished run's model, evaluate it, export a task's path;
move runs between machines (pack them into one archive, merge it into a folder).

Nothing here runs during training, so it cannot change a run's numbers: the package is left
out of the source hash (:data:`flexmtl.provenance.SOURCE_EXCLUDED`), and a test checks that no
module the hash covers imports it (``flexmtl/__init__.py`` only re-exports its names, lazily).

Its public names are listed in :data:`__all__` and loaded on first use from the modules named
in :data:`_WHERE`, so ``import flexmtl`` stays light. Besides its own, it lends ``flexmtl``
the analysis helpers a user of a trained model needs (task similarity and groups of tasks
from Gumbel-Matrix embeddings, mean and 95% interval over seeds, recovery of known groups).
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it
_WHERE: dict[str, str] = {
    "LoadedRun": "flexmtl.use.run", "load_run": "flexmtl.use.run",
    "load_arrays": "flexmtl.use.run",
    "task_module": "flexmtl.use.export", "export_task": "flexmtl.use.export",
    "pack_runs": "flexmtl.use.archive", "unpack_runs": "flexmtl.use.archive",
    "cosine_similarity": "flexmtl.analysis.embeddings",
    "group_tasks": "flexmtl.analysis.embeddings",
    "group_recovery": "flexmtl.analysis.planted",
    "summarize": "flexmtl.analysis.stats",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'flexmtl.use' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
