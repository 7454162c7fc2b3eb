"""Experiments of the Gumbel-Matrix paper (Maziarz et al., learned parameter allocation).

* ``synthetic-transfer`` -- Sec. II, Fig. 1: positive and negative transfer, rho in {0, 1}.
* ``synthetic-pairs`` -- appendix A3, Fig. 7: two pairs of related tasks, no task heads.
* ``four-mnists`` -- Sec. V-A, Table I: MNIST, a copy, MNIST rotated 90 degrees, a copy.
* ``clusters`` -- Sec. V-C, Figs. 5-6: leave-one-class-out task clusters; do the learned task
  embeddings recover them?
* ``omniglot`` -- Sec. V-B, Table II: 20 alphabets, 8 routed layers x 7 components.

Methods: ``gumbel`` (learned allocation), ``gumbel-budget`` (with the budget penalty),
``shared-bottom`` (every task uses every component, outputs summed) and ``no-sharing``
(task i uses component i only), as the experiment allows. All use the authors' schedule:
one batch and one optimiser step per task, tasks shuffled every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flexmtl.analysis.embeddings import cosine_similarity
from flexmtl.data import load_fashion_mnist, load_mnist
from flexmtl.data.augment import RandomCrop
from flexmtl.data.synthetic import orthonormal_vectors, related_weights, synthetic_tasks
from flexmtl.errors import ConfigError
from flexmtl.experiments.base import Experiment, register_experiment, train_defaults
from flexmtl.experiments.soft_ordering import split_indices
from flexmtl.models import MultiTaskModel, build_model, make_decoder
from flexmtl.sharing import ALLOCATION_DEFAULTS, RoutedCore, find_cores, make_core, method_options
from flexmtl.sharing.components import (
    cluster_components,
    omniglot_components,
    post_layer_norm,
    single_conv,
    strided_layers,
)
from flexmtl.tasks import Task


def allocation_core(method: str, layers: Sequence[nn.Module | Sequence[nn.Module]],
                    num_tasks: int, feature_shape: Sequence[int], cfg: dict, **options):
    """The core of allocation ``method`` over ``layers`` (a list of modules: a routed layer
    of those components), with the method's options from the experiment config."""
    return make_core(method, layers, num_tasks, feature_shape=feature_shape,
                     **method_options(method, cfg), **options)


def routed_core_of(model: nn.Module) -> RoutedCore:
    """The routed core of a model these experiments built (one sharing core, kind
    ``"allocation"``)."""
    cores = find_cores(model)
    if len(cores) != 1 or cores[0].kind != RoutedCore.kind:
        raise ConfigError(f"expected one routed core, found {[type(c).__name__ for c in cores]}")
    return cast(RoutedCore, cores[0])  # the kind names the class's contract


def allocation_analysis(model: nn.Module, tasks: list[Task], cfg: dict) -> dict[str, float]:
    """Active connections in % (Table I) and the number of distinct task embeddings."""
    core = routed_core_of(model)
    emb = core.embeddings()
    return {"active_connections": 100.0 * core.active_connections(),
            "distinct_embeddings": float(len({tuple(e.tolist()) for e in emb}))}


ALLOCATION_TRAINING = dict(schedule="round-robin", select_on="val_accuracy", threads=1)
#: the allocation methods' config keys and defaults (:data:`flexmtl.sharing.ALLOCATION_DEFAULTS`:
#: tau(step) = max(tau_min, tau_scale / sqrt(step + 1)), step counting per-task batches)
ALLOCATION_KEYS = dict(ALLOCATION_DEFAULTS)


# ---------------------------------------------------------------------- synthetic data


def _regression_tasks(x: np.ndarray, ys: list[np.ndarray], names: list[str], cfg: dict,
                      note: str) -> list[Task]:
    n_val, n_test = cfg["n_val"], cfg["n_test"]
    n_train = len(x) - n_val - n_test
    tr, va, te = np.split(np.arange(len(x)), [n_train, n_train + n_val])
    return [Task(name, "regression", (x[tr], y[tr]), (x[va], y[va]), (x[te], y[te]), note=note)
            for name, y in zip(names, ys)]


