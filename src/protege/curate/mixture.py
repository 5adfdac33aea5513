"""Mixture: general instructions added to the task data to limit forgetting (Shi et al., 2023,
"Specialist or Generalist?"; Dong et al., 2024, DMT: a small share of general data keeps general
ability at little cost to the task).

The prompts are protege's own (general/prompts.jsonl: explanations, advice, writing, rewriting,
brainstorming, small code tasks), written apart from the forgetting probe and tested not to overlap
it, so the probe still measures what the student lost. By default the base student answers them itself
(self-replay): training on its own general answers pulls it back toward its base behaviour, costs no
teacher request, and suits any teacher, including a Python function that only knows the task. With
answer_by: teacher an LLM teacher answers instead. General records carry no system message (the task's
instruction is for task inputs) and meta.source "general"."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Literal

from pydantic import Field

from ..config import Strict
from ..records import sft_record
from ..registry import CURATE
from ..synth.label import label_inputs
from .context import CurateContext


class MixtureStep(Strict):
    name: Literal["mixture"] = Field("mixture", description="Add general instructions (shipped with protege, "
                                     "none from the forgetting probe) to limit forgetting.")
    ratio: float = Field(0.1, gt=0, le=1, description="General examples added per task example (at most the "
                         "whole pool of about 150).")
    answer_by: Literal["student", "teacher"] = Field(
        "student", description="student: the base student answers (self-replay: keeps its own general "
        "behaviour, no teacher cost); teacher: the task's teacher answers (an LLM teacher only).")
    max_new_tokens: int = Field(128, gt=0, description="Longest general answer the base student writes.")

GENERAL_PROMPTS = Path(__file__).parent / "general" / "prompts.jsonl"
SOURCE = "general"


def general_prompts() -> list[str]:
    return [json.loads(line)["prompt"] for line in GENERAL_PROMPTS.read_text(encoding="utf-8").splitlines() if line]


def mixture_size(task_examples: int, ratio: float, pool: int) -> int:
    return min(pool, round(ratio * task_examples))


def self_replay(prompts: list[str], cfg: MixtureStep, ctx: CurateContext) -> list[dict]:
    from ..models.generate import generate
    model, tokenizer = ctx.need("student", cfg.name)()
    answers = generate(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts],
                       max_new_tokens=cfg.max_new_tokens, desc="general answers (self-replay)")
    return [sft_record("", p, a, SOURCE, ctx.round) for p, a in zip(prompts, answers) if a.strip()]


@CURATE.register(MixtureStep)
def run(records: list[dict], cfg: MixtureStep, ctx: CurateContext) -> tuple[list[dict], list[dict]]:
    pool = general_prompts()
    prompts = random.Random(ctx.seed).sample(pool, mixture_size(len(records), cfg.ratio, len(pool)))
    if not prompts:
        return records, []
    if cfg.answer_by == "student":
        general = self_replay(prompts, cfg, ctx)
    else:
        general, _ = label_inputs(ctx.need("teacher", cfg.name), "", prompts, SOURCE, ctx.round)
    ctx.say(f"curate mixture: {len(general)} general examples added ({cfg.answer_by} answers)")
    return records + general, []
