"""Seed expansion (Self-Instruct): new inputs from a task generator, or written by the teacher
from k random seeds per request; then labeled by the teacher."""

from __future__ import annotations

import random

from ..teachers import TeacherRequest, load_callable


def inputs_from_generator(spec: str, task_dir, n: int, seed: int) -> list[str]:
    return [str(x) for x in load_callable(spec, task_dir)(n, seed)]


def inputs_from_teacher(teacher, instruction: str, pool: list[str], n: int, k: int, seed: int,
                        tag: str = "expand") -> list[str]:
    """n requests, each showing the teacher k inputs drawn from pool; duplicates are dropped later."""
    if not pool or n <= 0:
        return []
    rng = random.Random(seed)
    requests = [TeacherRequest("write_input", instruction, examples=tuple(rng.sample(pool, min(k, len(pool)))),
                               sample=i, temperature=1.0) for i in range(n)]
    return [r for r in teacher.complete(requests) if r]
