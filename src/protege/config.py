"""The task spec: one YAML file, validated by pydantic, errors that name file, line and field.

Each method's options (a synthesis method, a curation step, a metric, a teacher kind, ...) live in the
method's own file and are registered there (protege.registry); `bind_registries` builds the unions of
those options into the models below once every method has registered."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, RootModel, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from .registry import ADAPTER, CURATE, MERGE, METRIC, REGISTRIES, SYNTH, TEACHER, TRAIN, Registry, tag_names


class ConfigError(Exception):
    """A task spec that cannot be used; str() is the one line shown to the user."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Example(Strict):
    input: str = Field("", description="What the student is given.")
    output: str = Field("", description="The reference answer.")
    tests: str = Field("", description="code metric: Python run after the answer's code; the answer passes "
                       "when it exits 0. Empty: the reference answer is run as the test.")
    messages: list[dict] = Field(default_factory=list, description="The whole conversation, when the file holds "
                                 "chats (OpenAI `messages` or ShareGPT `conversations`): on a task with tools the "
                                 "request's reference trajectory; otherwise the turns before the last user turn "
                                 "are context the student sees too, and the last assistant turn is the reference.")

    def context(self) -> list[dict]:
        """The turns before the one answered (empty for a single-turn example)."""
        users = [i for i, m in enumerate(self.messages) if m["role"] == "user"]
        return self.messages[:users[-1]] if users else []


class TeacherConfig(Strict):
    """What every teacher kind reads; each kind's own options are in its file under teachers/
    (`protege methods teacher`)."""

    kind: str = Field("function", description="function: a Python callable; openai: any OpenAI-compatible "
                      "endpoint; local: a Hugging Face model run in this process; self: the student samples "
                      "answers and a verifier keeps those that pass.")
    temperature: float = Field(0.0, description="Sampling temperature for answers.")
    max_tokens: int = Field(512, gt=0, description="Largest reply the teacher may write.")


class StudentConfig(Strict):
    model: str = Field("embedded:smollm2-135m-instruct",
                       description="embedded:NAME, a local Hugging Face directory, or tiny:SEED for tests.")


class SynthConfig(Strict):
    label_inputs: bool = Field(True, description="Have the teacher answer the task's unlabeled inputs.")
    expand: int = Field(0, ge=0, description="New inputs to create from the seeds in round 0.")
    generator: str = Field("", description="module:attr(n, seed) -> list of inputs; "
                           "when empty, the teacher writes new inputs from k random seeds.")
    seeds_per_prompt: int = Field(3, gt=0, description="k seeds shown to the teacher per new input.")
    expand_share: float = Field(0.2, ge=0, le=1, description="Share of the request budget kept for expansion "
                                "when labeling the inputs and expanding do not both fit in it (at most what "
                                "expansion asks for); 0: labeling first, expansion gets what is left.")
    input_validator: str = Field("", description="module:attr(text) -> bool, looked up in the task directory "
                                 "first: says whether an input the teacher wrote (expansion, the failure loop, "
                                 "self-instruct, llm2llm, evol-instruct) is one of the task's; an input it "
                                 "rejects is dropped and counted. Empty: only protege's own checks (empty, "
                                 "several inputs, a copy of what was shown or of the prompt, a repeat, a test "
                                 "input).")
    per_failure: int = Field(2, ge=0, description="New examples the teacher writes per student failure.")
    max_failures: int = Field(64, ge=0, description="Failures sent to the teacher per round.")
    mine_size: int = Field(200, ge=0, description="Training items the student is tested on to find failures.")
    methods: list[SynthMethod] = Field(default_factory=list, description="Synthesis methods run in order in "
                                       "round 0 after labeling and expansion: each a name or {name: ..., "
                                       "options}; `protege methods synth` lists them. Empty: none.")


LEGACY_CURATE_ORDER = ("decontaminate", "dedup")


