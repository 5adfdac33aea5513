"""Task arithmetic (Ilharco et al., 2023): base + scale * sum_i w_i (theta_i - base).

"linear" is the same sum divided by the weights' total: the weighted average of the models.
"""

from __future__ import annotations

import torch

from . import apply, register, task_vectors, weighted_sum


@register("task_arithmetic")
def task_arithmetic(base: torch.Tensor, finetuned: list[torch.Tensor], weights: list[float],
                    scale: float = 1.0) -> torch.Tensor:
    return apply(base, scale * weighted_sum(task_vectors(base, finetuned), weights))


@register("linear")
def linear(base: torch.Tensor, finetuned: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    total = sum(weights)
    if abs(total) < 1e-12:
        raise ValueError("linear merge needs weights that do not sum to zero")
    return task_arithmetic(base, finetuned, weights, scale=1.0 / total)
