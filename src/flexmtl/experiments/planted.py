"""Planted-structure test benches (beyond the papers): problems whose right sharing is known.

* ``planted-orders`` -- tasks computed by the same layers in task-specific orders
  (:func:`flexmtl.data.planted.planted_orders`): does soft ordering recover each task's
  order? ``blocks=given`` gives the model the true layers, frozen, so only the scales
  (and linear heads) learn; ``blocks=learned`` learns them too, and orders are matched up
  to a relabelling of the layers.
* ``planted-groups`` -- groups of tasks that share a teacher network
  (:func:`flexmtl.data.planted.planted_groups`): do Gumbel-Matrix task embeddings
  (Sec. III-E) recover the groups?
"""

from __future__ import annotations

import functools
from typing import cast

import torch
from torch import nn

from flexmtl.analysis.planted import group_recovery, order_recovery
from flexmtl.data.planted import PlantedOrders, planted_groups, planted_orders
from flexmtl.errors import ConfigError
from flexmtl.experiments.base import Experiment, register_experiment, train_defaults
from flexmtl.experiments.gumbel_matrix import (
    ALLOCATION_KEYS,
    allocation_analysis,
    allocation_core,
    routed_core_of,
)
from flexmtl.experiments.soft_ordering import dense_blocks
from flexmtl.models import MultiTaskModel, build_model
from flexmtl.sharing import SoftOrdering, find_cores, make_core, method_options
from flexmtl.tasks import Task

BLOCKS = ("given", "learned")


