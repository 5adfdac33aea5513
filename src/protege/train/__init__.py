"""Training methods, one file each (TRL-style: a trainer file reads top to bottom). `train_method`
only picks the file that train.method names; each method takes the data it learns from:
chat records (sft, masked-thought, cft, distill, grpo) or preference pairs (dpo)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..config import TrainConfig


def check_rows(rows: list[dict], method: str, source: Path) -> None:
    """Fail on the first row that is not what `method` learns from, naming the file and line,
    before any model loads."""
    needed = ("prompt", "chosen", "rejected") if method == "dpo" else ("messages",)
    for line, row in enumerate(rows, 1):
        missing = [key for key in needed if not isinstance(row, dict) or key not in row]
        if missing:
            kind = "a preference pair {prompt, chosen, rejected}" if method == "dpo" else "a chat record {messages}"
            raise ValueError(f"{source}:{line}: {method} trains on {kind}; this row has no {', '.join(missing)}")


def train_method(method: str, model_path: Path, data: list[dict], cfg: TrainConfig, output_dir: Path,
                 device: str = "cpu", stage_seed: int = 0, checkpoints: Path | None = None,
                 reward: Callable[[str, str, str], float] | None = None,
                 sft_records: list[dict] | None = None) -> dict:
    """Train `model_path` with `method` and save into output_dir/model; returns the training log.
    cft learns from critique records mixed with sft_records; grpo needs reward(input, completion,
    reference)."""
    common = dict(cfg=cfg, output_dir=output_dir, device=device, stage_seed=stage_seed, checkpoints=checkpoints)
    if method == "sft":
        from .sft import train_sft
        return train_sft(model_path, data, **common)
    if method == "masked-thought":
        from .masked_thought import train_masked_thought
        return train_masked_thought(model_path, data, **common)
    if method == "cft":
        from .cft import train_cft
        return train_cft(model_path, data, sft_records or [], **common)
    if method == "dpo":
        from .dpo import train_dpo
        return train_dpo(model_path, data, **common)
    if method == "distill":
        from .distill import train_distill
        return train_distill(model_path, data, **common)
    if method == "grpo":
        from .grpo import train_grpo
        if reward is None:
            raise ValueError("grpo needs a reward: the task's metric against the reference answer")
        return train_grpo(model_path, data, reward=reward, **common)
    raise ValueError(f"unknown train.method {method!r}")
