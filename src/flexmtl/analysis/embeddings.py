"""Task embeddings of learned allocation (Gumbel-Matrix Sec. III-E, V-C): which tasks use
the same components (:meth:`flexmtl.sharing.RoutedCore.embeddings` gives the embeddings)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from flexmtl.errors import ConfigError, ShapeError

__all__ = ["cosine_similarity", "group_tasks"]


def cosine_similarity(embeddings: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarity ``[T, T]`` of task embeddings (Sec. V-C, Fig. 6).

    Two all-zero embeddings (tasks that use no component) count as identical (1), an
    all-zero and a non-zero one as orthogonal (0).
    """
    if embeddings.dim() != 2:
        raise ShapeError(f"embeddings must be [tasks, components], got {tuple(embeddings.shape)}")
    e = embeddings if embeddings.is_floating_point() else embeddings.float()
    norms = e.norm(dim=1)
    sim = (e @ e.T) / (norms[:, None] * norms[None, :]).clamp_min(torch.finfo(e.dtype).tiny)
    zero = norms == 0
    return sim.masked_fill(zero[:, None] & zero[None, :], 1.0)


def group_tasks(
    embeddings: torch.Tensor, names: Sequence[str], threshold: float = 1.0
) -> list[list[str]]:
    """Groups of tasks linked by cosine similarity ``>= threshold`` (Sec. III-E).

    With the default threshold 1 the groups are the tasks with identical embeddings, which
    the network processes identically up to their heads. For lower thresholds a group is a
    connected component of the "similar" relation. Groups are ordered by their first task,
    tasks within a group by index.
    """
    if len(names) != embeddings.shape[0]:
        raise ConfigError(f"got {len(names)} names for {embeddings.shape[0]} task embeddings")
    if not -1.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must be in [-1, 1], got {threshold}")
    similar = (cosine_similarity(embeddings.double()) >= threshold - 1e-9).tolist()
    groups: list[list[str]] = []
    seen: set[int] = set()
    for first in range(len(names)):
        if first in seen:
            continue
        members, frontier = [], [first]
        seen.add(first)
        while frontier:
            i = frontier.pop()
            members.append(i)
            for j, linked in enumerate(similar[i]):
                if linked and j not in seen:
                    seen.add(j)
                    frontier.append(j)
        groups.append([names[i] for i in sorted(members)])
    return groups
