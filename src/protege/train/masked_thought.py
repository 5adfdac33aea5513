"""Masked Thought (Chen et al., 2024, "Masked Thought: Simply Masking Partial Reasoning Steps Can
Improve Mathematical Reasoning Learning of Language Models"): during SFT a random share of the
answer's tokens is replaced in the input by a mask token while the targets stay the original
tokens, so the model must predict each step without always seeing the exact steps before it.
A regularizer against copying surface patterns; the data and the loss are plain SFT."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import TrainConfig
from .sft import train_sft


def mask_answer_tokens(input_ids: torch.Tensor, labels: torch.Tensor, ratio: float, mask_id: int,
                       generator: torch.Generator) -> torch.Tensor:
    """A copy of input_ids where each answer token (label != -100) is replaced by mask_id with
    probability `ratio`; prompt tokens and labels are never touched."""
    draws = torch.rand(input_ids.shape, generator=generator)
    masked = (labels != -100) & (draws < ratio)
    return torch.where(masked, torch.full_like(input_ids, mask_id), input_ids)


class MaskThoughts:
    """Wraps the SFT collator: builds the batch, then masks answer tokens in its input."""

    def __init__(self, collator, ratio: float, mask_id: int, seed: int):
        self.collator, self.ratio, self.mask_id = collator, ratio, mask_id
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, examples):
        batch = self.collator(examples)
        batch["input_ids"] = mask_answer_tokens(batch["input_ids"], batch["labels"], self.ratio,
                                                self.mask_id, self.generator)
        return batch


def mask_token_id(tokenizer) -> int:
    # the paper uses a dedicated mask token; chat models rarely have one, so fall back as its code does
    for token_id in (tokenizer.mask_token_id, tokenizer.unk_token_id, tokenizer.pad_token_id):
        if token_id is not None:
            return token_id
    return tokenizer.eos_token_id


def train_masked_thought(model_path: Path, records: list[dict], cfg: TrainConfig, output_dir: Path,
                         device: str = "cpu", stage_seed: int = 0, checkpoints: Path | None = None) -> dict:
    def wrap(collator, tokenizer):
        return MaskThoughts(collator, cfg.mask_ratio, mask_token_id(tokenizer), stage_seed)

    return train_sft(model_path, records, cfg, output_dir, device, stage_seed, checkpoints, wrap_collator=wrap,
                     notes={"method": "masked-thought", "mask_ratio": cfg.mask_ratio})
