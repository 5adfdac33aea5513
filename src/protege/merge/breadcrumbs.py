"""Model Breadcrumbs (Davari & Belilovsky, 2024): in each tensor of each task vector, drop the top
`beta` fraction of entries by magnitude (outliers) and the bottom `gamma` fraction (negligible
changes), then add what is left as task arithmetic does: base + scale * sum_i w_i masked_i.

Counts are int(beta * numel) and int(gamma * numel), as mergekit rounds; when they overlap the
whole tensor is dropped.
"""

from __future__ import annotations

import torch

from . import apply, register, task_vectors, weighted_sum


def keep_middle(delta: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    count = delta.numel()
    top, bottom = int(beta * count), int(gamma * count)
    order = torch.argsort(delta.abs().flatten())  # ascending magnitude
    mask = torch.zeros(count, dtype=torch.bool)
    mask[order[bottom:count - top]] = True
    return delta * mask.view(delta.shape)


@register("breadcrumbs")
def breadcrumbs(base: torch.Tensor, finetuned: list[torch.Tensor], weights: list[float],
                beta: float = 0.01, gamma: float = 0.85, scale: float = 1.0) -> torch.Tensor:
    deltas = [keep_middle(delta, beta, gamma) for delta in task_vectors(base, finetuned)]
    return apply(base, scale * weighted_sum(deltas, weights))
