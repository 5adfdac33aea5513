"""An agent task on the loop: the teacher's episodes become training records with their tools, the
success step drops failed ones, SFT trains on every assistant turn and never on tool results, and
evaluation acts in the environment, reporting success with the agent's own rates."""

import json
from pathlib import Path

import pytest

from protege.cli import main
from protege.config import EvalConfig, Example, TaskSpec
from protege.curate.success import SuccessStep, run as success_step
from protege.evaluate.agent_eval import agent_summary
from protege.registry import METRIC
from protege.runs import read_jsonl

SHOP = Path(__file__).resolve().parents[1] / "examples" / "shop-agent"
TINY = ["--set", "student.model=tiny:0", "--set", "train.max_steps=2", "--set", "eval.max_new_tokens=8",
        "--set", "forgetting.probe_items=20", "--set", "forgetting.max_new_tokens=4", "--set", "rounds=1",
        "--set", "merge.strengths=[]", "--set", "train.max_length=4096", "--set", "train.report_to=[none]"]


def test_an_agent_task_runs_end_to_end_on_a_tiny_model(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["run", str(SHOP), "--run-dir", str(run_dir), *TINY]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["teacher"]["accuracy"] == 1.0 and summary["test_items"] == 120
    stages = {p.name.rsplit("-", 1)[0]: p for p in (run_dir / "stages").iterdir()}
    trained = read_jsonl(stages["curate-r0"] / "train.jsonl")
    # the seeds' episodes are judged against their answers; the unlabeled requests' cannot be (None)
    assert all(r["tools"] and r["meta"]["success"] is not False for r in trained)
    assert {r["meta"]["success"] for r in trained if r["meta"]["source"] == "seed"} == {True}
    assert {r["meta"]["source"] for r in trained} == {"seed", "teacher"}
    assert any(m.get("tool_calls") for r in trained for m in r["messages"])
    evaluated = json.loads((stages["eval-r0"] / "summary.json").read_text())
    assert {"success_rate", "valid_call_rate", "tool_error_rate", "mean_turns"} <= set(evaluated)
    episode = read_jsonl(stages["eval-r0"] / "records.jsonl")[0]
    assert episode["messages"][0] == {"role": "user", "content": episode["input"]}
    # the run's table and report carry the agent's rates beside base and teacher, and whole episodes
    assert set(summary["teacher"]["agent"]) >= {"valid_call_rate", "valid_call_ci", "tool_error_ci", "mean_turns_ci"}
    assert summary["rounds"][0]["test_agent"]["mean_turns"] == evaluated["mean_turns"]
    table = (run_dir / "summary.md").read_text()
    assert "held-out success" in table and "| valid calls" in table and "tool errors" in table
    report = (run_dir / "report.html").read_text()
    assert 'id="agent"' in report and f"user: {episode['input']}" in report


def test_the_success_step_drops_failed_episodes_and_says_why():
    def episode(i, success, finished=True):
        return {"id": str(i), "messages": [], "tools": [{}],
                "meta": {"success": success, "finished": finished, "turns": 3, "tool_errors": 1}}
    records = [episode(0, True), episode(1, False), episode(2, False, finished=False), episode(3, None),
               {"id": "4", "messages": [], "meta": {}}]
    kept, removed = success_step(records, SuccessStep(), None)
    assert [r["id"] for r in kept] == ["0", "3", "4"]
    assert [r["reason"] for r in removed] == ["episode failed: wrong final answer", "episode failed: out of turns"]
    kept, removed = success_step(records, SuccessStep(unknown="drop"), None)
    assert [r["id"] for r in kept] == ["0", "4"] and removed[-1] == {"id": "3", "reason": "success unknown"}


def test_agent_rates_are_counted_over_turns_and_calls():
    records = [{"score": 1.0, "details": {"turns": 3, "calls": 2, "tool_errors": 0, "invalid_turns": 0}},
               {"score": 0.0, "details": {"turns": 4, "calls": 3, "tool_errors": 1, "invalid_turns": 2}},
               {"score": 1.0, "details": {"turns": 1, "calls": 0, "tool_errors": 0, "invalid_turns": 0}}]
    summary = agent_summary(records, METRIC.make("exact"), EvalConfig())
    assert summary["success_rate"] == summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["valid_call_rate"] == pytest.approx(1 - 2 / 8)
    assert summary["tool_error_rate"] == pytest.approx(1 / 5)
    assert summary["mean_turns"] == pytest.approx(8 / 3) and summary["tool_calls"] == 5


def test_sft_on_an_episode_learns_every_assistant_turn_and_no_tool_result():
    from protege.models import load_model, model_dir
    from protege.train.sft import tokenize_record
    _, tokenizer = load_model(model_dir("tiny:0"))
    record = read_jsonl(SHOP / "seeds.jsonl")[0]
    messages = [{"role": "system", "content": "Help."}, {"role": "user", "content": record["input"]},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c0", "type": "function", "function": {
                    "name": "get_shipment", "arguments": '{"order_id": 1027}'}}]},
                {"role": "tool", "tool_call_id": "c0", "content": '{"status": "TOOLRESULT"}'},
                {"role": "assistant", "content": "delivered"}]
    tools = [{"type": "function", "function": {"name": "get_shipment", "parameters": {"type": "object"}}}]
    row = tokenize_record(tokenizer, {"messages": messages, "tools": tools}, 4096)
    learned = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
    assert "get_shipment" in learned and "delivered" in learned
    assert "TOOLRESULT" not in learned and record["input"] not in learned


