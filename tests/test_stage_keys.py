"""Every stage declares what it reads (loop/stage.py): changing any one declared input gives the
stage a new key, so a run builds a new stage instead of reusing a stale one."""

import dataclasses
from pathlib import Path

import pytest
from pydantic import BaseModel

from protege.config import CurateConfig, EvalConfig, Example, SynthConfig, TrainConfig
from protege.loop import data, scoring, selection, training  # noqa: F401 (they declare the stages)
from protege.loop.stage import StageInputs
from protege.registry import METRIC
from protege.runs import Run


def data_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def sample_value(field: dataclasses.Field, tmp_path: Path):
    """A value of the field's declared type (None where the declaration allows it)."""
    kind = str(field.type)
    if "None" in kind:
        return None
    samples = {"str": "a", "int": 1, "float": 0.5, "bool": True, "Path": data_file(tmp_path, "a.jsonl", "{}\n"),
               "list[Example]": [Example(input="1", output="2")], "list[str]": ["x"], "list[dict]": [{"id": 1}],
               "list[Path]": [data_file(tmp_path, "a.jsonl", "{}\n")], "dict": {"k": 1},
               "dict[str, list[str]]": {"student": ["x"]}, "MetricConfig": METRIC.make("exact"),
               "EvalConfig": EvalConfig(), "SynthConfig": SynthConfig(), "CurateConfig": CurateConfig(),
               "TrainConfig": TrainConfig()}
    return samples[kind]


def changed(value, tmp_path: Path, declared: str):
    """Another value of the same declared type."""
    if value is None:
        return {"str | None": "b", "int | None": 2, "Path | None": data_file(tmp_path, "n.jsonl", "[]\n"),
                "MetricConfig | None": METRIC.make("exact"), "list[str] | None": ["y"]}[declared]
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float, str)):
        return value * 2 if not isinstance(value, str) else value + "b"
    if isinstance(value, Path):
        return data_file(tmp_path, "b.jsonl", "[]\n")
    if isinstance(value, BaseModel):
        return changed_model(value)
    if isinstance(value, list):
        return value + value
    return {**value, "other": 2}


def changed_model(model: BaseModel) -> BaseModel:
    if isinstance(model, CurateConfig):
        return CurateConfig(["dedup"])
    name, info = next((n, f) for n, f in type(model).model_fields.items() if f.annotation in (int, float, bool))
    value = getattr(model, name)
    return model.model_copy(update={name: (not value) if info.annotation is bool else value + 1})


def declarations(base: type = StageInputs) -> list[type]:
    """Every declaration of a stage's inputs, subclasses of declarations included."""
    found = [cls for sub in base.__subclasses__() for cls in (sub, *declarations(sub))]
    return sorted(set(found), key=lambda cls: cls.__name__)


def test_every_stage_of_the_loop_declares_its_inputs():
    names = {cls.__name__ for cls in declarations()}
    assert names >= {"Round0Inputs", "CurateInputs", "FailureSynthInputs", "EvalInputs", "TeacherEvalInputs",
                     "ProbeInputs", "JudgeInputs", "TrainInputs", "PairsInputs", "CritiqueInputs", "MergeInputs", "MergedInputs"}


@pytest.mark.parametrize("declared", declarations(), ids=lambda cls: cls.__name__)
def test_changing_any_declared_input_builds_a_new_stage(declared, tmp_path):
    fields = dataclasses.fields(declared)
    values = {f.name: sample_value(f, tmp_path) for f in fields}
    inputs = declared(**values)
    run = Run(tmp_path / "run")
    first, _ = run.stage("s", inputs.key(), lambda out: None)
    for field in fields:
        other = declared(**{**values, field.name: changed(values[field.name], tmp_path, str(field.type))})
        assert other.key() != inputs.key(), f"{declared.__name__}.{field.name} is not in the key"
        folder, reused = run.stage("s", other.key(), lambda out: None)
        assert not reused and folder != first
    assert run.stage("s", declared(**values).key(), lambda out: None) == (first, True)
