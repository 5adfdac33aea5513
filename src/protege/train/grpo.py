"""Group Relative Policy Optimization with the task's verifier as the reward, through TRL's GRPOTrainer.

Each record gives a prompt (every message before its last assistant turn) and a reference (that
turn's content). The student samples `generations` completions per prompt; each is scored by
`reward(input, completion, reference)`, and a completion's advantage is its reward against the
mean (and spread) of its own group, so no value model is needed.

Batching: `train.batch_size` counts prompts per optimizer step, as it counts examples for SFT. A
forward pass holds `batch_size` completions, as many sequences as an SFT batch, and the step
accumulates `generations` of them (an option of train.method grpo): batch_size prompts x generations
completions. TRL generates the whole step's completions at once (its generation batch is per-device
batch x accumulation steps = batch_size x generations), so the generation batch is a multiple of
num_generations by construction and every prompt's group is complete inside one step."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar, Literal

from pydantic import Field

from ..config import TrainConfig
from ..records import record_input
from ..registry import TRAIN
from . import StartsFromSFT, TrainJob, method_options
from .adapters import peft_config

# TRL and the trainer helpers (common, fused_lora) are imported where a model trains: importing protege
# loads every method file


class GRPOOptions(StartsFromSFT):
    legacy: ClassVar[dict[str, str]] = {**StartsFromSFT.legacy, "grpo_generations": "generations",
                                        "grpo_max_completion": "max_completion", "grpo_max_steps": "max_steps",
                                        "grpo_beta": "beta"}
    name: Literal["grpo"] = Field("grpo", description="Group relative policy optimization with the task's "
                                  "metric (or verifier) against the reference as the reward.")
    generations: int = Field(4, ge=2, description="Completions sampled per prompt.")
    max_completion: int = Field(96, ge=1, description="Longest completion sampled.")
    max_steps: int = Field(50, description="Optimizer steps of the grpo stage (-1: train.epochs); each step "
                           "samples batch_size x generations completions.")
    beta: float = Field(0.0, ge=0, description="KL penalty to the reference (0: none, as in DAPO).")

    def stage_config(self, cfg: TrainConfig, task_dir: Path) -> TrainConfig:
        """Its own learning rate and its own step count."""
        return super().stage_config(cfg, task_dir).model_copy(update={"max_steps": self.max_steps})

Reward = Callable[[str, str, str], float]


def prompt_and_reference(record: dict) -> tuple[list[dict], str] | None:
    """The messages before the last assistant turn, and that turn's content (None without one)."""
    messages = record["messages"]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or last == 0:
        return None
    return messages[:last], messages[last]["content"]


def prompt_dataset(records: list[dict]):
    from datasets import Dataset
    rows = []
    for record in records:
        split = prompt_and_reference(record)
        if split is not None:
            rows.append({"prompt": split[0], "task_input": record_input(record), "reference": split[1]})
    if not rows:
        raise ValueError("no training data: no record has a prompt followed by an assistant turn")
    return Dataset.from_list(rows)


def completion_text(completion) -> str:
    """TRL passes a conversational completion as a list of messages; the text is their content."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion)


def reward_function(reward: Reward):
    """Adapt `reward(input, completion, reference)` to TRL's batched reward_funcs signature."""
    def verifier(prompts, completions, task_input, reference, **_) -> list[float]:
        return [float(reward(i, completion_text(c), r)) for i, c, r in zip(task_input, completions, reference)]
    return verifier


def grpo_config(cfg: TrainConfig, checkpoints: Path, device: str, prompts_per_step: int):
    from trl import GRPOConfig

    from .common import trainer_kwargs
    options = method_options(cfg, "grpo")
    kwargs = trainer_kwargs(cfg, checkpoints, device)
    # per_device_train_batch_size counts completions in TRL; see the module docstring
    kwargs |= dict(per_device_train_batch_size=prompts_per_step, gradient_accumulation_steps=options.generations)
    return GRPOConfig(**kwargs, num_generations=options.generations, max_completion_length=options.max_completion,
                      beta=options.beta)


def train_grpo(model_path: Path, records: list[dict], cfg: TrainConfig, output_dir: Path, device: str = "cpu",
               stage_seed: int = 0, checkpoints: Path | None = None, reward: Reward | None = None) -> dict:
    """Train on the records' prompts with `reward` and save the adapter (or the whole model) into
    output_dir/model."""
    from trl import GRPOTrainer

    from .common import attach_callbacks, fit, load_trainable, save_trained, tensorboard_dir
    from .fused_lora import fuse_lora_forwards
    if reward is None:
        raise ValueError("grpo needs a reward: the task's verifier or metric, reward(input, completion, reference)")
    if not records:
        raise ValueError("no training data: every example was removed or the teacher answered none")
    checkpoints = checkpoints or output_dir / "checkpoints"
    dataset = prompt_dataset(records)
    # TRL's sampler drops an incomplete last batch of prompts: never ask for more prompts than there are
    prompts_per_step = min(cfg.batch_size, len(dataset))
    model, tokenizer, notes = load_trainable(model_path, cfg, stage_seed)
    tensorboard_dir(output_dir)
    trainer = GRPOTrainer(model=model, reward_funcs=reward_function(reward),
                          args=grpo_config(cfg, checkpoints, device, prompts_per_step),
                          train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config(cfg))
    fuse_lora_forwards(trainer.model)  # the plain LoRA sum in one addmm; a disabled adapter goes to peft
    attach_callbacks(trainer)
    result = fit(trainer, checkpoints)
    notes |= {"method": "grpo", "examples": len(dataset), "generations": trainer.args.num_generations,
              "prompts_per_step": prompts_per_step}
    return save_trained(trainer, tokenizer, output_dir, checkpoints, notes, result=result)


@TRAIN.register(GRPOOptions)
def run(job: TrainJob) -> dict:
    return train_grpo(job.model_path, job.data, job.cfg, job.output_dir, job.device, job.stage_seed, job.checkpoints,
                      job.reward)
