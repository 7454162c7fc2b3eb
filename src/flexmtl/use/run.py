"""Load a finished run's selected model and use it: predict on new arrays, evaluate.

:func:`load_run` takes a folder that ``flexmtl run`` (or :func:`flexmtl.runner.run_experiment`)
wrote -- one training run (``[KEY=VALUE/]METHOD/seed-S``) or the whole experiment folder
with the method, seed and sweep value named -- rebuilds the experiment's tasks and model from
the folder's manifest (``config.json``), checks them against what the run trained
(``fingerprint.json``), loads the checkpoint selected on validation (``best.pt``) and returns
a :class:`LoadedRun` in evaluation mode.

A model trained with :class:`~flexmtl.training.Trainer` directly (no experiment) is loaded
into a model you build the same way: ``load_run(folder, model=my_model, tasks=my_tasks)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flexmtl.errors import (
    ConfigError,
    DataError,
    FolderMismatchError,
    ShapeError,
    UnknownNameError,
)
from flexmtl.run_folder import ExperimentFolder, TrainingRun, load_checkpoint, read_json
from flexmtl.tasks import Task

__all__ = ["LoadedRun", "load_arrays", "load_run"]


@dataclass
class LoadedRun:
    """A finished run's selected model, ready for inference.

    Attributes:
        model: the model at the checkpoint selected on validation, in evaluation mode.
        tasks: the run's tasks (their splits as the run had them), in the model's order.
        path: the training run's folder.
        experiment, method, seed: what trained it (``experiment`` is None for a model
            loaded with ``model=``).
        config: the run's configuration (the sweep value applied).
        best_step: the training step of the selected checkpoint.
    """

    model: nn.Module
    tasks: list[Task]
    path: Path
    experiment: str | None = None
    method: str | None = None
    seed: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    best_step: int | None = None

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task_index(self, task: str | int) -> int:
        """The index of ``task``, given by name or index -- the rules of
        :meth:`flexmtl.MultiTaskModel.task_index` (unknown names: a suggestion; anything but
        a name or an integer: TypeError), with the run's task names in the messages."""
        if isinstance(task, str):
            if task not in self.task_names:
                raise UnknownNameError("task of this run", task, self.task_names)
            return self.task_names.index(task)
        if isinstance(task, bool) or not isinstance(task, numbers.Integral):
            raise TypeError(f"a task is a name or an integer index, got {task!r} (this run's "
                            f"tasks: {', '.join(self.task_names)})")
        if not 0 <= int(task) < len(self.tasks):
            raise IndexError(f"task index {task} out of range for {len(self.tasks)} tasks "
                             f"({', '.join(self.task_names)})")
        return int(task)

    def default_split(self) -> str:
        """The split :meth:`evaluate` reads by default: ``"test"`` when the run has a test
        split, else ``"val"``."""
        return "test" if any(t.test is not None for t in self.tasks) else "val"

    def _inputs(self, index: int, x: Any) -> torch.Tensor:
        task = self.tasks[index]
        t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
        if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.uint8)):
            raise ShapeError(f"inputs of task {task.name!r} must be numbers, got {t.dtype}")
        t = t.to(torch.float32)
        shape = tuple(task.input_shape)
        if tuple(t.shape[1:]) != shape:
            if tuple(t.shape) == shape:  # one example without its batch dimension
                t = t.unsqueeze(0)
            else:
                raise ShapeError(f"task {task.name!r} takes inputs of shape (batch, "
                                 f"{', '.join(map(str, shape))}), got {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise DataError(f"inputs of task {task.name!r} hold NaN or infinite values")
        return t

    @torch.no_grad()
    def predict(self, task: str | int, x: Any, batch_size: int = 1024) -> np.ndarray:
        """The model's outputs for ``task`` on inputs ``x`` (an array or tensor of shape
        ``(batch, *input_shape)``, or one example): class scores (logits) of a multiclass
        task, one logit of a binary task, the values of a regression task."""
        index = self.task_index(task)
        inputs = self._inputs(index, x)
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        outs = [self.model(inputs[i:i + batch_size].to(device), index).cpu()
                for i in range(0, len(inputs), batch_size)]
        return torch.cat(outs).numpy() if outs else np.zeros((0,))

    def predict_labels(self, task: str | int, x: Any, batch_size: int = 1024) -> np.ndarray:
        """Predicted classes ``0..K-1`` of a classification task (binary: 0 or 1)."""
        index = self.task_index(task)
        kind = self.tasks[index].kind
        if kind not in ("multiclass", "binary"):
            raise ConfigError(f"task {self.tasks[index].name!r} is a {kind} task: it has no "
                              "labels to predict; use predict()")
        out = self.predict(index, x, batch_size)
        if kind == "multiclass":
            return out.argmax(axis=1)
        return (out.reshape(len(out), -1)[:, 0] > 0).astype(np.int64)

    def evaluate(self, split: str | None = None,
                 data: Mapping[str, tuple[Any, Any]] | None = None,
                 batch_size: int = 1024) -> dict:
        """Loss and accuracy per task, as training reports them.

        Without ``data``: on the run's own ``split`` (``"test"``, ``"val"`` or ``"train"``;
        default ``"test"`` when the run has a test split, else ``"val"``).
        With ``data``: ``{task name: (x, y)}`` on new arrays, for the named tasks only.
        Returns ``{"tasks": {name: {"loss", "accuracy"}}, "loss": sum over tasks,
        "accuracy": mean over classification tasks}``.
        """
        from flexmtl.training.evaluation import evaluate_tasks

        if split is None:
            split = self.default_split()
        if split not in ("train", "val", "test"):
            raise UnknownNameError("split", split, ["train", "val", "test"])
        tasks = list(self.tasks)
        indices = list(range(len(tasks)))
        if data is not None:
            if not data:
                raise ConfigError("data names no task: pass {task name: (x, y)}")
            indices = [self.task_index(name) for name in data]  # unknown names: clear error
            tasks = []
            for i in indices:
                t = self.tasks[i]
                split_data = self._new_split(i, *data[t.name])
                # a Task needs a train split: the new data stand in for it, unused here
                tasks.append(Task(t.name, t.kind, train=split_data, test=split_data,
                                  num_outputs=t.num_outputs))
            split = "test"
        elif all(getattr(t, split) is None for t in tasks):
            raise ConfigError(f"the run's tasks have no {split} split; evaluate another split "
                              "or pass new data per task")
        model = _Reindexed(self.model, indices).train(self.model.training)
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        groups = [[i] for i in range(len(tasks))]
        return evaluate_tasks(model, tasks, groups, split, batch_size, device)

    def _new_split(self, index: int, x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self._inputs(index, x)
        targets = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y)
        if len(targets) != len(inputs):
            raise ShapeError(f"task {self.tasks[index].name!r}: {len(inputs)} inputs but "
                             f"{len(targets)} targets")
        return inputs, targets

    def __repr__(self) -> str:
        what = f"{self.experiment}/{self.method} seed {self.seed}" if self.experiment else "model"
        return (f"LoadedRun({what}, tasks {', '.join(self.task_names)}, best step "
                f"{self.best_step}, {self.path})")


class _Reindexed(nn.Module):
    """``model`` with task ``k`` read as the model's task ``indices[k]``."""

    def __init__(self, model: nn.Module, indices: list[int]):
        super().__init__()
        self.inner = model
        self.indices = indices

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.inner(x, self.indices[task])


def load_run(path: str | Path, *, method: str | None = None, seed: int | None = None,
             point: str | None = None, model: nn.Module | None = None,
             tasks: Sequence[Task] | None = None, device: str | torch.device = "cpu",
             check: bool = True) -> LoadedRun:
    """The selected model of a finished run, ready for inference (:class:`LoadedRun`).

    Args:
        path: one training run's folder (``.../METHOD/seed-S``) or an experiment folder
            (then ``method``, and ``seed`` and ``point`` where there are several, say which).
        method, seed: which run of an experiment folder (``seed``: default the first).
        point: the sweep value, ``"KEY=VALUE"`` (the folder's name), for a swept experiment.
        model, tasks: load into this model instead of rebuilding the experiment's (a run
            trained with :class:`~flexmtl.training.Trainer` directly); ``tasks`` are its
            tasks (default: none known, so :meth:`LoadedRun.predict` cannot check shapes).
        device: where the model goes.
        check: compare the rebuilt tasks and model with the run's ``fingerprint.json`` and
            refuse a mismatch (:class:`~flexmtl.errors.FolderMismatchError`): e.g. the data
            behind a source changed since the run trained.
    """
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"no run folder at {folder}")
    run = _training_run(folder, method, seed, point)
    if not run.best.exists():
        raise FileNotFoundError(
            f"{run.path} has no selected model ({run.best.name}): the run has not trained "
            f"(resume it with the same `flexmtl run` command)" if not run.is_finished() else
            f"{run.path} has no {run.best.name}")
    state = load_checkpoint(run.best, "cpu")
    result = run.read_result() or {}
    if model is not None:
        known = list(tasks) if tasks is not None else []
        return _finish(model, state, known, run, device, None, result, {})
    manifest, config = _manifest_of(run)
    from flexmtl.experiments import get_experiment

    exp_name = manifest.get("experiment")
    if not exp_name:
        raise ConfigError(f"the manifest above {run.path} names no experiment")
    try:
        exp = get_experiment(str(exp_name))
    except UnknownNameError as exc:
        raise ConfigError(
            f"{run.path} was trained by experiment {exp_name!r}, which is not registered here: "
            f"import the module that registers it first ({exc})") from None
    cfg = exp.resolve_config(overrides=config)
    run_seed = int(result.get("seed", run.seed if run.seed is not None else 0))
    run_method = str(result.get("method", run.path.parent.name))
    from flexmtl.runner import build_run

    built_tasks, built = build_run(exp, run_method, run_seed, cfg)  # as the run built them
    if check:
        _check_fingerprint(run, exp, cfg, run_seed, built_tasks, built)
    return _finish(built, state, built_tasks, run, device, exp.name, result, cfg,
                   method=run_method, seed=run_seed)