class CurateConfig(RootModel[list["CurateStep"]]):
    root: list[CurateStep] = Field(default_factory=lambda: [CURATE.make(name) for name in LEGACY_CURATE_ORDER],
                                   description="Curation steps run in order: each a name or {name: ..., "
                                   "options}; default decontaminate then dedup; `protege methods curate` lists "
                                   "them.")

    @model_validator(mode="before")
    @classmethod
    def _steps(cls, value):
        if isinstance(value, dict) and "name" not in value:
            # the earlier form {dedup: true, decontaminate: true} switched two fixed steps on and off
            unknown = set(value) - set(LEGACY_CURATE_ORDER)
            if unknown:
                raise ValueError(f"expected a list of steps, got unknown key(s) {sorted(unknown)}")
            value = [name for name in LEGACY_CURATE_ORDER if value.get(name, True)]
        return value


class TrainConfig(Strict):
    method: TrainMethod = Field(default_factory=lambda: TRAIN.make("sft"), description="How the student learns: "
                                "a name or {name: ..., options} (`protege methods train`).")
    adapter: TrainAdapter = Field(default_factory=lambda: ADAPTER.make("lora"), description="What part of the "
                                  "student trains: a name or {name: ..., options} (`protege methods adapter`).")
    epochs: float = Field(3.0, gt=0, description="Passes over the training data.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")
    learning_rate: float | None = Field(None, gt=0, description="Peak learning rate (linear decay); "
                                        "empty: the adapter's (1e-3 for lora, 2e-4 for hft, 5e-5 for full).")
    batch_size: int = Field(8, gt=0, description="Examples per optimizer step.")
    max_length: int = Field(512, gt=8, description="Tokens per example; longer ones are truncated.")
    packing: Literal["padding-free", "bfd", "none"] = Field(
        "padding-free", description="padding-free: a batch's examples are laid end to end in one row with "
        "restarting position ids (no padding, no attention across examples); bfd: TRL's best-fit packing into "
        "rows of max_length; none: padded, length-bucketed batches.")
    data_order: Literal["shuffled", "as-given"] = Field(
        "shuffled", description="as-given: batches follow the data file's order (a curriculum step sets it); "
        "shuffled: a seeded shuffle each epoch.")
    save_steps: int = Field(50, gt=0, description="Checkpoint every this many steps; a killed run resumes "
                            "from the last one.")
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"],
                                 description="Where the Trainer logs: tensorboard, wandb, none.")
    seed: int = Field(0, description="Seed for data order, initialization and the HFT selection.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: a GPU when one is there.")

    @model_validator(mode="before")
    @classmethod
    def _legacy_flat_keys(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for slot, registry in (("method", TRAIN), ("adapter", ADAPTER)):
            move_legacy_keys(data, slot, registry, info.context or {})
        return data


def move_legacy_keys(data: dict, slot: str, registry: Registry, context: dict) -> None:
    """The flat keys of the earlier train config (dpo_beta, lora_r, ...) as options of train.<slot>,
    each with one line on stderr saying what to write instead."""
    readers = legacy_readers(registry)
    found = [key for key in data if key in readers]
    chosen = registry.expand(data.get(slot, registry.default))
    if not found or not isinstance(chosen, dict):
        return  # nothing to move, or a slot validation will refuse anyway
    data[slot] = chosen = dict(chosen)
    for key in found:
        note = move_legacy_key(key, data.pop(key), readers[key], chosen, slot, registry)
        print(f"{legacy_where(context, key)}: {note}", file=sys.stderr)


def move_legacy_key(key: str, value: Any, owners: list[str], chosen: dict, slot: str, registry: Registry) -> str:
    """One flat key's value into the chosen method's options, when that method reads it (a key only
    other methods read is dropped: it was ignored before too); returns the note for stderr."""
    name = chosen.get("name") if chosen.get("name") in owners else owners[0]
    option = registry.options(name).legacy[key]
    instead = f"write train: {{{slot}: {{name: {name}, {option}: {json.dumps(value)}}}}}"
    if name != chosen.get("name"):
        return f"train.{key} is read by {' and '.join(owners)} only, not by {chosen.get('name')}: ignored; to set " \
               f"it, {instead}"
    chosen.setdefault(option, value)
    return f"train.{key} is read as train.{slot}.{option}; {instead}"


def legacy_readers(registry: Registry) -> dict[str, list[str]]:
    """flat key -> the methods whose options read it."""
    readers: dict[str, list[str]] = {}
    for name in registry.names():
        for key in getattr(registry.options(name), "legacy", {}):
            readers.setdefault(key, []).append(name)
    return readers


def legacy_where(context: dict, key: str) -> str:
    lines = context.get("lines", {})
    if ("train", key) in lines:
        return f"{context['where']}:{lines[('train', key)]}"
    return f"--set train.{key}" if context else "train config"


class MetricConfig(Strict):
    """What every metric reads; each metric's own options are in its file under evaluate/metrics/
    (`protege methods metric`)."""

    name: str = Field("exact", description="The metric.")
    k: list[int] = Field(default_factory=lambda: [1], description="Report pass@k for these k "
                         "(needs eval.samples >= k).")


class EvalConfig(Strict):
    batch_size: int = Field(64, gt=0, description="Prompts generated together (more is faster on a CPU; "
                            "the KV cache grows with it).")
    max_new_tokens: int = Field(32, gt=0, description="Longest answer generated.")
    dev_size: int = Field(40, ge=0, description="Teacher-labeled items held out to decide when to stop.")
    samples: int = Field(1, ge=1, description="Answers sampled per test item (pass@k needs k of them); "
                         "1: one greedy answer.")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature when samples > 1.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Level of the bootstrap confidence intervals.")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples per interval.")


