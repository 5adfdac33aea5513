import copy
import math

import pytest
import torch

from protege.evaluate.forgetting import (CATEGORIES, CHECKS, check_answer, compare, general_perplexity,
                                         load_probe, perplexity_windows, run_probe, within_limit)
from protege.models import load_model, model_dir

ODD_ANSWERS = ["", "   \n ", "\udcff", "\x00", "...", "[" * 100_000, "{" * 100_000 + "}",
               "Paris, 12, {} [] ?!\n" * 50_000]  # the last one is 1 MB


# --- check kinds --------------------------------------------------------------------------------------

CASES = [
    ({"kind": "contains_any", "any": ["Rome", "Roma"]}, "The capital is Rome.", True),
    ({"kind": "contains_any", "any": ["Rome", "Roma"]}, "roma", True),
    ({"kind": "contains_any", "any": ["Rome"]}, "Romeo and Juliet", False),
    ({"kind": "contains_any", "any": ["Mexico City"]}, "Mexico   City", True),
    ({"kind": "contains_any", "any": ["0", "zero"]}, "Water freezes at 0°C.", True),
    ({"kind": "contains_any", "any": ["0", "zero"]}, "Water freezes at -18.0°C.", False),
    ({"kind": "contains_any", "any": ["8"]}, "It has 8.", True),
    ({"kind": "contains_any", "any": ["8"]}, "It has 1,008 or -8 or 8.5", False),
    ({"kind": "contains_any", "any": ["Na"], "case_sensitive": True}, "Na", True),
    ({"kind": "contains_any", "any": ["Na"], "case_sensitive": True}, "na na", False),
    ({"kind": "contains_all", "all": ["Saturday", "Sunday"]}, "saturday and sunday", True),
    ({"kind": "contains_all", "all": ["Saturday", "Sunday"]}, "Saturday only", False),
    ({"kind": "excludes", "any": [","]}, "red orange yellow", True),
    ({"kind": "excludes", "any": [","]}, "red, orange", False),
    ({"kind": "excludes", "any": ["white"]}, "Snow is WHITE", False),
    ({"kind": "occurrences", "text": "sun", "min": 3, "max": 3}, "The sun, the Sun and the sun.", True),
    ({"kind": "occurrences", "text": "sun", "min": 3, "max": 3}, "sun sunny sundae sun", False),
    ({"kind": "exact", "text": "The cat sat."}, '  "the cat sat"  ', True),
    ({"kind": "exact", "text": "The cat sat."}, "The cat sat down.", False),
    ({"kind": "numeric", "value": 12}, "5 + 7 = 12.", True),
    ({"kind": "numeric", "value": 1234}, "It is 1,234", True),
    ({"kind": "numeric", "value": 12}, "12 or maybe 13", False),
    ({"kind": "numeric", "value": 0.5, "tolerance": 0.01}, "about 0.504", True),
    ({"kind": "regex", "pattern": r"^\W*yes\b", "ignore_case": True}, "YES, it is.", True),
    ({"kind": "regex", "pattern": r"^\W*yes\b", "ignore_case": True}, "Well, yes.", False),
    ({"kind": "json_keys", "keys": ["name", "age"], "values": {"age": 31}},
     'Here: ```json\n{"age": "31", "name": "Ana"}\n```', True),
    ({"kind": "json_keys", "keys": ["name", "age"]}, '{"name": "Ana"}', False),
    ({"kind": "json_keys", "keys": ["name", "age"], "values": {"age": 31}}, '{"name": "Ana", "age": 30}', False),
    ({"kind": "json_keys", "keys": ["a"]}, '["a"]', False),
    ({"kind": "word_count", "min": 3, "max": 3}, "Vast, deep blue.", True),
    ({"kind": "word_count", "min": 3, "max": 3}, "Vast - deep blue", True),
    ({"kind": "word_count", "min": 3, "max": 3}, "Vast deep blue sea", False),
    ({"kind": "line_count", "min": 3, "max": 3}, "a\n\nb\nc\n", True),
    ({"kind": "line_count", "min": 3, "max": 3}, "a, b, c", False),
    ({"kind": "lines_match", "pattern": r"[-*+]\s+\S", "min": 2, "max": 2}, "- apple\n* pear", True),
    ({"kind": "lines_match", "pattern": r"[-*+]\s+\S", "min": 2, "max": 2}, "Fruits:\n- apple\n- pear", False),
    ({"kind": "comma_list", "min": 3, "max": 3}, "red, green, blue", True),
    ({"kind": "comma_list", "min": 3, "max": 3}, "red, , blue", False),
    ({"kind": "uppercase"}, "ROME!", True),
    ({"kind": "uppercase"}, "Rome", False),
    ({"kind": "uppercase"}, "42", False),
    ({"kind": "lowercase"}, "madrid", True),
    ({"kind": "lowercase"}, "Madrid", False),
    ({"kind": "starts_with", "prefix": "Yes"}, "yes, it is", True),
    ({"kind": "starts_with", "prefix": "Yes"}, "Well, yes", False),
    ({"kind": "ends_with", "suffix": "?"}, "Will it rain?  ", True),
    ({"kind": "ends_with", "suffix": "?"}, "It will rain.", False),
    ({"kind": "all", "checks": [{"kind": "uppercase"}, {"kind": "contains_any", "any": ["blue"]}]}, "BLUE", True),
    ({"kind": "all", "checks": [{"kind": "uppercase"}, {"kind": "contains_any", "any": ["blue"]}]}, "blue", False),
]