def _synthetic_size(cfg: dict) -> int:
    return cfg["n_train"] + cfg["n_val"] + cfg["n_test"]


def _transfer_tasks(cfg: dict, seed: int) -> list[Task]:
    rng = np.random.default_rng(seed)
    u = orthonormal_vectors(2, cfg["d"], rng)
    w = related_weights(u[0], u[1], cfg["rho"], cfg["c"])
    x, ys = synthetic_tasks(w, _synthetic_size(cfg), cfg["m"], cfg["noise"], seed)
    note = (f"synthetic (appendix A1): d={cfg['d']}, m={cfg['m']}, rho={cfg['rho']}, "
            f"{cfg['n_train']} train samples")
    return _regression_tasks(x, ys, ["task0", "task1"], cfg, note)


def _transfer_model(method: str, tasks: list[Task], cfg: dict, seed: int) -> nn.Module:
    """Appendix A2: 4 parallel components (two 1-layer, two 2-layer, 4 units, ReLU),
    outputs averaged, task-specific linear heads. No sharing: two components per task."""
    d, h = cfg["d"], cfg["hidden"]
    components = [nn.Sequential(nn.Linear(d, h), nn.ReLU()),
                  nn.Sequential(nn.Linear(d, h), nn.ReLU()),
                  nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU()),
                  nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())]
    # without sharing each task gets one shallow and one deep component
    pattern = {"no-sharing": {"allocation": [[1, 0, 1, 0], [0, 1, 0, 1]]}}.get(method, {})
    core = allocation_core(method, [components], 2, (d,), cfg, combine=cfg["combine"],
                           **pattern)
    return build_model(tasks, core, encoder="identity", decoder="linear")


register_experiment(Experiment(
    name="synthetic-transfer",
    summary="two synthetic regression tasks: shared bottom helps related tasks, hurts unrelated",
    paper="Gumbel-Matrix Sec. II, Fig. 1",
    defaults={
        **train_defaults(steps=3000, batch_size=64, lr=1e-3, eval_every=100,
                         schedule="round-robin", select_on="last", threads=1),
        "rho": 0.0, "d": 128, "c": 1.0, "m": 6, "noise": 0.01, "hidden": 4,
        "n_train": 8000, "n_val": 1000, "n_test": 1000, "combine": "mean", "p_init": 0.5,
        "tau_scale": 50.0, "tau_min": 0.5,
    },
    build_tasks=_transfer_tasks,
    build_model=_transfer_model,
    family="allocation",
    methods=("shared-bottom", "no-sharing", "gumbel"),
    default_methods=("shared-bottom", "no-sharing"),
    sweep=("rho", (0.0, 1.0)),
    data=("synthetic",),
    notes=("outputs of the active components are averaged (Sec. II), for shared bottom too",
           "test_loss is the sum of the two tasks' mean squared errors (the paper plots their "
           "average); learning curves are the summed validation loss"),
))


def _pairs_tasks(cfg: dict, seed: int) -> list[Task]:
    rng = np.random.default_rng(seed)
    u = orthonormal_vectors(2, cfg["d"], rng)
    # two pairs: the tasks of a pair are the same up to noise (rho = 1), the pairs unrelated
    w = cfg["c"] * np.stack([u[0], u[0], u[1], u[1]])
    x, ys = synthetic_tasks(w, _synthetic_size(cfg), cfg["m"], cfg["noise"], seed)
    note = (f"synthetic (appendix A3): pairs (a0, a1) and (b0, b1) related within, unrelated "
            f"across; d={cfg['d']}, m={cfg['m']}")
    return _regression_tasks(x, ys, ["a0", "a1", "b0", "b1"], cfg, note)


