"""Supervised fine-tuning with the loss on every assistant turn, through TRL's SFTTrainer.

protege tokenizes the chats itself: each assistant turn's tokens are found by rendering the chat
up to that turn, so the loss covers every assistant turn of a multi-turn chat with any chat
template (TRL's assistant_only_loss needs {% generation %} markers, which most templates lack).

By default the examples of a batch are laid end to end in one row with position ids that restart
at each example (TRL's padding-free collator): no padding is computed, and transformers builds a
block-diagonal attention mask from the position ids, so no example attends to another. TRL's
attention runs per example (packed_attention.py), and the vocabulary projection and the loss run
only at the positions that have a label (answer_loss.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from trl import SFTTrainer

from ..config import TrainConfig
from .adapters import peft_config
from .answer_loss import answer_log_probs, answer_logits, answer_token_loss, answer_token_stats
from .common import (TokenCounter, attach_callbacks, fit, frozen_linears_to_bf16, load_trainable,
                     norm_outputs_in_autocast_dtype, save_trained, tensorboard_dir, trainer_kwargs)
from .fused_lora import fuse_lora_forwards


def render(tokenizer, messages: list[dict], generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_chat(tokenizer, messages: list[dict], max_length: int) -> dict:
    """input_ids of the whole chat and labels that keep only the assistant turns' tokens."""
    input_ids = render(tokenizer, messages, False)
    labels = [-100] * len(input_ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(render(tokenizer, messages[:i], True))
        through_turn = render(tokenizer, messages[:i + 1], False)
        end = len(through_turn)
        if input_ids[:end] != through_turn:
            raise ValueError("the chat template renders a turn differently inside a longer chat; "
                             "it cannot be split into turns for the loss")
        labels[start:end] = input_ids[start:end]
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}


def tokenized_dataset(tokenizer, records: list[dict], max_length: int):
    from datasets import Dataset
    rows = [tokenize_chat(tokenizer, record["messages"], max_length) for record in records]
    rows = [row for row in rows if any(label != -100 for label in row["labels"])]
    if not rows:
        raise ValueError("no training data: no example has an assistant turn within train.max_length")
    return Dataset.from_list(rows)


def sft_config(cfg: TrainConfig, checkpoints: Path, device: str):
    from trl import SFTConfig
    packing = {"padding-free": dict(padding_free=True, packing=False, max_length=None),
               "bfd": dict(packing=True, packing_strategy="bfd", max_length=cfg.max_length),
               "none": dict(padding_free=False, packing=False, max_length=None,
                            train_sampling_strategy="group_by_length")}[cfg.packing]
    if cfg.data_order == "as-given":  # bfd packing and length grouping would reorder a curriculum
        packing = {key: value for key, value in packing.items() if key != "packing_strategy"} | {
            "packing": False, "train_sampling_strategy": "sequential"}
    return SFTConfig(**{**trainer_kwargs(cfg, checkpoints, device), **packing})


class AnswerLossSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer with a loss that asks the model for logits only at the answer positions.

    Those logits are held whole (answer tokens x vocabulary, in float32 for the log-softmax). Past
    `logits_budget_bytes` (a large GPU batch: 16k answer tokens of a 150k vocabulary are 9.8 GB) the
    step goes to TRL's own loss, whose fused LM head works through the vocabulary in tiles and never
    holds them; on a CPU its tile loop is the slower way for the few hundred answers of a batch."""

    logits_budget_bytes = 2 ** 30

    def answer_logit_bytes(self, labels) -> int:
        vocabulary = self.model.get_output_embeddings().weight.shape[0]
        return int((labels[:, 1:] != -100).sum()) * vocabulary * 4

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.answer_logit_bytes(inputs["labels"]) > self.logits_budget_bytes:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        model_inputs = {key: value for key, value in inputs.items() if key != "labels"}
        outputs, logits, targets = answer_logits(model, model_inputs, inputs["labels"])
        log_probs = answer_log_probs(logits)
        loss = answer_token_loss(log_probs, targets, len(targets) if num_items_in_batch is None else num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # num_items counts every rank; DDP averages
        mode = "train" if model.training else "eval"
        for key, value in answer_token_stats(log_probs, targets).items():
            self._metrics[mode][key].append(value)
        return (loss, outputs) if return_outputs else loss


def build_sft_trainer(model_path: Path, records: list[dict], cfg: TrainConfig, checkpoints: Path,
                      device: str = "cpu", stage_seed: int = 0):
    """(trainer, tokenizer, notes), ready to train: apart so that a test can run its loss."""
    if not records:
        raise ValueError("no training data: every example was removed or the teacher answered none")
    model, tokenizer, notes = load_trainable(model_path, cfg, stage_seed)
    trainer = AnswerLossSFTTrainer(model=model, args=sft_config(cfg, checkpoints, device),
                                   train_dataset=tokenized_dataset(tokenizer, records, cfg.max_length),
                                   processing_class=tokenizer, peft_config=peft_config(cfg))
    if cfg.adapter == "lora":
        fuse_lora_forwards(trainer.model)
        if trainer.args.bf16:
            frozen_linears_to_bf16(trainer.model)
            norm_outputs_in_autocast_dtype(trainer.model)
    return trainer, tokenizer, notes


def train_sft(model_path: Path, records: list[dict], cfg: TrainConfig, output_dir: Path, device: str = "cpu",
              stage_seed: int = 0, checkpoints: Path | None = None,
              wrap_collator: Callable | None = None, notes: dict | None = None) -> dict:
    """Train on chat records and save the adapter (or the whole model) into output_dir/model.
    `wrap_collator(collator, tokenizer)` lets a variant (masked-thought) change each batch;
    `notes` go into the training log (a variant's name and settings)."""
    checkpoints = checkpoints or output_dir / "checkpoints"
    tensorboard_dir(output_dir)
    trainer, tokenizer, loaded = build_sft_trainer(model_path, records, cfg, checkpoints, device, stage_seed)
    collator = wrap_collator(trainer.data_collator, tokenizer) if wrap_collator else trainer.data_collator
    trainer.data_collator = counter = TokenCounter(collator)
    attach_callbacks(trainer, counter)
    result = fit(trainer, checkpoints)
    notes = {**loaded, "method": "sft", "examples": len(records), **(notes or {})}
    return save_trained(trainer, tokenizer, output_dir, checkpoints, notes, counter, result)