class JudgeConfig(Strict):
    mode: Literal["none", "pointwise", "pairwise", "both"] = Field(
        "none", description="none; pointwise: the judge scores each answer 1-10 with the rubric; pairwise: "
        "student against teacher, asked in both orders, a win counted only when both orders agree; both.")
    teacher: TeacherOptions | None = Field(None, description="Who judges; empty: the task's teacher.")
    rubric: str = Field("Correctness first, then completeness, then clarity and format as the task asks.",
                        description="What the judge weighs (pointwise and pairwise).")
    items: int = Field(0, ge=0, description="Test items judged (0: all).")


class ForgettingConfig(Strict):
    enabled: bool = Field(True, description="Run the general-ability probe and perplexity on the base and on "
                          "every round's student.")
    probe_items: int = Field(0, ge=0, description="Probe items used, a fixed seeded sample (0: all).")
    categories: list[str] = Field(default_factory=list, description="Probe categories used (empty: all): "
                                  "instruction, knowledge, arithmetic, format.")
    perplexity: bool = Field(True, description="Also measure perplexity on the held-out general text.")
    max_new_tokens: int = Field(48, gt=0, description="Longest probe answer generated.")
    limit: float | None = Field(None, ge=0, le=1, description="Most probe accuracy the student may lose "
                                "against its base (0.05 = 5 points); rounds over it are never kept and "
                                "stop the loop. Empty: no limit.")


class MergeSweepConfig(Strict):
    strengths: list[float] = Field(default_factory=list, description="Merge the kept student back toward its "
                                   "base at each of these strengths (base + s * (student - base), 0 < s < 1) and "
                                   "keep the one best on dev inside forgetting.limit. Empty: no sweep.")
    method: str = Field("task_arithmetic", description="Merge method of the sweep (`protege methods merge`); "
                        "lines scales shallow layers down more.")
    params: dict[str, Any] = Field(default_factory=dict, description="The method's parameters (e.g. lines: "
                                   "alpha, beta; dare: drop, seed), checked against its options.")

    @field_validator("method")
    @classmethod
    def _registered(cls, value: str) -> str:
        MERGE.options(value)  # an unknown name raises, listing the known ones
        return value

    @field_validator("params")
    @classmethod
    def _read_by_method(cls, value: dict, info: ValidationInfo) -> dict:
        # a ValidationError raised here keeps its own location under merge.params
        if "method" not in info.data:
            return value
        options = MERGE.options(info.data["method"]).model_validate(value)
        return options.model_dump(include=set(value))

    @field_validator("strengths")
    @classmethod
    def _strictly_between(cls, value: list[float]) -> list[float]:
        if any(not 0 < s < 1 for s in value):
            raise ValueError("every strength must be between 0 and 1 (1 is the student itself)")
        return sorted(set(value), reverse=True)


class ExportConfig(Strict):
    formats: list[Literal["hf", "adapter", "gguf"]] = Field(default_factory=list, description="What `protege run` "
                                                             "writes of the kept student to RUN/export at the end: "
                                                             "hf (merged safetensors), adapter (peft), gguf. "
                                                             "Empty: nothing (protege export RUN does it later).")
    gguf_dtype: Literal["f32", "f16", "q8_0"] = Field("f16", description="GGUF tensor type.")


