import json
import time

import pytest

from protege.config import EvalConfig, Example, MetricConfig
from protege.evaluate.metrics import score
from protege.registry import METRIC
from protege.evaluate.metrics.code_exec import extract_code
from protege.records import normalize
from protege.evaluate.metrics.numeric import last_number
from protege.evaluate.task_eval import evaluate_model, score_predictions


def cfg(name: str, **options) -> MetricConfig:
    return METRIC.make(name, **options)


def test_every_metric_is_registered_by_name():
    assert set(METRIC.names()) == {"exact", "numeric", "json", "regex", "rouge-l", "code"}


# exact

def test_exact_normalizes_case_space_quotes_period():
    assert normalize(' "Hello   World". ') == "hello world"
    assert score("exact", ' "2021-03-03". ', "2021-03-03")[0] == 1.0
    assert score("exact", "2021-03-04", "2021-03-03")[0] == 0.0
    assert score("exact", "", "x")[0] == 0.0


def test_exact_options():
    assert score(cfg("exact", ignore_case=False), "Paris", "paris")[0] == 0.0
    assert score(cfg("exact"), "Hello, world!", "hello world")[0] == 0.0
    assert score(cfg("exact", ignore_punctuation=True), "Hello, world!", "hello world")[0] == 1.0
    assert score(cfg("exact", ignore_punctuation=True), "«Oui»", "oui")[0] == 1.0
    assert score(cfg("exact"), "The Eiffel Tower", "Eiffel Tower")[0] == 0.0
    assert score(cfg("exact", ignore_articles=True), "The Eiffel Tower", "eiffel tower")[0] == 1.0
    # "theory" holds "the" but is no article
    assert score(cfg("exact", ignore_articles=True), "theory", "ory")[0] == 0.0


# numeric

def test_numeric_takes_the_last_number():
    assert last_number("3 * 7 = 21\n21 + 19 = 40\nAnswer: 40") == 40.0
    assert last_number("costs -1,250.5 dollars") == -1250.5
    assert last_number("no digits") is None
    assert last_number("9" * 5000) is None  # overflows to inf: no answer
    assert score("numeric", "so 40", "Answer: 40")[0] == 1.0
    assert score("numeric", "Answer: 41", "Answer: 40")[0] == 0.0
    assert score("numeric", "", "40")[0] == 0.0


def test_numeric_tolerances():
    assert score(cfg("numeric"), "Answer: 40.0001", "40")[0] == 0.0
    assert score(cfg("numeric", tolerance=1e-3), "Answer: 40.0001", "40")[0] == 1.0
    # |1010 - 1000| = 10 = 1% of 1010 (isclose scales by the larger of the two)
    assert score(cfg("numeric", relative_tolerance=0.01), "1010", "1000")[0] == 1.0
    assert score(cfg("numeric", relative_tolerance=0.005), "1010", "1000")[0] == 0.0
    assert score(cfg("numeric", tolerance=10.0, relative_tolerance=0.001), "1010", "1000")[0] == 1.0


# json

def test_json_reads_a_fenced_object_amid_prose_and_normalizes_values():
    prediction = 'Sure! Here it is:\n```json\n{"name": "  Ada ", "age": 36, "tags": ["X", 1]}\n```\nDone.'
    value, details = score("json", prediction, '{"name": "ada", "age": 36.0, "tags": ["x", 1.0]}')
    assert value == 1.0 and details["fields"] == {"name": True, "age": True, "tags": True}


def test_json_scores_the_share_of_fields_or_all_of_them():
    reference = '{"city": "Paris", "year": 1889, "height": 330}'
    prediction = '{"city": "paris", "year": 1890}'
    value, details = score("json", prediction, reference)
    assert value == pytest.approx(1 / 3)
    assert details["fields"] == {"city": True, "year": False, "height": False}
    assert score(cfg("json", all_fields=True), prediction, reference)[0] == 0.0
    assert score(cfg("json", fields=["city"]), prediction, reference)[0] == 1.0
    assert score(cfg("json", fields=["city", "year"]), prediction, reference)[0] == 0.5


def test_json_types_are_compared_as_json_sees_them():
    assert score("json", '{"ok": 1}', '{"ok": true}')[0] == 0.0
    assert score("json", '{"n": "42"}', '{"n": 42}')[0] == 0.0
    assert score("json", '{"a": {"b": [1, "X"]}}', '{"a": {"b": [1.0, "x"]}}')[0] == 1.0
    assert score("json", '{"a": null}', '{"a": null}')[0] == 1.0
    assert score("json", '{"a": [1, 2]}', '{"a": [1, 2, 3]}')[0] == 0.0


