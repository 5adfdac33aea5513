"""How much of the student trains: a LoRA adapter (peft), Half Fine-Tuning, or every weight.

Half Fine-Tuning (Hui et al., 2024, arXiv:2404.18466) freezes half of the parameters at the
category level in every layer and updates the other half; a new random half each stage. Here a
"group" is one weight matrix (or norm) with its bias; in each layer the attention groups
(q, k, v, o), the MLP groups (gate, up, down) and the remaining groups (the norms) each get a
random half frozen. Parameters outside the layers (embeddings, final norm) form one more category.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict

from ..config import TrainConfig

LAYER = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")
ATTENTION = {"self_attn", "attn", "attention", "self_attention"}
MLP = {"mlp", "feed_forward", "ffn"}


def peft_config(cfg: TrainConfig):
    if cfg.adapter != "lora":
        return None
    from peft import LoraConfig
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_targets, use_rslora=cfg.rslora, task_type="CAUSAL_LM")


DEFAULT_LEARNING_RATES = {"lora": 1e-3, "hft": 2e-4, "full": 5e-5}


def learning_rate(cfg: TrainConfig) -> float:
    """HFT updates half the weights of every layer: at full fine-tuning's 5e-5 one epoch barely moved
    the student on examples/arithmetic (sft-hft 10% held-out), at 2e-4 it learned (62-72%,
    benchmarks/train_quality.py)."""
    if cfg.learning_rate is not None:
        return cfg.learning_rate
    return DEFAULT_LEARNING_RATES[cfg.adapter]


def group_name(param_name: str) -> str:
    """q_proj.weight and q_proj.bias belong to one group: the module that holds them."""
    return param_name.rsplit(".", 1)[0]


def category(group: str) -> tuple[str, str]:
    """(layer, kind) of a group: kind is attention, mlp or other; layer is 'outside' for the
    embeddings and the final norm."""
    match = LAYER.search("." + group)
    if not match:
        return "outside", "other"
    parts = set(("." + group)[match.end():].split("."))
    if parts & ATTENTION:
        return match.group(1), "attention"
    if parts & MLP:
        return match.group(1), "mlp"
    return match.group(1), "other"


def hft_selection(param_names: list[str], seed: int) -> dict[str, list[str]]:
    """Which groups to freeze: a seeded random half of every (layer, kind) category. With an odd
    count a coin flip decides whether the extra group freezes, so on average exactly half does."""
    categories: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name in param_names:
        group = group_name(name)
        members = categories[category(group)]
        if group not in members:
            members.append(group)
    rng = random.Random(seed)
    frozen, trainable = [], []
    for key in sorted(categories):
        groups = sorted(categories[key])
        count = len(groups) // 2 + (len(groups) % 2 and rng.random() < 0.5)
        chosen = set(rng.sample(groups, count))
        frozen += [g for g in groups if g in chosen]
        trainable += [g for g in groups if g not in chosen]
    return {"seed": seed, "frozen": frozen, "trainable": trainable}


def apply_hft(model, seed: int) -> dict[str, list[str]]:
    """Freeze the selected half of `model` in place; returns the selection, for the training log."""
    names = [name for name, _ in model.named_parameters()]
    selection = hft_selection(names, seed)
    frozen = set(selection["frozen"])
    for name, param in model.named_parameters():
        param.requires_grad_(group_name(name) not in frozen)
    return selection
