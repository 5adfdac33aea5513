"""Diversity selection (Yu et al., 2024, "Diversify and Conquer"): k-means on the inputs' embeddings,
then a budget spread across the clusters, so that the kept subset covers every kind of input rather
than many copies of the commonest. Each cluster's share is proportional to its size (the paper's kMQ)
or equal (balanced); within a cluster the examples with the highest judge score (meta.quality, from a
quality step before this one) go first, the rest in a seeded random order. The paper's iterative
reweighting of clusters by the trained model's loss is not done here; protege's rounds already feed the
student's failures back into the data. The user's seed examples are always kept and count against
the budget."""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ..config import Strict
from ..records import record_input
from ..registry import CURATE
from .context import CurateContext, apply_verdicts, is_seed

if TYPE_CHECKING:  # imported where used: importing protege loads every step file
    import numpy as np


class DiversityStep(Strict):
    name: Literal["diversity"] = Field("diversity", description="Keep a subset spread over k-means clusters of "
                                       "the inputs' embeddings (Diversify and Conquer).")
    keep: float = Field(0.5, gt=0, le=1, description="Share of the examples kept (when size is 0).")
    size: int = Field(0, ge=0, description="Examples kept; 0: the keep share.")
    clusters: int = Field(0, ge=0, description="k of k-means; 0: the square root of the number of examples.")
    allocation: Literal["proportional", "balanced"] = Field(
        "proportional", description="How many each cluster keeps: proportional to its size (the paper's kMQ), "
        "or balanced (equal shares, so rare kinds of input weigh as much as common ones).")

REASON = "diversity: not sampled from its cluster"


def proportional_quotas(sizes: list[int], budget: int) -> list[int]:
    """Largest-remainder (Hamilton) apportionment of the budget by cluster size; on equal remainders
    the earlier cluster wins."""
    total = sum(sizes)
    exact = [budget * s / total for s in sizes]
    quotas = [math.floor(q) for q in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in by_remainder[:budget - sum(quotas)]:
        quotas[i] += 1
    return quotas


def balanced_quotas(sizes: list[int], budget: int) -> list[int]:
    """Equal shares, capped at each cluster's size, what a small cluster cannot take going to the
    others (water-filling); a remainder too small to share goes one each to the largest clusters."""
    quotas = [0] * len(sizes)
    left = min(budget, sum(sizes))
    while left:
        open_ = sorted((i for i in range(len(sizes)) if quotas[i] < sizes[i]), key=lambda i: (-sizes[i], i))
        share = left // len(open_)
        for i in open_[:left] if share == 0 else open_:
            given = min(max(share, 1), sizes[i] - quotas[i])
            quotas[i] += given
            left -= given
    return quotas


def cluster_labels(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans
    k = max(1, min(k, len(vectors)))
    return KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(vectors)


def pick_in_cluster(members: list[dict], quota: int, rng: random.Random) -> list[dict]:
    """The quota members with the highest judge score; unscored ones and ties in a random order."""
    shuffled = rng.sample(members, len(members))
    return sorted(shuffled, key=lambda r: -r["meta"].get("quality", 0))[:quota]


@CURATE.register(DiversityStep)
def run(records: list[dict], cfg: DiversityStep, ctx: CurateContext) -> tuple[list[dict], list[dict]]:
    pool = [r for r in records if not is_seed(r)]
    target = cfg.size or math.ceil(cfg.keep * len(records))
    budget = max(0, target - (len(records) - len(pool)))
    if budget >= len(pool):
        return records, []
    k = cfg.clusters or round(math.sqrt(len(pool)))
    labels = cluster_labels(ctx.embedder()([record_input(r) for r in pool]), k, ctx.seed)
    clusters = [[r for r, c in zip(pool, labels) if c == label] for label in sorted(set(labels))]
    allocate = proportional_quotas if cfg.allocation == "proportional" else balanced_quotas
    rng = random.Random(ctx.seed)
    chosen = {r["id"] for members, quota in zip(clusters, allocate([len(m) for m in clusters], budget))
              for r in pick_in_cluster(members, quota, rng)}
    return apply_verdicts(records, {r["id"]: {"reason": REASON, "cluster": int(c)}
                                    for r, c in zip(pool, labels) if r["id"] not in chosen})
