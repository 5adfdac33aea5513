"""TIES-merging (Yadav et al., 2023): trim each task vector to its largest `density` fraction by
magnitude, elect each entry's sign by the total weighted mass, then average only the entries that
agree with the elected sign (disjoint mean) and add `scale` times that to the base.

Conventions follow mergekit: k = int(density * numel) entries kept, but at least one while density
is above 0 (a 64-entry norm at density 0.01 keeps its largest change); a zero total elects +; the
disjoint mean is weighted, sum(w_i d_i over agreeing i) / sum(w_i over agreeing i). `density` is one
value or one per model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ..registry import MERGE
from . import MergeOptions, PerModel, apply, per_model, task_vectors

if TYPE_CHECKING:
    import torch


class TiesOptions(MergeOptions):
    name: Literal["ties"] = Field("ties", description="TIES: trim each task vector to its largest entries, "
                                  "elect a sign per entry, average the entries that agree.")
    density: PerModel = Field(0.2, description="Share of each task vector's entries kept (one value, or one "
                              "per model).")


def keep_largest(delta: torch.Tensor, density: float) -> torch.Tensor:
    """The delta with all but its int(density * numel) largest-magnitude entries zeroed."""
    import torch
    if density >= 1:
        return delta
    keep = max(1, int(density * delta.numel())) if density > 0 else 0
    mask = torch.zeros(delta.numel(), dtype=torch.bool)
    mask[torch.topk(delta.abs().flatten(), keep).indices] = True
    return delta * mask.view(delta.shape)


def disjoint_mean(deltas: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    import torch
    weighted = torch.stack([weight * delta for weight, delta in zip(weights, deltas)])
    elected = torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0)
    # a trimmed (zero) entry has sign 0, so it never agrees and never counts in the mean
    agrees = weighted.sign() == elected
    spread = torch.tensor(weights, dtype=weighted.dtype).view(-1, *[1] * deltas[0].dim())
    divisor = (spread * agrees).sum(dim=0)
    return (weighted * agrees).sum(dim=0) / torch.where(divisor == 0, 1.0, divisor)


@MERGE.register(TiesOptions)
def ties(base: torch.Tensor, finetuned: list[torch.Tensor], weights: list[float],
         density: float | list[float] = 0.2, scale: float = 1.0) -> torch.Tensor:
    deltas = task_vectors(base, finetuned)
    trimmed = [keep_largest(delta, kept) for delta, kept in zip(deltas, per_model(density, len(deltas)))]
    return apply(base, scale * disjoint_mean(trimmed, weights))
