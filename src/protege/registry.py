"""Everything a task YAML chooses by name, registered one way.

A method is one file in its stage's package. The file declares the method's options model, whose
discriminator field (`name`, or `kind` for teachers) is a one-value Literal, and registers its entry
function with `@REGISTRY.register(OptionsModel)`. `load()` imports every module of the package, so a
new file registers itself; the config's unions, the CLI's choices and the docs tables are built from
what registered.

This module sits at the bottom (stdlib and pydantic only): it names the stage packages as strings and
imports them only when a registry loads. Method files must stay cheap to import (torch, transformers,
openai and the like inside functions), because `import protege` loads every registry; modules of a
package that hold no method and import heavy libraries at the top are listed as its `helpers`.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import types
import typing
from typing import Annotated, Any, Callable, Union

from pydantic import BaseModel, BeforeValidator, Field
from pydantic_core import PydanticUndefined


class Registry:
    """One kind of method (synth, curate, train, ...): name -> (entry function, options model)."""

    def __init__(self, kind: str, package: str, key: str = "name", default: str | None = None,
                 helpers: tuple[str, ...] = ()):
        self.kind, self.package, self.key, self.default = kind, package, key, default
        self.helpers = frozenset(helpers)
        self.entries: dict[str, tuple[Callable, type[BaseModel]]] = {}
        self.loaded = False

    def register(self, options: type[BaseModel]) -> Callable[[Callable], Callable]:
        """Decorator: the entry function of the method that `options` names."""
        name = tag_of(options, self.key)

        def add(entry: Callable) -> Callable:
            known = self.entries.get(name)
            if known and known[1] is not options:
                raise ValueError(f"{self.kind} method {name!r} is registered twice: {known[1].__module__}, "
                                 f"{options.__module__}")
            self.entries[name] = (entry, options)
            return entry
        return add

    def load(self) -> "Registry":
        """Import every module of the package once: each registers its methods."""
        if not self.loaded:
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(getattr(package, "__path__", [])):
                if module.name not in self.helpers and not module.ispkg:
                    importlib.import_module(f"{self.package}.{module.name}")
            self.loaded = True
        return self

    def names(self) -> list[str]:
        return sorted(self.load().entries)

    def entry(self, name: str) -> tuple[Callable, type[BaseModel]]:
        self.load()
        if name not in self.entries:
            raise ValueError(f"unknown {self.kind} method {name!r}; known: {', '.join(self.names())}")
        return self.entries[name]

    def get(self, name: str) -> Callable:
        """The entry function registered under `name`."""
        return self.entry(name)[0]

    def options(self, name: str) -> type[BaseModel]:
        """The options model of `name`."""
        return self.entry(name)[1]

    def make(self, name: str, **fields: Any) -> BaseModel:
        """The options of `name`, defaults filled in."""
        return self.options(name)(**fields)

    def union(self) -> Any:
        """The options models of every method as one pydantic type, told apart by the key field;
        a bare name stands for the method with default options. The registry itself rides along as
        metadata (pydantic ignores it), so the docs can name the field's type by its kind."""
        models = tuple(self.options(name) for name in self.names())
        return Annotated[Union[models], Field(discriminator=self.key), BeforeValidator(self.expand), self]

    def expand(self, value: Any) -> Any:
        """`exact` -> {name: exact}; a mapping without the key gets the default, where there is one."""
        if isinstance(value, str):
            return {self.key: value}
        if isinstance(value, dict) and self.default and self.key not in value:
            return {self.key: self.default, **value}
        return value

    def markdown(self) -> str:
        """Per method: its description, then a table of its options (field, type, default, description)."""
        return "\n\n".join(method_markdown(name, self.options(name), self.key) for name in self.names()) + "\n"

    def text(self) -> str:
        """Per method: its name and description, then one line per option, for a terminal."""
        lines = [f"{self.kind} ({self.key}):"]
        for name in self.names():
            options = self.options(name)
            lines.append(f"  {name}: {options.model_fields[self.key].description or ''}".rstrip())
            lines += [f"      {field}: {type_text(info.annotation)} = {default_text(info).strip('`')}  "
                      f"{info.description or ''}".rstrip()
                      for field, info in options.model_fields.items() if field != self.key]
        return "\n".join(lines) + "\n"


def tag_of(options: type[BaseModel], key: str) -> str:
    """The one value of the options model's Literal discriminator field."""
    field = options.model_fields.get(key)
    values = typing.get_args(field.annotation) if field else ()
    if not field or typing.get_origin(field.annotation) is not typing.Literal or len(values) != 1:
        raise TypeError(f"{options.__name__}.{key} must be a Literal of one name")
    return values[0]


def method_markdown(name: str, options: type[BaseModel], key: str) -> str:
    rows = [f"| `{field}` | {cell(type_text(info.annotation))} | {cell(default_text(info))} | "
            f"{cell(info.description or '')} |" for field, info in options.model_fields.items() if field != key]
    head = f"**`{name}`**: {options.model_fields[key].description or ''}".rstrip()
    if not rows:
        return head + "\n\nNo options."
    return "\n".join([head, "", "| option | type | default | description |", "| --- | --- | --- | --- |", *rows])


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def type_text(annotation: Any) -> str:
    """int, 'a' | 'b', list[str], float | None: as a reader of the YAML writes the value."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(arg) for arg in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_text(arg) for arg in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(type_text(arg) for arg in args)}]"
    if origin is Annotated:
        registry = next((m for m in annotation.__metadata__ if isinstance(m, Registry)), None)
        return registry.kind if registry else type_text(args[0])
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def default_text(info: Any) -> str:
    value = info.default_factory() if info.default_factory is not None else info.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if value in ("", None):
        return "empty"
    return f"`{json.dumps(value)}`"  # as YAML reads it: true, [1], "all-linear"


SYNTH = Registry("synth", "protege.synth")
CURATE = Registry("curate", "protege.curate", helpers=("student_loss",))
TRAIN = Registry("train", "protege.train", default="sft",
                 helpers=("common", "answer_loss", "fused_lora", "packed_attention"))
ADAPTER = Registry("adapter", "protege.train", default="lora", helpers=TRAIN.helpers)
METRIC = Registry("metric", "protege.evaluate.metrics", default="exact")
MERGE = Registry("merge", "protege.merge", helpers=("config", "streaming"))
TEACHER = Registry("teacher", "protege.teachers", key="kind", default="function")
REGISTRIES: dict[str, Registry] = {r.kind: r for r in (SYNTH, CURATE, TRAIN, ADAPTER, METRIC, MERGE, TEACHER)}


def tag_names() -> set[str]:
    """Every registered name: a validation error's location holds the union's tag after the field."""
    return {name for registry in REGISTRIES.values() for name in registry.entries}


def docs_tables(text: str) -> str:
    """`text` (docs/methods.md) with the lines between each `<!-- registry:KIND -->` and
    `<!-- /registry:KIND -->` replaced by KIND's tables as the registry has them now."""
    def table(match: re.Match) -> str:
        return f"{match.group(1)}\n\n{REGISTRIES[match.group(2)].markdown()}\n{match.group(3)}"
    kinds = "|".join(REGISTRIES)
    return re.sub(rf"(<!-- registry:({kinds}) -->)\n.*?(<!-- /registry:\2 -->)", table, text, flags=re.S)

