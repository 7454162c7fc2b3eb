"""Using what training produced: load a finished run's model, evaluate it, export a task's path.

Nothing here runs during training, so it cannot change a run's numbers: the package is left
out of the source hash (:data:`flexmtl.provenance.SOURCE_EXCLUDED`), and a test checks that no
module the hash covers imports it (``flexmtl/__init__.py`` only re-exports its names, lazily).

Its public names are listed in :data:`__all__` and loaded on first use from the submodules
named in :data:`_WHERE`, so ``import flexmtl`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the submodule of this package that defines it
_WHERE: dict[str, str] = {"LoadedRun": "run", "load_run": "run", "load_arrays": "run",
                          "task_module": "export", "export_task": "export"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'flexmtl.use' has no attribute {name!r}")
    return getattr(importlib.import_module(f"flexmtl.use.{_WHERE[name]}"), name)
