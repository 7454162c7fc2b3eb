"""Components for routed layers (Maziarz et al., Sec. V and appendix B, C).

Conv components are channel preserving; convolutions and pooling use "same"-style
padding, so only ``stride`` (applied on the LAST op of a component) changes the spatial
size. Each convolution inside a component is followed by GroupNorm + ReLU, and
:func:`post_layer_norm` gives the GroupNorm + ReLU that follows each routed layer.
GroupNorm uses 4 groups by default, as the authors' code does for Omniglot and clusters.
"""

from __future__ import annotations

from torch import nn

from flexmtl.errors import ConfigError

__all__ = [
    "default_groups",
    "post_layer_norm",
    "dense_block",
    "single_conv",
    "conv_gn_block",
    "conv_block",
    "factorized_conv_block",
    "max_pool_block",
    "avg_pool_block",
    "identity_block",
    "omniglot_components",
    "cluster_components",
    "strided_layers",
]


def default_groups(channels: int, max_groups: int = 4) -> int:
    """The largest number of GroupNorm groups ``<= max_groups`` that divides ``channels``."""
    return max(g for g in range(1, max_groups + 1) if channels % g == 0)


def _conv_gn_relu(
    channels: int, kernel_size: tuple[int, int], stride: int, groups: int | None
) -> list[nn.Module]:
    kh, kw = kernel_size
    if kh % 2 == 0 or kw % 2 == 0:
        raise ConfigError(f"'same' padding needs odd kernel sizes, got {kh}x{kw}")
    return [
        nn.Conv2d(channels, channels, (kh, kw), stride=stride, padding=(kh // 2, kw // 2)),
        nn.GroupNorm(groups or default_groups(channels), channels),
        nn.ReLU(),
    ]


def post_layer_norm(channels: int, groups: int | None = None) -> nn.Sequential:
    """GroupNorm + ReLU applied after each routed layer (Sec. V-B)."""
    return nn.Sequential(nn.GroupNorm(groups or default_groups(channels), channels), nn.ReLU())


def dense_block(in_features: int, out_features: int) -> nn.Sequential:
    """Linear + ReLU."""
    return nn.Sequential(nn.Linear(in_features, out_features), nn.ReLU())


def single_conv(
    in_channels: int, out_channels: int, kernel_size: int, padding: int = 0
) -> nn.Sequential:
    """Conv + ReLU, no padding by default (the 4-MNISTs network, appendix B)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)
    return nn.Sequential(conv, nn.ReLU())


def conv_gn_block(
    channels: int, kernel_size: int = 3, stride: int = 1, groups: int | None = None
) -> nn.Sequential:
    """conv kxk(stride) -> GN -> ReLU (the clusters network, Sec. V-C)."""
    return nn.Sequential(*_conv_gn_relu(channels, (kernel_size, kernel_size), stride, groups))


def conv_block(
    channels: int, kernel_size: int = 3, stride: int = 1, groups: int | None = None
) -> nn.Sequential:
    """conv kxk -> GN -> ReLU -> conv kxk(stride) -> GN -> ReLU (Omniglot, Fig. 4)."""
    k = (kernel_size, kernel_size)
    return nn.Sequential(
        *_conv_gn_relu(channels, k, 1, groups), *_conv_gn_relu(channels, k, stride, groups)
    )


def factorized_conv_block(
    channels: int, kernel_size: int = 7, stride: int = 1, groups: int | None = None
) -> nn.Sequential:
    """conv 1xk -> GN -> ReLU -> conv kx1(stride) -> GN -> ReLU (Omniglot, Fig. 4)."""
    return nn.Sequential(
        *_conv_gn_relu(channels, (1, kernel_size), 1, groups),
        *_conv_gn_relu(channels, (kernel_size, 1), stride, groups),
    )


def max_pool_block(channels: int, stride: int = 1) -> nn.MaxPool2d:
    """3x3 max pooling, padding 1 (``channels`` only keeps the factory signature uniform)."""
    return nn.MaxPool2d(3, stride=stride, padding=1)


def avg_pool_block(channels: int, stride: int = 1) -> nn.AvgPool2d:
    """3x3 average pooling, padding 1; padded cells are not counted (TF "same" pooling)."""
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


def identity_block(channels: int, stride: int = 1) -> nn.Module:
    """Identity; with a stride, a strided 1x1 conv (no norm), as in appendix C1."""
    if stride == 1:
        return nn.Identity()
    return nn.Conv2d(channels, channels, 1, stride=stride)


def omniglot_components(
    channels: int = 48, stride: int = 1, groups: int | None = None
) -> list[nn.Module]:
    """The 7 components of an Omniglot layer (Sec. V-B, Fig. 4), in the paper's order.

    conv3x3->conv3x3, conv5x5->conv5x5, conv7x7->conv7x7, conv1x7->conv7x1, max-pool 3x3,
    avg-pool 3x3, identity.
    """
    return [
        conv_block(channels, 3, stride, groups),
        conv_block(channels, 5, stride, groups),
        conv_block(channels, 7, stride, groups),
        factorized_conv_block(channels, 7, stride, groups),
        max_pool_block(channels, stride),
        avg_pool_block(channels, stride),
        identity_block(channels, stride),
    ]


def cluster_components(
    channels: int = 8, stride: int = 2, groups: int | None = None
) -> list[nn.Module]:
    """The 16 components of a clusters layer (Sec. V-C): 8 conv3x3 then 8 conv5x5 (+GN+ReLU)."""
    return [conv_gn_block(channels, k, stride, groups) for k in (3, 5) for _ in range(8)]


def strided_layers(num_layers: int = 8, num_downsamples: int = 5) -> list[int]:
    """Indices of the routed layers that get stride 2, spread evenly as in the authors' code.

    Omniglot (8 layers, 5 downsamples): ``[0, 1, 3, 4, 6]``; clusters (3, 3): all layers.
    """
    if not 0 <= num_downsamples <= num_layers:
        raise ConfigError(
            f"need 0 <= num_downsamples <= num_layers, got {num_downsamples} and {num_layers}"
        )
    return [int(num_layers / num_downsamples * i) for i in range(num_downsamples)]
