"""lm-evaluation-harness on a tiny model, offline, with tasks written here over local JSON files."""

import json
import math
import sys

import pytest

from protege.evaluate.lm_eval import metric_name, run_lm_eval, scores
from protege.models.tiny import build_tiny

# Both choices of every item are the same text, so they get the same log-likelihood and the harness
# picks the first (argmax of a tie): accuracy is the share of items whose gold label is 0, 3 of 5.
CHOICE_ITEMS = [{"question": f"{a} plus {b} is", "choices": [str(a + b), str(a + b)], "label": label}
                for a, b, label in [(1, 2, 0), (3, 4, 0), (2, 2, 0), (5, 1, 1), (0, 3, 1)]]
ANSWER_ITEMS = [{"question": f"Say {w}:", "answer": w} for w in ["yes", "no", "red", "blue", "up"]]


def task_yaml(name: str, data: str, body: str, cache: str) -> str:
    return (f"task: {name}\ndataset_path: {data}\ndataset_kwargs:\n  cache_dir: {cache}\n" + body)


def write_task(folder, name: str, items: list[dict], body: str, cache) -> None:
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    (folder / f"{name}.yaml").write_text(task_yaml(name, "json", body, str(cache)).replace(
        "dataset_kwargs:\n", f"dataset_kwargs:\n  data_files:\n    test: {data}\n"))


MULTIPLE_CHOICE = """output_type: multiple_choice
test_split: test
doc_to_text: "{{question}}"
doc_to_target: label
doc_to_choice: choices
metric_list:
  - metric: acc
"""
GENERATE = """output_type: generate_until
test_split: test
doc_to_text: "{{question}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
  do_sample: false
metric_list:
  - metric: exact_match
"""


@pytest.fixture
def offline(monkeypatch):
    """Nothing may be fetched: the variables for new processes, the constants already read for this one."""
    import datasets.config
    import huggingface_hub.constants
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.fixture
def tasks_dir(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    write_task(folder, "protege_choice", CHOICE_ITEMS, MULTIPLE_CHOICE, tmp_path / "datasets")
    write_task(folder, "protege_answer", ANSWER_ITEMS, GENERATE, tmp_path / "datasets")
    return folder


def test_scores_of_a_tiny_model_on_local_tasks(offline, tasks_dir, tmp_path):
    pytest.importorskip("lm_eval")
    model = build_tiny(tmp_path / "model", seed=0)
    result = run_lm_eval(model, ["protege_choice", "protege_answer"], batch_size=4, include_path=tasks_dir)
    assert set(result) == {"protege_choice", "protege_answer"}
    assert result["protege_choice"]["acc"] == pytest.approx(3 / 5)
    assert result["protege_choice"]["acc_stderr"] == pytest.approx(math.sqrt(0.6 * 0.4 / 4))
    assert 0.0 <= result["protege_answer"]["exact_match"] <= 1.0


def test_limit_scores_the_first_items(offline, tasks_dir, tmp_path):
    pytest.importorskip("lm_eval")
    model = build_tiny(tmp_path / "model", seed=0)
    result = run_lm_eval(model, ["protege_choice"], limit=3, include_path=tasks_dir)
    assert result["protege_choice"]["acc"] == pytest.approx(1.0)  # the first three are labelled 0


def test_unreachable_dataset_is_one_clear_error(offline, tmp_path):
    pytest.importorskip("lm_eval")
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "remote.yaml").write_text(task_yaml("protege_remote", "protege-tests/not-on-this-machine",
                                                  MULTIPLE_CHOICE, str(tmp_path / "datasets")))
    with pytest.raises(ValueError, match="protege_remote.*dataset cannot be reached"):
        run_lm_eval(tmp_path / "no-model-needed", ["protege_remote"], include_path=folder)


def test_missing_lm_eval_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what `import lm_eval` finds when it is not installed
    with pytest.raises(ValueError, match="pip install lm-eval"):
        run_lm_eval(tmp_path, ["hellaswag"])


def test_results_become_task_metric_floats():
    results = {"arc_easy": {"alias": "arc_easy", "acc,none": 0.25, "acc_stderr,none": 0.04, "sample_len": 40},
               "gsm8k": {"exact_match,strict-match": 0.5, "exact_match_stderr,strict-match": "N/A",
                         "exact_match,flexible-extract": 0.75, "exact_match_stderr,flexible-extract": float("nan")}}
    assert scores(results) == {"arc_easy": {"acc": 0.25, "acc_stderr": 0.04},
                               "gsm8k": {"exact_match,strict-match": 0.5, "exact_match,flexible-extract": 0.75}}
    assert metric_name("acc_norm,none") == "acc_norm"


def test_eval_command_merges_an_adapter_before_the_harness_loads_it(offline, tasks_dir, tmp_path, examples_dir,
                                                                    capsys):
    """lm-evaluation-harness loads plain model directories: `protege eval --model ADAPTER --lm-eval`
    merges the adapter into the task's base in a cached stage and scores the merged model."""
    pytest.importorskip("lm_eval")
    from peft import LoraConfig, get_peft_model
    from protege.cli import main
    from protege.models import load_model, model_dir
    model, _ = load_model(model_dir("tiny:0"))
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    run_dir = tmp_path / "run"
    assert main(["eval", str(examples_dir / "iso-dates"), "--run-dir", str(run_dir), "--set", "student.model=tiny:0",
                 "--set", "eval.max_new_tokens=2", "--model", str(tmp_path / "adapter"), "--lm-eval",
                 "protege_choice", "--lm-eval-include", str(tasks_dir)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["lm_eval"]["protege_choice"]["acc"] == pytest.approx(3 / 5)
    merged = list((run_dir / "stages").glob("merged-cli-*"))
    assert len(merged) == 1 and (merged[0] / "model" / "config.json").is_file()
