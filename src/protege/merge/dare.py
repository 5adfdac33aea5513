"""DARE (Yu et al., 2024): drop each entry of each task vector with probability `drop`, rescale the
survivors by 1 / (1 - drop) so the expected task vector is unchanged, then add them as task
arithmetic does. `drop` is one rate or one per model. The random mask is seeded by (seed, tensor
name, model index), so a tensor's result does not depend on the order in which tensors are merged.
"""

from __future__ import annotations

import zlib

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ..registry import MERGE
from . import MergeOptions, PerModel, apply, per_model, task_vectors, weighted_sum

if TYPE_CHECKING:
    import torch


class DareOptions(MergeOptions):
    name: Literal["dare"] = Field("dare", description="DARE: drop task-vector entries at random, rescale the "
                                  "survivors, then add as task arithmetic does.")
    drop: PerModel = Field(0.9, description="Probability that an entry is dropped (one value, or one per model).")
    seed: int = Field(0, description="Seed of the random masks (per tensor name and model).")


def mask_seed(seed: int, name: str, index: int) -> int:
    # crc32, not hash(): Python salts str hashes per process
    return zlib.crc32(f"{seed}\0{name}\0{index}".encode())


def drop_and_rescale(delta: torch.Tensor, drop: float, seed: int) -> torch.Tensor:
    import torch
    if drop <= 0:
        return delta
    if drop >= 1:
        raise ValueError("DARE drop rate must be below 1")
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(delta.shape, generator=generator) >= drop
    return delta * keep / (1 - drop)


@MERGE.register(DareOptions)
def dare(base: torch.Tensor, finetuned: list[torch.Tensor], weights: list[float], name: str = "",
         drop: float | list[float] = 0.9, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    deltas = task_vectors(base, finetuned)
    rates = per_model(drop, len(deltas))
    kept = [drop_and_rescale(delta, rates[index], mask_seed(seed, name, index))
            for index, delta in enumerate(deltas)]
    return apply(base, scale * weighted_sum(kept, weights))
