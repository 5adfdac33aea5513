"""Masked Thought (Chen et al., 2024, "Masked Thought: Simply Masking Partial Reasoning Steps Can
Improve Mathematical Reasoning Learning of Language Models"): during SFT a random share of the
answer's tokens is replaced in the input by a mask token while the targets stay the original
tokens, so the model must predict each step without always seeing the exact steps before it.
A regularizer against copying surface patterns; the data and the loss are plain SFT."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from ..config import TrainConfig
from ..registry import TRAIN
from . import MethodOptions, TrainJob, method_options
from .sft import train_sft

if TYPE_CHECKING:  # torch is imported where a batch is masked: importing protege loads every method file
    import torch


class MaskedThoughtOptions(MethodOptions):
    legacy: ClassVar[dict[str, str]] = {"mask_ratio": "ratio"}
    name: Literal["masked-thought"] = Field("masked-thought", description="SFT with a random share of the answer's "
                                            "tokens masked in the input (the targets stay).")
    ratio: float = Field(0.2, ge=0, lt=1, description="Share of answer tokens replaced in the input.")


def mask_answer_tokens(input_ids: torch.Tensor, labels: torch.Tensor, ratio: float, mask_id: int,
                       generator: torch.Generator) -> torch.Tensor:
    """A copy of input_ids where each answer token (label != -100) is replaced by mask_id with
    probability `ratio`; prompt tokens and labels are never touched."""
    import torch
    draws = torch.rand(input_ids.shape, generator=generator)
    masked = (labels != -100) & (draws < ratio)
    return torch.where(masked, torch.full_like(input_ids, mask_id), input_ids)


class MaskThoughts:
    """Wraps the SFT collator: builds the batch, then masks answer tokens in its input."""

    def __init__(self, collator, ratio: float, mask_id: int, seed: int):
        import torch
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
    ratio = method_options(cfg, "masked-thought").ratio

    def wrap(collator, tokenizer):
        return MaskThoughts(collator, ratio, mask_token_id(tokenizer), stage_seed)

    return train_sft(model_path, records, cfg, output_dir, device, stage_seed, checkpoints, wrap_collator=wrap,
                     notes={"method": "masked-thought", "mask_ratio": ratio})


@TRAIN.register(MaskedThoughtOptions)
def run(job: TrainJob) -> dict:
    return train_masked_thought(job.model_path, job.data, job.cfg, job.output_dir, job.device, job.stage_seed,
                                job.checkpoints)
