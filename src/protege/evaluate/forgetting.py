"""Forgetting: what a student loses of general ability against its base.

Two measures, both run on the base and on the student: a probe of short general items shipped with
protege (instruction following, world knowledge, arithmetic, formatting), each scored by a small
verifiable check, and the perplexity of a held-out general text. The comparison reports the change in
probe accuracy with a paired bootstrap interval, the negative flips (items the base got right and the
student gets wrong, as in MUSCLE) and the perplexity ratio.
"""

from __future__ import annotations

import math
import random
import re
from itertools import chain, zip_longest
from pathlib import Path

from ..runs import read_jsonl
from .bootstrap import paired_difference
from ..records import normalize
from .metrics.json_match import first_object
from .metrics.numeric import last_number

PROBE_DIR = Path(__file__).parent / "probe"
PROBE_FILE = PROBE_DIR / "probe.jsonl"
GENERAL_TEXT = PROBE_DIR / "general_text.txt"
CATEGORIES = ("instruction", "knowledge", "arithmetic", "format")


# --- checks: one small pure function per kind, (check, stripped answer) -> bool ---------------------

NUMERAL = re.compile(r"-?\d+(?:[.,]\d+)*")


def _phrase(text: str, case_sensitive: bool = False) -> re.Pattern:
    """A word or phrase standing on its own: 'Rome' is found in 'Rome.' but not in 'Romeo'; a number
    is not found inside a longer one ('0' is not in '-18.0', nor '8' in '1,008' or '-8')."""
    if NUMERAL.fullmatch(text):
        before, after = r"(?<![\w.,-])", r"(?![\w]|[.,]\d)"
    else:
        before, after = r"(?<!\w)", r"(?!\w)"
    return re.compile(before + re.escape(text) + after, 0 if case_sensitive else re.IGNORECASE)


def _spaced(answer: str) -> str:
    return " ".join(answer.split())


def contains_any(check: dict, answer: str) -> bool:
    """Any of the accepted answers (aliases) appears as a whole word or phrase."""
    text = _spaced(answer)
    return any(_phrase(a, check.get("case_sensitive", False)).search(text) for a in check["any"])


def contains_all(check: dict, answer: str) -> bool:
    text = _spaced(answer)
    return all(_phrase(a, check.get("case_sensitive", False)).search(text) for a in check["all"])


def excludes(check: dict, answer: str) -> bool:
    """None of the given strings appears; an answer with nothing in it satisfies no instruction."""
    text = answer if check.get("case_sensitive", False) else answer.lower()
    banned = [s if check.get("case_sensitive", False) else s.lower() for s in check["any"]]
    return any(c.isalnum() for c in answer) and not any(s in text for s in banned)


def occurrences(check: dict, answer: str) -> bool:
    """How often a word or phrase is used (case-insensitive), within [min, max]."""
    found = len(_phrase(check["text"]).findall(_spaced(answer)))
    return check.get("min", 0) <= found <= check.get("max", math.inf)


def exact(check: dict, answer: str) -> bool:
    """The whole answer, after the task metric's normalization (case, spaces, quotes, final period)."""
    return normalize(answer) == normalize(check["text"])


def numeric(check: dict, answer: str) -> bool:
    """The last number in the answer, as the task's numeric metric reads it."""
    value = last_number(answer)
    return value is not None and math.isclose(value, check["value"], rel_tol=0.0,
                                              abs_tol=check.get("tolerance", 1e-6))


def regex(check: dict, answer: str) -> bool:
    flags = (re.IGNORECASE if check.get("ignore_case", False) else 0) | re.DOTALL
    return re.search(check["pattern"], answer, flags) is not None


def json_keys(check: dict, answer: str) -> bool:
    """A JSON object with exactly these keys, and these values where given (compared as text)."""
    found = first_object(answer)
    if not isinstance(found, dict) or set(found) != set(check["keys"]):
        return False
    return all(str(found[k]).strip().lower() == str(v).lower() for k, v in check.get("values", {}).items())


def word_count(check: dict, answer: str) -> bool:
    """Words as a reader counts them: runs between spaces, holding at least one letter or digit (a lone
    dash or bracket is not a word)."""
    found = sum(1 for token in answer.split() if any(c.isalnum() for c in token))
    return check.get("min", 1) <= found <= check.get("max", math.inf)


def _lines(answer: str) -> list[str]:
    return [line.strip() for line in answer.splitlines() if line.strip()]


