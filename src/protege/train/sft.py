"""Supervised fine-tuning with the loss on the answer only, through TRL's SFTTrainer.

Each record's chat is split into prompt (everything before the last assistant turn) and completion
(that turn); TRL masks the prompt out of the loss for prompt-completion data. This works with any
chat template, where TRL's assistant_only_loss needs {% generation %} markers in the template."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import TrainConfig
from .adapters import learning_rate, peft_config


def to_prompt_completion(records: list[dict]) -> list[dict]:
    rows = []
    for record in records:
        messages = record["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        rows.append({"prompt": messages[:last], "completion": [messages[last]]})
    return rows


def training_args(cfg: TrainConfig, output_dir: Path, device: str):
    from trl import SFTConfig
    on_gpu = device == "cuda"
    # TRL's defaults (bf16, gradient checkpointing) slow a CPU down: turn them on only on a GPU
    return SFTConfig(
        output_dir=str(output_dir), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, learning_rate=learning_rate(cfg),
        lr_scheduler_type="linear", warmup_steps=0, max_length=cfg.max_length, seed=cfg.seed,
        bf16=on_gpu and torch.cuda.is_bf16_supported(), fp16=False, activation_checkpointing=False,
        use_cpu=not on_gpu, logging_steps=5, save_strategy="no", report_to="none",
        completion_only_loss=True, dataloader_num_workers=0, disable_tqdm=False)


def train_sft(model_path: Path, records: list[dict], cfg: TrainConfig, output_dir: Path,
              device: str = "cpu") -> dict:
    """Train and save the adapter (or the full model) with its tokenizer into output_dir/model."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    if not records:
        raise ValueError("no training data: every example was removed or the teacher answered none")
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    args = training_args(cfg, output_dir / "checkpoints", device)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(to_prompt_completion(records)),
                         processing_class=tokenizer, peft_config=peft_config(cfg))
    result = trainer.train()
    trainer.save_model(str(output_dir / "model"))
    tokenizer.save_pretrained(output_dir / "model")
    log = {"metrics": result.metrics, "history": trainer.state.log_history, "examples": len(records)}
    (output_dir / "train_log.json").write_text(json.dumps(log, indent=2))
    return log