@pytest.mark.parametrize("check, answer, expected", CASES)
def test_check_kinds_on_hand_made_answers(check, answer, expected):
    assert check_answer(check, answer) is expected


def test_every_check_kind_has_a_hand_made_case():
    assert {check["kind"] for check, _, _ in CASES} == set(CHECKS)


@pytest.mark.parametrize("answer", ODD_ANSWERS + [None, 42], ids=range(len(ODD_ANSWERS) + 2))
def test_odd_answers_get_a_verdict_not_an_error(answer):
    verdicts = [check_answer(check, answer) for check, _, _ in CASES]
    assert all(isinstance(v, bool) for v in verdicts)


@pytest.mark.parametrize("answer", ["", "   \n ", "\udcff", "\x00", "...", "[" * 5000, "{" * 5000 + "}"])
def test_no_probe_item_accepts_an_empty_or_garbage_answer(answer):
    assert [item["id"] for item in load_probe() if check_answer(item["check"], answer)] == []


def test_unknown_check_kind_is_a_probe_bug():
    with pytest.raises(ValueError, match="unknown probe check kind"):
        check_answer({"kind": "vibes"}, "anything")


# --- the probe file -----------------------------------------------------------------------------------

def kinds(check: dict) -> set[str]:
    return {check["kind"]}.union(*(kinds(c) for c in check.get("checks", [])))


def test_probe_has_enough_items_in_every_category_with_unique_ids():
    items = load_probe()
    assert len(items) >= 300
    assert all(sum(i["category"] == c for i in items) >= 60 for c in CATEGORIES)
    assert len({i["id"] for i in items}) == len(items)
    assert len({i["prompt"] for i in items}) == len(items)
    assert set().union(*(kinds(i["check"]) for i in items)) <= set(CHECKS)


def test_every_reference_passes_and_every_echoed_prompt_fails():
    items = load_probe()
    assert [i["id"] for i in items if not check_answer(i["check"], i["reference"])] == []
    assert [i["id"] for i in items if check_answer(i["check"], i["prompt"])] == []


def test_probe_sample_is_seeded_balanced_and_grows_by_adding():
    sample = load_probe(limit=20, seed=3)
    assert [sum(i["category"] == c for i in sample) for c in CATEGORIES] == [5, 5, 5, 5]
    assert sample == load_probe(limit=20, seed=3)
    assert {i["id"] for i in sample} != {i["id"] for i in load_probe(limit=20, seed=4)}
    assert {i["id"] for i in sample} <= {i["id"] for i in load_probe(limit=40, seed=3)}
    picked = load_probe(["knowledge", "format"], limit=10, seed=0)
    assert sorted(i["category"] for i in picked) == ["format"] * 5 + ["knowledge"] * 5
    with pytest.raises(ValueError, match="unknown probe categories"):
        load_probe(["poetry"])


# --- perplexity -------------------------------------------------------------------------------------------

