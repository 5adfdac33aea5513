"""Stages of a run and their keys. A stage declares what it reads as a frozen dataclass of inputs;
its key is built from every field of that dataclass, here and nowhere else, and its build reads its
inputs from that object, so an input cannot be read without being part of the key.

Key values: a pydantic model is its model_dump(), a Path is the digest of the file's bytes, lists
and dicts are keyed item by item, anything else as it is."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from ..runs import file_digest, read_json, write_json
from ..teachers import CachedTeacher
from .state import RunState


def key_value(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, Path):
        return file_digest(value)
    if isinstance(value, (list, tuple)):
        return [key_value(v) for v in value]
    if isinstance(value, dict):
        return {k: key_value(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class StageInputs:
    """Base of every stage's declared inputs."""

    def key(self) -> dict:
        return {f.name: key_value(getattr(self, f.name)) for f in fields(self)}


def stage(state: RunState, name: str, inputs: StageInputs, build: Callable[[Path], None]) -> Path:
    """The stage's folder, built first unless a stage with the same name and inputs is done."""
    folder, _ = state.run.stage(name, inputs.key(), build)
    return folder


def teacher_stage(state: RunState, name: str, inputs: StageInputs, build: Callable[[Path], int | None],
                  teacher: CachedTeacher | None = None, count_requests: bool = False) -> Path:
    """A stage that asks the task's teacher (or another one, e.g. a judge). Its teacher.json records
    what it asked and what that cost; this helper charges the budget from it, also when the stage was
    done by an earlier run. Tokens are charged for every stage that asks the task's teacher, which
    stops sending requests once they are spent; requests are charged when `count_requests` (the
    synthesis budget). `build` may return requests made to other teachers (an ensemble's), charged too."""
    start = time.time()
    teacher = teacher or state.teacher
    charged = teacher is state.teacher
    before = teacher.stats.copy()

    def recorded(out: Path) -> None:
        with teacher.allowance(state.budget.tokens_left if charged else None):
            extra = build(out) or 0
        used = teacher.stats.minus(before)
        teacher.check_drops(used)  # a stage most of whose replies were dropped stops, saying why
        write_json(out / "teacher.json", {**used.as_dict(), "extra_requests": extra, "seconds": time.time() - start})

    folder = stage(state, name, inputs, recorded)
    if charged:
        state.budget.charge(read_json(folder / "teacher.json"), count_requests)
    return folder
