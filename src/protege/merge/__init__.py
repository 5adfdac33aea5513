"""Model merging, selectable by name: one file per method, each registered here.

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
from typing import Callable

import torch

Merge = Callable[..., torch.Tensor]
MERGES: dict[str, Merge] = {}
CONTEXT = ("name", "num_layers")


def register(name: str) -> Callable[[Merge], Merge]:
    def add(fn: Merge) -> Merge:
        MERGES[name] = fn
        return fn
    return add


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
    if method not in MERGES:
        raise ValueError(f"unknown merge method {method!r}; known: {', '.join(sorted(MERGES))}")
    fn = MERGES[method]
    context = {"name": name, "num_layers": num_layers}
    wanted = inspect.signature(fn).parameters
    given = {key: value for key, value in context.items() if key in wanted}
    return fn(base, finetuned, weights, **given, **params)


# imported last: each module registers itself with the decorator above
from . import breadcrumbs, dare, lines, task_arithmetic, ties  # noqa: E402,F401
