"""Image encoders of the soft-ordering image experiments (Sec. 4.3, 4.4; App. A.3, A.4).

* :class:`ResNet50Features` -- ResNet-50 (He et al., 2016) truncated at the global average
  pooling: 2048 features per image. Its parameters carry torchvision's names, so the
  ImageNet weights torchvision publishes load into it (:func:`load_imagenet_weights`)
  without torchvision itself being installed.
* :class:`ImageNetNormalize` -- ``(x - mean) / std`` with the ImageNet statistics those
  weights were trained with, for images in [0, 1].
* :class:`ChannelPad` -- zero-pads the channels of an image (the Omniglot core, App. A.3:
  a 1-channel image becomes 53 channels, the first holding the image).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from flexmtl.errors import DataNotFoundError, ShapeError

#: the file name of torchvision's ``ResNet50_Weights.IMAGENET1K_V1`` (top-1 76.1%), the
#: ImageNet weights closest to the paper's (Keras' ResNet-50 ImageNet weights)
IMAGENET_WEIGHTS_FILE = "resnet50-0676ba61.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURES = 2048


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here) -> 1x1 convolutions with a residual connection."""

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out = width * 4
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride,
                                                      bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return self.relu(h + (x if self.downsample is None else self.downsample(x)))


class ResNet50Features(nn.Module):
    """ResNet-50 up to and including the global average pooling: ``[N, 3, H, W] ->
    [N, 2048]`` (any H, W >= 32). Randomly initialised (He init, BatchNorm 1 / 0)."""

    layer1: nn.Sequential  # the four stages, set by name in __init__
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 64
        for i, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2),
                                                    (512, 3, 2)), start=1):
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(channels, width, stride if b == 0 else 1))
                channels = width * 4
            setattr(self, f"layer{i}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def imagenet_weights_path(path: str | os.PathLike[str] | None = None) -> Path:
    """``path``, or where torchvision caches its ResNet-50 ImageNet weights:
    ``<torch hub dir>/checkpoints/resnet50-0676ba61.pth`` (``$TORCH_HOME/hub``, by default
    ``~/.cache/torch/hub``)."""
    if path:
        return Path(path).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_WEIGHTS_FILE


def load_imagenet_weights(model: ResNet50Features,
                          path: str | os.PathLike[str] | None = None) -> ResNet50Features:
    """Load torchvision's ImageNet ResNet-50 weights into ``model`` (the classifier ``fc.*``
    is dropped: the model ends at the average pooling); every other tensor must match."""
    file = imagenet_weights_path(path)
    if not file.is_file():
        raise DataNotFoundError(
            f"ImageNet weights of ResNet-50 not found at {file}. They are torchvision's "
            f"ResNet50_Weights.IMAGENET1K_V1 (file {IMAGENET_WEIGHTS_FILE}); torchvision "
            "downloads them into that cache folder with: python -c \"import torchvision; "
            "torchvision.models.resnet50(weights='IMAGENET1K_V1')\" (or copy the file there "
            "from a machine that has it). Or pass pretrained_weights=PATH to a copy, or "
            "pretrained=false to start from random weights (not the paper's protocol).")
    state = torch.load(file, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ShapeError(f"{file} is not a torchvision ResNet-50 state dict: {exc}") from exc
    return model


class ImageNetNormalize(nn.Module):
    """``(x - mean) / std`` per RGB channel, for images in [0, 1]."""

    mean: torch.Tensor  # buffers
    std: torch.Tensor

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ChannelPad(nn.Module):
    """Zero-pads ``[N, C, H, W]`` to ``channels`` channels (the input in the first C)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.channels:
            raise ShapeError(f"cannot pad {x.shape[1]} channels to {self.channels}")
        return F.pad(x, (0, 0, 0, 0, 0, self.channels - x.shape[1]))

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