def _finish(model: nn.Module, state: dict, tasks: list[Task], run: TrainingRun,
            device: str | torch.device, experiment: str | None, result: dict, cfg: dict,
            method: str | None = None, seed: int | None = None) -> LoadedRun:
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise FolderMismatchError(f"the selected model in {run.best} does not fit this model: "
                                  f"{str(exc).splitlines()[0]}") from None
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedRun(model, tasks, run.path, experiment, method, seed, cfg,
                     int(state.get("step", result.get("best_step", -1))))


def _training_run(folder: Path, method: str | None, seed: int | None,
                  point: str | None) -> TrainingRun:
    """The training run ``folder`` names, or the one of an experiment folder that ``method``,
    ``seed`` and ``point`` pick."""
    if (folder / TrainingRun.RESULT).exists() or (folder / TrainingRun.BEST).exists():
        given = [n for n, v in (("method", method), ("seed", seed), ("point", point))
                 if v is not None]
        if given:
            raise ConfigError(f"{folder} is one training run: drop {', '.join(given)}")
        return TrainingRun(folder)
    out = ExperimentFolder(folder)
    manifest = out.read_manifest()
    if manifest is None:
        raise FileNotFoundError(f"{folder} is neither a training run (no "
                                f"{TrainingRun.RESULT}) nor an experiment folder (no "
                                f"{ExperimentFolder.MANIFEST})")
    base = folder
    sweep = manifest.get("sweep")
    if sweep:
        names = [f"{sweep['key']}={v}" for v in sweep["values"]]
        if point is None:
            if len(names) > 1:
                raise ConfigError(f"{folder} sweeps {sweep['key']}: name the point, one of "
                                  f"{', '.join(names)}")
            point = names[0]
        if point not in names:
            raise UnknownNameError(f"sweep point of {folder}", point, names)
        base = folder / point
    elif point is not None:
        raise ConfigError(f"{folder} has no sweep: drop point")
    methods = list(manifest.get("methods", []))
    if method is None:
        if len(methods) != 1:
            raise ConfigError(f"{folder} holds several methods: name one of "
                              f"{', '.join(methods)}")
        method = methods[0]
    if method not in methods:
        raise UnknownNameError(f"method of {folder}", method, methods)
    seeds = list(manifest.get("seeds", []))
    if seed is None:
        seed = seeds[0] if seeds else 0
    if seed not in seeds:
        raise UnknownNameError(f"seed of {folder}", str(seed), [str(s) for s in seeds])
    return TrainingRun(base / method / f"{ExperimentFolder.SEED_PREFIX}{seed}")


