"""Instruction evolution (Evol-Instruct, Xu et al. 2023, WizardLM): the teacher rewrites inputs of the
data so far with one of the paper's evolutions (in depth: add a constraint, deepen, concretize, ask
for more reasoning steps; in breadth: a new, rarer input of the same kind), answers the rewrites,
and the failed evolutions are eliminated as in the paper: a rewrite that is empty, unchanged (the
paper asks an LLM whether there is no information gain; here: equal after cleaning and normalization)
or that copies the evolving prompt's words ("given prompt", "rewritten prompt"), and one whose answer
is a short "sorry" or holds no letter or digit. A rewrite is cleaned and checked like every input a
teacher writes (written.py): of "#Rewritten Prompt#: ..." the rewrite is what follows the label.
Each generation evolves the survivors of the last."""

from __future__ import annotations

import random
import re
from typing import Literal

from pydantic import Field

from ..config import Strict
from ..registry import SYNTH
from ..teachers import TeacherRequest
from ..records import record_input, sft_record
from .written import WrittenInputs, context_check, count_drops


class EvolInstructStep(Strict):
    name: Literal["evol-instruct"] = Field("evol-instruct", description="Evol-Instruct: the teacher rewrites "
                                           "inputs deeper, more constrained or more varied, then answers them.")
    n: int = Field(50, ge=0, description="Inputs evolved per generation, drawn at random from the data so far "
                   "(the first generation) or from the previous generation's survivors.")
    generations: int = Field(1, ge=1, description="Rounds of evolution; each rewrites the last one's survivors "
                             "again (the paper runs 4).")
    kinds: list[Literal["constraints", "deepen", "concretize", "reasoning", "breadth"]] = Field(
        default_factory=lambda: ["constraints", "deepen", "concretize", "reasoning", "breadth"],
        description="Rewrites drawn from, one at random per input: constraints (add a requirement), deepen "
        "(ask more deeply), concretize (specific concepts), reasoning (more steps), breadth (a new, rarer input "
        "of the same kind).")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of the rewrites.")

COPIED = ("given prompt", "rewritten prompt", "created prompt")
SORRY_WORDS = 80  # the paper: a reply that says sorry in under 80 words is the teacher struggling


def failed_answer(answer: str | None) -> str | None:
    """Why the answer to a rewrite eliminates it, or None."""
    if not isinstance(answer, str) or not answer.strip():
        return "unanswered"
    if "sorry" in answer.lower() and len(answer.split()) < SORRY_WORDS:
        return "teacher struggled"
    if not re.search(r"\w", answer):
        return "answer is punctuation"
    return None


def evolve_requests(instruction: str, parents: list[str], kinds: list[str], generation: int,
                    temperature: float) -> list[TeacherRequest]:
    return [TeacherRequest("evolve", instruction, input=parent, evolution=kind, sample=generation,
                           temperature=temperature) for parent, kind in zip(parents, kinds)]


def survivors(check: WrittenInputs, requests: list[TeacherRequest], rewrites: list) -> list[tuple]:
    """(parent, kind, rewrite) of the rewrites that `check` keeps, cleaned."""
    kept = [(request, check.keep(rewrite, request)) for request, rewrite in zip(requests, rewrites)]
    return [(request.input, request.evolution, text) for request, text in kept if text is not None]


def generation_records(ctx, step, parents: list[str], generation: int, rng: random.Random,
                       check: WrittenInputs) -> list[dict]:
    """One generation: each parent rewritten with a random evolution, the survivors answered."""
    kinds = [rng.choice(step.kinds) for _ in parents]
    requests = evolve_requests(ctx.instruction, parents, kinds, generation, step.temperature)
    kept = survivors(check, requests, ctx.teacher.complete(requests))
    answers = ctx.teacher.complete([TeacherRequest("answer", ctx.instruction, input=text) for _, _, text in kept])
    records = []
    for (parent, kind, text), answer in zip(kept, answers):
        reason = failed_answer(answer)
        if reason:
            ctx.drop(reason)
            continue
        records.append(sft_record(ctx.instruction, text, answer, step.name, ctx.round, evolution=kind,
                                  generation=generation, parent=parent))
    return records


@SYNTH.register(EvolInstructStep)
def run(records: list[dict], step: EvolInstructStep, ctx) -> list[dict]:
    from .registry import task_items
    rng = random.Random(ctx.step_seed)
    parents = [text for text, _ in task_items(records, 0, ctx.step_seed)]
    check = context_check(ctx, known=[record_input(r) for r in records], prompt_words=COPIED)
    made: list[dict] = []
    for generation in range(1, step.generations + 1):
        parents = rng.sample(parents, min(step.n, ctx.left() // 2, len(parents)))
        if not parents:
            break
        new = generation_records(ctx, step, parents, generation, rng, check)
        made += new
        parents = [record_input(r) for r in new]
    count_drops(ctx, check)
    return records + made