def test_a_task_with_tools_refuses_methods_that_do_not_train_on_episodes():
    test = [Example(input="a", output="b")]
    with pytest.raises(ValueError, match="train.method dpo does not train on agent episodes; use sft"):
        TaskSpec(test=test, tools={"environment": "shop:Shop"}, train={"method": "dpo"})
    with pytest.raises(ValueError, match="synth method magpie works on single-turn tasks"):
        TaskSpec(test=test, tools={"environment": "shop:Shop"}, synth={"methods": ["magpie"]})


def test_the_agent_task_file_says_what_is_wrong_with_exit_2(tmp_path, capsys):
    task = (SHOP / "task.yaml").read_text().replace("method: sft", "method: grpo")
    (tmp_path / "task.yaml").write_text(task)
    assert main(["run", str(tmp_path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "task.yaml" in err and "grpo does not train on agent episodes" in err
    assert not (tmp_path / "run").exists()


def test_a_tool_that_cannot_be_loaded_is_a_task_file_error(tmp_path, capsys):
    import shutil
    shop = tmp_path / "shop"
    shutil.copytree(SHOP, shop)
    (shop / "extra.py").write_text('def untyped(x):\n    """No type hint."""\n    return x\n')
    task = (shop / "task.yaml").read_text().replace("  timeout: 5\n", "  timeout: 5\n  functions: ['extra:untyped']\n")
    (shop / "task.yaml").write_text(task)
    line = task.splitlines().index("tools:") + 1
    assert main(["run", str(shop), "--run-dir", str(tmp_path / "run"), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {shop / 'task.yaml'}:{line}: field 'tools': tool 'untyped' (extra:untyped): "
                   "parameter 'x' has no type hint"]
    assert not (tmp_path / "run").exists()


def test_labeled_requests_are_taken_only_as_far_as_the_budget_affords_whole_episodes(tmp_path):
    # every episode may take max_turns (6) requests: after the seeds, the budget affords (100 - seeds) // 6
    run_dir = tmp_path / "run"
    assert main(["run", str(SHOP), "--run-dir", str(run_dir), *TINY, "--set", "budget.requests=100"]) == 0
    stages = {p.name.rsplit("-", 1)[0]: p for p in (run_dir / "stages").iterdir()}
    records = read_jsonl(stages["synth-r0"] / "data.jsonl")
    seed_requests = sum(r["meta"]["turns"] for r in records if r["meta"]["source"] == "seed")
    assert sum(r["meta"]["source"] == "teacher" for r in records) == (100 - seed_requests) // 6
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["teacher_requests"]["spent"] <= 100


def episode_records(count: int) -> list[dict]:
    tools = [{"type": "function", "function": {"name": "get_shipment", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "integer"}}, "required": ["order_id"]}}}]
    return [{"id": str(i), "tools": tools, "messages": [
        {"role": "system", "content": "Help the customer."}, {"role": "user", "content": f"Where is {1000 + i}?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c0", "type": "function", "function": {
            "name": "get_shipment", "arguments": json.dumps({"order_id": 1000 + i})}}]},
        {"role": "tool", "tool_call_id": "c0", "content": '{"status": "delivered"}'},
        {"role": "assistant", "content": "delivered"}], "meta": {"source": "seed"}} for i in range(count)]


@pytest.mark.parametrize("adapter,packing", [("lora", "padding-free"), ("hft", "padding-free"),
                                             ("full", "padding-free"), ("lora", "bfd"), ("lora", "none")])
def test_sft_on_episodes_trains_with_every_adapter_and_packing(tmp_path, adapter, packing):
    """Two optimizer steps on episodes with each adapter and packing: answer tokens reach the loss, the
    loss stays finite, the model is saved."""
    from protege.config import TrainConfig
    from protege.models import model_dir
    from protege.registry import ADAPTER
    from protege.train.sft import train_sft
    assert {"lora", "hft", "full"} == set(ADAPTER.names())  # a new adapter joins this test
    cfg = TrainConfig(adapter=adapter, packing=packing, max_steps=2, batch_size=2, max_length=4096,
                      report_to=["none"], learning_rate=1e-3)
    log = train_sft(model_dir("tiny:0"), episode_records(4), cfg, tmp_path)
    assert log["tokens"]["answer"] > 0
    assert all(h["loss"] == h["loss"] for h in log["history"] if "loss" in h)  # no NaN
    assert (tmp_path / "model").is_dir()
