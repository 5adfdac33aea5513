"""Teachers behind one interface (base.Teacher), each wrapped by the SQLite cache."""

from __future__ import annotations

from pathlib import Path

from ..config import TeacherConfig
from .base import Teacher, TeacherRequest, TeacherStats, Usage
from .cache import CachedTeacher, TeacherCache, affordable
from .function import FunctionTeacher, load_callable
from .openai_api import OpenAITeacher, TeacherError


def build_teacher(cfg: TeacherConfig, task_dir: Path, student=None) -> Teacher:
    """student: (load() -> (model, tokenizer), identity), needed by the self teacher only."""
    if cfg.kind == "function":
        if not cfg.function:
            raise TeacherError("teacher.function (module:attr) is required for kind=function")
        return FunctionTeacher(cfg.function, task_dir)
    if cfg.kind == "openai":
        return OpenAITeacher(cfg)
    if cfg.kind == "local":
        from .local import LocalTeacher  # imports torch and transformers only when asked for
        return LocalTeacher(cfg, task_dir)
    from .self_verify import SelfTeacher
    if not cfg.verifier:
        raise TeacherError("teacher.verifier (module:attr(input, answer) -> bool) is required for kind=self")
    load, identity = student
    return SelfTeacher(load, load_callable(cfg.verifier, task_dir), cfg.samples,
                       max_new_tokens=cfg.max_tokens, identity=identity)


__all__ = ["Teacher", "TeacherRequest", "CachedTeacher", "TeacherCache", "TeacherStats", "TeacherError", "Usage",
           "affordable", "build_teacher", "load_callable"]