class BudgetConfig(Strict):
    requests: int = Field(2000, ge=0, description="Teacher requests the synthesis may make (cache hits count).")
    tokens: int | None = Field(None, ge=0, description="Teacher tokens (prompt + completion, cache hits count) "
                               "the run may use over every stage that asks the task's teacher (synthesis, "
                               "critique, the teacher's own evaluation, judging); once spent, no more "
                               "requests go out (the last batch may pass it by a little). Empty: no limit.")


class ToolsConfig(Strict):
    """The task's `tools:` section: the tools an agent may call, what they act on, and how an episode
    is run and judged."""

    environment: str = Field("", description="module:attr of a class whose public methods are the tools; "
                             "a new instance is made (and its reset() called, if it has one) for every episode. "
                             "Empty: no class.")
    functions: list[str] = Field(default_factory=list, description="module:attr of plain functions that are "
                                 "tools too; they keep no state between calls.")
    schemas: str | list[dict[str, Any]] = Field(default_factory=list, description="Hand-written OpenAI tool "
                                                "schemas, a list or the path of a JSON/YAML file holding one; each "
                                                "replaces the schema derived for the tool it names. Empty: every "
                                                "schema comes from type hints and docstrings.")
    database: str = Field("", description="Path of a SQLite file (relative to the task folder) copied for every "
                          "episode; a tool parameter named db, and the environment class's constructor parameter "
                          "db, receive a connection to the episode's copy. Empty: no database.")
    timeout: float = Field(10.0, gt=0, description="Seconds a tool call may run before its result is a "
                           "timeout error.")
    max_turns: int = Field(8, gt=0, description="Assistant turns an episode may take before it is cut off.")
    verifier: str = Field("", description="module:attr(episode) -> bool, whether an episode succeeded. "
                          "Empty: the task's metric on the final answer.")

    @field_validator("environment", "verifier", "functions")
    @classmethod
    def _module_attr(cls, value: str | list[str]) -> str | list[str]:
        for spec in [value] if isinstance(value, str) else value:
            if spec and ":" not in spec:
                raise ValueError(f"expected module:attr, got {spec!r}")
        return value


class TaskSpec(Strict):
    name: str = Field("task", description="Name of the task; the default run directory is runs/NAME.")
    instruction: str = Field("", description="What the student must do; sent as the system message.")
    seeds: list[Example] | str = Field(default_factory=list,
                                       description="Labeled examples, inline or a JSONL file of {input, output}.")
    inputs: list[str] | str = Field(default_factory=list,
                                    description="Unlabeled inputs, inline or a JSONL file of {input}.")
    test: list[Example] | str = Field(default_factory=list,
                                      description="Held-out test set, inline or a JSONL file of {input, output}.")
    metric: MetricOptions = Field(default_factory=lambda: METRIC.make("exact"), description="How answers are "
                                  "scored: a name or a mapping with its options (`protege methods metric`).")
    teacher: TeacherOptions = Field(default_factory=lambda: TEACHER.make("function"),
                                    description="Who writes the data (`protege methods teacher`).")
    student: StudentConfig = Field(default_factory=StudentConfig, description="The model to train.")
    synth: SynthConfig = Field(default_factory=SynthConfig, description="How data is synthesized.")
    curate: CurateConfig = Field(default_factory=CurateConfig, description="How data is cleaned.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training options.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation options.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="LLM-as-judge scoring.")
    forgetting: ForgettingConfig = Field(default_factory=ForgettingConfig,
                                         description="What the student loses of general ability.")
    merge: MergeSweepConfig = Field(default_factory=MergeSweepConfig, description="Trading task skill back "
                                    "for general ability after the last round.")
    export: ExportConfig = Field(default_factory=ExportConfig, description="Files written for other tools.")
    rounds: int = Field(2, ge=1, description="Most train/evaluate/augment rounds.")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="Teacher budget.")
    tools: ToolsConfig | None = Field(None, description="An agent task: the tools the student learns to call "
                                      "over several turns, and their environment. Empty: a single-turn task.")

    @field_validator("name")
    @classmethod
    def _name_is_one_folder(cls, name: str) -> str:
        """The run goes to runs/NAME: a name with a path in it would put it somewhere else."""
        if not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0"):
            raise ValueError("a task name is one folder name (no /, \\ or ..), as the run goes to runs/NAME")
        return name

    @model_validator(mode="after")
    def _needs_a_test_set(self) -> "TaskSpec":
        if not self.test:
            raise ValueError("a test set is required (field 'test')")
        return self

    @model_validator(mode="after")
    def _agent_tasks_train_on_episodes(self) -> "TaskSpec":
        if self.tools is not None and not getattr(self.train.method, "trains_on_episodes", False):
            able = [name for name in TRAIN.names() if getattr(TRAIN.options(name), "trains_on_episodes", False)]
            raise ValueError(f"train.method {self.train.method.name} does not train on agent episodes; "
                             f"use {', '.join(able)} for a task with tools")
        return self

    @model_validator(mode="after")
    def _synth_methods_fit_the_task(self) -> "TaskSpec":
        """A synthesis method works on single-turn tasks unless its options declare works_on = "agent"."""
        kind = "agent" if self.tools is not None else "single-turn"
        for method in self.synth.methods:
            if works_on(method) != kind:
                able = [name for name in SYNTH.names() if works_on(SYNTH.options(name)) == kind]
                task = "an agent task (it has tools)" if self.tools is not None else "a single-turn task (no tools)"
                raise ValueError(f"synth method {method.name} works on {works_on(method)} tasks, and this is "
                                 f"{task}; methods for it: {', '.join(able) or 'none'}")
        return self


