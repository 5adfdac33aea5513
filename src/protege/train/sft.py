"""Supervised fine-tuning with the loss on every assistant turn, through TRL's SFTTrainer.

protege tokenizes the chats itself: each assistant turn's tokens are found by rendering the chat
up to that turn, so the loss covers every assistant turn of a multi-turn chat with any chat
template (TRL's assistant_only_loss needs {% generation %} markers, which most templates lack). An
assistant message marked "train": false (a mistake an agent episode shows, then corrects) is in the
context but not in the loss.

By default the examples of a batch are laid end to end in one row with position ids that restart
at each example (TRL's padding-free collator): no padding is computed, and transformers builds a
block-diagonal attention mask from the position ids, so no example attends to another. TRL's
attention runs per example (packed_attention.py), a prefix every example of a batch shares (the
system message, an agent's tools) is computed once (shared_prefix.py), and the vocabulary
projection and the loss run only at the positions that have a label (answer_loss.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar, Literal

from pydantic import Field

from ..config import TrainConfig
from ..registry import TRAIN
from . import MethodOptions, TrainJob
from .adapters import peft_config

# torch, TRL and the trainer helpers (common, answer_loss, fused_lora) are imported in the functions
# that train: importing protege loads every method file


class SFTOptions(MethodOptions):
    trains_on_episodes: ClassVar[bool] = True
    name: Literal["sft"] = Field("sft", description="Supervised fine-tuning: the loss on every assistant turn "
                                 "of the round's chat records.")


def render(tokenizer, messages: list[dict], generation_prompt: bool, tools: list[dict] | None = None) -> list[int]:
    extra = {"tools": tools} if tools else {}
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, **extra)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_chat(tokenizer, messages: list[dict], max_length: int, tools: list[dict] | None = None) -> dict:
    """input_ids of the whole chat and labels that keep only the assistant turns' tokens, but for those
    marked "train": false (as LLaMA-Factory and axolotl mask a turn: a mistake shown, not taught; the
    flag never reaches the template). tools: the schemas a template that renders tools is given (agent
    episodes, see tokenize_record)."""
    learned = [m["role"] == "assistant" and m.get("train") is not False for m in messages]
    messages = [{k: v for k, v in m.items() if k != "train"} for m in messages]
    input_ids = render(tokenizer, messages, False, tools)
    labels = [-100] * len(input_ids)
    for i, message in enumerate(messages):
        if not learned[i]:
            continue
        start = len(render(tokenizer, messages[:i], True, tools))
        through_turn = render(tokenizer, messages[:i + 1], False, tools)
        end = len(through_turn)
        if input_ids[:end] != through_turn:
            raise ValueError("the chat template renders a turn differently inside a longer chat; "
                             "it cannot be split into turns for the loss")
        labels[start:end] = input_ids[start:end]
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}


def tokenize_record(tokenizer, record: dict, max_length: int) -> dict:
    """A chat record, or an agent episode (a record with tools) rendered for the student's template by
    models.chat_format: every assistant turn, tool calls and final answer, in the loss (unless marked
    train: false); tool results and user turns never."""
    if not record.get("tools"):
        return tokenize_chat(tokenizer, record["messages"], max_length)
    from ..models.chat_format import rendered_record, supports_tools
    native = supports_tools(tokenizer)
    rendered = with_train_flags(rendered_record(record, tokenizer)["messages"], record["messages"])
    return tokenize_chat(tokenizer, rendered, max_length, record["tools"] if native else None)


def with_train_flags(rendered: list[dict], messages: list[dict]) -> list[dict]:
    """The rendered episode with each assistant turn's train flag from the record: rendering keeps every
    assistant turn, in order, but may drop keys it does not know."""
    flags = iter([m.get("train") for m in messages if m["role"] == "assistant"])
    return [{**m, "train": next(flags)} if m["role"] == "assistant" else m for m in rendered]


def tokenized_dataset(tokenizer, records: list[dict], max_length: int):
    from datasets import Dataset
    rows = [tokenize_record(tokenizer, record, max_length) for record in records]
    rows = [row for row in rows if any(label != -100 for label in row["labels"])]
    if not rows:
        raise ValueError("no training data: no example has an assistant turn within train.max_length")
    return Dataset.from_list(rows)


def sft_config(cfg: TrainConfig, checkpoints: Path, device: str):
    from trl import SFTConfig

    from .common import trainer_kwargs
    packing = {"padding-free": dict(padding_free=True, packing=False, max_length=None),
               "bfd": dict(packing=True, packing_strategy="bfd", max_length=cfg.max_length),
               "none": dict(padding_free=False, packing=False, max_length=None,
                            train_sampling_strategy="group_by_length")}[cfg.packing]
    if cfg.data_order == "as-given":  # bfd packing and length grouping would reorder a curriculum
        packing = {key: value for key, value in packing.items() if key != "packing_strategy"} | {
            "packing": False, "train_sampling_strategy": "sequential"}
    return SFTConfig(**{**trainer_kwargs(cfg, checkpoints, device), **packing})


def build_sft_trainer(model_path: Path, records: list[dict], cfg: TrainConfig, checkpoints: Path,
                      device: str = "cpu", stage_seed: int = 0):
    """(trainer, tokenizer, notes), ready to train: apart so that a test can run its loss."""
    from .answer_loss import AnswerLossSFTTrainer
    from .common import frozen_linears_to_bf16, load_trainable, norm_outputs_in_autocast_dtype
    from .fused_lora import fuse_lora_forwards
    if not records:
        raise ValueError("no training data: every example was removed or the teacher answered none")
    model, tokenizer, notes = load_trainable(model_path, cfg, stage_seed)
    trainer = AnswerLossSFTTrainer(model=model, args=sft_config(cfg, checkpoints, device),
                                   train_dataset=tokenized_dataset(tokenizer, records, cfg.max_length),
                                   processing_class=tokenizer, peft_config=peft_config(cfg))
    if cfg.adapter.name == "lora":
        fuse_lora_forwards(trainer.model)
        if trainer.args.bf16:
            frozen_linears_to_bf16(trainer.model)
            norm_outputs_in_autocast_dtype(trainer.model)
    return trainer, tokenizer, notes


def shared_prefix_collator(collator, cfg: TrainConfig):
    """Padding-free rows compute the prefix their examples share once (shared_prefix.py)."""
    from .shared_prefix import SharedPrefixCollator
    return SharedPrefixCollator(collator) if cfg.packing == "padding-free" else collator


def train_sft(model_path: Path, records: list[dict], cfg: TrainConfig, output_dir: Path, device: str = "cpu",
              stage_seed: int = 0, checkpoints: Path | None = None,
              wrap_collator: Callable | None = None, notes: dict | None = None) -> dict:
    """Train on chat records and save the adapter (or the whole model) into output_dir/model.
    `wrap_collator(collator, tokenizer)` lets a variant (masked-thought) change each batch;
    `notes` go into the training log (a variant's name and settings)."""
    from .common import TokenCounter, attach_callbacks, fit, save_trained, tensorboard_dir
    checkpoints = checkpoints or output_dir / "checkpoints"
    tensorboard_dir(output_dir)
    trainer, tokenizer, loaded = build_sft_trainer(model_path, records, cfg, checkpoints, device, stage_seed)
    collator = shared_prefix_collator(trainer.data_collator, cfg)
    collator = wrap_collator(collator, tokenizer) if wrap_collator else collator
    trainer.data_collator = counter = TokenCounter(collator)
    attach_callbacks(trainer, counter)
    result = fit(trainer, checkpoints)
    notes = {**loaded, "method": "sft", "examples": len(records), **(notes or {})}
    return save_trained(trainer, tokenizer, output_dir, checkpoints, notes, counter, result)


@TRAIN.register(SFTOptions)
def run(job: TrainJob) -> dict:
    return train_sft(job.model_path, job.data, job.cfg, job.output_dir, job.device, job.stage_seed, job.checkpoints)
