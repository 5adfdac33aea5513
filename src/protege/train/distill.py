"""Knowledge distillation: the student learns the teacher's next-token distributions (logit
distillation, through TRL's GKDTrainer) or, with no teacher model, the teacher's answers
(sequence-level distillation, which is SFT on the records).

Logit distillation compares the two distributions token id by token id, so the teacher must share
the student's tokenizer; that is checked before either model is loaded.

TRL has two logit-distillation trainers. The stable DistillationTrainer always trains on the
student's own samples (it has a `beta` but no `lmbda`), so it can express neither the
teacher-forced forward KL nor GKD's mix of both kinds of batch. The GKDTrainer
(trl.experimental.gkd) has both knobs and expresses all three losses:

    train.distill_loss   GKDConfig.lmbda         GKDConfig.beta       what is minimized, per answer token
    forward-kl           0 (teacher-forced)      0                    KL(teacher || student) on the records' answers
    reverse-kl           1 (on-policy)           1                    KL(student || teacher) on the student's samples
    gkd                  train.distill_lambda    train.distill_beta   generalized JSD on a mix of both

`lmbda` is the chance that a batch's answers are replaced by the student's own samples; `beta`
picks the divergence: 0 is KL(teacher || student), 1 is KL(student || teacher), between them
beta KL(teacher || M) + (1 - beta) KL(student || M) with M = beta teacher + (1 - beta) student
(arXiv:2306.13649, Eq. 1). The loss covers the tokens of each record's last assistant turn."""

from __future__ import annotations

from pathlib import Path

from ..config import TrainConfig
from ..models import model_dir
from .adapters import peft_config
from .common import TokenCounter, attach_callbacks, fit, load_trainable, save_trained, tensorboard_dir, trainer_kwargs
from .fused_lora import fuse_lora_forwards
from .sft import render, train_sft

# train.distill_loss -> (lmbda, beta) of TRL's GKDConfig; gkd reads both from the config
LOSSES = {"forward-kl": (0.0, 0.0), "reverse-kl": (1.0, 1.0)}


def loss_parameters(cfg: TrainConfig) -> tuple[float, float]:
    if cfg.distill_loss == "gkd":
        return cfg.distill_lambda, cfg.distill_beta
    return LOSSES[cfg.distill_loss]


def check_same_tokenizer(student: Path, teacher: Path) -> None:
    """Raise ValueError unless both models map the same tokens to the same ids and have logits of
    the same width."""
    from transformers import AutoConfig, AutoTokenizer

    s_vocab, t_vocab = (AutoTokenizer.from_pretrained(p).get_vocab() for p in (student, teacher))
    if s_vocab != t_vocab:
        moved = sorted(set(s_vocab.items()) ^ set(t_vocab.items()), key=lambda kv: kv[1])[:3]
        raise ValueError(
            f"train.distill_teacher {teacher} does not share the student's tokenizer ({len(s_vocab)} tokens in the "
            f"student's, {len(t_vocab)} in the teacher's; they differ at e.g. {moved}); logit distillation "
            "compares the two next-token distributions id by id, so pick a teacher of the student's model family, "
            "or leave train.distill_teacher empty for sequence-level distillation (SFT on the teacher's answers)")
    s_size, t_size = (AutoConfig.from_pretrained(p).get_text_config().vocab_size for p in (student, teacher))
    if s_size != t_size:
        raise ValueError(
            f"train.distill_teacher {teacher} has {t_size} logits per token and the student {s_size}; they share "
            "a tokenizer but not the output layer, so their distributions cannot be compared; pick a teacher "
            "whose config has the student's vocab_size")


def answer_dataset(tokenizer, records: list[dict], max_length: int):
    """The records ending in an assistant turn, as {"messages"} rows for TRL's ChatML collator (the
    prompt is every message before the last, the answer is the last); and the longest answer in
    tokens, which bounds what the student samples on-policy."""
    from datasets import Dataset
    rows = [{"messages": r["messages"]} for r in records
            if len(r["messages"]) > 1 and r["messages"][-1]["role"] == "assistant"]
    if not rows:
        raise ValueError("no training data: no record ends with an assistant turn")
    longest = max(len(render(tokenizer, row["messages"], False)) - len(render(tokenizer, row["messages"][:-1], True))
                  for row in rows)
    return Dataset.from_list(rows), max(1, min(longest, max_length))


def gkd_config(cfg: TrainConfig, checkpoints: Path, device: str, max_new_tokens: int):
    from trl.experimental.gkd import GKDConfig
    lmbda, beta = loss_parameters(cfg)
    # temperature only shapes the on-policy samples (TRL's loss uses 1): 1 samples from the student itself
    return GKDConfig(**trainer_kwargs(cfg, checkpoints, device), lmbda=lmbda, beta=beta, temperature=1.0,
                     max_new_tokens=max_new_tokens, max_length=cfg.max_length)


def load_teacher(path: Path, bf16: bool):
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if bf16 else torch.float32)
    return model.eval().requires_grad_(False)


def sequence_level(model_path: Path, records: list[dict], cfg: TrainConfig, output_dir: Path, device: str,
                   stage_seed: int, checkpoints: Path | None) -> dict:
    """No teacher model: the records already hold the teacher's answers, and learning them is SFT
    (Kim & Rush, 2016); the log says so."""
    return train_sft(model_path, records, cfg, output_dir, device, stage_seed, checkpoints,
                     notes={"method": "distill-sequence"})


def train_distill(model_path: Path, records: list[dict], cfg: TrainConfig, output_dir: Path, device: str = "cpu",
                  stage_seed: int = 0, checkpoints: Path | None = None) -> dict:
    """Distill into the student and save the adapter (or the whole model) into output_dir/model."""
    from trl.experimental.gkd import GKDTrainer

    if not records:
        raise ValueError("no training data: every example was removed or the teacher answered none")
    if not cfg.distill_teacher:
        return sequence_level(model_path, records, cfg, output_dir, device, stage_seed, checkpoints)
    teacher_path = model_dir(cfg.distill_teacher)
    check_same_tokenizer(model_path, teacher_path)
    checkpoints = checkpoints or output_dir / "checkpoints"
    model, tokenizer, notes = load_trainable(model_path, cfg, stage_seed)
    dataset, max_new_tokens = answer_dataset(tokenizer, records, cfg.max_length)
    args = gkd_config(cfg, checkpoints, device, max_new_tokens)
    tensorboard_dir(output_dir)
    trainer = GKDTrainer(model=model, teacher_model=load_teacher(teacher_path, args.bf16),
                         args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config(cfg))
    fuse_lora_forwards(trainer.model)  # the plain LoRA sum in one addmm; a disabled adapter goes to peft
    # the collated batch is what trains only when no batch is replaced by the student's samples
    counter = None
    if args.lmbda == 0:
        trainer.data_collator = counter = TokenCounter(trainer.data_collator)
    attach_callbacks(trainer, counter)
    result = fit(trainer, checkpoints)
    notes |= {"method": "distill", "examples": len(dataset), "teacher": str(teacher_path),
              "loss": cfg.distill_loss, "lmbda": args.lmbda, "beta": args.beta, "max_new_tokens": max_new_tokens}
    return save_trained(trainer, tokenizer, output_dir, checkpoints, notes, counter, result)
