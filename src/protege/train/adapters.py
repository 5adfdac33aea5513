"""How much of the student trains: a LoRA adapter (peft) or every weight."""

from __future__ import annotations

from ..config import TrainConfig


def peft_config(cfg: TrainConfig):
    if cfg.adapter != "lora":
        return None
    from peft import LoraConfig
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_targets, task_type="CAUSAL_LM")


def learning_rate(cfg: TrainConfig) -> float:
    if cfg.learning_rate is not None:
        return cfg.learning_rate
    return 1e-3 if cfg.adapter == "lora" else 5e-5
