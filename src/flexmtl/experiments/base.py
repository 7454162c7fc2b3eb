"""Experiments registered by name, and their configuration.

An :class:`Experiment` knows its paper protocol as a flat dict of defaults, how to build
its tasks for a seed, and how to build the model of each method. Configurations are
resolved as: defaults < config file (JSON or YAML) < ``key=value`` overrides; unknown keys
are errors with close suggestions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

from torch import nn

from flexmtl.errors import ConfigError, UnknownNameError
from flexmtl.registry import Registry
from flexmtl.sharing import methods_of
from flexmtl.tasks import Task
from flexmtl.training import TrainConfig

#: keys every experiment has, passed to :class:`~flexmtl.training.TrainConfig`
TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name not in ("seed", "progress"))
#: sizes that must be >= 1 where an experiment has them (widths, layer and task counts,
#: sample counts, image sizes); every other whole-number key must be >= 0
SIZE_KEYS = ("width", "layers", "n", "m", "d", "hidden", "num_tasks", "n_train", "filters",
             "channels", "size", "image_size", "max_train_per_task")
#: keys that list names (tasks, alphabets): each name at most once
NAME_LIST_KEYS = ("tasks", "alphabets")
#: training keys that are true, false or unset (``None``, "auto": decided for each run)
OPTIONAL_BOOL_KEYS = tuple(name for name, hint in get_type_hints(TrainConfig).items()
                           if set(get_args(hint)) == {bool, type(None)})


@dataclass(frozen=True)
class Experiment:
    """A paper experiment: data, models per method, protocol defaults.

    Args:
        name: registry name (``flexmtl run NAME``).
        summary: one line for ``flexmtl list``.
        paper: the figure / section it reproduces.
        defaults: every configurable key with its default (training keys included).
        build_tasks: ``(config, seed) -> tasks``.
        build_model: ``(method, tasks, config, seed) -> model``.
        family: the family of sharing methods it runs (see
            :func:`flexmtl.sharing.methods_of`): every method registered for it, unless
            ``methods`` names a subset. ``default_methods`` run when none are named.
        sweep: a default ``(key, values)`` swept by ``flexmtl run`` (e.g. samples per task).
        data: the data sources it reads (names from ``flexmtl.data.data_status``).
        analyze: ``(model, tasks, config) -> {name: number}``, measured on the selected
            checkpoint after training (e.g. active connections); summarised over seeds.
    """

    name: str
    summary: str
    paper: str
    defaults: Mapping[str, Any]
    build_tasks: Callable[[dict, int], list[Task]]
    build_model: Callable[[str, list[Task], dict, int], nn.Module]
    family: str = "ordering"
    methods: tuple[str, ...] | None = None
    default_methods: tuple[str, ...] | None = None
    sweep: tuple[str, tuple] | None = None
    data: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    analyze: Callable[[nn.Module, list[Task], dict], dict[str, float]] | None = None

    def method_names(self) -> tuple[str, ...]:
        """The methods it runs: ``methods``, or every registered method of its family."""
        return self.methods if self.methods is not None else methods_of(self.family)

    def check_methods(self, methods: Sequence[str]) -> list[str]:
        known = self.method_names()
        for m in methods:
            if m not in known:
                raise UnknownNameError(f"method of experiment {self.name!r}", m, known)
        return list(methods)

    def resolve_config(
        self,
        config_file: str | Path | None = None,
        overrides: Mapping[str, Any] | Sequence[str] = (),
    ) -> dict:
        """Defaults, then the config file, then overrides (``{"k": v}`` or ``["k=v"]``)."""
        cfg = dict(self.defaults)
        if config_file is not None:
            cfg = self._merge(cfg, load_config_file(config_file), f"config file {config_file}")
        if not isinstance(overrides, Mapping):
            overrides = parse_overrides(overrides)
        cfg = self._merge(cfg, overrides, "override")
        check_config(cfg, self.defaults, self.name)
        return cfg

    def _merge(self, cfg: dict, updates: Mapping[str, Any], origin: str) -> dict:
        for key, value in updates.items():
            if key not in self.defaults:
                raise UnknownNameError(f"config key of experiment {self.name!r} ({origin})",
                                       key, self.defaults)
            if key in OPTIONAL_BOOL_KEYS:
                cfg[key] = optional_bool(value, key)
            else:
                cfg[key] = coerce(value, self.defaults[key], key)
        # steps and epochs are two ways to give the length: naming one drops the other
        if "steps" in updates and "epochs" not in updates and cfg["steps"] > 0:
            cfg["epochs"] = 0.0
        elif "epochs" in updates and "steps" not in updates and cfg["epochs"] > 0:
            cfg["steps"] = 0
        return cfg

    def train_config(self, cfg: Mapping[str, Any], seed: int, progress: bool) -> TrainConfig:
        return TrainConfig(**{k: cfg[k] for k in TRAIN_KEYS if k in cfg}, seed=seed,
                           progress=progress)


EXPERIMENTS: Registry[Experiment] = Registry("experiment")


def register_experiment(experiment: Experiment) -> Experiment:
    """Add an experiment (built-in or user-defined) to :data:`EXPERIMENTS`."""
    return EXPERIMENTS.register(experiment.name, experiment)


def get_experiment(name: str) -> Experiment:
    return EXPERIMENTS.get(name)


def train_defaults(**overrides: Any) -> dict:
    """Training keys with the :class:`TrainConfig` defaults, updated by ``overrides``."""
    base = TrainConfig()
    out = {k: getattr(base, k) for k in TRAIN_KEYS}
    out.update(overrides)
    return out


def load_config_file(path: str | Path) -> dict:
    """A flat mapping of config keys from a ``.json`` or ``.yaml``/``.yml`` file. A file that
    is missing, unreadable, malformed (the parser's line and column) or not a mapping raises
    :class:`ConfigError` naming it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:  # a folder, no permission
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from exc
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError("reading YAML configs needs PyYAML: pip install 'flexmtl[yaml]'"
                              ) from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}"
                              ) from exc
        data = {} if data is None else data  # an empty file
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid JSON: {exc.msg} (line "
                              f"{exc.lineno}, column {exc.colno})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, not a "
                          f"{type(data).__name__}")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"config file {path}: key {key!r} is not a name")
    return data