@pytest.mark.parametrize("prediction", ["not json at all", "[1, 2]", '{"a": 1', "{{{{", '{"a":' + "[" * 100_000])
def test_json_without_an_object_scores_zero(prediction):
    value, details = score("json", prediction, '{"a": 1}')
    assert value == 0.0 and "no JSON object" in details["error"]


# regex

def test_regex_reference_is_the_pattern_by_default():
    assert score("regex", "on 2021-03-03.", r"\d{4}-\d{2}-\d{2}")[0] == 1.0
    assert score("regex", "on 21-3-3.", r"\d{4}-\d{2}-\d{2}")[0] == 0.0


def test_regex_template_escapes_the_reference_and_keeps_regex_braces():
    metric = cfg("regex", pattern=r"^\d{2}: {reference}$")
    value, details = score(metric, "12: 3.5", "3.5")
    assert value == 1.0 and details["match"] == "12: 3.5"
    assert score(metric, "12: 3x5", "3.5")[0] == 0.0  # the reference's "." is escaped
    assert score(metric, "1: 3.5", "3.5")[0] == 0.0


def test_regex_invalid_pattern_raises_naming_it():
    with pytest.raises(ValueError, match=r"invalid pattern '\[unclosed'"):
        score(cfg("regex", pattern="[unclosed"), "anything", "x")
    # with no pattern the reference is the pattern: the config cannot check it, the metric does
    with pytest.raises(ValueError, match=r"invalid pattern '\[unclosed'"):
        score(cfg("regex"), "anything", "[unclosed")


# rouge-l

def test_rouge_l_against_a_hand_computed_lcs():
    # LCS("the cat on the mat", "the cat sat on the mat") = 5 tokens: P = 5/5, R = 5/6, F = 10/11
    value, details = score("rouge-l", "The cat on the mat", "the cat sat on the mat")
    assert details["precision"] == pytest.approx(1.0) and details["recall"] == pytest.approx(5 / 6)
    assert value == pytest.approx(10 / 11)
    assert score("rouge-l", "the cat sat on the mat", "the cat sat on the mat")[0] == pytest.approx(1.0)
    assert score("rouge-l", "dogs bark", "the cat sat")[0] == 0.0


def test_rouge_l_huge_prediction_is_cut_quickly():
    started = time.monotonic()
    value, details = score("rouge-l", "the cat sat " * 100_000, "the cat sat")
    assert time.monotonic() - started < 5
    # the first 2000 characters: 166 x "the cat sat " + "the cat ", 500 tokens; LCS 3, P = 3/500, R = 1
    assert details["truncated_to_characters"] == 2000
    assert value == pytest.approx(2 * (3 / 500) / (1 + 3 / 500))


# code

ADD = "```python\ndef add(a, b):\n    return a + b\n```"


def test_code_passes_when_the_tests_exit_zero():
    value, details = score("code", "Here you go:\n" + ADD + "\nHope it helps.", "", tests="assert add(2, 3) == 5")
    assert value == 1.0 and details["returncode"] == 0 and not details["timed_out"]


def test_code_runs_the_reference_when_the_item_has_no_tests():
    assert score("code", ADD, "assert add(2, 3) == 5")[0] == 1.0
    assert score("code", ADD, "assert add(2, 3) == 6")[0] == 0.0


def test_code_failing_assert_scores_zero_with_the_error():
    value, details = score("code", "def add(a, b):\n    return a - b", "", tests="assert add(2, 3) == 5")
    assert value == 0.0 and details["returncode"] == 1 and "AssertionError" in details["stderr"]


def test_code_future_imports_stay_legal():
    code = "from __future__ import annotations\ndef add(a: int, b: int) -> int:\n    return a + b"
    assert score("code", code, "assert add(1, 1) == 2")[0] == 1.0


def test_code_infinite_loop_is_killed_at_the_timeout():
    started = time.monotonic()
    value, details = score(cfg("code", timeout=1.0), "while True:\n    pass", "")
    assert value == 0.0 and details["timed_out"]
    assert time.monotonic() - started < 4


def test_code_memory_limit_stops_a_2_gb_allocation():
    value, details = score(cfg("code", memory_mb=256), "block = bytearray(2 * 1024 ** 3)", "")
    assert value == 0.0 and "MemoryError" in details["stderr"]


# the sandbox's isolation: tests/test_code_sandbox.py


def test_code_non_utf8_output_is_read_safely():
    program = "import sys\nsys.stdout.buffer.write(b'\\xff\\xfe')\nsys.stderr.buffer.write(b'bad \\xff byte')"
    value, details = score("code", program, "")
    assert value == 1.0 and details["stderr"] == "bad \ufffd byte"


