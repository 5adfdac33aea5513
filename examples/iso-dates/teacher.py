"""Offline teacher for iso-dates: writes dates in words and converts them to YYYY-MM-DD.

protege calls `teacher` (task.yaml: teacher.function). make_data.py imports the generator from
here too, so the committed data and the teacher can never disagree.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import re

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FIRST, LAST = dt.date(1900, 1, 1), dt.date(2099, 12, 31)

# The eight surface formats; "Sept. 9, 1987" is the first one with an abbreviated month.
FORMATS = [
    "{M} {D}, {Y}",        # March 3rd, 2021
    "the {D} of {M} {Y}",  # the 14th of February 1998
    "{D} {M} {Y}",         # 3 Jan 2005
    "{Y}, {M} {D}",        # 2021, March 3
    "{W}, {D} {M} {Y}",    # Wednesday, 5 May 1999
    "{W}, {M} {D}, {Y}",   # Wed, March 3, 2021
    "{M} the {D}, {Y}",    # March the 3rd, 2021
    "{D} of {M}, {Y}",     # 3rd of March, 2021
]

MONTH_WORDS = {name.lower(): i for i, full in enumerate(MONTHS, 1) for name in (full, full[:3])}
MONTH_WORDS["sept"] = 9
WEEKDAY_WORDS = {name.lower(): i for i, full in enumerate(WEEKDAYS) for name in (full, full[:3])}
TOKEN = re.compile(r"\d+(?:st|nd|rd|th)?|[a-z]+")
FILLER = {"the", "of"}


# ---- generating inputs ----------------------------------------------------------------------

def _ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _month_word(rng: random.Random, month: int) -> str:
    full = MONTHS[month - 1]
    style = rng.choice(["full", "full", "short", "short."])
    if style == "full" or full == "May":  # May has no shorter form to abbreviate
        return full
    short = "Sept" if full == "September" and rng.random() < 0.5 else full[:3]
    return short + "." if style == "short." else short


def render(date: dt.date, fmt: str, rng: random.Random) -> str:
    # "the 14 of February" reads wrong, so formats with "the"/"of" always take the ordinal
    ordinal = bool(FILLER & set(fmt.split())) or rng.random() < 0.3
    day = _ordinal(date.day) if ordinal else str(date.day)
    weekday = WEEKDAYS[date.weekday()]
    weekday = weekday[:3] if rng.random() < 0.3 else weekday
    return fmt.format(M=_month_word(rng, date.month), D=day, Y=date.year, W=weekday)


def random_date(rng: random.Random) -> dt.date:
    return FIRST + dt.timedelta(days=rng.randint(0, (LAST - FIRST).days))


def make_input(rng: random.Random, fmt: str | None = None) -> str:
    fmt = fmt or rng.choice(FORMATS)
    return render(random_date(rng), fmt, rng)


def generate(n: int, seed: int) -> list[str]:
    """n new inputs (task.yaml synth.generator: "teacher:generate")."""
    rng = random.Random(seed)
    return [make_input(rng) for _ in range(n)]


# ---- parsing inputs -------------------------------------------------------------------------

def _kind(token: str) -> str:
    if token in MONTH_WORDS:
        return "M"
    if token in WEEKDAY_WORDS:
        return "W"
    if re.fullmatch(r"\d{4}", token):
        return "Y"
    if re.fullmatch(r"\d{1,2}(?:st|nd|rd|th)?", token):
        return "D"
    return token if token in FILLER else "?"


def _tokens(text) -> list[str]:
    return TOKEN.findall(text.lower()) if isinstance(text, str) else []


def shape(text) -> str:
    """The token kinds of a date, e.g. "W D M Y": which format it was written in."""
    return " ".join(_kind(t) for t in _tokens(text))


FORMAT_OF_SHAPE = {shape(f.format(M="March", D="3", Y="2021", W="Monday")): f for f in FORMATS}


def parse(text) -> dt.date | None:
    """The date a text names, or None unless it is exactly one real, self-consistent date."""
    tokens = _tokens(text)
    kinds = [_kind(t) for t in tokens]
    if not tokens or "?" in kinds or any(kinds.count(k) != 1 for k in "MDY") or kinds.count("W") > 1:
        return None
    value = {k: t for k, t in zip(kinds, tokens)}
    try:
        date = dt.date(int(value["Y"]), MONTH_WORDS[value["M"]], int(re.match(r"\d+", value["D"])[0]))
    except ValueError:  # February 30th and the like
        return None
    if "W" in value and WEEKDAY_WORDS[value["W"]] != date.weekday():
        return None  # a weekday that contradicts the date: no right answer
    return date


def iso(text) -> str:
    date = parse(text)
    return date.isoformat() if date else ""


# ---- the protege interface ------------------------------------------------------------------

def _request_rng(examples: list[str], sample: int) -> random.Random:
    # hash() is salted per process; the teacher cache needs the same reply on every run
    blob = json.dumps([examples, sample], ensure_ascii=False)
    return random.Random(int(hashlib.sha256(blob.encode()).hexdigest()[:16], 16))


def write_input(examples, sample: int = 0) -> str:
    """One new input in the format of the first example (a failure, in augmentation)."""
    examples = [str(e) for e in examples or ()]
    rng = _request_rng(examples, int(sample or 0))
    fmt = FORMAT_OF_SHAPE.get(shape(examples[0])) if examples else None
    text = make_input(rng, fmt)
    for _ in range(10):  # the request asks for an input unlike the examples
        if text not in examples:
            break
        text = make_input(rng, fmt)
    return text


def teacher(request) -> str:
    purpose = getattr(request, "purpose", "")
    if purpose == "answer":
        return iso(getattr(request, "input", ""))
    if purpose == "write_input":
        return write_input(getattr(request, "examples", ()), getattr(request, "sample", 0))
    return ""


def verify(input: str, answer: str) -> bool:
    expected = iso(input)
    return bool(expected) and isinstance(answer, str) and answer.strip() == expected