def works_on(method: Any) -> str:
    """The kind of task a synthesis method (its options, or their model) works on."""
    return getattr(method, "works_on", "single-turn")


class LoadedTask:
    """A validated spec with its files read: what every stage works from."""

    def __init__(self, spec: TaskSpec, directory: Path, source: Path | None):
        self.spec, self.directory, self.source = spec, directory, source
        self.lines: dict[tuple, int] = {}  # key path -> line in the task file, for errors found later
        self.seeds: list[Example] = []
        self.inputs: list[str] = []
        self.test: list[Example] = []

    def config_error(self, field: str, message: str) -> ConfigError:
        """An error in a field that only shows when what it names is loaded (a tool, a verifier)."""
        line = line_of(self.lines, tuple(field.split(".")))
        return ConfigError(f"{self.source or self.directory}:{line}: field '{field}': {message}")


def _line_index(node: yaml.Node, path: tuple = ()) -> dict[tuple, int]:
    """Map every key path in a YAML document to its 1-based line."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = path + (key.value,)
            lines.update(_line_index(value, sub))
            lines[sub] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_line_index(item, path + (i,)))
    return lines


def line_of(lines: dict[tuple, int], loc: tuple) -> int:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


def user_loc(loc: tuple) -> tuple:
    """The location as the user wrote it. pydantic puts the union branch into loc: a type
    ("list[Example]", "str") or, inside a method's options, the method's name (train.method.dpo.beta);
    the user never wrote those. A name that ends the location is the user's own key (teacher.function)."""
    tags = tag_names()
    return tuple(p for i, p in enumerate(loc) if not (isinstance(p, str) and (
        "[" in p or p in {"str", "int"} or (p in tags and i < len(loc) - 1))))


def field_name(loc: tuple) -> str:
    return ".".join(str(p) for p in user_loc(loc)) or "(document)"