def line_count(check: dict, answer: str) -> bool:
    """Non-empty lines, within [min, max]."""
    return check.get("min", 1) <= len(_lines(answer)) <= check.get("max", math.inf)


def lines_match(check: dict, answer: str) -> bool:
    """Every non-empty line starts with the pattern (a bullet, a number), and there are [min, max] of them."""
    lines = _lines(answer)
    return line_count(check, answer) and all(re.match(check["pattern"], line) for line in lines)


def comma_list(check: dict, answer: str) -> bool:
    """One line of [min, max] comma-separated items, none empty."""
    items = [item.strip() for item in answer.split(",")]
    return ("\n" not in answer and all(items)
            and check.get("min", 2) <= len(items) <= check.get("max", math.inf))


def uppercase(check: dict, answer: str) -> bool:
    return any(c.isalpha() for c in answer) and answer == answer.upper()


def lowercase(check: dict, answer: str) -> bool:
    return any(c.isalpha() for c in answer) and answer == answer.lower()


def starts_with(check: dict, answer: str) -> bool:
    """Case-insensitive: 'start with Yes' is followed by 'YES' too."""
    return answer.lower().startswith(check["prefix"].lower())


def ends_with(check: dict, answer: str) -> bool:
    return answer.lower().endswith(check["suffix"].lower())


def all_of(check: dict, answer: str) -> bool:
    """Several checks on one answer: an instruction and the content it asks for."""
    return all(check_answer(c, answer) for c in check["checks"])


CHECKS = {"contains_any": contains_any, "contains_all": contains_all, "excludes": excludes,
          "occurrences": occurrences, "exact": exact, "numeric": numeric, "regex": regex,
          "json_keys": json_keys, "word_count": word_count, "line_count": line_count,
          "lines_match": lines_match, "comma_list": comma_list, "uppercase": uppercase,
          "lowercase": lowercase, "starts_with": starts_with, "ends_with": ends_with, "all": all_of}


def check_answer(check: dict, answer: str) -> bool:
    """Whether an answer passes an item's check. Any answer (empty, huge, not even a string) gets a
    verdict; only a check of an unknown kind raises, since that is a bug in the probe, not the model."""
    if check["kind"] not in CHECKS:
        raise ValueError(f"unknown probe check kind {check['kind']!r}; known: {', '.join(CHECKS)}")
    text = answer.strip() if isinstance(answer, str) else ""
    return bool(CHECKS[check["kind"]](check, text))


# --- the probe ---------------------------------------------------------------------------------------

def load_probe(categories: list[str] = (), limit: int = 0, seed: int = 0) -> list[dict]:
    """The probe items of these categories (all when empty); when limit > 0, a fixed seeded sample
    balanced across categories, in file order."""
    unknown = set(categories) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown probe categories {sorted(unknown)}; known: {', '.join(CATEGORIES)}")
    items = [item for item in read_jsonl(PROBE_FILE) if not categories or item["category"] in categories]
    if limit <= 0 or limit >= len(items):
        return items
    return stratified_sample(items, limit, seed)


def stratified_sample(items: list[dict], limit: int, seed: int) -> list[dict]:
    """Each category shuffled, then taken in turn, one item each, until limit: every category gets an
    equal share (or all it has), and a larger limit only adds items to a smaller one's sample."""
    rng = random.Random(seed)
    by_category: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_category.setdefault(item["category"], []).append(i)
    for indices in by_category.values():
        rng.shuffle(indices)
    turns = chain.from_iterable(zip_longest(*by_category.values()))
    chosen = [i for i in turns if i is not None][:limit]
    return [items[i] for i in sorted(chosen)]


def run_probe(model, tokenizer, items: list[dict], batch_size: int = 32, max_new_tokens: int = 48) -> list[dict]:
    """One greedy answer per probe item, as a user would ask it (no system message), and its verdict."""
    from ..models.generate import generate
    chats = [[{"role": "user", "content": item["prompt"]}] for item in items]
    answers = generate(model, tokenizer, chats, max_new_tokens, batch_size, desc="forgetting probe")
    return [{"id": item["id"], "category": item["category"], "prompt": item["prompt"], "answer": answer,
             "correct": check_answer(item["check"], answer)} for item, answer in zip(items, answers)]


# --- perplexity of general text ----------------------------------------------------------------------

