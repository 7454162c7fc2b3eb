"""The soft ordering paper's image experiments (Meyerson & Miikkulainen, ICLR 2018).

* ``omniglot-ordering`` -- Sec. 4.3, App. A.3, Fig. 6a: the 50 Omniglot alphabets as tasks,
  a core of four conv 3x3 (53 filters) + ReLU + 2x2 max-pool layers, swept over the number
  of tasks trained jointly.
* ``celeba`` -- Sec. 4.4, App. A.4: the 40 CelebA attributes as binary tasks on an ImageNet
  ResNet-50 shared by all tasks, a core of four dense ReLU layers of 256.

Neither data set ships with flexmtl (``flexmtl data`` says where to put them), and both
expect a GPU. The full protocols, each one command::

    flexmtl run omniglot-ordering --device cuda              # Fig. 6a: 10..50 tasks
    flexmtl run omniglot-ordering --device cuda --no-sweep test_fraction=0.1   # Fig. 6b
    flexmtl run celeba --device cuda --methods parallel,soft  # Sec. 4.4 (the default)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from flexmtl.data.celeba import SPLITS, CelebAImages, load_celeba_index
from flexmtl.data.omniglot import OMNIGLOT_ALPHABET_ORDER, load_omniglot
from flexmtl.errors import ConfigError
from flexmtl.experiments.base import Experiment, register_experiment, train_defaults
from flexmtl.experiments.soft_ordering import PAPER_SCALE_LR, dense_blocks
from flexmtl.models import MultiTaskModel, make_decoder
from flexmtl.sharing import make_core, method_options
from flexmtl.tasks import Task
from flexmtl.vision import FEATURES as RESNET_FEATURES
from flexmtl.vision import (
    ChannelPad,
    ImageNetNormalize,
    ResNet50Features,
    load_imagenet_weights,
)


class SharedEncoderModel(MultiTaskModel):
    """A :class:`MultiTaskModel` with ONE encoder for all tasks (Sec. 4.4: "E_i is shared
    across all tasks"), held once in the state dict and run once per distinct batch in
    :meth:`forward_tasks`: tasks that share a batch (the 40 CelebA attributes, App. A: "the
    inputs of the samples in each batch are the same across tasks") run the ResNet once,
    not once per task."""

    def __init__(self, core, encoder: nn.Module, decoders: Sequence[nn.Module],
                 task_names: Sequence[str] | None = None):
        super().__init__(core, [encoder] * core.num_tasks, decoders, task_names)
        del self.encoders  # the same module T times: registered once, as ``encoder``
        self.encoder = encoder
        # a plain list on purpose (not registered T times); MultiTaskModel only indexes it
        self.encoders = [encoder] * core.num_tasks  # type: ignore[assignment]
        self._encoded: dict[int, torch.Tensor] | None = None

    def forward_tasks(self, xs: Sequence[torch.Tensor], tasks: Sequence[int]
                      ) -> list[torch.Tensor]:
        self._encoded = {}  # for this call only: the xs stay alive, so their ids are unique
        try:
            return super().forward_tasks(xs, tasks)
        finally:
            self._encoded = None

    def _encode(self, x: torch.Tensor, task: int) -> torch.Tensor:
        if self._encoded is None:
            return super()._encode(x, task)
        if id(x) not in self._encoded:
            self._encoded[id(x)] = super()._encode(x, task)
        return self._encoded[id(x)]


# ---------------------------------------------------------------------- Omniglot


def _omniglot_tasks(cfg: dict, seed: int) -> list[Task]:
    if not 1 <= cfg["num_tasks"] <= len(OMNIGLOT_ALPHABET_ORDER):
        raise ConfigError(f"num_tasks must be in 1..50, got {cfg['num_tasks']}")
    names = cfg["alphabets"] or OMNIGLOT_ALPHABET_ORDER[: cfg["num_tasks"]]
    test, val = cfg["test_fraction"], cfg["val_fraction"]
    if not (0 < test < 1 and 0 <= val < 1 and test + val < 1):
        raise ConfigError(f"test_fraction ({test}) and val_fraction ({val}) must be fractions "
                          "summing to less than 1, test_fraction > 0")
    # the split is fixed across trials (seed 0), like the fixed order of the alphabets (A.3)
    loaded = load_omniglot(alphabets=names, split=(1 - test - val, val, test), seed=0,
                           size=cfg["image_size"])
    return [Task(t.alphabet, "multiclass", (t.train_x, t.train_y),
                 (t.val_x, t.val_y) if val else None, (t.test_x, t.test_y),
                 num_outputs=t.num_classes, note=t.source)
            for t in loaded]


def omniglot_blocks(channels: int, layers: int, padding: int) -> list[nn.Module]:
    """A.3: conv 3x3 with ``channels`` filters, ReLU, 2x2 max-pool (each halves the image)."""
    return [nn.Sequential(nn.Conv2d(channels, channels, 3, padding=padding), nn.ReLU(),
                          nn.MaxPool2d(2))
            for _ in range(layers)]


def _omniglot_model(method: str, tasks: list[Task], cfg: dict, seed: int) -> nn.Module:
    """E_i = the image zero-padded along the channels (A.3); the core; dense softmax heads."""
    c, size = cfg["channels"], cfg["image_size"]
    padding = {"valid": 0, "same": 1}.get(cfg["padding"])
    if padding is None:
        raise ConfigError(f"padding must be 'valid' or 'same', got {cfg['padding']!r}")
    core = make_core(method, omniglot_blocks(c, cfg["layers"], padding), len(tasks), seed=seed,
                     feature_shape=(c, size, size), **method_options(method, cfg))
    pad = ChannelPad(c)
    decoders = [make_decoder("softmax", core.output_shape, t.num_outputs) for t in tasks]
    return MultiTaskModel(core, [pad] * len(tasks), decoders, [t.name for t in tasks])


register_experiment(Experiment(
    name="omniglot-ordering",
    summary="Omniglot alphabets as tasks, 4 conv+max-pool core layers ordered four ways (needs "
            "the data and a GPU)",
    paper="soft ordering Sec. 4.3, Fig. 6",
    defaults={
        **train_defaults(steps=5000, batch_size=16, lr=1e-3, eval_every=250, eval_batch_size=256),
        "num_tasks": 50, "alphabets": (), "test_fraction": 0.2, "val_fraction": 0.1,
        "image_size": 105, "channels": 53, "layers": 4, "padding": "valid", "depth": 0,
        "dropout": 0.5, "gate": "softmax", **PAPER_SCALE_LR,
    },
    build_tasks=_omniglot_tasks,
    build_model=_omniglot_model,
    sweep=("num_tasks", (10, 20, 30, 40, 50)),
    data=("omniglot",),
    notes=("data: images_background.zip and images_evaluation.zip of the Omniglot repository "
           "(brendenlake/omniglot, python/), unzipped into <data root>/omniglot (`flexmtl data` "
           "shows where); a GPU is expected (--device cuda)",
           "tasks: the first num_tasks alphabets of the fixed order of the multi-task Omniglot "
           "literature (flexmtl.data.OMNIGLOT_ALPHABET_ORDER); Fig. 6a: the default sweep "
           "over 10..50 tasks (the text names no points); Fig. 6b: all 50 tasks with "
           "test_fraction 0.1 or 0.2",
           "split per character, fixed across seeds: test_fraction of each character's "
           "drawings for testing (the paper: 10% or 20%), val_fraction for validation "
           "(flexmtl's choice, the paper names none), the rest for training",
           "inputs: 105x105 in [0, 1], strokes 1 (the paper writes 101x101), zero-padded "
           "along the channels to 53 by the encoder; conv padding 'valid' (Keras' default; "
           "the paper does not say): 105 -> 51 -> 24 -> 11 -> 4",
           "batch size and steps are not in the paper (16 per task per step, 5000 steps here); "
           "Adam defaults, one summed update per step (App. A)"),
))


# ---------------------------------------------------------------------- CelebA


def _celeba_tasks(cfg: dict, seed: int) -> list[Task]:
    index = load_celeba_index()
    images = {split: CelebAImages(index.split(split)[0], cfg["image_size"],
                                  cfg["loader_threads"])
              for split in SPLITS}
    attrs = {split: index.split(split)[1] for split in SPLITS}
    return [Task(name, "binary", (images["train"], attrs["train"][:, j]),
                 (images["val"], attrs["val"][:, j]), (images["test"], attrs["test"][:, j]),
                 note=index.source, input_group="celeba")
            for j, name in enumerate(index.attribute_names)]


def resnet50_encoder(width: int, pretrained: bool, weights: str = "") -> nn.Module:
    """Sec. 4.4: ImageNet normalisation, ResNet-50 truncated at the average pooling, then a
    linear projection to ``width``."""
    resnet = ResNet50Features()
    if pretrained:
        load_imagenet_weights(resnet, weights or None)
    return nn.Sequential(ImageNetNormalize(), resnet, nn.Linear(RESNET_FEATURES, width))


def _celeba_model(method: str, tasks: list[Task], cfg: dict, seed: int) -> nn.Module:
    width = cfg["width"]
    core = make_core(method, dense_blocks(width, cfg["layers"]), len(tasks), seed=seed,
                     **method_options(method, cfg))
    encoder = resnet50_encoder(width, cfg["pretrained"], cfg["pretrained_weights"])
    decoders = [make_decoder("sigmoid", core.output_shape, 1) for _ in tasks]
    return SharedEncoderModel(core, encoder, decoders, [t.name for t in tasks])


register_experiment(Experiment(
    name="celeba",
    summary="40 CelebA attributes on a shared ImageNet ResNet-50, 4 dense core layers (needs "
            "the data, the ImageNet weights and a GPU)",
    paper="soft ordering Sec. 4.4, App. A.4",
    defaults={
        **train_defaults(steps=0, epochs=20.0, batch_size=32, lr=1e-3, eval_every=2500,
                         eval_batch_size=256, finetune_optimizer="rmsprop", finetune_lr=1e-5,
                         finetune_patience=4),
        "image_size": 224, "pretrained": True, "pretrained_weights": "", "loader_threads": 8,
        "width": 256, "layers": 4, "depth": 0, "dropout": 0.5, "gate": "softmax", **PAPER_SCALE_LR,
    },
    build_tasks=_celeba_tasks,
    build_model=_celeba_model,
    default_methods=("parallel", "soft"),
    data=("celeba",),
    notes=("data: img_align_celeba.zip, list_attr_celeba.txt and list_eval_partition.txt of "
           "CelebA in <data root>/celeba (`flexmtl data` shows where); the ImageNet weights of "
           "ResNet-50: torchvision's IMAGENET1K_V1 file resnet50-0676ba61.pth in torch's hub "
           "cache (or pretrained_weights=PATH); a GPU is expected (--device cuda)",
           "the official partition (about 160k / 20k / 20k); each step one batch of 32 images "
           "shared by all 40 tasks (App. A), the ResNet run once per batch",
           "images resized to image_size x image_size (224, aspect not kept, as Keras' resize "
           "in the paper), scaled to [0, 1] and normalised with the ImageNet mean and std of "
           "the torchvision weights (the paper used Keras' weights and preprocessing)",
           "optimiser (A.4): Adam (lr 1e-3) until the summed validation loss has not improved "
           "for finetune_patience evaluations, then RMSProp lr 1e-5 from the current weights "
           "to the end; the paper gives no epochs (20 here) and compares parallel and soft "
           "ordering (test accuracy 89.79 vs 91.21)"),
))


__all__ = ["SharedEncoderModel", "omniglot_blocks", "resnet50_encoder"]
