"""Offline teacher for arithmetic: one- and two-step word problems answered with worked steps.

protege calls `teacher` (task.yaml: teacher.function). make_data.py imports the generator from
here too, so the committed data and the teacher can never disagree. Each problem template is
used both to write a problem (str.format) and to read it back (a regex built from the same text).
"""

from __future__ import annotations

import hashlib
import json
import operator
import random
import re

NAMES = {"Tom": "he", "Sara": "she", "Ben": "he", "Mia": "she", "Sam": "he", "Lily": "she",
         "Jack": "he", "Emma": "she", "Leo": "he", "Anna": "she", "Max": "he", "Zoe": "she"}
ITEMS = [("apple", "apples"), ("pencil", "pencils"), ("marble", "marbles"), ("cookie", "cookies"),
         ("sticker", "stickers"), ("card", "cards"), ("shell", "shells"), ("balloon", "balloons")]
GOODS = [("notebook", "notebooks"), ("pen", "pens"), ("ticket", "tickets"), ("toy", "toys"),
         ("sandwich", "sandwiches"), ("cupcake", "cupcakes")]
CONTAINERS = [("box", "boxes"), ("bag", "bags"), ("basket", "baskets"), ("jar", "jars")]

# family: (number ranges, steps, phrasings). A step is (left, op, right); "_" is the previous
# result. Ranges are (lo, hi) for randint or a list to choose from; draws that make a negative,
# zero or fractional answer are redrawn, which keeps the ranges short to read.
FAMILIES = {
    "add": ({"a": (3, 40), "b": (2, 30)}, [("a", "+", "b")], [
        "{name} has {a} {items}. {Pron} gets {b} more. How many {items} does {pron} have now?",
        "There are {a} {items} in a basket. {name} puts in {b} more. "
        "How many {items} are in the basket now?"]),
    "take": ({"a": (5, 40), "b": (1, 30)}, [("a", "-", "b")], [
        "{name} has {a} {items}. {Pron} gives away {b}. How many {items} does {pron} have left?",
        "There are {a} {items} on the table. {name} takes {b} of them. "
        "How many {items} are left on the table?"]),
    "buy_give": ({"a": (3, 30), "b": (2, 20), "c": (1, 25)}, [("a", "+", "b"), ("_", "-", "c")], [
        "{name} has {a} {items} and buys {b} more. Then {pron} gives away {c}. "
        "How many {items} does {pron} have now?",
        "{name} had {a} {items}. {Pron} found {b} more and then lost {c}. "
        "How many {items} does {pron} have now?"]),
    "groups": ({"a": (2, 9), "b": (2, 12)}, [("a", "*", "b")], [
        "There are {a} {conts} with {b} {items} in each {cont}. How many {items} are there in total?",
        "{name} has {a} {conts}. Each {cont} holds {b} {items}. How many {items} does {pron} have in all?"]),
    "share": ({"a": (4, 72), "b": (2, 9)}, [("a", "/", "b")], [
        "{name} has {a} {items} and shares them equally among {b} friends. "
        "How many {items} does each friend get?",
        "{a} {items} are split equally into {b} {conts}. How many {items} go in each {cont}?"]),
    "price": ({"a": (2, 12), "b": (2, 9)}, [("b", "*", "a")], [
        "One {item} costs {a} dollars. {name} buys {b} {items}. How many dollars does {pron} spend?",
        "{name} buys {b} {items} at {a} dollars each. How many dollars does {pron} pay?"]),
    "change": ({"a": (2, 9), "b": (2, 6), "c": [10, 20, 50]}, [("b", "*", "a"), ("c", "-", "_")], [
        "One {item} costs {a} dollars. {name} buys {b} {items} and pays with a {c} dollar bill. "
        "How many dollars of change does {pron} get?"]),
    "groups_plus": ({"a": (2, 6), "b": (2, 10), "c": (1, 20)}, [("a", "*", "b"), ("_", "+", "c")], [
        "There are {a} {conts} with {b} {items} in each {cont}. {name} adds {c} more {items}. "
        "How many {items} are there now?"]),
}
SHOPPING = {"price", "change"}  # families whose items are bought, one at a time
SLOTS = {"a": r"\d{1,6}", "b": r"\d{1,6}", "c": r"\d{1,6}", "name": r"[a-z]+",
         "Pron": "he|she", "pron": "he|she"}
OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}


def _compile(template: str) -> re.Pattern:
    """A regex that reads back what `template` writes; repeated slots must repeat the same word."""
    parts, seen = [], set()
    for i, piece in enumerate(re.split(r"\{(\w+)\}", template)):
        if i % 2 == 0:
            parts.append(re.escape(piece))
        else:
            slot = SLOTS.get(piece, "[a-z]+")  # item and container words
            parts.append(f"(?P={piece})" if piece in seen else f"(?P<{piece}>{slot})")
            seen.add(piece)
    return re.compile("".join(parts), re.IGNORECASE)


PATTERNS = [(family, _compile(t)) for family, (_, _, phrasings) in FAMILIES.items() for t in phrasings]


# ---- solving --------------------------------------------------------------------------------

def solve(family: str, numbers: dict) -> tuple[list[str], int] | None:
    """The worked steps and the result, or None when the problem has no positive whole answer."""
    lines, previous = [], None
    for left, op, right in FAMILIES[family][1]:
        x, y = (previous if slot == "_" else numbers[slot] for slot in (left, right))
        if op == "/" and (y == 0 or x % y):
            return None
        previous = OPERATIONS[op](x, y)
        if previous <= 0:
            return None
        lines.append(f"{x} {op} {y} = {previous}")
    return lines, previous


def parse(text) -> tuple[str, dict] | None:
    """(family, numbers) of a problem written from one of the templates, or None."""
    if not isinstance(text, str):
        return None
    text = " ".join(text.split())
    for family, pattern in PATTERNS:
        match = pattern.fullmatch(text)
        if match:
            numbers = {k: int(v) for k, v in match.groupdict().items() if k in {"a", "b", "c"}}
            return family, numbers
    return None


def result(text) -> int | None:
    parsed = parse(text)
    solved = solve(*parsed) if parsed else None
    return solved[1] if solved else None


def answer(text) -> str:
    """Worked steps then "Answer: N"; "" for anything the templates cannot read."""
    parsed = parse(text)
    solved = solve(*parsed) if parsed else None
    if not solved:
        return ""
    lines, value = solved
    return "\n".join(lines + [f"Answer: {value}"])


# ---- generating inputs ----------------------------------------------------------------------

def _draw_numbers(rng: random.Random, family: str) -> dict:
    ranges = FAMILIES[family][0]
    while True:
        numbers = {k: rng.choice(r) if isinstance(r, list) else rng.randint(*r)
                   for k, r in ranges.items()}
        if solve(family, numbers):
            return numbers


def make_input(rng: random.Random, family: str | None = None) -> str:
    family = family or rng.choice(list(FAMILIES))
    numbers = _draw_numbers(rng, family)
    name = rng.choice(list(NAMES))
    item, items = rng.choice(GOODS if family in SHOPPING else ITEMS)
    cont, conts = rng.choice(CONTAINERS)
    template = rng.choice(FAMILIES[family][2])
    pron = NAMES[name]
    return template.format(name=name, pron=pron, Pron=pron.capitalize(), item=item, items=items,
                           cont=cont, conts=conts, **numbers)


def generate(n: int, seed: int) -> list[str]:
    """n new inputs (task.yaml synth.generator: "teacher:generate")."""
    rng = random.Random(seed)
    return [make_input(rng) for _ in range(n)]


# ---- the protege interface ------------------------------------------------------------------

def _request_rng(examples: list[str], sample: int) -> random.Random:
    # hash() is salted per process; the teacher cache needs the same reply on every run
    blob = json.dumps([examples, sample], ensure_ascii=False)
    return random.Random(int(hashlib.sha256(blob.encode()).hexdigest()[:16], 16))


