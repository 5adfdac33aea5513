"""Critique fine-tuning (CFT, Wang et al. 2025): the student learns to write the teacher's critiques
of candidate solutions (synth/critique.py) instead of imitating answers, optionally mixed with plain
SFT examples. The training itself is SFT on the mixed chat records."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from ..config import TrainConfig
from ..registry import TRAIN
from . import MethodOptions, TrainJob, method_options
from .sft import train_sft


class CFTOptions(MethodOptions):
    legacy: ClassVar[dict[str, str]] = {"cft_ratio": "ratio", "cft_candidates": "candidates"}
    data_stage: ClassVar[str] = "critiques"
    name: Literal["cft"] = Field("cft", description="Critique fine-tuning: learn to write the teacher's critiques "
                                 "of candidate answers (the student's own samples and the reference).")
    ratio: float = Field(1.0, gt=0, le=1, description="Share of critique examples in the mix; the rest are plain "
                         "SFT examples (1.0: critiques only).")
    candidates: int = Field(2, ge=1, description="Student samples per input to be critiqued, besides the "
                            "teacher's answer.")


def cft_sft_count(n_critiques: int, n_sft: int, ratio: float) -> int:
    """How many plain SFT examples go beside n_critiques critiques so that critiques make up `ratio`
    of the mix (fewer when only n_sft exist)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"cft ratio must be in (0, 1], got {ratio}")
    wanted = n_critiques * (1 - ratio) / ratio
    return min(n_sft, math.floor(wanted + 0.5 + 1e-9))  # nearest, halves up, float noise aside


def cft_mix(critiques: list[dict], sft_records: list[dict], ratio: float, seed: int) -> list[dict]:
    """Every critique, then plain SFT examples drawn (seeded, without replacement) from sft_records
    so that critiques are `ratio` of the result: 1.0 gives the critiques only, 0.5 as many SFT
    examples as critiques. When sft_records has too few, all of them are used."""
    n_sft = cft_sft_count(len(critiques), len(sft_records), ratio)
    return list(critiques) + random.Random(seed).sample(list(sft_records), n_sft)


def train_cft(model_path: Path, critiques: list[dict], sft_records: list[dict], cfg: TrainConfig,
              output_dir: Path, device: str = "cpu", stage_seed: int = 0,
              checkpoints: Path | None = None) -> dict:
    """SFT on critiques mixed with plain examples by the cft ratio; the log (returned and in
    output_dir/train_log.json) says method "cft" and what the mix held."""
    if not critiques:
        raise ValueError("no critique data: the teacher wrote no critique that ended with a verdict")
    ratio = method_options(cfg, "cft").ratio
    mix = cft_mix(critiques, sft_records, ratio, seed=cfg.seed * 1_000_003 + stage_seed)
    cft = {"ratio": ratio, "critiques": len(critiques), "sft": len(mix) - len(critiques),
           "verdicts": {"correct": sum(1 for r in critiques if r.get("verdict") is True),
                        "incorrect": sum(1 for r in critiques if r.get("verdict") is False)}}
    return train_sft(model_path, mix, cfg, Path(output_dir), device, stage_seed, checkpoints,
                     notes={"method": "cft", "cft": cft})


@TRAIN.register(CFTOptions)
def run(job: TrainJob) -> dict:
    return train_cft(job.model_path, job.data, job.sft_records or [], job.cfg, job.output_dir, job.device,
                     job.stage_seed, job.checkpoints)
