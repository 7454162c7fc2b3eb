"""The component library of the Gumbel-Matrix experiments (Maziarz et al., Sec. V, appendix)."""

import math

import pytest
import torch
from torch import nn

from flexmtl.errors import ConfigError
from flexmtl.sharing.components import (
    avg_pool_block,
    cluster_components,
    conv_block,
    default_groups,
    dense_block,
    factorized_conv_block,
    identity_block,
    max_pool_block,
    omniglot_components,
    post_layer_norm,
    single_conv,
    strided_layers,
)
from flexmtl.sharing.routed import RoutedCore, RoutedLayer

C = 8


def convs(module):
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("factory, count", [(omniglot_components, 7), (cluster_components, 16)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [9, 10])
def test_components_share_one_output_shape(factory, count, stride, size):
    comps = factory(C, stride)
    assert len(comps) == count
    x = torch.randn(2, C, size, size)
    side = math.ceil(size / stride)
    for comp in comps:
        assert comp(x).shape == (2, C, side, side)


def test_omniglot_components_in_paper_order():
    comps = omniglot_components(C, stride=2)
    kernels = [[c.kernel_size for c in convs(comp)] for comp in comps[:4]]
    assert kernels == [[(3, 3)] * 2, [(5, 5)] * 2, [(7, 7)] * 2, [(1, 7), (7, 1)]]
    for comp in comps[:4]:  # stride on the last op only, GroupNorm + ReLU after each conv
        assert [c.stride for c in convs(comp)] == [(1, 1), (2, 2)]
        assert [type(m) for m in comp] == [nn.Conv2d, nn.GroupNorm, nn.ReLU] * 2
    assert isinstance(comps[4], nn.MaxPool2d) and isinstance(comps[5], nn.AvgPool2d)
    assert isinstance(omniglot_components(C, stride=1)[6], nn.Identity)


def test_identity_with_stride_is_a_strided_1x1_conv():
    assert isinstance(identity_block(C, 1), nn.Identity)
    conv = identity_block(C, 2)
    assert isinstance(conv, nn.Conv2d)
    assert conv.kernel_size == (1, 1) and conv.stride == (2, 2)
    assert conv.in_channels == conv.out_channels == C


def test_cluster_components_are_single_convs():
    comps = cluster_components(C, stride=2)
    assert [convs(c)[0].kernel_size for c in comps] == [(3, 3)] * 8 + [(5, 5)] * 8
    assert all([type(m) for m in c] == [nn.Conv2d, nn.GroupNorm, nn.ReLU] for c in comps)
    assert all(convs(c)[0].stride == (2, 2) for c in comps)


def test_group_norm_groups():
    assert [default_groups(c) for c in (48, 8, 6, 5, 1)] == [4, 4, 3, 1, 1]
    assert conv_block(C)[1].num_groups == 4
    assert factorized_conv_block(C, groups=2)[1].num_groups == 2
    norm = post_layer_norm(C)
    assert isinstance(norm[0], nn.GroupNorm) and isinstance(norm[1], nn.ReLU)


def test_pooling_and_small_blocks():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert max_pool_block(1)(x)[0, 0, 0, 0] == 5.0
    # padded cells are not counted: the corner averages its 4 real neighbours
    assert avg_pool_block(1)(x)[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 4
    assert dense_block(3, 7)(torch.randn(2, 3)).shape == (2, 7)
    assert single_conv(1, 4, 5)(torch.randn(2, 1, 28, 28)).shape == (2, 4, 24, 24)
    with pytest.raises(ConfigError, match="odd"):
        conv_block(C, kernel_size=4)


def test_strided_layers_match_the_authors_schedule():
    assert strided_layers(8, 5) == [0, 1, 3, 4, 6]  # Omniglot
    assert strided_layers(3, 3) == [0, 1, 2]  # clusters
    with pytest.raises(ConfigError):
        strided_layers(3, 4)


def test_small_omniglot_core_builds_and_routes():
    tasks, layers, size = 3, 4, 21
    stem = nn.Sequential(nn.Conv2d(1, C, 1), post_layer_norm(C))
    body: list[nn.Module] = [stem]
    shape = (C, size, size)
    strided = strided_layers(layers, 2)
    for i in range(layers):
        stride = 2 if i in strided else 1
        routed = RoutedLayer(omniglot_components(C, stride), tasks, shape, p_init=0.97)
        body += [routed, post_layer_norm(C)]
        shape = routed.output_shape
    core = RoutedCore([*body, nn.Flatten(), nn.Dropout(0.5)], tasks, (1, size, size))
    assert core.output_shape == (C * 6 * 6,)
    assert core.sharing_snapshot().shape == (tasks, 7 * layers)
    core.train()
    assert core(torch.randn(2, 1, size, size), 2).shape == (2, C * 36)