def write_input(examples, sample: int = 0) -> str:
    """One new problem in the first example's family: augmentation then writes problems like a failure."""
    examples = [str(e) for e in examples or ()]
    rng = _request_rng(examples, int(sample or 0))
    parsed = parse(examples[0]) if examples else None
    family = parsed[0] if parsed else None
    text = make_input(rng, family)
    for _ in range(10):  # the request asks for an input unlike the examples
        if text not in examples:
            break
        text = make_input(rng, family)
    return text


def teacher(request) -> str:
    purpose = getattr(request, "purpose", "")
    if purpose == "answer":
        return answer(getattr(request, "input", ""))
    if purpose == "write_input":
        return write_input(getattr(request, "examples", ()), getattr(request, "sample", 0))
    if purpose == "critique":
        return critique(getattr(request, "input", ""), getattr(request, "candidate", ""))
    if purpose == "judge-pointwise":
        return judge_score(request.input, request.candidate)
    if purpose == "judge-pairwise":
        return judge_pair(request.input, request.candidate, request.answer_b)
    return ""


def _quality(input: str, candidate: str) -> int:
    """0 wrong result, 1 right result with a wrong step or no steps, 2 right and every step right."""
    if not verify(input, candidate):
        return 0
    steps = STEP.findall(candidate)
    return 2 if steps and all(step_value(x, op, y) == float(z) for x, op, y, z in steps) else 1


def step_value(x: str, op: str, y: str) -> int | None:
    """What "x op y" really is; None for a division that does not come out whole."""
    x, y = int(x), int(y)
    return None if op == "/" and (y == 0 or x % y) else OPERATIONS[op](x, y)


GRADES = [("The final answer is wrong.", 2), ("The answer is right; the steps are missing or wrong.", 7),
          ("The answer and every step are right.", 10)]


def judge_score(input: str, candidate: str) -> str:
    """A judge's grade: the final number decides most of it, the worked steps the rest."""
    reason, score = GRADES[_quality(input, candidate)]
    return f"{reason}\nScore: {score}"


def judge_pair(input: str, a: str, b: str) -> str:
    qa, qb = _quality(input, a), _quality(input, b)
    winner = "A" if qa > qb else "B" if qb > qa else "tie"
    return f"Answer A is graded {qa}/2 and answer B {qb}/2.\nWinner: {winner}"


NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def verify(input: str, answer: str) -> bool:
    """True when the last number in `answer` is the problem's result (what the numeric metric reads)."""
    expected = result(input)
    numbers = NUMBER.findall(answer) if isinstance(answer, str) else []
    return expected is not None and bool(numbers) and abs(float(numbers[-1]) - expected) < 1e-6


STEP = re.compile(r"(-?\d+) *([-+*/]) *(-?\d+) *= *(-?\d+(?:\.\d+)?)")


def critique(input: str, candidate: str) -> str:
    """Checks each "x op y = z" step of the candidate, works the problem out, compares the candidate's
    last number with the result (as verify does) and ends with "Verdict: correct" or "Verdict:
    incorrect"; "" for a problem the templates cannot read."""
    parsed = parse(input)
    solved = solve(*parsed) if parsed else None
    if not solved:
        return ""
    steps, value = solved
    candidate = candidate if isinstance(candidate, str) else ""
    lines = []
    for x, op, y, z in STEP.findall(candidate):
        true = step_value(x, op, y)
        if true is not None and abs(float(z) - true) < 1e-6:
            lines.append(f"The step {x} {op} {y} = {z} is right.")
        else:
            lines.append(f"The step {x} {op} {y} = {z} is wrong: {x} {op} {y} is "
                         f"{true if true is not None else 'not a whole number'}.")
    lines.append("Working it out: " + ", then ".join(steps) + ".")
    numbers = NUMBER.findall(candidate)
    correct = verify(input, candidate)
    if not numbers:
        lines.append(f"The candidate gives no final number; the answer is {value}.")
    elif correct:
        lines.append(f"The candidate's final answer {numbers[-1]} matches the result {value}.")
    else:
        lines.append(f"The candidate's final answer {numbers[-1]} does not match the result {value}.")
    lines.append(f"Verdict: {'correct' if correct else 'incorrect'}")
    return "\n".join(lines)
