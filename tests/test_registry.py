"""protege.registry: one way to register anything a task YAML names, and everything built from it
(the config's unions, the CLI's choices, `protege methods`, the docs tables)."""

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from protege.cli import build_parser, main
from protege.config import ConfigError, Strict, TrainConfig, parse_spec
from protege.registry import ADAPTER, CURATE, MERGE, METRIC, REGISTRIES, SYNTH, TEACHER, TRAIN, Registry, docs_tables

ROOT = Path(__file__).resolve().parents[1]
SPEC = "test: [{input: a, output: b}]\n"

METHOD_FILE = '''
from typing import Literal

from pydantic import BaseModel, Field

from . import DEMO


class ShoutOptions(BaseModel):
    name: Literal["shout"] = Field("shout", description="Upper-cases the text.")
    times: int = Field(1, ge=1, description="How often.")


@DEMO.register(ShoutOptions)
def shout(text: str, options: ShoutOptions) -> str:
    return text.upper() * options.times
'''


@pytest.fixture
def demo(tmp_path, monkeypatch):
    """A package holding one method file, as a new method is added: one file, nothing else edited."""
    package = tmp_path / "demo_methods"
    package.mkdir()
    (package / "__init__.py").write_text('from protege.registry import Registry\n\n'
                                         'DEMO = Registry("demo", "demo_methods", default="shout")\n')
    (package / "shout.py").write_text(METHOD_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield __import__("demo_methods").DEMO
    for name in [m for m in sys.modules if m.startswith("demo_methods")]:
        del sys.modules[name]


def test_a_method_file_registers_itself_on_load(demo):
    assert demo.names() == ["shout"]
    options = demo.options("shout")(times=2)
    assert demo.get("shout")("hi", options) == "HIHI"
    assert demo.make("shout").times == 1


def test_an_unknown_name_lists_the_known_ones(demo):
    with pytest.raises(ValueError, match="unknown demo method 'whisper'; known: shout"):
        demo.get("whisper")


def test_the_union_takes_a_name_a_mapping_or_the_default(demo):
    union = TypeAdapter(demo.union())
    assert union.validate_python("shout").times == 1
    assert union.validate_python({"name": "shout", "times": 3}).times == 3
    assert union.validate_python({"times": 2}).name == "shout"  # the registry's default name
    with pytest.raises(ValidationError, match="does not match any of the expected tags: 'shout'"):
        union.validate_python({"name": "whisper"})


def test_the_name_comes_from_a_one_value_literal():
    class NoName(BaseModel):
        kind: str = Field("x", description="Not a Literal.")
    with pytest.raises(TypeError, match="must be a Literal of one name"):
        Registry("demo", "demo_methods", key="kind").register(NoName)


def test_a_name_registered_twice_by_two_files_is_refused(demo):
    class Other(BaseModel):
        name: Literal["shout"] = Field("shout", description="A second shout.")
    demo.load()
    with pytest.raises(ValueError, match="registered twice"):
        demo.register(Other)(lambda text, options: text)


def test_markdown_table_has_each_option_with_type_default_and_description(demo):
    table = demo.markdown()
    assert "**`shout`**: Upper-cases the text." in table
    assert "| `times` | int | `1` | How often. |" in table


def test_every_kind_has_its_methods_registered():
    assert set(SYNTH.names()) == {"self-instruct", "evol-instruct", "magpie", "llm2llm", "critique", "rejection",
                                  "preference-pairs", "reflection", "refusal", "expert-failures", "agent-refine"}
    assert set(CURATE.names()) == {"decontaminate", "dedup", "diversity", "quality", "perplexity", "ifd",
                                   "curriculum", "mixture", "success"}
    assert set(TRAIN.names()) == {"sft", "masked-thought", "cft", "dpo", "distill", "grpo"}
    assert set(ADAPTER.names()) == {"lora", "hft", "full"}
    assert set(METRIC.names()) == {"exact", "numeric", "json", "regex", "rouge-l", "code"}
    assert set(MERGE.names()) == {"task_arithmetic", "linear", "ties", "dare", "breadcrumbs", "lines"}
    assert set(TEACHER.names()) == {"function", "openai", "local", "self"}


@pytest.mark.parametrize("kind", list(REGISTRIES))
def test_every_option_has_a_default_and_a_description(kind):
    registry = REGISTRIES[kind]
    for name in registry.names():
        for field, info in registry.options(name).model_fields.items():
            assert info.description and not info.is_required(), (kind, name, field)


@pytest.mark.parametrize("name", MERGE.names())
def test_merge_options_are_the_merge_functions_keyword_parameters(name):
    """mergekit's way: a method's parameters are its signature; the options model declares the same."""
    parameters = inspect.signature(MERGE.get(name)).parameters
    declared = {key: p.default for key, p in parameters.items()
                if key not in ("base", "finetuned", "weights", "name", "num_layers")}
    options = MERGE.options(name)
    assert {key: info.default for key, info in options.model_fields.items() if key != "name"} == declared


def test_importing_protege_loads_every_method_but_no_heavy_library():
    heavy = ["torch", "transformers", "trl", "peft", "openai", "datasketch", "nltk", "sentence_transformers",
             "numpy", "scipy", "sklearn", "datasets"]
    code = (f"import sys, protege; from protege.registry import REGISTRIES; "
            f"print(all(r.loaded for r in REGISTRIES.values()), [m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True []"


# each kind's dispatch goes through its registry: a method registered there is the one that runs

def registered(monkeypatch, registry: Registry, options: type[BaseModel], entry) -> None:
    name = options.model_fields[registry.key].default
    monkeypatch.setitem(registry.entries, name, (entry, options))


def test_synth_steps_run_through_the_registry(monkeypatch):
    from protege.synth.registry import SynthContext, run_methods

    class Echo(Strict):
        name: Literal["echo"] = Field("echo", description="Adds nothing.")
    registered(monkeypatch, SYNTH, Echo, lambda records, step, ctx: records + [])
    teacher = type("T", (), {"stats": type("S", (), {"requests": 0})()})()
    ctx = SynthContext(teacher, "I.", budget=10)
    assert run_methods([], [Echo()], ctx) == [] and ctx.notes[0]["method"] == "echo"


def test_curate_steps_run_through_the_registry(monkeypatch):
    from protege.config import CurateConfig
    from protege.curate import CurateContext, curate

    class DropAll(Strict):
        name: Literal["drop-all"] = Field("drop-all", description="Removes every record.")
    registered(monkeypatch, CURATE, DropAll, lambda records, step, ctx: ([], [{"reason": "test"}]))
    kept, removed = curate([{"id": 1}], CurateConfig.model_construct(root=[DropAll()]), CurateContext())
    assert kept == [] and removed == [{"reason": "test", "step": "drop-all"}]


def test_metrics_score_through_the_registry(monkeypatch):
    from protege.config import MetricConfig
    from protege.evaluate.metrics import score

    class Length(MetricConfig):
        name: Literal["length"] = Field("length", description="Same length.")
    registered(monkeypatch, METRIC, Length, lambda p, r, cfg, tests: (float(len(p) == len(r)), {}))
    assert score(Length(), "abc", "xyz")[0] == 1.0 and score("length", "ab", "xyz")[0] == 0.0


def test_merges_run_through_the_registry(monkeypatch):
    import torch
    from protege.merge import merge_tensor

    class Keep(Strict):
        name: Literal["keep-base"] = Field("keep-base", description="The base, unchanged.")
    registered(monkeypatch, MERGE, Keep, lambda base, finetuned, weights: base)
    base = torch.ones(2)
    assert merge_tensor("keep-base", base, [torch.zeros(2)], [1.0], {}) is base


def test_teachers_are_built_through_the_registry(monkeypatch, tmp_path):
    from protege.config import TeacherConfig
    from protege.teachers import build_teacher

    class Echo(TeacherConfig):
        kind: Literal["echo"] = Field("echo", description="Replies with the input.")
    registered(monkeypatch, TEACHER, Echo, lambda cfg, task_dir, student=None: ("echo", task_dir))
    assert build_teacher(Echo(), tmp_path) == ("echo", tmp_path)


def test_training_methods_run_through_the_registry(monkeypatch, tmp_path):
    from protege.train import MethodOptions, check_rows, train_method

    class Count(MethodOptions):
        name: Literal["count"] = Field("count", description="Counts the rows.")
    registered(monkeypatch, TRAIN, Count, lambda job: {"method": "count", "rows": len(job.data)})
    assert train_method("count", tmp_path, [{"messages": []}], TrainConfig(), tmp_path) == {"method": "count",
                                                                                           "rows": 1}
    with pytest.raises(ValueError, match=r"rows.jsonl:1: dpo trains on a preference pair"):
        check_rows([{"messages": []}], "dpo", Path("rows.jsonl"))


def test_adapters_prepare_the_model_through_the_registry(monkeypatch, tmp_path):
    from protege.models import model_dir
    from protege.train.adapters import AdapterOptions
    from protege.train.common import load_trainable

    class Frozen(AdapterOptions):
        name: Literal["frozen"] = Field("frozen", description="Trains nothing.")
    registered(monkeypatch, ADAPTER, Frozen, lambda model, options, seed: {"frozen": model.requires_grad_(False)
                                                                              is model})
    _, _, notes = load_trainable(model_dir("tiny:0"), TrainConfig.model_construct(adapter=Frozen(), seed=0), 0)
    assert notes == {"adapter": "frozen", "frozen": True}


# what is built from the registries

def test_cli_choices_come_from_the_registries():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    choices = {action.dest: action.choices for action in train._actions if action.choices}
    assert choices["method"] == TRAIN.names() and choices["adapter"] == ADAPTER.names()


def test_methods_command_lists_every_kind_with_its_options(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for kind, registry in REGISTRIES.items():
        assert f"{kind} ({registry.key}):" in out
        assert all(f"  {name}: " in out for name in registry.names())
    assert "      beta: float = 0.1  Strength of the pull toward the reference model." in out
    assert main(["methods", "merge", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## merge") and "| `density` | float \\| list[float] | `0.2` |" in out


def test_methods_write_fills_the_tables_between_the_markers(tmp_path, capsys):
    doc = tmp_path / "methods.md"
    doc.write_text("# M\n\n<!-- registry:adapter -->\nstale\n<!-- /registry:adapter -->\n\nprose\n")
    assert main(["methods", "--write", str(doc)]) == 0
    text = doc.read_text()
    assert "stale" not in text and "| `r` | int | `16` | LoRA rank. |" in text and text.endswith("\nprose\n")
    assert docs_tables(text) == text


def test_committed_docs_tables_are_what_the_registry_generates():
    doc = ROOT / "docs" / "methods.md"
    text = doc.read_text(encoding="utf-8") if doc.is_file() else ""
    if "<!-- registry:" not in text:
        pytest.skip("docs/methods.md has no registry markers")
    assert docs_tables(text) == text, "run: protege methods --write docs/methods.md"


# the sweep's merge method and its parameters

@pytest.mark.parametrize("text, field, words", [
    ("merge: {method: lines, params: {alpha: x}}\n", "merge.params.alpha", "valid number"),
    ("merge: {method: lines, params: {gamma: 0.1}}\n", "merge.params.gamma", "unknown key"),
    ("merge: {method: slerp}\n", "merge.method", "known: breadcrumbs, dare, linear, lines, task_arithmetic, ties"),
])
def test_merge_sweep_params_are_checked_against_the_methods_options(text, field, words):
    with pytest.raises(ConfigError) as err:
        parse_spec(SPEC + text, "t.yaml")
    assert str(err.value).startswith(f"t.yaml:2: field '{field}'") and words in str(err.value)
    spec, _ = parse_spec(SPEC + "merge: {method: dare, params: {drop: 0.5, seed: 3}}\n", "t.yaml")
    assert spec.merge.params == {"drop": 0.5, "seed": 3}


def test_a_task_can_name_every_registered_method():
    text = SPEC + textwrap.dedent("""\
        synth: {methods: [self-instruct, refusal]}
        curate: [dedup, {name: ifd, keep: 0.5}]
        metric: {name: numeric, tolerance: 0.01}
        teacher: {kind: openai, base_url: "http://x/v1", concurrency: 2}
        train: {method: {name: grpo, generations: 2}, adapter: {name: lora, r: 4}}
    """)
    spec, _ = parse_spec(text, "t.yaml")
    assert [m.name for m in spec.synth.methods] == ["self-instruct", "refusal"]
    assert spec.curate.root[1].keep == 0.5 and spec.metric.tolerance == 0.01 and spec.teacher.concurrency == 2
    assert (spec.train.method.generations, spec.train.adapter.r) == (2, 4)
