"""Model merging, selectable by name: one file per method, which declares the method's options (its
keyword parameters, as mergekit keeps them beside the code) and registers the method with
`@MERGE.register(Options)` (protege.registry).

Every method is a pure function over ONE tensor name at a time:
`fn(base, finetuned, weights, **params) -> Tensor`, where `finetuned` holds that tensor from each
fine-tuned model and `weights` one weight per model. A method that needs per-tensor context declares
it as keyword parameters, which `merge_tensor` fills in: `name` (the tensor's name) and `num_layers`
(the model's layer count). A parameter that mergekit sets per model (TIES and breadcrumbs densities,
DARE's drop rate) takes one value for all models or a list with one value each (`per_model`). Maths
run in float32; the result has the base tensor's dtype.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Callable

from pydantic import Field

from ..config import Strict
from ..registry import MERGE

if TYPE_CHECKING:  # torch is imported by the code that merges: importing protege loads every method file
    import torch

Merge = Callable[..., "torch.Tensor"]
CONTEXT = ("name", "num_layers")


class MergeOptions(Strict):
    """What every method that sums task vectors reads."""

    scale: float = Field(1.0, description="Factor on the merged task vector (mergekit's lambda).")


PerModel = float | list[float]  # one value for all models, or one each


def task_vectors(base: torch.Tensor, finetuned: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each model's change from the base, in float32 (bf16 sums lose the small changes)."""
    origin = base.float()
    for tensor in finetuned:
        if tensor.shape != base.shape:
            raise ValueError(f"shape {tuple(tensor.shape)} does not match the base's {tuple(base.shape)}")
    return [tensor.float() - origin for tensor in finetuned]


def weighted_sum(deltas: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    if len(deltas) != len(weights):
        raise ValueError(f"{len(deltas)} task vectors but {len(weights)} weights")
    return sum(weight * delta for weight, delta in zip(weights, deltas))


def per_model(value: float | list[float], count: int) -> list[float]:
    """One value for each of `count` models, from a shared value or a per-model list."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(values) != count:
        raise ValueError(f"{count} task vectors but {len(values)} per-model values")
    return values


def apply(base: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    return (base.float() + update).to(base.dtype)


def merge_tensor(method: str, base: torch.Tensor, finetuned: list[torch.Tensor], weights: list[float],
                 params: dict, name: str = "", num_layers: int = 0) -> torch.Tensor:
    """One tensor merged by the method named, given only the context that method declares."""
    fn = MERGE.get(method)
    context = {"name": name, "num_layers": num_layers}
    wanted = inspect.signature(fn).parameters
    given = {key: value for key, value in context.items() if key in wanted}
    return fn(base, finetuned, weights, **given, **params)
