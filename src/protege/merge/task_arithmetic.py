"""Task arithmetic (Ilharco et al., 2023): base + scale * sum_i w_i (theta_i - base).

"linear" is the same sum divided by the weights' total: the weighted average of the models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ..config import Strict
from ..registry import MERGE
from . import MergeOptions, apply, task_vectors, weighted_sum

if TYPE_CHECKING:
    import torch


class TaskArithmeticOptions(MergeOptions):
    name: Literal["task_arithmetic"] = Field("task_arithmetic", description="Task arithmetic: base + scale * "
                                             "the weighted sum of the task vectors.")


class LinearOptions(Strict):
    name: Literal["linear"] = Field("linear", description="The weighted average of the models (task "
                                    "arithmetic over the weights' total).")


@MERGE.register(TaskArithmeticOptions)
def task_arithmetic(base: torch.Tensor, finetuned: list[torch.Tensor], weights: list[float],
                    scale: float = 1.0) -> torch.Tensor:
    return apply(base, scale * weighted_sum(task_vectors(base, finetuned), weights))


@MERGE.register(LinearOptions)
def linear(base: torch.Tensor, finetuned: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    total = sum(weights)
    if abs(total) < 1e-12:
        raise ValueError("linear merge needs weights that do not sum to zero")
    return task_arithmetic(base, finetuned, weights, scale=1.0 / total)
