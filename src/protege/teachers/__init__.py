"""Teachers behind one interface (base.Teacher), each wrapped by the SQLite cache. Each kind is a file
here that declares its options (a TeacherConfig) and registers its builder with
`@TEACHER.register(Options)` (protege.registry)."""

from __future__ import annotations

from pathlib import Path

from ..config import TeacherConfig
from ..registry import TEACHER
from .base import (JsonAnswers, Teacher, TeacherError, TeacherRequest, TeacherStats, TeacherTaskError, Usage,
                   act_reply, act_request)
from .cache import CacheError, CachedTeacher, TeacherCache, affordable
from .function import FunctionTeacher, load_callable, load_task_function
from .openai_api import OpenAITeacher


def build_teacher(cfg: TeacherConfig, task_dir: Path, student=None,
                  answers: JsonAnswers | None = None) -> Teacher:
    """The teacher cfg.kind names. student: (load() -> (model, tokenizer), identity), needed by the self
    teacher only. answers: the task's answers are JSON, for a teacher that can ask for that shape."""
    teacher = TEACHER.get(cfg.kind)(cfg, task_dir, student)
    if answers is not None and hasattr(teacher, "answers"):  # only a kind that asks for shapes has it
        teacher.answers = answers
    return teacher


def cached_teacher(cfg: TeacherConfig, task_dir: Path, student=None,
                   answers: JsonAnswers | None = None) -> CachedTeacher:
    """The teacher cfg names, behind the shared SQLite cache: the task's teacher, a judge, an
    ensemble's member."""
    return CachedTeacher(build_teacher(cfg, task_dir, student, answers), TeacherCache(),
                         {"max_tokens": cfg.max_tokens})


__all__ = ["act_reply", "act_request", "JsonAnswers", "Teacher", "TeacherRequest", "CachedTeacher", "CacheError", "TeacherCache",
           "TeacherStats", "TeacherError", "TeacherTaskError", "Usage", "FunctionTeacher", "OpenAITeacher",
           "affordable", "build_teacher", "cached_teacher", "load_callable", "load_task_function"]
