"""A Python callable as the teacher: offline examples, rule-based labelers, tests.

The function is the task's own code, so what goes wrong in it is reported as the task's error
(TeacherTaskError), with the file and line in the task's code it came from: a module that is missing,
does not parse or raises while it is imported; a call that raises (SystemExit included). A call that
returns no text (None, an int, a dict where text is asked for, a blank string) or does not return
within `timeout` seconds gives no reply: it is dropped and counted by reason, and the stage stops when
most of its replies were (CachedTeacher.check_drops)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field

from ..config import TeacherConfig
from ..registry import TEACHER
from .base import TeacherRequest, TeacherStats, TeacherTaskError, act_reply

PROTEGE = Path(__file__).resolve().parents[1]
TIMEOUTS_IN_A_ROW = 3  # then the function hangs on every request, and waiting out the rest tells nothing more


class FunctionTeacherConfig(TeacherConfig):
    kind: Literal["function"] = Field("function", description="A Python callable answers: offline examples, "
                                      "rule-based labelers, tests.")
    function: str = Field("", description="module:attr of the teacher callable (request -> reply); modules are "
                          "looked up in the task directory first.")
    timeout: float = Field(60.0, gt=0, description="Seconds one call of the function may take. A call that takes "
                           "longer is abandoned (Python cannot stop it: it finishes unseen in a background "
                           "thread) and its reply dropped, counted as a timeout; "
                           f"{TIMEOUTS_IN_A_ROW} in a row stop the run.")


def load_callable(spec: str, search_dir: Path | None = None) -> Callable:
    """Import `module:attr`, looking in search_dir (the task's folder) first. ValueError for a bad
    spec or attr; ImportError, naming the file and line of the task's own code, for a module that is
    missing or fails to import."""
    if ":" not in spec:
        raise ValueError(f"expected module:attr, got {spec!r}")
    module_name, attr = spec.split(":", 1)
    module = import_task_module(module_name, search_dir)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{spec}: {attr!r} is not a callable in {module.__file__}")
    return fn


def import_task_module(module_name: str, folder: Path | None):
    """The module, imported with the task's folder first on the import path: a task module may import
    the modules beside it."""
    try:
        with importable(folder):
            return _task_module(module_name, folder) or importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name + ".").startswith(exc.name + "."):  # the module itself, not one it imports
            raise ModuleNotFoundError(f"no module {module_name!r} in {folder or 'no task folder'} or on the "
                                      "import path", name=module_name) from None
        raise ImportError(f"{user_frame(exc, folder)}: {raised(exc)}") from None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a module calling sys.exit() at import is the task's error too
        raise ImportError(f"{user_frame(exc, folder)}: {raised(exc)}") from None


def _task_module(module_name: str, search_dir: Path | None):
    """Load search_dir/module.py (a top-level module, not a package's) under a name unique to its path:
    two tasks that both ship a `teacher.py` must not share one cached module."""
    path = search_dir / f"{module_name}.py" if search_dir and "." not in module_name else None
    if path is None or not path.is_file():
        return None
    unique = "protege_task_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    if unique in sys.modules:
        return sys.modules[unique]
    spec = importlib.util.spec_from_file_location(unique, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[unique]  # a module that failed to import is not kept half-made for the next load
        raise
    return module


@contextlib.contextmanager
def importable(folder: Path | None):
    if folder is None:
        yield
        return
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def user_frame(exc: BaseException, folder: Path | None) -> str:
    """file:line where the task's code failed: a syntax error's own place, else the innermost frame of
    the traceback in the task's folder, else the innermost one outside protege and the import system."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    frames = traceback.extract_tb(exc.__traceback__)
    files = [f for f in frames if not f.filename.startswith("<")]  # <frozen importlib._bootstrap> and the like
    mine = [f for f in files if folder is not None and Path(f.filename).resolve().is_relative_to(folder.resolve())]
    theirs = [f for f in files if not Path(f.filename).resolve().is_relative_to(PROTEGE)]
    frame = (mine or theirs or frames or [None])[-1]
    return f"{frame.filename}:{frame.lineno}" if frame else "(no traceback)"


def raised(exc: BaseException) -> str:
    text = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_task_function(spec: str, task_dir: Path | None, field: str) -> Callable:
    """A callable the task's teacher section names (field: where), or the task's error saying why not."""
    try:
        return load_callable(spec, task_dir)
    except (ImportError, ValueError) as exc:
        raise TeacherTaskError(f"{field} {spec}: {exc}") from None


def usable_reply(value: Any, purpose: str) -> tuple[str | None, str | None]:
    """(reply, None) for what the function returned, or (None, why it is no reply). An agent's step
    (purpose act) takes an assistant message (a dict) or a final answer (a string); all else, a string."""
    if isinstance(value, str) and not value.strip():
        return None, "returned an empty string"
    if purpose == "act" and isinstance(value, (str, dict)):
        try:
            reply = act_reply(value)
        except (KeyError, TypeError, AttributeError):  # a tool call without a function or a name
            return None, "returned a malformed tool call"
        return (reply, None) if reply else (None, "returned a message with neither content nor tool calls")
    if not isinstance(value, str):
        return None, f"returned {'None' if value is None else type(value).__name__}"
    return value.strip(), None


def call_with_limit(fn: Callable, argument: Any, seconds: float) -> tuple[str, Any]:
    """("returned", value), ("raised", exception) or ("timeout", None). The call runs in a daemon thread:
    Python cannot stop a thread, so one that hangs is abandoned, and never holds the process open at exit."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["returned"] = fn(argument)
        except BaseException as exc:  # noqa: BLE001 - SystemExit must not end the thread unseen
            outcome["raised"] = exc

    worker = threading.Thread(target=call, daemon=True, name="teacher-function")
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        return "timeout", None
    return next(iter(outcome.items()))


def shown(request: TeacherRequest) -> str:
    """The request, briefly, for an error line."""
    users = [m.get("content") for m in request.messages() if m.get("role") == "user"]
    text = str(request.input or (users[0] if users else "") or "")
    return f"the {request.purpose} request for {text[:60]!r}" if text else f"a {request.purpose} request"


class FunctionTeacher:
    name = "function"
    user_code = True  # what goes wrong in it is the task's (TeacherTaskError)
    reply_rule = "it must return a string (for an agent's act request: an assistant message as a dict, or a string)"

    def __init__(self, spec: str, search_dir: Path | None = None, timeout: float = 60.0):
        self.spec, self.folder, self.timeout = spec, search_dir, timeout
        self.fn = load_task_function(spec, search_dir, "teacher.function")
        self.stats = TeacherStats()
        # the source's hash is part of the identity: editing the teacher invalidates its cache
        source = inspect.getsourcefile(self.fn) or ""
        self.version = hashlib.sha256(Path(source).read_bytes()).hexdigest()[:12] if source else ""

    @property
    def label(self) -> str:
        return self.spec

    def identity(self) -> str:
        return f"function:{self.spec}@{self.version}"

    def complete(self, requests: list[TeacherRequest], on_reply=None) -> list[str | None]:
        self.stats.requests += len(requests)
        self.stats.paid += len(requests)
        replies, timeouts = [], 0
        for i, request in enumerate(requests):
            reply, why = self.reply(request)
            if why:
                self.stats.drop(why)
            timeouts = timeouts + 1 if why == "timeout" else 0
            if timeouts == TIMEOUTS_IN_A_ROW:
                raise TeacherTaskError(f"teacher.function {self.spec} did not return within {self.timeout:g} s "
                                       f"on {timeouts} requests in a row, the last {shown(request)}; give it "
                                       "longer with teacher.timeout if it needs that")
            replies.append(reply)
            if on_reply:
                on_reply(i, reply)
        return replies

    def reply(self, request: TeacherRequest) -> tuple[str | None, str | None]:
        """(reply, None), or (None, why it was dropped); TeacherTaskError when the function raised."""
        with importable(self.folder):  # the function may import its neighbours when it runs
            how, value = call_with_limit(self.fn, request, self.timeout)
        if how == "timeout":
            return None, "timeout"
        if how == "raised":
            raise TeacherTaskError(f"teacher.function {self.spec} raised {raised(value)} at "
                                   f"{user_frame(value, self.folder)} on {shown(request)}")
        return usable_reply(value, request.purpose)


@TEACHER.register(FunctionTeacherConfig)
def build(cfg: FunctionTeacherConfig, task_dir: Path, student=None) -> FunctionTeacher:
    if not cfg.function:
        raise TeacherTaskError("teacher.function (module:attr) is required for kind=function")
    return FunctionTeacher(cfg.function, task_dir, cfg.timeout)
