"""How much of the student trains: a LoRA adapter (peft), Half Fine-Tuning, or every weight. Each
adapter declares its options (`train.adapter`) and registers `prepare(model, options, seed) -> notes`,
which readies the loaded model before training, with `@ADAPTER.register(Options)` (protege.registry).

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
from typing import ClassVar, Literal

from pydantic import Field

from ..config import Strict, TrainConfig
from ..registry import ADAPTER

LAYER = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")
ATTENTION = {"self_attn", "attn", "attention", "self_attention"}
MLP = {"mlp", "feed_forward", "ffn"}


class AdapterOptions(Strict):
    """What the trainers read of every adapter: its default learning rate and its peft config."""

    default_learning_rate: ClassVar[float] = 5e-5
    legacy: ClassVar[dict[str, str]] = {}  # flat keys of the earlier train config -> this adapter's option

    def peft_config(self):
        """The peft config TRL's trainers wrap the model with; None: the model trains as loaded."""
        return None


class LoraOptions(AdapterOptions):
    default_learning_rate: ClassVar[float] = 1e-3
    legacy: ClassVar[dict[str, str]] = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
                                        "lora_targets": "targets", "rslora": "rslora"}
    name: Literal["lora"] = Field("lora", description="A LoRA adapter (peft); the base weights stay frozen.")
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA alpha (scaling = alpha / r, or alpha / sqrt(r) with rslora).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch.")
    targets: str = Field("all-linear", description="Modules LoRA wraps (peft target_modules).")
    rslora: bool = Field(False, description="Rank-stabilized LoRA: scale by alpha / sqrt(r).")

    def peft_config(self):
        from peft import LoraConfig
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=self.targets,
                          use_rslora=self.rslora, task_type="CAUSAL_LM")


class HFTOptions(AdapterOptions):
    # at full fine-tuning's 5e-5 one epoch barely moved the student on examples/arithmetic (sft-hft 10%
    # held-out), at 2e-4 it learned (62-72%, benchmarks/train_quality.py): HFT updates half the weights
    default_learning_rate: ClassVar[float] = 2e-4
    name: Literal["hft"] = Field("hft", description="Half Fine-Tuning: a seeded random half of each layer's "
                                 "parameter groups frozen, a new half each round.")


class FullOptions(AdapterOptions):
    name: Literal["full"] = Field("full", description="Every weight trains.")


def peft_config(cfg: TrainConfig):
    return cfg.adapter.peft_config()


def learning_rate(cfg: TrainConfig) -> float:
    """train.learning_rate, else the adapter's default."""
    if cfg.learning_rate is not None:
        return cfg.learning_rate
    return cfg.adapter.default_learning_rate


@ADAPTER.register(LoraOptions)
def prepare_lora(model, options: LoraOptions, seed: int) -> dict:
    return {}  # TRL's trainer adds the adapter from peft_config


@ADAPTER.register(FullOptions)
def prepare_full(model, options: FullOptions, seed: int) -> dict:
    return {}


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


@ADAPTER.register(HFTOptions)
def prepare_hft(model, options: HFTOptions, seed: int) -> dict:
    return {"hft": apply_hft(model, seed)}


def apply_hft(model, seed: int) -> dict[str, list[str]]:
    """Freeze the selected half of `model` in place; returns the selection, for the training log."""
    names = [name for name, _ in model.named_parameters()]
    selection = hft_selection(names, seed)
    frozen = set(selection["frozen"])
    for name, param in model.named_parameters():
        param.requires_grad_(group_name(name) not in frozen)
    return selection
