"""Atomic checkpoints and the random-number state needed to resume a run exactly."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then atomically replace it.

    A run killed mid-write leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`atomic_save` (it holds more than tensors)."""
    return torch.load(path, map_location=map_location, weights_only=False)


def load_sharing_snapshots(run_dir: str | Path, ndim: int | None = None
                           ) -> list[tuple[int, torch.Tensor]]:
    """A run's sharing parameters over training, ``[(step, tensor)]``: from ``sharing.pt``
    (written when the run finishes), else ``last.pt`` of an unfinished run; empty when
    neither is readable. ``ndim`` keeps only snapshots of that many dimensions (3 for
    soft-order scales ``[tasks, layers, depths]``, 2 for connection probabilities)."""
    for name in ("sharing.pt", "last.pt"):
        path = Path(run_dir) / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # a torn or foreign file: no snapshots from it
            continue
        snaps = state.get("sharing") if isinstance(state, dict) else None
        if snaps:
            return [(int(step), torch.as_tensor(s)) for step, s in snaps
                    if ndim is None or torch.as_tensor(s).dim() == ndim]
    return []


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