def first_error(exc: ValidationError, lines: dict[tuple, int], where: str) -> ConfigError:
    err = exc.errors()[0]
    message = err["msg"] if err["type"] != "extra_forbidden" else "unknown key"
    return ConfigError(f"{where}:{line_of(lines, user_loc(err['loc']))}: field '{field_name(err['loc'])}': "
                       f"{message}")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b=value` pairs from the command line; the value is read as YAML (numbers, booleans). A
    method given by name becomes {name: ...} when one of its options is set (train.method.beta)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: field '{item}': expected KEY=VALUE")
        path, raw = item.split("=", 1)
        if not all(part.strip() for part in path.split(".")):
            raise ConfigError(f"--set {item}: field '{path}': a key is empty")
        node = data
        *parents, leaf = path.split(".")
        for part in parents:
            if isinstance(node.get(part), str):
                node[part] = {"name": node[part]}
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: field '{path}': {part} is not a mapping")
        before, node[leaf] = node.get(leaf), override_value(item, path, raw)
        if before not in (None, node[leaf]):
            keep_own_options(node, leaf, item)
    return data


def override_value(item: str, path: str, raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item}: field '{path}': invalid YAML value: "
                          f"{getattr(exc, 'problem', None) or exc}") from None


def keep_own_options(node: dict, key: str, item: str) -> None:
    """A method switched on the command line (teacher.kind=openai) keeps only the options it reads:
    those of the method it replaces (teacher.function) go, with one line on stderr saying so."""
    name = node[key]
    fields = {field for registry in REGISTRIES.values() if registry.key == key and name in registry.names()
              for field in registry.options(name).model_fields}
    dropped = sorted(k for k in node if fields and k not in fields)
    for k in dropped:
        del node[k]
    if dropped:
        print(f"--set {item}: dropped {', '.join(dropped)}, which {name} does not read", file=sys.stderr)


def read_yaml_mapping(text: str, where: str, expected: str) -> tuple[dict, dict[tuple, int]]:
    """A YAML document that must be a mapping, with the line of every key; `expected` says what the
    mapping holds, for the error when it is not one."""
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise ConfigError(f"{where}:{line}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}:1: field '(document)': expected a mapping of {expected}")
    refuse_duplicate_keys(node, where)
    return data, _line_index(node)


def refuse_duplicate_keys(node: yaml.Node, where: str, path: tuple = ()) -> None:
    """A key given twice is an error: YAML loaders keep the last one silently, hiding the first."""
    children = node.value if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) else []
    seen: set = set()
    for i, child in enumerate(children):
        if isinstance(node, yaml.SequenceNode):
            refuse_duplicate_keys(child, where, path + (i,))
            continue
        key, value = child
        if key.value in seen:
            raise ConfigError(f"{where}:{key.start_mark.line + 1}: field '{field_name(path + (key.value,))}': "
                              f"given twice")
        seen.add(key.value)
        refuse_duplicate_keys(value, where, path + (key.value,))


def parse_spec(text: str, where: str, overrides: list[str] = ()) -> tuple[TaskSpec, dict[tuple, int]]:
    data, lines = read_yaml_mapping(text, where, "task fields")
    data = apply_overrides(data, list(overrides))
    try:
        return TaskSpec.model_validate(data, context={"where": where, "lines": lines}), lines
    except ValidationError as exc:
        raise first_error(exc, lines, where) from None


def _read_jsonl(path: Path, where: str, line: int, field: str) -> list[tuple[int, Any]]:
    """(line, row) for each row of a task's JSONL file; an unreadable line names the file and line."""
    from .runs import JSONLError, numbered_jsonl
    if not path.is_file():
        raise ConfigError(f"{where}:{line}: field '{field}': file not found: {path}")
    try:
        return numbered_jsonl(path)
    except JSONLError as exc:
        raise ConfigError(f"{exc.path}:{exc.line}: field '{field}': {exc.what}: {exc.msg}") from None


def _examples(value, task: LoadedTask, lines, field: str) -> list[Example]:
    if not isinstance(value, str):
        for i, example in enumerate(value):
            check_example(example, task, field, f"{task.source}:{line_of(lines, (field, i))}")
        return list(value)
    path = task.directory / value
    from .conversations import is_chat_file
    if path.is_file() and is_chat_file(path):
        return _conversation_examples(path, field)
    rows = _read_jsonl(path, str(task.source), line_of(lines, (field,)), field)
    return [file_example(row, task, field, f"{path}:{n}") for n, row in rows]


def file_example(row: Any, task: LoadedTask, field: str, where: str) -> Example:
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: field '{field}': expected a JSON object with input and output, "
                          f"got {type(row).__name__}")
    try:
        example = Example.model_validate(row)
    except ValidationError as exc:
        raise ConfigError(f"{where}: field '{field}': {exc.errors()[0]['msg']} "
                          f"({field_name(exc.errors()[0]['loc'])})") from None
    check_example(example, task, field, where)
    return example


def check_example(example: Example, task: LoadedTask, field: str, where: str) -> None:
    """An example missing what its field needs is an error, not an empty prompt or answer trained on or
    scored against: every example needs its input; seeds need their answer; a test item needs a
    reference (its output, code tests, or the task's verifier)."""
    required = needed(example, task, field)
    missing = [key for key in ("input", "output") if key in required and not getattr(example, key)]
    if missing:
        raise ConfigError(f"{where}: field '{field}': the row has no {' and no '.join(missing)}")


def needed(example: Example, task: LoadedTask, field: str) -> set[str]:
    if example.messages:
        return set()
    verified = task.spec.tools is not None and bool(task.spec.tools.verifier)
    if field == "test" and (example.tests or verified):
        return {"input"}
    return {"input", "output"}


def _conversation_examples(path: Path, field: str) -> list[Example]:
    """A chat file's rows as examples: the request is the last user turn, the reference the last
    assistant turn, the whole conversation (the task's instruction stands in for its system turn) kept."""
    from .conversations import last_assistant
    return [_chat_example(r["messages"], last_assistant(r)) for r in read_chat_file(path, field, field)]


def read_chat_file(path: Path, field: str, source: str) -> list[dict]:
    """A chat file's rows as records; a bad row is a ConfigError naming the file, line and field."""
    from .conversations import read_conversations
    try:
        return read_conversations(path, source)
    except ValueError as exc:
        where, _, what = str(exc).partition(": ")
        raise ConfigError(f"{where}: field '{field}': {what}") from None


def _chat_example(messages: list[dict], reference: dict) -> Example:
    turns = [m for m in messages if m["role"] != "system"]
    request = next(m["content"] for m in reversed(turns) if m["role"] == "user")
    return Example(input=request, output=reference["content"] or "", messages=turns)


def _inputs(value, task: LoadedTask, lines) -> list[str]:
    if not isinstance(value, str):
        return list(value)
    path = task.directory / value
    rows = _read_jsonl(path, str(task.source), line_of(lines, ("inputs",)), "inputs")
    return [input_text(row, f"{path}:{n}") for n, row in rows]


def input_text(row: Any, where: str) -> str:
    """An inputs row: {input: text} or the text itself."""
    text = row.get("input") if isinstance(row, dict) else row
    if isinstance(text, str) and text.strip():
        return text
    problem = "is not text" if text is not None and not isinstance(text, str) else "has no input"
    raise ConfigError(f"{where}: field 'inputs': the row {problem} (expected {{\"input\": TEXT}})")


def task_file(target: str | Path) -> Path:
    path = Path(target)
    return path / "task.yaml" if path.is_dir() else path


def task_text(path: Path) -> str:
    from .runs import JSONLError, read_text
    try:
        return read_text(path)
    except JSONLError as exc:
        raise ConfigError(f"{exc.path}:{exc.line}: field '(document)': {exc.msg}") from None


def load_task(target: str | Path, overrides: list[str] = ()) -> LoadedTask:
    """Read and validate a task: a directory holding task.yaml, or the YAML file itself."""
    path = task_file(target)
    if not path.is_file():
        raise ConfigError(f"{path}:1: field '(document)': task file not found")
    spec, lines = parse_spec(task_text(path), str(path), overrides)
    task = LoadedTask(spec, path.parent.resolve(), path)
    task.lines = lines
    task.seeds = _examples(spec.seeds, task, lines, "seeds")
    task.inputs = _inputs(spec.inputs, task, lines)
    task.test = _examples(spec.test, task, lines, "test")
    if not task.test:
        raise ConfigError(f"{path}:{line_of(lines, ('test',))}: field 'test': the test set is empty")
    return task


# the unions of the registries' options, in the order they are built: synthesis steps hold teachers
UNIONS = {"TeacherOptions": TEACHER, "MetricOptions": METRIC, "SynthMethod": SYNTH, "CurateStep": CURATE,
          "TrainMethod": TRAIN, "TrainAdapter": ADAPTER}


def bind_registries() -> None:
    """Load every registry and finish the models whose fields are its unions. protege/__init__.py calls
    it once this module is complete, so a method file may import from here."""
    for name, registry in UNIONS.items():
        globals()[name] = registry.union()
    MERGE.load()
    for model in (JudgeConfig, SynthConfig, CurateConfig, TrainConfig, MergeSweepConfig, TaskSpec):
        model.model_rebuild(force=True)
