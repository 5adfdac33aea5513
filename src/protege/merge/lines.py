"""LiNeS (Wang et al., 2025): scale the summed task vector of layer l (0-based, of L layers) by
alpha + beta * l / (L - 1), so shallow layers stay near the base (keeping general ability) and deep
layers take the task. As in the authors' code, a tensor outside the numbered layers (embeddings,
final norm, lm_head) is scaled by alpha.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ..config import Strict
from ..registry import MERGE
from . import apply, task_vectors, weighted_sum

if TYPE_CHECKING:
    import torch

LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class LinesOptions(Strict):
    name: Literal["lines"] = Field("lines", description="LiNeS: the summed task vector scaled by depth, so "
                                   "shallow layers stay near the base and deep layers take the task.")
    alpha: float = Field(0.0, description="Scale at the first layer and outside the layers.")
    beta: float = Field(1.0, description="Scale added by the last layer (alpha + beta * l / (L - 1)).")


def layer_index(name: str) -> int | None:
    found = LAYER.search(name)
    return int(found.group(1)) if found else None


def layer_scale(layer: int | None, num_layers: int, alpha: float, beta: float) -> float:
    if layer is None:
        return alpha
    return alpha + beta * layer / max(num_layers - 1, 1)


@MERGE.register(LinesOptions)
def lines(base: torch.Tensor, finetuned: list[torch.Tensor], weights: list[float], name: str = "",
          num_layers: int = 1, alpha: float = 0.0, beta: float = 1.0) -> torch.Tensor:
    scale = layer_scale(layer_index(name), num_layers, alpha, beta)
    return apply(base, scale * weighted_sum(task_vectors(base, finetuned), weights))
