"""Direct Preference Optimization (Rafailov et al., 2023) on on-policy pairs, through TRL's DPOTrainer.

Each pair is a prompt, the reference answer (chosen) and one of the student's own wrong answers
(rejected), in TRL's conversational preference format; synth/preference_pairs.py builds them.

The reference model's log-probabilities are computed once, before the first step, by the student
as loaded (TRL's precompute_ref_log_probs). So no copy of the weights is kept for the reference,
whatever the adapter: with LoRA TRL computes them with the adapter disabled, and with HFT or full
fine-tuning with the model itself before it changes. A resumed run builds the trainer from the
starting model again, so its reference is the same. It also saves compute: one reference forward
per pair in all, rather than one per pair in every epoch."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from ..config import TrainConfig
from ..registry import TRAIN
from . import StartsFromSFT, TrainJob, method_options
from .adapters import peft_config

# TRL and the trainer helpers (common, fused_lora) are imported where a model trains: importing protege
# loads every method file


class DPOOptions(StartsFromSFT):
    learns_from: ClassVar[str] = "a preference pair {prompt, chosen, rejected}"
    row_keys: ClassVar[tuple[str, ...]] = ("prompt", "chosen", "rejected")
    data_stage: ClassVar[str] = "pairs"
    legacy: ClassVar[dict[str, str]] = {**StartsFromSFT.legacy, "dpo_beta": "beta", "dpo_samples": "samples"}
    name: Literal["dpo"] = Field("dpo", description="Direct preference optimization on on-policy pairs: the "
                                 "reference answer against the student's own wrong sample.")
    beta: float = Field(0.1, gt=0, description="Strength of the pull toward the reference model.")
    samples: int = Field(4, ge=1, description="Student samples per input searched for a wrong answer.")


def fitting_pairs(tokenizer, pairs: list[dict], max_length: int) -> list[dict]:
    """The pairs whose prompt leaves room for an answer within max_length. TRL drops the others
    itself, but an empty dataset then fails deep inside it; here it fails with a reason."""
    def prompt_length(pair):
        return len(tokenizer.apply_chat_template(pair["prompt"], add_generation_prompt=True, tokenize=True,
                                                 return_dict=False))
    kept = [pair for pair in pairs if prompt_length(pair) < max_length]
    if not kept:
        raise ValueError("no training data: every preference pair's prompt fills train.max_length")
    return kept


def dpo_config(cfg: TrainConfig, checkpoints: Path, device: str):
    from trl import DPOConfig

    from .common import trainer_kwargs
    return DPOConfig(**trainer_kwargs(cfg, checkpoints, device), beta=method_options(cfg, "dpo").beta,
                     max_length=cfg.max_length, precompute_ref_log_probs=True)


def build_dpo_trainer(model_path: Path, pairs: list[dict], cfg: TrainConfig, output_dir: Path,
                      device: str = "cpu", stage_seed: int = 0, checkpoints: Path | None = None):
    """(trainer, tokenizer, notes), ready to train: apart so that a test can inspect what is in memory."""
    from datasets import Dataset
    from trl import DPOTrainer

    from .common import PairCounter, load_trainable, tensorboard_dir
    from .fused_lora import fuse_lora_forwards
    if not pairs:
        raise ValueError("no preference pairs: the student answered every sampled input correctly")
    checkpoints = checkpoints or output_dir / "checkpoints"
    model, tokenizer, notes = load_trainable(model_path, cfg, stage_seed)
    kept = fitting_pairs(tokenizer, pairs, cfg.max_length)
    tensorboard_dir(output_dir)
    # no ref_model: with peft_config the reference is the base with the adapter disabled, otherwise
    # the precomputed log-probs of the starting model; TRL would otherwise load a second copy
    trainer = DPOTrainer(model=model, ref_model=None, args=dpo_config(cfg, checkpoints, device),
                         train_dataset=Dataset.from_list(kept), processing_class=tokenizer,
                         peft_config=peft_config(cfg))
    fuse_lora_forwards(trainer.model)  # the plain LoRA sum in one addmm; a disabled adapter goes to peft
    trainer.data_collator = PairCounter(trainer.data_collator)
    notes |= {"method": "dpo", "pairs": len(kept), "dropped_too_long": len(pairs) - len(kept),
              "beta": trainer.args.beta}
    return trainer, tokenizer, notes


def train_dpo(model_path: Path, pairs: list[dict], cfg: TrainConfig, output_dir: Path, device: str = "cpu",
              stage_seed: int = 0, checkpoints: Path | None = None) -> dict:
    """Train on preference pairs and save the adapter (or the whole model) into output_dir/model."""
    from .common import attach_callbacks, fit, save_trained
    checkpoints = checkpoints or output_dir / "checkpoints"
    trainer, tokenizer, notes = build_dpo_trainer(model_path, pairs, cfg, output_dir, device, stage_seed,
                                                  checkpoints)
    attach_callbacks(trainer, trainer.data_collator)
    result = fit(trainer, checkpoints)
    return save_trained(trainer, tokenizer, output_dir, checkpoints, notes, trainer.data_collator, result)


@TRAIN.register(DPOOptions)
def run(job: TrainJob) -> dict:
    return train_dpo(job.model_path, job.data, job.cfg, job.output_dir, job.device, job.stage_seed, job.checkpoints)
