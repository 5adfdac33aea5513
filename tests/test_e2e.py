"""`protege run` end to end on a tiny model: function teacher, then an OpenAI-protocol teacher over HTTP."""

import json
import re
from pathlib import Path
import sys
import time

import pytest

from candidates import round_result
from openai_stub import StubServer
from protege.cli import main
from protege.runs import read_jsonl
from protege.teachers.function import load_callable

FAST = ["--set", "student.model=tiny:0", "--set", "train.max_steps=3", "--set", "eval.max_new_tokens=4",
        "--set", "synth.expand=20", "--set", "synth.max_failures=10", "--set", "forgetting.probe_items=40",
        "--set", "forgetting.max_new_tokens=8"]


def stage_names(run_dir):
    return sorted(p.name for p in (run_dir / "stages").iterdir())


def test_run_function_teacher_then_rerun_reuses_everything(tmp_path, examples_dir, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", str(examples_dir / "iso-dates"), "--run-dir", str(run_dir), *FAST]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["teacher"]["accuracy"] == 1.0 and len(summary["rounds"]) == 2
    assert "| base student" in (run_dir / "summary.md").read_text()
    data = read_jsonl(next((run_dir / "stages").glob("synth-r0-*")) / "data.jsonl")
    assert {r["meta"]["source"] for r in data} == {"seed", "teacher", "expand"}
    failures = read_jsonl(next((run_dir / "stages").glob("synth-r1-*")) / "data.jsonl")
    assert failures and all(r["meta"] == {"source": "failure-round-1", "round": 1} for r in failures)
    test_inputs = {json.loads(line)["input"] for line in (examples_dir / "iso-dates/test.jsonl").open()}
    trained = read_jsonl(next((run_dir / "stages").glob("curate-r1-*")) / "train.jsonl")
    assert not test_inputs & {r["messages"][1]["content"] for r in trained}
    before = stage_names(run_dir)
    start = time.time()
    assert main(["run", str(examples_dir / "iso-dates"), "--run-dir", str(run_dir), *FAST]) == 0
    assert time.time() - start < 10 and stage_names(run_dir) == before
    out = capsys.readouterr()
    assert "round 1" in out.err and "| student, round 1" in out.out


def test_a_changed_default_learning_rate_trains_a_new_stage(tmp_path, examples_dir, monkeypatch):
    from protege.train.adapters import LoraOptions
    run_dir, one_round = tmp_path / "run", [*FAST, "--set", "rounds=1"]
    assert main(["run", str(examples_dir / "iso-dates"), "--run-dir", str(run_dir), *one_round]) == 0
    trained = {p.name for p in (run_dir / "stages").glob("train-r0-*")}
    default = LoraOptions.default_learning_rate
    monkeypatch.setattr(LoraOptions, "default_learning_rate", 5e-4)
    assert main(["run", str(examples_dir / "iso-dates"), "--run-dir", str(run_dir), *one_round]) == 0
    retrained = {p.name for p in (run_dir / "stages").glob("train-r0-*")}
    (old,), (new,) = trained, retrained - trained
    first_rate = [json.loads((run_dir / "stages" / name / "train_log.json").read_text())["history"][0]["learning_rate"]
                  for name in (old, new)]
    assert first_rate[1] == pytest.approx(first_rate[0] * 5e-4 / default)
    # settings only dpo reads leave the sft stage it starts from as it is: the dpo round trains no new one
    dpo = ["--set", "train.method=dpo", "--set", "train.method.beta=0.3", "--set", "train.method.learning_rate=1e-4",
           "--set", "train.method.samples=2"]
    assert main(["run", str(examples_dir / "iso-dates"), "--run-dir", str(run_dir), *one_round, *dpo]) == 0
    assert {p.name for p in (run_dir / "stages").glob("train-r0-*")} == retrained
    assert any((run_dir / "stages").glob("dpo-r0-*"))


def chat_to_request(teacher_fn):
    """Serve a task's function teacher over HTTP: parse the chat back into the request it encodes."""
    from protege.teachers.base import TeacherRequest

    def reply(messages):
        if messages[0]["role"] == "system":
            return teacher_fn(TeacherRequest("answer", messages[0]["content"], input=messages[-1]["content"]))
        examples = tuple(re.findall(r"^- (.*)$", messages[-1]["content"], re.M))
        return teacher_fn(TeacherRequest("write_input", "", examples=examples, sample=len(messages[-1]["content"])))
    return reply


def test_run_openai_teacher_over_local_http(tmp_path, examples_dir):
    teacher_fn = load_callable("teacher:teacher", examples_dir / "arithmetic")
    with StubServer(chat_to_request(teacher_fn), fail_every=7) as server:
        args = ["run", str(examples_dir / "arithmetic"), "--run-dir", str(tmp_path / "run"), *FAST,
                "--set", "teacher.kind=openai", "--set", f"teacher.base_url={server.base_url}",
                "--set", "teacher.model=stub", "--set", "rounds=2", "--set", "teacher.concurrency=4"]
        assert main(args) == 0
        paid = server.requests
        assert paid > 400
        assert main(args) == 0 and server.requests == paid  # the re-run asks nothing
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["teacher"]["accuracy"] == 1.0 and summary["rounds"][0]["train_examples"] > 300


def test_stage_commands(tmp_path, examples_dir, capsys):
    task, run_dir = str(examples_dir / "iso-dates"), str(tmp_path / "run")
    assert main(["synth", task, "--run-dir", run_dir, *FAST]) == 0
    paths = json.loads(capsys.readouterr().out)
    assert len(read_jsonl(paths["train"])) == 8 + 300 + 20 - 40  # seeds + labeled + expanded - dev
    assert main(["train", task, "--run-dir", run_dir, *FAST]) == 0
    model = json.loads(capsys.readouterr().out)["model"]
    assert main(["eval", task, "--run-dir", run_dir, "--model", model, *FAST, "--forgetting"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"]["n"] == 150 and len(result["task"]["ci"]) == 2
    assert result["forgetting"]["negative_flips"] >= 0 and result["forgetting"]["perplexity_ratio"] > 0


def test_missing_model_is_one_line_exit_1(tmp_path, examples_dir, capsys):
    code = main(["run", str(examples_dir / "iso-dates"), "--run-dir", str(tmp_path / "r"),
                 "--set", "student.model=/nope"])
    assert code == 1 and "/nope" in capsys.readouterr().err


def test_expansion_from_a_task_generator(tmp_path, examples_dir, capsys):
    args = ["synth", str(examples_dir / "iso-dates"), "--run-dir", str(tmp_path / "run"), *FAST,
            "--set", "synth.generator=teacher:generate", "--set", "synth.label_inputs=false"]
    assert main(args) == 0
    data = read_jsonl(json.loads(capsys.readouterr().out)["data"])
    assert sum(r["meta"]["source"] == "expand" for r in data) == 20
    assert sum(r["meta"]["source"] == "seed" for r in data) == 8


def test_best_round_is_chosen_on_dev_never_on_test():
    from protege.loop.selection import best_round
    rounds = [round_result(0, dev=0.9, test=0.5), round_result(1, dev=0.8, test=0.99),
              round_result(2, dev=0.9, test=0.7)]
    assert best_round(rounds).round == 0


def test_best_round_respects_the_forgetting_limit():
    from protege.loop.selection import best_round
    rounds = [round_result(0, dev=0.7, over=False, change=-0.01), round_result(1, dev=0.9, over=True, change=-0.2)]
    assert best_round(rounds).round == 0
    rounds[0] = round_result(0, dev=0.7, over=True, change=-0.1)
    assert best_round(rounds).round == 0  # none inside: the one that forgot least


def test_a_round_over_the_forgetting_limit_stops_the_loop():
    from protege.config import TaskSpec
    from protege.loop.selection import stop_reason
    spec = TaskSpec(test=[{"input": "a", "output": "b"}], rounds=3, forgetting={"limit": 0.05})
    assert stop_reason(spec, 1000, [round_result(0, over=False, dev=0.5)]) is None
    assert "forgetting limit" in stop_reason(spec, 1000, [round_result(0, over=True, dev=0.5)])


def test_run_measures_forgetting_and_writes_the_report(tmp_path, examples_dir, capsys):
    """Every run probes the base and each round's student; the summary carries intervals, the paired
    comparisons and forgetting; summary.md and report.html show them."""
    run_dir = tmp_path / "run"
    assert main(["run", str(examples_dir / "iso-dates"), "--run-dir", str(run_dir), *FAST, "--set", "rounds=1",
                 "--set", "forgetting.limit=0.5"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    lost = summary["rounds"][0]["forgetting"]
    assert lost["probe_base"] == summary["forgetting_base"]["probe_accuracy"]
    assert lost["probe_change"] == pytest.approx(lost["probe_student"] - lost["probe_base"])
    assert summary["rounds"][0]["over_forgetting_limit"] == (lost["probe_change"] < -0.5)
    assert 0 <= summary["base"]["ci"][0] <= summary["base"]["accuracy"] <= summary["base"]["ci"][1] <= 1
    assert set(summary["vs_teacher"]) >= {"diff", "low", "high", "significant"}
    assert summary["vs_teacher"]["diff"] == pytest.approx(summary["student"]["accuracy"] - 1.0)
    table = (run_dir / "summary.md").read_text()
    assert "negative flips" in table and "Student minus teacher" in table
    assert (run_dir / "report.html").stat().st_size > 1000
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert (run_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '"loaded": "ok"' in out and '"broken": 0' in out
    assert main(["report", str(tmp_path / "nothing")]) == 2


METHOD_FAST = [*FAST, "--set", "rounds=1", "--set", "synth.mine_size=8", "--set", "train.report_to=[none]"]
# each method's own options, set after train.method names it
METHOD_OPTIONS = {"dpo": ["samples=2"], "grpo": ["max_completion=4", "max_steps=2"], "distill": ["teacher=tiny:1"]}


def method_settings(method: str) -> list[str]:
    return ["--set", f"train.method={method}",
            *[arg for option in METHOD_OPTIONS.get(method, []) for arg in ("--set", f"train.method.{option}")]]


@pytest.mark.parametrize("method, stages, final", [
    ("masked-thought", {"train-r0"}, "train-r0"),
    ("cft", {"critique-r0", "train-r0"}, "train-r0"),
    ("dpo", {"train-r0", "merged-r0", "pairs-r0", "dpo-r0"}, "dpo-r0"),
    ("grpo", {"train-r0", "merged-r0", "grpo-r0"}, "grpo-r0"),
    ("distill", {"train-r0"}, "train-r0"),
])
def test_run_with_each_training_method(tmp_path, examples_dir, method, stages, final):
    """The loop trains a round with each method: the stages it needs appear, and the model kept is
    the one the method trained last."""
    run_dir = tmp_path / "run"
    assert main(["run", str(examples_dir / "arithmetic"), "--run-dir", str(run_dir), *METHOD_FAST,
                 *method_settings(method)]) == 0
    assert stages <= {name.rsplit("-", 1)[0] for name in stage_names(run_dir)}
    summary = json.loads((run_dir / "summary.json").read_text())
    kept = Path(summary["student"]["model"]).parent
    assert kept.name.rsplit("-", 1)[0] == final
    assert json.loads((kept / "train_log.json").read_text())["method"] == method


def test_eval_with_the_judge_through_the_task_teacher(tmp_path, examples_dir, capsys):
    """arithmetic's offline teacher also judges: the untrained tiny student's answers score 2, the
    teacher's 10, and the teacher wins every pair in both orders (no position disagreement)."""
    args = ["eval", str(examples_dir / "arithmetic"), "--run-dir", str(tmp_path / "run"), *FAST,
            "--judge", "both", "--set", "judge.items=12"]
    assert main(args) == 0
    judged = json.loads(capsys.readouterr().out)["judge"]
    assert judged["pointwise"]["student"]["mean_score"] == 2 and judged["pointwise"]["teacher"]["mean_score"] == 10
    pairwise = judged["pairwise"]
    assert pairwise["wins"] == {"student": 0, "teacher": 12} and pairwise["position_disagreement_rate"] == 0


def test_serve_refuses_an_unset_api_key_variable(capsys, monkeypatch):
    monkeypatch.delenv("PROTEGE_TEST_NO_SUCH_KEY", raising=False)
    assert main(["serve", "tiny:0", "--api-key-env", "PROTEGE_TEST_NO_SUCH_KEY"]) == 2
    assert "PROTEGE_TEST_NO_SUCH_KEY" in capsys.readouterr().err


def test_serve_proxy_flags_come_all_together_and_without_a_model(capsys):
    assert main(["serve", "--proxy-base", "tiny:0", "--proxy-expert", "tiny:1"]) == 2
    assert "--proxy-anti" in capsys.readouterr().err
    assert main(["serve", "tiny:0", "--proxy-base", "tiny:0", "--proxy-expert", "tiny:1", "--proxy-anti", "tiny:2"]) == 2
    assert main(["serve"]) == 2


def test_serve_takes_an_adapter_directory_as_model(tmp_path):
    """A LoRA adapter has no config.json: `protege serve ADAPTER --base B` must not refuse it."""
    from peft import LoraConfig, get_peft_model
    from protege.cli import model_or_adapter
    from protege.models import load_model, model_dir
    model, _ = load_model(model_dir("tiny:0"))
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    assert model_or_adapter(str(tmp_path / "adapter")) == (tmp_path / "adapter").resolve()
    assert model_or_adapter("tiny:0") == model_dir("tiny:0")


def test_merge_command_runs_a_yaml_and_names_a_bad_field(tmp_path, capsys):
    from protege.models import model_dir
    base = model_dir("tiny:0")
    good = tmp_path / "merge.yaml"
    good.write_text(f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                    f"  - model: {model_dir('tiny:1')}\n    parameters: {{weight: 0.5}}\n")
    assert main(["merge", str(good), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("weight: 0.5", "wieght: 0.5"))
    assert main(["merge", str(bad), "--out", str(tmp_path / "nothing")]) == 2
    assert f"{bad}:5" in capsys.readouterr().err and not (tmp_path / "nothing").exists()


def test_curation_judge_requests_are_recorded_and_charged(tmp_path, examples_dir, capsys):
    """A quality step asks the judge (here the task's teacher): the curate stage records those
    requests in teacher.json and the budget is charged for them."""
    run_dir = tmp_path / "run"
    args = ["synth", str(examples_dir / "arithmetic"), "--run-dir", str(run_dir), *FAST, "--set", "synth.expand=6",
            "--set", "inputs=[]"]
    assert main([*args, "--set", "curate=[dedup]"]) == 0
    plain = json.loads(capsys.readouterr().out)["teacher_requests"]
    assert main([*args, "--set", "curate=[dedup, {name: quality, min_score: 1}]"]) == 0
    judged = json.loads(capsys.readouterr().out)["teacher_requests"]
    curate_stage = next(p for p in (run_dir / "stages").iterdir()
                        if p.name.startswith("curate-r0") and (p / "removed.jsonl").is_file()
                        and any('"quality"' in line for line in (p / "train.jsonl").read_text().splitlines()))
    asked = json.loads((curate_stage / "teacher.json").read_text())["requests"]
    assert asked > 0 and judged == plain + asked


def test_critiques_of_a_later_round_carry_its_number(tmp_path, examples_dir):
    run_dir = tmp_path / "run"
    # the later --set of a key wins
    assert main(["run", str(examples_dir / "arithmetic"), "--run-dir", str(run_dir), *METHOD_FAST,
                 "--set", "rounds=2", "--set", "train.method=cft"]) == 0
    folders = {name.rsplit("-", 1)[0]: run_dir / "stages" / name for name in stage_names(run_dir)}
    assert "critique-r1" in folders, "the loop stopped after round 0: the test would prove nothing"
    for round_ in (0, 1):
        records = read_jsonl(folders[f"critique-r{round_}"] / "critiques.jsonl")
        assert records and {r["meta"]["round"] for r in records} == {round_}


def test_stage_keys_leave_out_what_only_other_methods_read(tmp_path):
    """A training stage's config holds the shared train fields and its own method's options only."""
    from protege.config import TaskSpec
    from protege.loop.training import method_config

    def read_by(train: dict, method: str) -> dict:
        spec = TaskSpec(test=[{"input": "a", "output": "b"}], train=train)
        return method_config(spec, method, tmp_path).model_dump()
    plain, dpo = {}, {"method": {"name": "dpo", "beta": 0.3, "learning_rate": 1e-4}}
    assert read_by(dpo, "sft") == read_by(plain, "sft") and read_by(dpo, "sft")["method"] == {"name": "sft"}
    assert read_by(dpo, "dpo") != read_by(plain, "dpo")
    assert read_by({"method": {"name": "grpo", "learning_rate": 1e-4}}, "grpo") != read_by(plain, "grpo")
    assert read_by({"epochs": 5}, "sft") != read_by(plain, "sft")