def _pairs_model(method: str, tasks: list[Task], cfg: dict, seed: int) -> nn.Module:
    """Appendix A3: one routed layer of 4 components, each "3 dense layers" of 16 ReLU units;
    no task heads. ``hidden_layers`` reads that: 2 (the default) is two ReLU layers and a
    linear output (three dense layers in all), 3 is three ReLU layers before the output."""
    d, h, depth = cfg["d"], cfg["hidden"], cfg["hidden_layers"]
    if depth < 1:
        raise ConfigError(f"hidden_layers must be >= 1, got {depth}")

    def component() -> nn.Module:
        dims = [d] + [h] * depth
        body = [m for a, b in zip(dims, dims[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
        return nn.Sequential(*body, nn.Linear(h, 1))

    components = [component() for _ in range(4)]
    core = allocation_core(method, [components], 4, (d,), cfg)
    return MultiTaskModel(core, [nn.Identity()] * 4, [nn.Identity()] * 4,
                          [t.name for t in tasks])


def _pairs_analysis(model: nn.Module, tasks: list[Task], cfg: dict) -> dict[str, float]:
    """Do related tasks share components and unrelated ones not? (appendix A3)"""
    sim = cosine_similarity(routed_core_of(model).embeddings())
    within = [float(sim[0, 1]), float(sim[2, 3])]
    across = [float(sim[i, j]) for i in (0, 1) for j in (2, 3)]
    return {"within_pair_similarity": sum(within) / 2,
            "across_pair_similarity": sum(across) / 4,
            "pairs_recovered": float(min(within) > max(across)),
            **allocation_analysis(model, tasks, cfg)}


register_experiment(Experiment(
    name="synthetic-pairs",
    summary="two pairs of related synthetic tasks, 4 components, no heads: are pairs found?",
    paper="Gumbel-Matrix appendix A3, Fig. 7",
    defaults={
        **train_defaults(steps=3000, batch_size=64, lr=0.01, sharing_lr=0.01,
                         clip_grad_norm=1.0,
                         eval_every=100, schedule="round-robin", select_on="last", threads=1),
        "d": 128, "c": 1.0, "m": 6, "noise": 0.01, "hidden": 16, "hidden_layers": 2,
        "n_train": 8000, "n_val": 1000, "n_test": 1000, **ALLOCATION_KEYS,
    },
    build_tasks=_pairs_tasks,
    build_model=_pairs_model,
    family="allocation",
    methods=("gumbel", "gumbel-budget", "no-sharing", "shared-bottom"),
    default_methods=("gumbel", "no-sharing"),
    data=("synthetic",),
    analyze=_pairs_analysis,
    notes=("pairs_recovered = 1 when both within-pair embedding similarities exceed every "
           "across-pair similarity",),
))


# ---------------------------------------------------------------------- 4-MNISTs


def _image_data(name: str, allow_subset: bool):
    if name == "mnist":
        return load_mnist(allow_subset=allow_subset)
    if name == "fashion":
        return load_fashion_mnist()
    raise ConfigError(f"dataset must be 'mnist' or 'fashion', got {name!r}")


def _as_images(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, 1, 28, 28)


def _four_mnists_tasks(cfg: dict, seed: int) -> list[Task]:
    data = _image_data(cfg["dataset"], cfg["allow_subset"])
    tr, va = split_indices(len(data.train_x), (1 - cfg["val_fraction"], cfg["val_fraction"]), 0)
    label = "MNIST" if cfg["dataset"] == "mnist" else "Fashion-MNIST"
    tasks = []
    for i, rotate in enumerate((False, False, True, True)):
        def view(x: np.ndarray) -> np.ndarray:
            images = _as_images(x)
            # rot90 with k=-1 turns each image clockwise by 90 degrees
            return np.ascontiguousarray(np.rot90(images, k=-1, axes=(2, 3)) if rotate else images)

        name = f"{'rot' if rotate else 'plain'}{i % 2}"
        tasks.append(Task(
            name, "multiclass", (view(data.train_x[tr]), data.train_y[tr]),
            (view(data.train_x[va]), data.train_y[va]), (view(data.test_x), data.test_y),
            num_outputs=10,
            note=f"{label}{' rotated 90 degrees clockwise' if rotate else ''} "
                 f"(copy {i % 2}); {data.source}",
        ))
    return tasks


def _four_mnists_model(method: str, tasks: list[Task], cfg: dict, seed: int) -> nn.Module:
    """Appendix B: 3 routed layers x 4 components (conv 5x5, avg-pool 2, conv 3x3, avg-pool
    2, conv 3x3; 4 filters, no padding), flatten, dropout 0.5 before the linear heads."""
    f, T = cfg["filters"], len(tasks)
    layers: list[nn.Module | list[nn.Module]] = [
        [single_conv(1, f, 5) for _ in range(4)],
        nn.AvgPool2d(2),
        [single_conv(f, f, 3) for _ in range(4)],
        nn.AvgPool2d(2),
        [single_conv(f, f, 3) for _ in range(4)],
        nn.Flatten(),
        nn.Dropout(cfg["dropout"]),
    ]
    core = allocation_core(method, layers, T, (1, 28, 28), cfg)
    return build_model(tasks, core, encoder="identity", decoder="softmax")


register_experiment(Experiment(
    name="four-mnists",
    summary="MNIST, a copy, MNIST rotated 90 degrees, a copy: 3 routed conv layers x 4",
    paper="Gumbel-Matrix Sec. V-A, Table I",
    defaults={
        **train_defaults(steps=0, epochs=10.0, batch_size=16, lr=0.005, sharing_lr=0.005,
                         eval_every=250, **ALLOCATION_TRAINING),
        "dataset": "mnist", "allow_subset": True, "val_fraction": 0.1, "filters": 4,
        "dropout": 0.5, **ALLOCATION_KEYS,
    },
    build_tasks=_four_mnists_tasks,
    build_model=_four_mnists_model,
    family="allocation",
    data=("mnist", "fashion-mnist"),
    analyze=allocation_analysis,
    notes=("paper Table I (30 runs, test accuracy %): no sharing 93.5 +- 5.1 (25% active), "
           "shared bottom 95.7 +- 0.5 (100%), Gumbel-Matrix 96.8 +- 0.2 (96%), budget 0.75: "
           "96.7 +- 0.3 (75%)",
           "validation: a fixed 10% of the training images; dataset=fashion runs the "
           "Fashion-MNIST variant"),
))


# ---------------------------------------------------------------------- clusters


def to_grey32(x: np.ndarray, side: int) -> np.ndarray:
    """Grey ``side x side`` images to ``[N, 1, 32, 32]`` (bilinear resize, Sec. V-C)."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(-1, 1, side, side)
    return F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False).numpy()


class GreyToRGB(nn.Module):
    """Copies a grey channel three times (the paper converts grey images to three channels;
    doing it in the encoder keeps one copy of each image in memory)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1)


def _leave_one_out_tasks(prefix: str, train: tuple, val: tuple, test: tuple, classes: int,
                         note: str, cluster: str, crop: RandomCrop, cap: int) -> list[Task]:
    """Task i: classify every class but i (Sec. V-C); labels renumbered 0..classes-2.

    ``cap`` > 0 keeps at most that many training images per task (the first ones of a fixed
    shuffle), to bound memory on small machines."""
    tasks = []
    for i in range(classes):
        def keep(split: tuple, limit: int = 0) -> tuple:
            x, y = split
            idx = np.flatnonzero(y != i)[: limit or None]
            return x[idx], y[idx] - (y[idx] > i)

        tasks.append(Task(f"{prefix}-{i}", "multiclass", keep(train, cap), keep(val), keep(test),
                          num_outputs=classes - 1, note=f"{note}; all classes but {i}",
                          info={"cluster": cluster}, augment=crop))
    return tasks


def _split_images(x: np.ndarray, y: np.ndarray, fraction: float) -> tuple[tuple, tuple]:
    tr, va = split_indices(len(x), (1 - fraction, fraction), 0)
    return (x[tr], y[tr]), (x[va], y[va])


def _cluster_tasks(cfg: dict, seed: int) -> list[Task]:
    crop = RandomCrop(32, cfg["crop_padding"])
    fraction = cfg["val_fraction"]
    tasks: list[Task] = []
    if cfg["cifar"]:
        from flexmtl.data import load_cifar100

        cifar = load_cifar100()
        for s, superclass in enumerate(cifar.coarse_names):
            fine = np.flatnonzero(cifar.fine_to_coarse == s)  # its 5 fine classes
            def select(x: np.ndarray, fine_y: np.ndarray, coarse_y: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
                mask = coarse_y == s
                return x[mask], np.searchsorted(fine, fine_y[mask])
            train, val = _split_images(*select(cifar.train_x, cifar.train_fine,
                                               cifar.train_coarse), fraction)
            test = select(cifar.test_x, cifar.test_fine, cifar.test_coarse)
            tasks.append(Task(f"cifar-{superclass}", "multiclass", train, val, test,
                              num_outputs=len(fine), note=f"CIFAR-100 superclass {superclass}: "
                              f"its fine labels; {cifar.source}", info={"cluster": "cifar"},
                              augment=crop))
    cap = cfg["max_train_per_task"]
    for name in ("mnist", "fashion"):
        data = _image_data(name, cfg["allow_subset"])
        train, val = _split_images(to_grey32(data.train_x, 28), data.train_y, fraction)
        test = (to_grey32(data.test_x, 28), data.test_y)
        label = "MNIST" if name == "mnist" else "Fashion-MNIST"
        tasks += _leave_one_out_tasks(name, train, val, test, 10, f"{label}; {data.source}",
                                      name, crop, cap)
    if not cfg["cifar"] and cfg["stand_in"]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = to_grey32(digits.data / 16.0, 8)
        (train, rest) = _split_images(x, digits.target, 0.3)
        val, test = _split_images(rest[0], rest[1], 0.5)
        tasks += _leave_one_out_tasks(
            "digits8x8", train, val, test, 10,
            "STAND-IN for the CIFAR-100 cluster (absent here): scikit-learn's 8x8 digits (UCI "
            "optical digits, 1,797 images) upscaled to 32x32", "digits8x8", crop, cap)
    return tasks


def _cluster_model(method: str, tasks: list[Task], cfg: dict, seed: int) -> nn.Module:
    """Sec. V-C: 1x1 stem conv to 8 channels, 3 routed layers x 16 components (8 conv 3x3,
    8 conv 5x5, GroupNorm, stride 2), linear heads. "We follow the setup described in
    Section V-B with respect to the use of padding, GroupNorm and ReLU": GroupNorm + ReLU
    after the stem and after every routed layer, as in the Omniglot network."""
    c, T = cfg["channels"], len(tasks)
    layers: list[nn.Module | list[nn.Module]] = [nn.Conv2d(3, c, 1), post_layer_norm(c)]
    for _ in range(cfg["layers"]):
        layers += [cluster_components(c, stride=2), post_layer_norm(c)]
    layers.append(nn.Flatten())
    core = allocation_core(method, layers, T, (3, 32, 32), cfg)
    encoders = [GreyToRGB() if t.input_shape[0] == 1 else nn.Identity() for t in tasks]
    decoders = [make_decoder("softmax", core.output_shape, t.num_outputs) for t in tasks]
    return MultiTaskModel(core, encoders, decoders, [t.name for t in tasks])


def _cluster_analysis(model: nn.Module, tasks: list[Task], cfg: dict) -> dict[str, float]:
    """How well do the task embeddings recover the clusters? (Figs. 5-6)

    ``cluster_ari``: adjusted Rand index between an average-linkage clustering of the
    embeddings (cosine distance, as many clusters as true groups) and the true groups;
    ``<group>_identical``: share of a group's tasks that have its most common embedding.
    """
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import adjusted_rand_score

    emb = routed_core_of(model).embeddings()
    truth = [t.info["cluster"] for t in tasks]
    groups = sorted(set(truth))
    distance = (1.0 - cosine_similarity(emb)).clamp(min=0).numpy()
    labels = AgglomerativeClustering(n_clusters=len(groups), metric="precomputed",
                                     linkage="average").fit_predict(distance)
    out = {"cluster_ari": float(adjusted_rand_score(truth, labels))}
    rows = [tuple(e.tolist()) for e in emb]
    for g in groups:
        members = [r for r, c in zip(rows, truth) if c == g]
        out[f"{g}_identical"] = max(members.count(r) for r in members) / len(members)
    out.update(allocation_analysis(model, tasks, cfg))
    return out


register_experiment(Experiment(
    name="clusters",
    summary="leave-one-class-out task clusters (MNIST, Fashion, CIFAR-100 or a stated "
            "stand-in): do the learned task embeddings recover them?",
    paper="Gumbel-Matrix Sec. V-C, Figs. 5-6",
    defaults={
        **train_defaults(steps=1000, batch_size=32, lr=3e-4, sharing_lr=6e-3, eval_every=100,
                         **ALLOCATION_TRAINING),
        "cifar": False, "stand_in": True, "allow_subset": True, "val_fraction": 0.1,
        "max_train_per_task": 6000, "channels": 8, "layers": 3, "crop_padding": 40,
        **ALLOCATION_KEYS, "budget": 0.5,
    },
    build_tasks=_cluster_tasks,
    build_model=_cluster_model,
    family="allocation",
    methods=("gumbel", "gumbel-budget", "shared-bottom"),
    default_methods=("gumbel-budget",),
    data=("mnist", "fashion-mnist", "cifar-100"),
    analyze=_cluster_analysis,
    notes=("the paper's run uses budget 0.5 (lambda 1): method gumbel-budget",
           "cifar=true adds the 20 CIFAR-100 superclass tasks (needs the data); offline the "
           "third cluster is a stated stand-in (stand_in=true): 8x8 digits",
           "steps is scaled down for a CPU; the paper trains much longer",
           "max_train_per_task caps each task's training images (0: all) to bound memory"),
))


# ---------------------------------------------------------------------- Omniglot


def _omniglot_tasks(cfg: dict, seed: int) -> list[Task]:
    from flexmtl.data.omniglot import load_omniglot

    alphabets = cfg["alphabets"] or None
    loaded = load_omniglot(alphabets=alphabets, size=cfg["size"])
    return [Task(t.alphabet, "multiclass", (t.train_x, t.train_y), (t.val_x, t.val_y),
                 (t.test_x, t.test_y), num_outputs=t.num_classes, note=t.source)
            for t in loaded]


def _omniglot_model(method: str, tasks: list[Task], cfg: dict, seed: int) -> nn.Module:
    """Sec. V-B: 1x1 stem conv (48 channels) + GroupNorm + ReLU; 8 routed layers x 7
    components with GroupNorm + ReLU after each, stride 2 in layers 0, 1, 3, 4, 6; flatten,
    dropout 0.5, linear heads."""
    c, T, size = cfg["channels"], len(tasks), cfg["size"]
    layers: list[nn.Module | list[nn.Module]] = [nn.Conv2d(1, c, 1), post_layer_norm(c)]
    strided = set(strided_layers(cfg["layers"], min(cfg["downsamples"], cfg["layers"])))
    for i in range(cfg["layers"]):
        layers += [omniglot_components(c, 2 if i in strided else 1), post_layer_norm(c)]
    layers += [nn.Flatten(), nn.Dropout(cfg["dropout"])]
    core = allocation_core(method, layers, T, (1, size, size), cfg)
    return build_model(tasks, core, encoder="identity", decoder="softmax")


register_experiment(Experiment(
    name="omniglot",
    summary="20 Omniglot alphabets, 8 routed conv layers x 7 components (needs the data and "
            "a GPU in practice)",
    paper="Gumbel-Matrix Sec. V-B, Table II",
    defaults={
        **train_defaults(steps=40000, batch_size=16, lr=1e-4, sharing_lr=0.0,
                         weight_decay=3e-4, eval_every=1000,
                         **{**ALLOCATION_TRAINING, "threads": 0}),
        "alphabets": (), "size": 105, "channels": 48, "layers": 8, "downsamples": 5,
        "dropout": 0.5, **ALLOCATION_KEYS, "p_init": 0.97,
    },
    build_tasks=_omniglot_tasks,
    build_model=_omniglot_model,
    family="allocation",
    methods=("gumbel", "gumbel-budget", "shared-bottom"),
    default_methods=("gumbel", "shared-bottom"),
    data=("omniglot",),
    analyze=allocation_analysis,
    notes=("paper Table II test error %: single task 39.19, soft ordering 33.41, CMTR 12.81, "
           "MoE 7.81, shared bottom 6.75 +- 0.33, Gumbel-Matrix 6.48 +- 0.28",
           "split per character 50/20/30 train/val/test; checkpoint chosen on validation "
           "accuracy; the number of steps is not given in the paper (40,000 here)"),
))


__all__ = ["allocation_core", "allocation_analysis", "routed_core_of",
           "to_grey32", "GreyToRGB"]
