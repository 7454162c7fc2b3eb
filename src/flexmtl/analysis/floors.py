"""Reference floors: what trivial models score on the same splits as a study's runs.

:func:`reference_floors` gives, per classification task, the test accuracy of

* ``majority`` -- always predicting the train split's most common class;
* ``logistic`` -- scikit-learn's ``LogisticRegression`` fit on the train split (inputs
  flattened; at most :data:`MAX_TRAIN` training examples, a fixed-seed subsample beyond;
  ``random_state`` fixed), imported only when called (``pip install 'flexmtl[data]'``).

Accuracy is measured on the test split, or the validation split of a task without one;
regression tasks are skipped. Inputs read from files (:class:`~flexmtl.tasks.LazyInputs`)
are read in batches, at most :data:`MAX_LAZY` examples per split (a fixed-seed subsample
beyond, said in ``note``; tasks sharing the inputs read them once). Binary targets (also
soft ones, probabilities) count as class 1 when at least 0.5; examples whose target is not
finite (a missing label) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from flexmtl.tasks import LazyInputs, Split, Task

__all__ = ["reference_floors", "MAX_TRAIN", "MAX_LAZY", "SEED", "MAX_ITER", "mean_over_tasks"]

#: training examples the logistic regression is fit on, at most (a fixed-seed subsample)
MAX_TRAIN = 20000
#: examples read from a split of lazy inputs, at most (tasks sharing inputs read them once)
MAX_LAZY = 5000
SEED = 0
MAX_ITER = 1000
_BATCH = 1024


def _subsample(n: int, limit: int, salt: int) -> np.ndarray | None:
    """Sorted indices of a fixed-seed subsample of ``limit`` of ``n`` examples, or None when
    all are kept."""
    if n <= limit:
        return None
    rng = np.random.default_rng(SEED + salt)
    return np.sort(rng.choice(n, size=limit, replace=False))


def _inputs(x: torch.Tensor | LazyInputs, index: np.ndarray | None,
            cache: dict | None = None) -> np.ndarray:
    if isinstance(x, LazyInputs):
        key = (id(x), None if index is None else index.tobytes())
        if cache is not None and key in cache:
            return cache[key][1]
        out = _read_lazy(x, index)
        if cache is not None:
            cache[key] = (x, out)  # x kept alive: its id stays its own
        return out
    data = x.detach().cpu()
    if index is not None:
        data = data[torch.from_numpy(index)]
    return data.reshape(len(data), -1).double().numpy()


def _read_lazy(x: LazyInputs, index: np.ndarray | None) -> np.ndarray:
    """The examples ``index`` (None: all) of lazy inputs, read in batches, flattened."""
    idx = np.arange(len(x)) if index is None else index
    parts = [x.read(idx[i:i + _BATCH]).detach().cpu().float()
             for i in range(0, len(idx), _BATCH)]
    data = torch.cat(parts) if parts else torch.empty((0, *x.shape[1:]))
    return data.reshape(len(data), -1).numpy()


def _classes(task: Task, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Class labels (int64) and the mask of examples with a label."""
    y = y.detach().cpu()
    if task.kind == "binary":
        y = y.reshape(len(y), -1)[:, 0].double()
        keep = torch.isfinite(y)
        return (y >= 0.5).long().numpy(), keep.numpy()
    return y.long().reshape(-1).numpy(), np.ones(len(y), dtype=bool)


def _split_data(task: Task, split: Split, limit: int | None, salt: int, cache: dict
                ) -> tuple[np.ndarray, np.ndarray, str]:
    n = len(split.y)
    index = _subsample(n, limit, salt) if limit is not None else None
    note = "" if index is None else f"{len(index)} of {n} examples"
    x = _inputs(split.x, index, cache)
    y, keep = _classes(task, split.y if index is None else split.y[torch.from_numpy(index)])
    return x[keep], y[keep], note


def _task_floors(task: Task, lazy_limit: int, cache: dict) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    evaluation = task.test if task.test is not None else task.val
    if evaluation is None:
        return {"skipped": "no test or validation split"}
    lazy = isinstance(task.train.x, LazyInputs)
    x_tr, y_tr, train_note = _split_data(task, task.train, lazy_limit if lazy else None, 0,
                                         cache)
    if len(y_tr) > MAX_TRAIN:
        keep = _subsample(len(y_tr), MAX_TRAIN, 0)
        train_note = f"{MAX_TRAIN} of {len(y_tr)} examples"
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    eval_lazy = isinstance(evaluation.x, LazyInputs)
    x_ev, y_ev, eval_note = _split_data(task, evaluation, lazy_limit if eval_lazy else None,
                                        1, cache)
    if len(y_tr) == 0 or len(y_ev) == 0:
        return {"skipped": "no labelled examples"}
    values, counts = np.unique(y_tr, return_counts=True)
    majority = values[np.argmax(counts)]  # the smallest of the most common classes
    out: dict[str, Any] = {
        "majority": float(np.mean(y_ev == majority)),
        "split": "test" if task.test is not None else "val",
        "train_examples": int(len(y_tr)), "eval_examples": int(len(y_ev)),
    }
    if len(values) < 2:  # one class only: logistic regression cannot be fit; it predicts it
        out["logistic"] = out["majority"]
    else:
        model = LogisticRegression(max_iter=MAX_ITER, random_state=SEED)
        with np.errstate(all="ignore"):
            model.fit(x_tr, y_tr)
            out["logistic"] = float(np.mean(model.predict(x_ev) == y_ev))
    notes = [f"train subsampled to {train_note}" if train_note else "",
             f"evaluation subsampled to {eval_note}" if eval_note else ""]
    if any(notes):
        out["note"] = "; ".join(n for n in notes if n)
    return out


def reference_floors(tasks: Sequence[Task], lazy_limit: int = MAX_LAZY) -> dict[str, dict]:
    """``{task name: {"majority": accuracy, "logistic": accuracy, "split": "test"|"val",
    "train_examples", "eval_examples"[, "note"]}}`` for every classification task of
    ``tasks`` (regression tasks are left out; a task that cannot be scored gets
    ``{"skipped": why}``). See the module docstring for the protocol."""
    out = {}
    cache: dict = {}  # lazy inputs read once for the tasks that share them
    for task in tasks:
        if task.kind == "regression":
            continue
        out[task.name] = _task_floors(task, lazy_limit, cache)
    return out


def mean_over_tasks(floors: dict[str, dict], key: str) -> float:
    """The mean of ``key`` (``majority`` or ``logistic``) over the scored tasks (NaN if none)."""
    values = [f[key] for f in floors.values() if key in f]
    return float(np.mean(values)) if values else math.nan
