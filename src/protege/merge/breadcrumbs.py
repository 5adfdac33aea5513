"""Model Breadcrumbs (Davari & Belilovsky, 2024): in each tensor of each task vector, drop the top
`beta` fraction of entries by magnitude (outliers) and the bottom `gamma` fraction (negligible
changes), then add what is left as task arithmetic does: base + scale * sum_i w_i masked_i.

Counts are int(beta * numel) and int(gamma * numel); when they overlap the whole tensor is dropped.
mergekit instead names the fraction kept, `density` (its `gamma` is the paper's beta): when `density`
is given, int(density * numel) entries are kept and the bottom drop is whatever remains, as mergekit
counts (deriving gamma = 1 - density - beta first would round differently). Each of beta, gamma and
density is one value or one per model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ..registry import MERGE
from . import MergeOptions, PerModel, apply, per_model, task_vectors, weighted_sum

if TYPE_CHECKING:
    import torch


class BreadcrumbsOptions(MergeOptions):
    name: Literal["breadcrumbs"] = Field("breadcrumbs", description="Model Breadcrumbs: drop each task "
                                         "vector's largest (outliers) and smallest changes, then add the rest.")
    beta: PerModel = Field(0.01, description="Share of the largest changes dropped (the paper's beta).")
    gamma: PerModel = Field(0.85, description="Share of the smallest changes dropped.")
    density: PerModel | None = Field(None, description="mergekit's way: the share kept; when set, the bottom "
                                     "drop is what remains after beta. Empty: gamma decides.")


def keep_middle(delta: torch.Tensor, beta: float, gamma: float, density: float | None = None) -> torch.Tensor:
    import torch
    count = delta.numel()
    top = int(beta * count)
    if density is None:
        bottom = int(gamma * count)
        kept = max(count - top - bottom, 0)
    else:
        kept = int(density * count)
        # as mergekit: when the outliers and the kept share overlap, fewer outliers are dropped
        bottom = max(count - kept - top, 0)
    order = torch.argsort(delta.abs().flatten())  # ascending magnitude
    mask = torch.zeros(count, dtype=torch.bool)
    mask[order[bottom:bottom + kept]] = True
    return delta * mask.view(delta.shape)


@MERGE.register(BreadcrumbsOptions)
def breadcrumbs(base: torch.Tensor, finetuned: list[torch.Tensor], weights: list[float],
                beta: float | list[float] = 0.01, gamma: float | list[float] = 0.85,
                density: float | list[float] | None = None, scale: float = 1.0) -> torch.Tensor:
    deltas = task_vectors(base, finetuned)
    count = len(deltas)
    fractions = zip(per_model(beta, count), per_model(gamma, count), per_model(density, count))
    masked = [keep_middle(delta, *fraction) for delta, fraction in zip(deltas, fractions)]
    return apply(base, scale * weighted_sum(masked, weights))
