"""What a task's tools act on, made fresh for every episode, so that a tool with side effects (a
refund, a counter, a row written) never leaks from one episode into the next.

A task declares (in its `tools:` section, ToolsConfig) any of:

- environment: a class; its public methods are the tools. Every episode gets a new instance, and its
  reset() is called when it has one.
- functions: plain functions; they keep no state between calls.
- database: a SQLite file, copied to a temporary folder for every episode and removed after it. The
  database reaches the tools by one rule: a tool (function or method) with a parameter named `db`, and
  the environment class's constructor when it has a `db` parameter, receive a sqlite3 connection to the
  episode's copy there. The schema the model sees leaves `db` out. The connection is in autocommit mode
  (every write is in the copy at once, where a verifier reads it) and may be used from the worker
  thread a call runs in. The original file is never opened for writing.

load_tools(cfg, task_dir) reads all of it once; Environment.episode() gives each episode its toolbox.
"""

from __future__ import annotations

import functools
import inspect
import shutil
import sqlite3
import tempfile
import types
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from ..teachers import load_callable
from ..config import ToolsConfig
from .tools import Tool, ToolError, Toolbox, build_tool, normalized_schema

DB = "db"  # the parameter that receives the episode's database


@dataclass(frozen=True)
class ToolSource:
    """Where a tool's calls go in an episode: a method of the episode's environment (attr) or a function."""

    tool: Tool
    attr: str = ""
    function: Callable | None = None
    takes_db: bool = False

    def bind(self, environment: Any, db: sqlite3.Connection | None) -> Callable[..., Any]:
        call = getattr(environment, self.attr) if self.attr else self.function
        return functools.partial(call, **{DB: db}) if self.takes_db else call


class Environment:
    """A task's tools, loaded once: schemas for the prompt, episode() for a fresh toolbox per episode."""

    def __init__(self, sources: dict[str, ToolSource], environment_class: type | None = None,
                 database: Path | None = None, timeout: float = 10.0, where: str = ""):
        self.sources, self.environment_class = sources, environment_class
        self.database, self.timeout, self.where = database, timeout, where

    @property
    def tools(self) -> dict[str, Tool]:
        return {name: source.tool for name, source in self.sources.items()}

    @property
    def schemas(self) -> list[dict]:
        return [source.tool.schema for source in self.sources.values()]

    def code(self) -> list[Any]:
        """The class and functions the tools run: their source files identify the tools' behaviour."""
        functions = [source.function for source in self.sources.values() if source.function is not None]
        return [self.environment_class, *functions] if self.environment_class else functions

    @contextmanager
    def episode(self) -> Iterator[Toolbox]:
        """A toolbox of its own: a new environment instance and database copy, gone when the block ends."""
        with episode_database(self.database) as db:
            environment = self.new_environment(db)
            calls = {name: source.bind(environment, db) for name, source in self.sources.items()}
            yield Toolbox(self.tools, calls, self.timeout, environment, db)

    def new_environment(self, db: sqlite3.Connection | None) -> Any:
        if self.environment_class is None:
            return None
        try:
            instance = self.environment_class(**constructor_keywords(self.environment_class, db))
            if callable(getattr(instance, "reset", None)):
                instance.reset()
        except Exception as exc:  # the task's class failing to start is the task's error, not the model's
            raise ToolError(f"tools.environment {self.where}: could not start an episode: "
                            f"{type(exc).__name__}: {exc}") from exc
        return instance


@contextmanager
def episode_database(original: Path | None) -> Iterator[sqlite3.Connection | None]:
    """A connection to a copy of the original made for this episode alone; None without a database."""
    if original is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="protege-episode-", ignore_cleanup_errors=True) as folder:
        copy = Path(folder) / original.name
        shutil.copyfile(original, copy)
        db = sqlite3.connect(copy, isolation_level=None, check_same_thread=False)
        try:
            yield db
        finally:
            db.close()


def load_tools(cfg: ToolsConfig | dict, task_dir: Path | str) -> Environment:
    """The tools a task's `tools:` section declares, their schemas derived (or hand-written) and checked."""
    cfg = cfg if isinstance(cfg, ToolsConfig) else ToolsConfig.model_validate(cfg)
    task_dir = Path(task_dir)
    database = database_path(cfg.database, task_dir)
    hidden = {DB} if database else set()
    handwritten = handwritten_schemas(cfg.schemas, task_dir)
    environment_class = load_environment_class(cfg.environment, task_dir, database)
    sources = [*method_sources(environment_class, cfg.environment, hidden, handwritten),
               *function_sources(cfg.functions, task_dir, hidden, handwritten)]
    return Environment(named(sources, handwritten), environment_class, database, cfg.timeout, cfg.environment)