def perplexity_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window, as in the transformers perplexity guide:
    windows of max_length tokens every stride tokens; each scores only the tokens after the previous
    window's end, so every token but the first is scored once, and past the first window with at
    least max_length - stride tokens of context before it."""
    if not 0 < stride <= max_length:
        raise ValueError(f"stride must be in 1..max_length ({max_length}), got {stride}")
    windows, scored_until = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        windows.append((begin, end, scored_until))
        scored_until = end
        if end == n_tokens:
            break
    return windows


def _window_batch(ids: list[int], windows: list[tuple[int, int, int]], pad_id: int):
    """Right-padded inputs, attention mask and labels (-100: unscored context and padding)."""
    import torch
    width = max(end - begin for begin, end, _ in windows)
    inputs = torch.full((len(windows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(windows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.long)
    for row, (begin, end, first) in enumerate(windows):
        inputs[row, :end - begin] = torch.tensor(ids[begin:end])
        mask[row, :end - begin] = 1
        labels[row, first - begin:end - begin] = inputs[row, first - begin:end - begin]
    return inputs, mask, labels


def general_perplexity(model, tokenizer, max_length: int = 512, stride: int | None = None,
                       batch_size: int = 4, text: str | None = None) -> float:
    """Token-level perplexity of the held-out general text (or of `text`): exp of the mean negative
    log-likelihood of every token after the first, over sliding windows scored in batches."""
    import torch
    import torch.nn.functional as F

    text = GENERAL_TEXT.read_text(encoding="utf-8") if text is None else text
    ids = tokenizer(text, verbose=False)["input_ids"]  # longer than the model's context: windows cut it
    windows = perplexity_windows(len(ids), max_length, stride or max(1, max_length // 2))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total_nll, scored = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            inputs, mask, labels = _window_batch(ids, windows[start:start + batch_size], pad_id)
            logits = model(input_ids=inputs.to(model.device), attention_mask=mask.to(model.device)).logits
            targets = labels[:, 1:].to(model.device)
            total_nll += F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                         ignore_index=-100, reduction="sum").item()
            scored += int((targets != -100).sum())
    if scored == 0:
        raise ValueError("the general text has fewer than two tokens: no perplexity to measure")
    return math.exp(total_nll / scored)


# --- base against student ------------------------------------------------------------------------------

def _accuracy(values: list[float]) -> float:
    return sum(values) / len(values)


def flips(base: list[float], student: list[float]) -> tuple[int, int]:
    """(negative, positive): items right for the base and wrong for the student, and the reverse."""
    negative = sum(1 for a, b in zip(base, student) if a and not b)
    positive = sum(1 for a, b in zip(base, student) if b and not a)
    return negative, positive


def _per_category(base_records: list[dict], student_by_id: dict) -> dict:
    per: dict[str, dict] = {}
    for r in base_records:
        per.setdefault(r["category"], {"base": [], "student": []})
        per[r["category"]]["base"].append(float(r["correct"]))
        per[r["category"]]["student"].append(float(student_by_id[r["id"]]["correct"]))
    return {c: {"base": _accuracy(v["base"]), "student": _accuracy(v["student"]), "n": len(v["base"])}
            for c, v in per.items()}


def compare(base_records: list[dict], student_records: list[dict], base_ppl: float | None,
            student_ppl: float | None, confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> dict:
    """The student's probe result against its base's, item by item (both must have answered the
    same items), with a paired bootstrap interval on the change in accuracy."""
    student_by_id = {r["id"]: r for r in student_records}
    if not base_records or {r["id"] for r in base_records} != set(student_by_id):
        raise ValueError("the base and the student were not probed on the same items")
    base = [float(r["correct"]) for r in base_records]
    student = [float(student_by_id[r["id"]]["correct"]) for r in base_records]
    interval = paired_difference(student, base, confidence, resamples, seed)  # student - base
    negative, positive = flips(base, student)
    measured = base_ppl is not None and student_ppl is not None
    return {"n": len(base), "probe_base": _accuracy(base), "probe_student": _accuracy(student),
            "probe_change": _accuracy(student) - _accuracy(base),
            "probe_change_ci": [interval["low"], interval["high"]],
            "negative_flips": negative, "negative_flip_rate": negative / len(base), "positive_flips": positive,
            "per_category": _per_category(base_records, student_by_id),
            "perplexity_base": base_ppl, "perplexity_student": student_ppl,
            "perplexity_ratio": student_ppl / base_ppl if measured else None}


def within_limit(result: dict, limit: float | None) -> bool:
    """Whether the student lost no more probe accuracy than the limit allows (no limit: always)."""
    # accuracies are ratios of counts: float subtraction must not push a change of exactly -limit over
    return limit is None or result["probe_change"] >= -limit - 1e-9
