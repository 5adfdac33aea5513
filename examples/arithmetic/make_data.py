"""Writes seeds.jsonl, inputs.jsonl and test.jsonl for arithmetic; rerunning reproduces them exactly.

    python examples/arithmetic/make_data.py
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from teacher import FAMILIES, answer, make_input  # noqa: E402  (the one source of truth)

SEED, TEST_SEED = 20240502, 78
N_INPUTS, N_TEST = 400, 150


def normalize(text: str) -> str:
    # coarser than protege's own check: case and punctuation never make two problems different
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def draw_unique(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    """n inputs none of which is in `taken` (or repeats another); adds them to `taken`."""
    out = []
    while len(out) < n:
        text = make_input(rng)
        if normalize(text) not in taken:
            taken.add(normalize(text))
            out.append(text)
    return out


def write_jsonl(name: str, rows: list[dict]) -> None:
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
    (HERE / name).write_text("".join(lines), encoding="utf-8", newline="\n")


def main() -> None:
    rng = random.Random(SEED)
    seeds = [make_input(rng, family) for family in FAMILIES]  # one seed per family
    taken = {normalize(s) for s in seeds}
    inputs = draw_unique(rng, N_INPUTS, taken)
    seen = set(taken)
    test = draw_unique(random.Random(TEST_SEED), N_TEST, taken)  # drops collisions with the above
    assert not seen & {normalize(t) for t in test}, "a test input leaked into seeds or inputs"
    assert all(answer(s) for s in seeds + inputs + test), "the teacher cannot parse its own input"
    write_jsonl("seeds.jsonl", [{"input": s, "output": answer(s)} for s in seeds])
    write_jsonl("inputs.jsonl", [{"input": s} for s in inputs])
    write_jsonl("test.jsonl", [{"input": s, "output": answer(s)} for s in test])
    print(f"wrote {len(seeds)} seeds, {len(inputs)} inputs, {len(test)} test items to {HERE}")


if __name__ == "__main__":
    main()