def database_path(database: str, task_dir: Path) -> Path | None:
    if not database:
        return None
    path = task_dir / database
    if not path.is_file():
        raise ToolError(f"tools.database: no file {path}")
    return path


def handwritten_schemas(schemas: str | list[dict], task_dir: Path) -> dict[str, dict]:
    """Tool name -> its hand-written schema, normalized; from the list, or the JSON/YAML file it names."""
    if isinstance(schemas, str) and schemas:
        path = task_dir / schemas
        if not path.is_file():
            raise ToolError(f"tools.schemas: no file {path}")
        schemas = yaml.safe_load(path.read_text())  # YAML reads JSON too
    if not isinstance(schemas, list) or not all(isinstance(s, dict) for s in schemas):
        raise ToolError("tools.schemas: expected a list of tool schemas")
    normalized = [normalized_schema(s, "tools.schemas") for s in schemas]
    return {s["function"]["name"]: s for s in normalized}


def load_environment_class(spec: str, task_dir: Path, database: Path | None) -> type | None:
    if not spec:
        return None
    found = load_task_callable(spec, task_dir, "environment")
    if not inspect.isclass(found):
        raise ToolError(f"tools.environment {spec}: not a class")
    try:  # made once per episode: a constructor it cannot be called with is the task's error, found now
        inspect.signature(found).bind(**constructor_keywords(found, database))
    except TypeError as exc:
        raise ToolError(f"tools.environment {spec}: cannot be made with no arguments "
                        f"({DB}= when tools.database is set): {exc}") from exc
    return found


def constructor_keywords(environment_class: type, db: Any) -> dict[str, Any]:
    return {DB: db} if db is not None and takes(environment_class, DB) else {}


def method_sources(environment_class: type | None, spec: str, hidden: set[str],
                   handwritten: dict[str, dict]) -> list[ToolSource]:
    if environment_class is None:
        return []
    sources = []
    for attr in public_methods(environment_class):
        # a plain function in the class is an instance method (self first); static and class methods are not
        method = isinstance(inspect.getattr_static(environment_class, attr), types.FunctionType)
        fn = getattr(environment_class, attr)
        tool = build_tool(fn, attr, f"{spec}.{attr}", method=method, hidden=hidden, schema=handwritten.get(attr))
        sources.append(ToolSource(tool, attr=attr, takes_db=bool(hidden) and takes(fn, DB)))
    return sources


def public_methods(environment_class: type) -> list[str]:
    """Methods not starting with _ (reset excepted), in the order the class and its bases define them."""
    names = dict.fromkeys(name for klass in reversed(environment_class.__mro__[:-1]) for name in vars(klass))
    routines = (types.FunctionType, staticmethod, classmethod)
    return [name for name in names if not name.startswith("_") and name != "reset"
            and isinstance(inspect.getattr_static(environment_class, name), routines)]


def function_sources(specs: list[str], task_dir: Path, hidden: set[str],
                     handwritten: dict[str, dict]) -> list[ToolSource]:
    sources = []
    for spec in specs:
        fn = load_task_callable(spec, task_dir, "functions")
        name = spec.split(":", 1)[1].rsplit(".", 1)[-1]
        tool = build_tool(fn, name, spec, hidden=hidden, schema=handwritten.get(name))
        sources.append(ToolSource(tool, function=fn, takes_db=bool(hidden) and takes(fn, DB)))
    return sources


def load_task_callable(spec: str, task_dir: Path, field: str) -> Callable:
    try:
        return load_callable(spec, task_dir)
    except Exception as exc:  # a missing module, a typo in attr, the module's own import failing
        raise ToolError(f"tools.{field} {spec}: {type(exc).__name__}: {exc}") from exc


def named(sources: list[ToolSource], handwritten: dict[str, dict]) -> dict[str, ToolSource]:
    """Tool name -> source; two tools of one name, or a hand-written schema of no tool, are the task's error."""
    by_name: dict[str, ToolSource] = {}
    for source in sources:
        if source.tool.name in by_name:
            raise ToolError(f"tools: two tools are named {source.tool.name!r}")
        by_name[source.tool.name] = source
    if not by_name:
        raise ToolError("tools: neither tools.environment nor tools.functions declares a tool")
    unmatched = sorted(set(handwritten) - set(by_name))
    if unmatched:
        raise ToolError(f"tools.schemas: no tool is named {', '.join(unmatched)}")
    return by_name


def takes(fn: Callable, parameter: str) -> bool:
    try:
        return parameter in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature takes nothing by name
        return False