def _yaml_problem(exc: Exception) -> str:
    """What PyYAML found wrong, and where (1-based line and column)."""
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [repr(exc)])[0]
    mark = getattr(exc, "problem_mark", None)
    return problem + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark else "")


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        out[key.strip()] = value.strip()
    return out


def optional_bool(value: Any, key: str) -> bool | None:
    """``True``/``False``, or ``None`` for unset (``"auto"``, ``None``)."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("auto", "none", "null"):
        return None
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ConfigError(f"{key} must be auto, true or false, got {value!r}")


def coerce(value: Any, default: Any, key: str) -> Any:
    """Convert ``value`` (often a string from the command line) to the type of ``default``."""
    if default is None or not isinstance(value, str):
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{key} must be a number, got {value!r}")
            if isinstance(default, float):
                return _not_nan(float(value), key)
            return _as_int(value, key)
        return value
    try:
        if isinstance(default, bool):
            low = value.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return _not_nan(float(value), key)
        if isinstance(default, (tuple, list)):
            kind = type(default[0]) if default else str
            return tuple(kind(v) for v in value.split(",") if v)
    except ValueError:
        raise ConfigError(
            f"{key}={value!r}: expected {type(default).__name__} like {default!r}"
        ) from None
    return value


def check_config(cfg: Mapping[str, Any], defaults: Mapping[str, Any], experiment: str
                 ) -> None:
    """Ranges no type conversion catches: sizes (:data:`SIZE_KEYS`) >= 1, other whole-number
    keys >= 0 (training keys are :meth:`TrainConfig.validate`'s) and names listed once
    (:data:`NAME_LIST_KEYS`). Raises :class:`ConfigError` naming the key."""
    for key, value in cfg.items():
        default = defaults.get(key)
        if key in TRAIN_KEYS or isinstance(default, bool) or not isinstance(default, int):
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            continue  # coerce() already refused what is not a number
        low = 1 if key in SIZE_KEYS else 0
        if value < low:
            raise ConfigError(f"{key} must be >= {low} for experiment {experiment!r}, got "
                              f"{value}" + (" (a size)" if low else ""))
    for key in NAME_LIST_KEYS:
        value = cfg.get(key)
        if key in defaults and isinstance(value, (list, tuple)):
            names = [str(v) for v in value]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ConfigError(f"{key}={','.join(names)} lists {', '.join(dup)} more than "
                                  "once; give each name once")


def _not_nan(value: float, key: str) -> float:
    # NaN passes every range check (all comparisons are False), so it is refused here
    if math.isnan(value):
        raise ConfigError(f"{key} must be a number, got nan")
    return value


def _as_int(value: float, key: str) -> int:
    if float(value) != int(value):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    return int(value)