def _manifest_of(run: TrainingRun) -> tuple[dict, dict]:
    """The experiment folder's manifest above ``run`` and the run's config (its sweep value
    applied)."""
    method_dir = run.path.parent
    above = method_dir.parent
    point = None
    if "=" in above.name and not (above / ExperimentFolder.MANIFEST).exists():
        point = above.name
        above = above.parent
    manifest_path = above / ExperimentFolder.MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(
            f"{run.path} is not inside an experiment folder (no {manifest_path}): a run trained "
            "with Trainer directly loads into your own model: load_run(path, model=..., "
            "tasks=...)")
    manifest = read_json(manifest_path)
    config = dict(manifest.get("config", {}))
    if point is not None:
        key, _, value = point.partition("=")
        sweep = manifest.get("sweep") or {}
        values = {str(v): v for v in sweep.get("values", [])}
        if sweep.get("key") != key or value not in values:
            raise ConfigError(f"{above.name}/{point} is not a sweep point of its manifest")
        config[key] = values[value]
    return manifest, config


def _check_fingerprint(run: TrainingRun, exp: Any, cfg: dict, seed: int, tasks: list[Task],
                       model: nn.Module) -> None:
    from flexmtl.training.fingerprint import fingerprint_diff, run_fingerprint

    old = run.read_fingerprint()
    if old is None:
        return
    new = run_fingerprint(exp.train_config(cfg, seed, False), tasks, model)
    diff = fingerprint_diff(old, new)
    if diff:
        raise FolderMismatchError(
            f"the run {run.path} trained something else than this installation rebuilds "
            f"({'; '.join(diff)}): e.g. the data behind a source changed since. Pass "
            "check=False to load it anyway")


