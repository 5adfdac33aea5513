"""What every trainer file shares: the Trainer settings picked for the hardware, loading the
student with its adapter choice, a progress bar with tokens/s, a stop on a NaN loss, resuming
from the last checkpoint, and saving the result with its log.

Each method keeps its own file (sft.py, dpo.py, ...) that reads top to bottom, TRL-style; they
call these helpers rather than inherit from a protege base trainer."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import PrinterCallback, ProgressCallback, TrainerCallback

from ..config import TrainConfig
from ..registry import ADAPTER
from . import packed_attention
from .adapters import learning_rate


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite: the run stops and says what to change."""


def on_gpu(device: str) -> bool:
    return device == "cuda" and torch.cuda.is_available()


def fast_cpu_bf16() -> bool:
    """CPUs with AMX run bf16 matmuls several times faster than fp32; elsewhere bf16 autocast on a
    CPU is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags


def use_bf16(device: str) -> bool:
    return torch.cuda.is_bf16_supported() if on_gpu(device) else fast_cpu_bf16()


def trainer_kwargs(cfg: TrainConfig, checkpoints: Path, device: str) -> dict:
    """TrainingArguments fields shared by SFTConfig, DPOConfig, GRPOConfig and DistillationConfig.

    TRL's defaults (bf16, gradient checkpointing) suit a GPU with little memory. Checkpointing
    recomputes the forward pass, which a small student never needs; bf16 autocast pays on a GPU
    and on a CPU with AMX, and halves the speed of other CPUs."""
    gpu = on_gpu(device)
    return dict(
        output_dir=str(checkpoints), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, learning_rate=learning_rate(cfg),
        lr_scheduler_type="linear", warmup_steps=0, seed=cfg.seed, data_seed=cfg.seed,
        bf16=use_bf16(device), fp16=False, gradient_checkpointing=False, activation_checkpointing=False,
        use_cpu=not gpu, logging_steps=1, logging_nan_inf_filter=False,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1,
        report_to=[r for r in cfg.report_to if r != "none"] or "none",
        dataloader_num_workers=0, disable_tqdm=True, remove_unused_columns=False,
        ddp_find_unused_parameters=False, **data_order(cfg))


def data_order(cfg: TrainConfig) -> dict:
    """A curriculum is an order: the sampler must not shuffle it away."""
    return {"train_sampling_strategy": "sequential"} if cfg.data_order == "as-given" else {}


def load_trainable(model_path: Path, cfg: TrainConfig, stage_seed: int):
    """Model and tokenizer ready for a Trainer. LoRA is added by the trainer from peft_config;
    HFT freezes its half here, and the selection goes in the log."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32,
                                                 attn_implementation=packed_attention.register())
    notes = {"adapter": cfg.adapter.name, **ADAPTER.get(cfg.adapter.name)(model, cfg.adapter, stage_seed)}
    return model, tokenizer, notes


def frozen_linears_to_bf16(model) -> int:
    """Prepare a LoRA model for bf16 autocast without the casts that change nothing. Returns how many
    frozen linear layers were cast.

    - The frozen base weights are stored in bf16: autocast casts a frozen weight anew at every use
      (it caches only weights that train).
    - A frozen output embedding tied to the input embedding gets its own bf16 copy: the input
      lookup keeps reading the fp32 one, and autocast no longer casts the 49152 x 576 table at
      every step (on the embedded student, a 40 ms copy_ row in a profiled 1.4 s step of
      benchmarks/profile_sft_step.py --shapes; 0-4% of a step in its --ablate). The adapter saved
      is the same.
    - peft casts a bf16 input up to the fp32 LoRA weights' dtype, and autocast casts it straight
      back down for the matmul (o_proj and down_proj get bf16 inputs): peft's cast is turned off."""
    tied = model.get_input_embeddings().weight
    frozen = [module for module in model.modules() if isinstance(module, torch.nn.Linear)
              and module.weight is not tied and not any(p.requires_grad for p in module.parameters(recurse=False))]
    for module in frozen:
        module.to(torch.bfloat16)
    head = model.get_output_embeddings()
    if head is not None and head.weight is tied and not tied.requires_grad:
        head.weight = torch.nn.Parameter(tied.detach().to(torch.bfloat16), requires_grad=False)
        frozen.append(head)
    for module in model.modules():
        if hasattr(module, "lora_A"):
            module.cast_input_dtype_enabled = False
    return len(frozen)


# decoder layers that compute x + attn(input_layernorm(x)), then h + mlp(post_attention_layernorm(h))
PRE_NORM = {"llama", "mistral", "qwen2", "qwen3"}