def _orders_data(cfg: dict) -> PlantedOrders:
    """The teacher and its tasks (one draw per configuration: the tasks and the given blocks
    read the same one)."""
    n = cfg["samples"]
    return _planted_orders(cfg["num_tasks"], cfg["layers"], cfg["width"],
                           (n, max(n // 4, 1), max(n // 4, 1)), float(cfg["noise"]),
                           float(cfg["gain"]), cfg["data_seed"])


_planted_orders = functools.lru_cache(maxsize=2)(planted_orders)


def _orders_tasks(cfg: dict, seed: int) -> list[Task]:
    if cfg["blocks"] not in BLOCKS:
        raise ConfigError(f"blocks must be one of {BLOCKS}, got {cfg['blocks']!r}")
    data = _orders_data(cfg)  # fixed across seeds (data_seed): seeds vary the model only
    note = (f"planted orders: {cfg['layers']} shared tanh layers, width {cfg['width']}, this "
            f"task's order {{order}}; noise sd {cfg['noise']} (the teacher's own mean squared "
            f"error {cfg['noise'] ** 2:g})")
    return [Task(f"order{t}", "regression", train, val, test,
                 note=note.format(order=list(order)), info={"order": list(order)})
            for t, ((train, val, test), order) in enumerate(zip(data.splits, data.orders))]


def _orders_model(method: str, tasks: list[Task], cfg: dict, seed: int) -> nn.Module:
    width, layers = cfg["width"], cfg["layers"]
    blocks = dense_blocks(width, layers, "tanh")
    encoder = nn.Linear(width, width, bias=False)  # one for all tasks, as the teacher's
    if cfg["blocks"] == "given":
        data = _orders_data(cfg)
        with torch.no_grad():
            for block, w, b in zip(blocks, data.weights, data.biases):
                linear = cast(nn.Linear, cast(nn.Sequential, block)[0])
                linear.weight.copy_(torch.from_numpy(w))
                linear.bias.copy_(torch.from_numpy(b))
            encoder.weight.copy_(torch.from_numpy(data.encoder))
        for module in (*blocks, encoder):
            module.requires_grad_(False)
    core = make_core(method, blocks, len(tasks), seed=seed, **method_options(method, cfg))
    decoders = [nn.Linear(width, 1) for _ in tasks]
    return MultiTaskModel(core, [encoder] * len(tasks), decoders, [t.name for t in tasks])


def _orders_analysis(model: nn.Module, tasks: list[Task], cfg: dict) -> dict[str, float]:
    """Order recovery of the soft-order scales (:func:`order_recovery`); none for the
    other methods."""
    cores = [c for c in find_cores(model) if isinstance(c, SoftOrdering)]
    if not cores:
        return {}
    with torch.no_grad():
        scales = cores[0].scales().cpu().numpy()
    return order_recovery(scales, [t.info["order"] for t in tasks],
                          relabel=cfg["blocks"] == "learned")


register_experiment(Experiment(
    name="planted-orders",
    summary="planted structure: tasks apply the same layers in their own orders; does soft "
            "ordering recover them?",
    paper="beyond the papers: a test bench for soft ordering (Eq. 7)",
    defaults={
        **train_defaults(steps=3000, batch_size=32, lr=1e-3, eval_every=100, threads=1),
        "num_tasks": 6, "layers": 4, "width": 16, "samples": 1000, "noise": 0.1,
        "gain": 2.0, "data_seed": 0, "blocks": "given", "dropout": 0.0, "gate": "softmax",
        "depth": 0, "scale_lr_multiplier": 0.0,
    },
    build_tasks=_orders_tasks,
    build_model=_orders_model,
    default_methods=("parallel", "permuted", "soft"),
    sweep=("blocks", BLOCKS),
    data=("synthetic",),
    analyze=_orders_analysis,
    notes=("regression tasks; the teacher (one draw, data_seed) is fixed across seeds; "
           "order_match: share of (task, depth) positions whose largest scale is on the true "
           "layer, beside its Monte-Carlo chance level (order_chance, order_chance_p95)",
           "blocks=given: the true layers and the teacher's input projection, frozen; "
           "blocks=learned: learned too, orders matched up to the best relabelling of layers"),
))


# ---------------------------------------------------------------------- planted groups


def _groups_tasks(cfg: dict, seed: int) -> list[Task]:
    data = planted_groups(cfg["num_groups"], cfg["tasks_per_group"], cfg["features"],
                          cfg["teacher_hidden"],
                          (cfg["samples"], max(cfg["samples"] // 4, 1),
                           max(cfg["samples"] // 4, 1)), cfg["noise"], cfg["data_seed"])
    note = (f"planted groups: {cfg['num_groups']} teachers (tanh networks {cfg['features']} -> "
            f"{cfg['teacher_hidden']} -> 1), {cfg['tasks_per_group']} tasks each (the teacher "
            f"plus noise sd {cfg['noise']}); this task's group {{group}}")
    x_train, x_val, x_test = data.x
    return [Task(f"g{g}t{t}", "regression", (x_train, y_train), (x_val, y_val),
                 (x_test, y_test), note=note.format(group=g), info={"group": g})
            for t, (g, (y_train, y_val, y_test)) in enumerate(zip(data.groups, data.ys))]


def _groups_model(method: str, tasks: list[Task], cfg: dict, seed: int) -> nn.Module:
    """Two routed dense layers of ``components`` components (``hidden`` ReLU units each),
    linear heads."""
    f, h, c = cfg["features"], cfg["hidden"], cfg["components"]
    layers = [[nn.Sequential(nn.Linear(f, h), nn.ReLU()) for _ in range(c)],
              [nn.Sequential(nn.Linear(h, h), nn.ReLU()) for _ in range(c)]]
    core = allocation_core(method, layers, len(tasks), (f,), cfg)
    return build_model(tasks, core, encoder="identity", decoder="linear")


def _groups_analysis(model: nn.Module, tasks: list[Task], cfg: dict) -> dict[str, float]:
    """Group recovery of the task embeddings (:func:`group_recovery`) and the allocation's
    active connections."""
    emb = routed_core_of(model).embeddings().cpu().numpy()
    return {**group_recovery(emb, [t.info["group"] for t in tasks]),
            **allocation_analysis(model, tasks, cfg)}


register_experiment(Experiment(
    name="planted-groups",
    summary="planted structure: groups of tasks share a teacher network; do Gumbel-Matrix "
            "task embeddings recover the groups?",
    paper="beyond the papers: a test bench for Gumbel-Matrix task embeddings (Sec. III-E)",
    defaults={
        **train_defaults(steps=2000, batch_size=64, lr=1e-3, eval_every=100,
                         schedule="round-robin", select_on="val_loss", threads=1),
        "num_groups": 3, "tasks_per_group": 3, "features": 16, "teacher_hidden": 32,
        "samples": 2000, "noise": 0.1, "data_seed": 0, "components": 9, "hidden": 16,
        **ALLOCATION_KEYS,
    },
    build_tasks=_groups_tasks,
    build_model=_groups_model,
    family="allocation",
    default_methods=("gumbel", "no-sharing", "shared-bottom"),
    data=("synthetic",),
    analyze=_groups_analysis,
    notes=("regression tasks sharing one input set; the teachers (one draw, data_seed) are "
           "fixed across seeds; the library's allocation defaults (logits at the tasks x model "
           "rate, the authors' round-robin schedule)",
           "group_ari: adjusted Rand index of an average-linkage clustering of the task "
           "embeddings (cosine distance) into num_groups clusters; no-sharing and "
           "shared-bottom have fixed embeddings (components >= tasks for no-sharing)"),
))