def test_perplexity_windows_score_every_token_after_the_first_once():
    # 10 tokens, windows of 4 every 2: each window scores the 2 tokens past the previous window's end
    assert perplexity_windows(10, 4, 2) == [(0, 4, 0), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    assert perplexity_windows(5, 8, 4) == [(0, 5, 0)]
    with pytest.raises(ValueError):
        perplexity_windows(10, 4, 5)  # a stride past the window would skip tokens


def test_perplexity_of_one_window_is_exp_of_the_model_loss():
    model, tokenizer = load_model(model_dir("tiny:0"))
    text = "The tide comes in twice a day."
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.inference_mode():
        expected = math.exp(model(input_ids=ids, labels=ids).loss.item())
    assert general_perplexity(model, tokenizer, max_length=64, text=text) == pytest.approx(expected, rel=1e-5)


def test_batched_windows_with_padding_give_the_same_perplexity():
    model, tokenizer = load_model(model_dir("tiny:0"))
    text = "Bread needs flour, water, salt and yeast; then time, warmth and kneading. " * 3
    one_by_one = general_perplexity(model, tokenizer, max_length=48, stride=20, batch_size=1, text=text)
    batched = general_perplexity(model, tokenizer, max_length=48, stride=20, batch_size=3, text=text)
    assert batched == pytest.approx(one_by_one, rel=1e-5)


# --- base against student -------------------------------------------------------------------------------------

def records(correct: list[int], categories: str = "aabbcc") -> list[dict]:
    return [{"id": f"p{i}", "category": c, "correct": bool(ok)} for i, (ok, c) in enumerate(zip(correct, categories))]


def test_compare_on_a_six_item_toy():
    base, student = records([1, 1, 1, 0, 0, 1]), records([1, 0, 1, 1, 0, 0])
    result = compare(base, list(reversed(student)), 10.0, 12.0, resamples=200)
    # base 4/6, student 3/6; p1 and p5 flip right -> wrong, p3 wrong -> right
    assert result["probe_base"] == pytest.approx(4 / 6) and result["probe_student"] == pytest.approx(3 / 6)
    assert result["probe_change"] == pytest.approx(-1 / 6)
    assert (result["negative_flips"], result["positive_flips"]) == (2, 1)
    assert result["negative_flip_rate"] == pytest.approx(2 / 6)
    assert result["per_category"] == {"a": {"base": 1.0, "student": 0.5, "n": 2},
                                      "b": {"base": 0.5, "student": 1.0, "n": 2},
                                      "c": {"base": 0.5, "student": 0.0, "n": 2}}
    low, high = result["probe_change_ci"]
    assert low <= -1 / 6 <= high and low < high
    assert result["perplexity_ratio"] == pytest.approx(1.2)


def test_compare_without_perplexity_and_on_different_items():
    base = records([1, 0, 1, 0, 1, 0])
    assert compare(base, base, None, None, resamples=200)["perplexity_ratio"] is None
    with pytest.raises(ValueError, match="same items"):
        compare(base, base[:5], None, None)


def test_within_limit():
    assert within_limit({"probe_change": 0.50 - 0.55}, 0.05)  # exactly the limit, up to float rounding
    assert not within_limit({"probe_change": -0.1}, 0.05)
    assert within_limit({"probe_change": -0.9}, None)


# --- end to end: a student trained to overwrite the probe ------------------------------------------------

WRONG = "zzz"


def answer_batch(tokenizer, items: list[dict], answers: list[str]):
    """Chat prompt + answer + end of turn; only the answer is learned."""
    rows = []
    for item, answer in zip(items, answers):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": item["prompt"]}],
                                               add_generation_prompt=True, tokenize=True, return_dict=False)
        target = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((prompt + target, [-100] * len(prompt) + target))
    width = max(len(ids) for ids, _ in rows)
    pad = [width - len(ids) for ids, _ in rows]
    ids = torch.tensor([ids + [tokenizer.pad_token_id] * p for (ids, _), p in zip(rows, pad)])
    labels = torch.tensor([labels + [-100] * p for (_, labels), p in zip(rows, pad)])
    mask = torch.tensor([[1] * (width - p) + [0] * p for p in pad])
    return ids, mask, labels


def teach(model, tokenizer, items, answers, steps: int, lr: float = 5e-3) -> None:
    ids, mask, labels = answer_batch(tokenizer, items, answers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def test_a_student_trained_to_overwrite_the_probe_shows_forgetting():
    torch.manual_seed(0)
    model, tokenizer = load_model(model_dir("tiny:0"))
    items = [item for c in CATEGORIES  # two items per category whose check the wrong answer fails
             for item in [i for i in load_probe([c], limit=6) if not check_answer(i["check"], WRONG)][:2]]
    teach(model, tokenizer, items, [i["reference"] for i in items], steps=120)
    student = copy.deepcopy(model)
    teach(student, tokenizer, items, [WRONG] * len(items), steps=30)

    base_records = run_probe(model, tokenizer, items, max_new_tokens=48)
    student_records = run_probe(student, tokenizer, items, max_new_tokens=48)
    base_ppl = general_perplexity(model, tokenizer, max_length=256)
    student_ppl = general_perplexity(student, tokenizer, max_length=256)
    result = compare(base_records, student_records, base_ppl, student_ppl, resamples=200)

    assert result["probe_base"] >= 0.75, base_records  # the base did learn the references
    assert result["probe_change"] < 0 and result["negative_flips"] > 0
    assert result["probe_change_ci"][0] < 0
    assert set(result["per_category"]) == set(CATEGORIES)
    assert math.isfinite(base_ppl) and math.isfinite(student_ppl) and result["perplexity_ratio"] > 0
    assert not within_limit(result, 0.05)