def load_arrays(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` from a file: ``.npz`` with arrays ``x`` and ``y``, or ``.csv`` of numbers
    whose last column is the target (a first row that is not numeric is a header)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no data file at {file}")
    if file.suffix == ".npz":
        with np.load(file) as arrays:
            missing = [k for k in ("x", "y") if k not in arrays.files]
            if missing:
                raise DataError(f"{file} lacks array(s) {', '.join(missing)}: save it with "
                                "numpy.savez(path, x=inputs, y=targets)")
            return arrays["x"], arrays["y"]
    if file.suffix == ".csv":
        import csv

        with file.open(newline="") as f:
            rows = [r for r in csv.reader(f) if r]
        if rows:
            try:
                [float(v) for v in rows[0]]
            except ValueError:
                rows = rows[1:]  # a header
        try:
            table = np.array([[float(v) for v in r] for r in rows], dtype=np.float64)
        except ValueError as exc:
            raise DataError(f"{file}: every value must be a number ({exc})") from None
        if table.ndim != 2 or table.shape[1] < 2:
            raise DataError(f"{file}: need rows of inputs followed by the target, got shape "
                            f"{table.shape}")
        y = table[:, -1]
        return table[:, :-1].astype(np.float32), (y.astype(np.int64) if np.all(y == y.round())
                                                  else y.astype(np.float32))
    raise DataError(f"{file}: read .npz (arrays x, y) or .csv (inputs, then the target)")
