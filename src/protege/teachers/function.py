"""A Python callable as the teacher: offline examples, rule-based labelers, tests."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Callable, Literal

from pydantic import Field

from ..config import TeacherConfig
from ..registry import TEACHER
from .base import TeacherError, TeacherRequest, act_reply


class FunctionTeacherConfig(TeacherConfig):
    kind: Literal["function"] = Field("function", description="A Python callable answers: offline examples, "
                                      "rule-based labelers, tests.")
    function: str = Field("", description="module:attr of the teacher callable (request -> reply); modules are "
                          "looked up in the task directory first.")


def load_callable(spec: str, search_dir: Path | None = None) -> Callable:
    """Import `module:attr`, looking in search_dir (the task's folder) first."""
    if ":" not in spec:
        raise ValueError(f"expected module:attr, got {spec!r}")
    module_name, attr = spec.split(":", 1)
    module = _task_module(module_name, search_dir) or importlib.import_module(module_name)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{spec}: {attr!r} is not a callable in {module.__file__}")
    return fn


def _task_module(module_name: str, search_dir: Path | None):
    """Load search_dir/module.py under a name unique to its path: two tasks that both ship a
    `teacher.py` must not share one cached module."""
    path = search_dir / f"{module_name.replace('.', '/')}.py" if search_dir else None
    if path is None or not path.is_file():
        return None
    unique = "protege_task_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    if unique in sys.modules:
        return sys.modules[unique]
    spec = importlib.util.spec_from_file_location(unique, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module
    with importable(search_dir):  # a task module may import its folder's other modules
        spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def importable(folder: Path):
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


class FunctionTeacher:
    name = "function"

    def __init__(self, spec: str, search_dir: Path | None = None):
        self.spec = spec
        self.fn = load_callable(spec, search_dir)
        # the source's hash is part of the identity: editing the teacher invalidates its cache
        source = inspect.getsourcefile(self.fn) or ""
        self.version = hashlib.sha256(Path(source).read_bytes()).hexdigest()[:12] if source else ""

    def identity(self) -> str:
        return f"function:{self.spec}@{self.version}"

    def complete(self, requests: list[TeacherRequest], on_reply=None) -> list[str | None]:
        replies = []
        for i, request in enumerate(requests):
            reply = self.fn(request)
            if request.purpose == "act":  # the next assistant message: a dict, or a final answer
                reply = act_reply(reply)
            reply = reply.strip() if isinstance(reply, str) and reply.strip() else None
            replies.append(reply)
            if on_reply:
                on_reply(i, reply)
        return replies


@TEACHER.register(FunctionTeacherConfig)
def build(cfg: FunctionTeacherConfig, task_dir: Path, student=None) -> FunctionTeacher:
    if not cfg.function:
        raise TeacherError("teacher.function (module:attr) is required for kind=function")
    return FunctionTeacher(cfg.function, task_dir)