def norm_outputs_in_autocast_dtype(model) -> int:
    """Under autocast, cast each decoder layer's norm outputs to the autocast dtype once. The norm
    runs in fp32 and its output feeds up to 10 linear layers (q, k, v, gate and up, and their LoRA
    branches), each of which autocast casts on its own, forward and backward: 20 casts of the
    hidden states a layer become 2. The forward numbers are the same; the gradients of the 10
    consumers are summed in bf16 before the one cast back (each is already a bf16 matmul's output).
    Only the pre-norm families listed in PRE_NORM: elsewhere (Gemma, OLMo 2) a norm of the same
    name normalizes a block's output on its way into the fp32 residual stream. Returns how many
    norms were hooked; the final norm (feeding only the answer positions) is left."""
    def to_autocast_dtype(module, args, output):
        device = output.device.type
        return output.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else output

    if model.config.model_type not in PRE_NORM:
        return 0
    norms = [module for layer in model.get_decoder().layers for name, module in layer.named_children()
             if name in ("input_layernorm", "post_attention_layernorm")]
    for norm in norms:
        norm.register_forward_hook(to_autocast_dtype)
    return len(norms)


class TokenCounter:
    """Wraps a data collator to count the tokens and answer tokens of every batch it builds."""

    def __init__(self, collator):
        self.collator, self.tokens, self.answer_tokens = collator, 0, 0

    def __call__(self, examples):
        batch = self.collator(examples)
        labels = batch.get("labels")
        if labels is not None:
            self.answer_tokens += int((labels != -100).sum())
        self.tokens += int(batch["input_ids"].numel())
        return batch


class PairCounter(TokenCounter):
    """TokenCounter for preference batches: the answer tokens are those of completion_mask
    (chosen and rejected alike); the batch carries no labels."""

    def __call__(self, examples):
        batch = self.collator(examples)
        self.tokens += int(batch["input_ids"].numel())
        self.answer_tokens += int(batch["completion_mask"].sum())
        return batch


class Progress(ProgressCallback):
    """transformers' bar, plus tokens/s and answer tokens/s when the trainer counts them."""

    def __init__(self, counter: TokenCounter | None = None):
        super().__init__()
        self.counter, self.start, self.loss = counter, None, float("nan")

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()
        return super().on_train_begin(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is None:
            return
        elapsed = max(time.time() - self.start, 1e-9)
        self.loss = (logs or {}).get("loss", self.loss)
        shown = {"loss": f"{self.loss:.3f}"}
        if self.counter is not None:
            shown["tok/s"] = f"{self.counter.tokens / elapsed:.0f}"
            shown["answer tok/s"] = f"{self.counter.answer_tokens / elapsed:.0f}"
        self.training_bar.set_postfix(shown)


class StopOnNaN(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, float) and not math.isfinite(value):
                raise TrainingDiverged(
                    f"training stopped: {key} became {value} at step {state.global_step}; lower "
                    f"train.learning_rate (it was {args.learning_rate:g}) or check the data")


def attach_callbacks(trainer, counter: TokenCounter | None = None) -> None:
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)  # the logs go to train_log.json and TensorBoard
    trainer.add_callback(StopOnNaN())
    if trainer.is_world_process_zero():
        trainer.add_callback(Progress(counter))


def last_complete_checkpoint(checkpoints: Path) -> str | None:
    """The newest checkpoint-N that was written to the end. The Trainer writes trainer_state.json
    after the weights, optimizer and RNG states, so a run killed mid-save leaves a folder without
    a readable one; that folder is skipped, not resumed from."""
    found = sorted(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for folder in found:
        try:
            json.loads((folder / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        return str(folder)
    return None


def fit(trainer, checkpoints: Path):
    """Train, resuming from the newest complete checkpoint a killed run left in `checkpoints`."""
    return trainer.train(resume_from_checkpoint=last_complete_checkpoint(checkpoints))


def tensorboard_dir(output_dir: Path) -> None:
    # the Trainer writes its event files under output_dir/tensorboard, not the checkpoints
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(output_dir / "tensorboard")


def save_trained(trainer, tokenizer, output_dir: Path, checkpoints: Path, notes: dict,
                 counter: TokenCounter | None = None, result=None) -> dict:
    """Save the adapter (LoRA) or the whole model with its tokenizer into output_dir/model, and
    train_log.json beside it; the checkpoints go once the result is safe."""
    trainer.save_model(str(output_dir / "model"))
    log = {"metrics": result.metrics if result else {}, "history": trainer.state.log_history, **notes}
    if counter is not None:
        log["tokens"] = {"all": counter.tokens, "answer": counter.answer_tokens}
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir / "model")
        (output_dir / "train_log.json").write_text(json.dumps(log, indent=2, default=str))
        shutil.rmtree(checkpoints, ignore_errors=True)
    return log
