"""What a training run trains, as a flat dict (``fingerprint.json`` in its folder): a rerun
into the same folder resumes only when its fingerprint is the same.

It holds the training settings (:class:`~flexmtl.training.TrainConfig` less the keys that
may change on resume, :data:`~flexmtl.training.config.CHANGEABLE_ON_RESUME`), per task its
name, kind, outputs, input shape, split sizes, note and a digest of its data (every byte of
in-memory tensors; the shape of :class:`~flexmtl.tasks.LazyInputs`, which are read from
files), and the model's class and the names and shapes of its parameters and buffers.
:func:`fingerprint_diff` renders what changed as ``key: old -> new``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from flexmtl.tasks import LazyInputs, Split, Task
from flexmtl.training.config import CHANGEABLE_ON_RESUME, TrainConfig

__all__ = ["run_fingerprint", "fingerprint_diff", "data_digest", "FINGERPRINT_VERSION"]

FINGERPRINT_VERSION = 1


def data_digest(data: torch.Tensor | LazyInputs) -> str:
    """A digest of every byte of an in-memory tensor (with its dtype and shape), or of the
    shape of lazy inputs (read from files: hashing them would read the whole data set)."""
    if isinstance(data, LazyInputs):
        return f"lazy {type(data).__name__} {list(data.shape)}"
    tensor = data.detach().cpu().contiguous()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tensor.dtype} {list(tensor.shape)}".encode())
    if tensor.numel():
        # bytes of any dtype (bfloat16 has no numpy twin): viewed as uint8, no copy
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _split(prefix: str, split: Split | None) -> dict[str, Any]:
    if split is None:
        return {f"{prefix}": None}
    return {f"{prefix}.size": len(split), f"{prefix}.x": data_digest(split.x),
            f"{prefix}.y": data_digest(split.y)}


def run_fingerprint(config: TrainConfig, tasks: Sequence[Task], model: nn.Module) -> dict:
    """The fingerprint of training ``model`` on ``tasks`` with ``config``: a flat dict of
    JSON values."""
    out: dict[str, Any] = {"version": FINGERPRINT_VERSION}
    for key, value in asdict(config).items():
        if key not in CHANGEABLE_ON_RESUME:
            out[f"config.{key}"] = value
    out["tasks"] = [t.name for t in tasks]
    for t in tasks:
        prefix = f"task {t.name}"
        out.update({f"{prefix}.kind": t.kind, f"{prefix}.num_outputs": t.num_outputs,
                    f"{prefix}.input_shape": list(t.input_shape), f"{prefix}.note": t.note,
                    f"{prefix}.input_group": t.input_group})
        for name in ("train", "val", "test"):
            out.update(_split(f"{prefix}.{name}", getattr(t, name)))
    out["model.class"] = f"{type(model).__module__}.{type(model).__qualname__}"
    for name, value in model.state_dict().items():
        out[f"model.{name}"] = list(value.shape) if torch.is_tensor(value) else repr(value)
    return json.loads(json.dumps(out))  # plain JSON values, as read back from the file


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fingerprint_diff(old: dict, new: dict, limit: int = 8) -> list[str]:
    """``key: old -> new`` for every key that differs (``(none)`` where one side lacks it),
    at most ``limit`` lines and a count of the rest."""
    keys = list(dict.fromkeys([*old, *new]))
    lines = [f"{k}: {_show(old[k]) if k in old else '(none)'} -> "
             f"{_show(new[k]) if k in new else '(none)'}"
             for k in keys if old.get(k, _MISSING) != new.get(k, _MISSING)]
    if len(lines) > limit:
        lines = lines[:limit] + [f"and {len(lines) - limit} more"]
    return lines


_MISSING = object()