def test_code_empty_prediction_scores_zero_without_running():
    value, details = score("code", "  \n", "assert True")
    assert value == 0.0 and "no code" in details["error"]


def test_extract_code_takes_the_last_fenced_block():
    assert extract_code("```python\na = 1\n```\ntext\n```\nb = 2\n```") == "b = 2\n"
    assert extract_code("```python\nc = 3\n") == "c = 3\n"  # cut off by max_new_tokens
    assert extract_code("d = 4") == "d = 4"


# bad predictions, every metric

REFERENCES = {"exact": "42", "numeric": "42", "json": '{"a": 1}', "regex": "^42$", "rouge-l": "forty two",
              "code": "assert answer() == 42"}
BAD = {"empty": "", "1 MB": "x" * (1 << 20), "surrogates": "\udcff\udcfe answer \ud800", "not JSON": '{"a": 1,,'}


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_predictions_score_zero_and_never_raise(name, kind):
    value, details = score(name, BAD[kind], REFERENCES[name])
    assert value == 0.0
    json.dumps(details, ensure_ascii=False).encode("utf-8")  # what the run writes: must not raise


# task_eval

def test_score_predictions_one_answer_per_item():
    items = [Example(input="a", output="1"), Example(input="b", output="2"), Example(input="c", output="3")]
    records, summary = score_predictions(items, ["1", "x", "3\udcff"], cfg("exact"), EvalConfig())
    assert [r["score"] for r in records] == [1.0, 0.0, 0.0]
    assert records[2]["prediction"] == "3\ufffd" and records[1]["reference"] == "2"
    assert summary["n"] == 3 and summary["correct"] == 1.0 and summary["accuracy"] == pytest.approx(1 / 3)
    assert summary["confidence"] == 0.95 and 0.0 <= summary["ci"][0] <= 1 / 3 <= summary["ci"][1] <= 1.0
    assert "pass_at_k" not in summary and "passed" not in records[0]


def test_score_predictions_several_samples_give_pass_at_k():
    items = [Example(input="a", output="4"), Example(input="b", output="2")]
    samples = [["4", "5", "4.0"], ["1", "1", "3"]]
    records, summary = score_predictions(items, samples, cfg("numeric", k=[1, 2, 5]), EvalConfig(samples=3))
    assert records[0]["passed"] == 2 and records[0]["score"] == pytest.approx(2 / 3)
    assert records[0]["prediction"] == "4" and records[0]["predictions"] == samples[0]
    assert records[1]["passed"] == 0 and records[1]["score"] == 0.0
    # pass@1 = mean c/n = (2/3 + 0) / 2; pass@2: 1 - C(1,2)/C(3,2) = 1 for item 0, 0 for item 1
    assert summary["pass_at_k"] == {"1": pytest.approx(1 / 3), "2": pytest.approx(0.5)}  # k=5 > 3 samples


def test_score_predictions_continuous_metric_averages_samples():
    items = [Example(input="a", output="the cat sat")]
    records, _ = score_predictions(items, [["the cat sat", "dogs bark"]], cfg("rouge-l"), EvalConfig())
    assert records[0]["score"] == pytest.approx(0.5) and records[0]["passed"] == 1


def test_score_predictions_rejects_a_length_mismatch():
    with pytest.raises(ValueError, match="2 items but 1 predictions"):
        score_predictions([Example(), Example()], ["a"], cfg("exact"), EvalConfig())


def test_evaluate_model_samples_with_seeds_0_to_n(tmp_path):
    from protege.models.generate import generate
    from protege.records import task_chat
    from protege.models import load_model
    from protege.models.tiny import build_tiny
    model, tokenizer = load_model(build_tiny(tmp_path / "tiny", seed=0), "cpu")
    items = [Example(input="ab", output="x"), Example(input="cd", output="y")]
    eval_cfg = EvalConfig(samples=3, temperature=1.0, max_new_tokens=4, batch_size=2)
    records, summary = evaluate_model(model, tokenizer, items, "I.", cfg("regex", pattern="[a-z]"), eval_cfg)
    chats = [task_chat("I.", item.input) for item in items]
    expected = [generate(model, tokenizer, chats, 4, 2, temperature=1.0, seed=s) for s in range(3)]
    assert [r["predictions"] for r in records] == [[e[i] for e in expected] for i in range(2)]
    assert expected[0] != expected[1]  # the seeds differ, so do the samples
    greedy, _ = evaluate_model(model, tokenizer, items, "I.", cfg("regex", pattern="[a-z]"),
                               EvalConfig(max_new_tokens=4, batch_size=2))
    assert [r["prediction"] for r in greedy] == generate(model, tokenizer, chats, 4, 2)
